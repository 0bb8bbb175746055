"""Batched UDP I/O (brpc/_session/quic/udp.py) on real loopback sockets: GSO sends,
GRO receives, and the plain fallbacks, forced and after a real kernel refusal."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from typing import Any, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from brpc._session.quic import udp


def test_gso_runs_cut_at_size_changes_and_limits() -> None:
    a, b, c = b"a" * 10, b"b" * 10, b"c" * 4
    assert list(udp.gso_runs([a, b, c, a])) == [(10, [a, b, c]), (10, [a])]
    assert list(udp.gso_runs([c, a])) == [(4, [c]), (10, [a])]
    assert list(udp.gso_runs([a] * 5, max_segments=2)) == [(10, [a, a]), (10, [a, a]), (10, [a])]
    assert list(udp.gso_runs([a] * 5, max_bytes=25)) == [(10, [a, a]), (10, [a, a]), (10, [a])]
    assert list(udp.gso_runs([])) == []


@given(st.lists(st.integers(min_value=1, max_value=3000), max_size=200))
def test_gso_runs_keep_every_datagram_in_order(sizes: list[int]) -> None:
    datagrams = [bytes([i % 256]) * n for i, n in enumerate(sizes)]
    runs = list(udp.gso_runs(datagrams))
    assert [d for _, run in runs for d in run] == datagrams
    for size, run in runs:
        assert len(run) <= udp.GSO_MAX_SEGMENTS
        assert sum(map(len, run)) <= udp.GSO_MAX_BYTES or len(run) == 1
        assert all(len(d) == size for d in run[:-1]) and len(run[-1]) <= size


def test_split_gro_buffer() -> None:
    assert udp.split_gro_buffer(b"aabbc", 2) == [b"aa", b"bb", b"c"]
    assert udp.split_gro_buffer(b"aabbc", None) == [b"aabbc"]
    assert udp.split_gro_buffer(b"aa", 2) == [b"aa"]


@pytest.fixture
def sockets() -> Iterator[tuple[socket.socket, socket.socket]]:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(5)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.bind(("127.0.0.1", 0))
    yield sender, receiver
    sender.close()
    receiver.close()


def datagrams(count: int, size: int = 1200, last: int = 517) -> list[bytes]:
    out = [i.to_bytes(4, "big") * (size // 4) for i in range(count - 1)]
    return [*out, b"z" * last]


def receive_all(batching: udp.UdpBatching, expected: int) -> list[bytes]:
    received: list[bytes] = []
    for _ in range(expected):  # bounded: at least one datagram per call
        if len(received) >= expected:
            break
        pieces, _ = batching.receive()
        received.extend(pieces)
    return received


def test_gso_send_and_gro_receive(sockets: tuple[socket.socket, socket.socket]) -> None:
    sender, receiver = sockets
    out, into = udp.UdpBatching(sender), udp.UdpBatching(receiver)
    assert out.gso and into.gro, "this kernel supports UDP GSO and GRO"
    sent = datagrams(200)
    calls = out.send(sent, receiver.getsockname())
    assert calls == 4  # 64 + 64 + 64 + 8 segments
    assert receive_all(into, len(sent)) == sent
    assert into.syscalls < len(sent) // 10


def test_connected_socket(sockets: tuple[socket.socket, socket.socket]) -> None:
    sender, receiver = sockets
    sender.connect(receiver.getsockname())
    sent = datagrams(10)
    assert udp.UdpBatching(sender).send(sent) == 1
    assert receive_all(udp.UdpBatching(receiver), len(sent)) == sent


def test_forced_fallback_sends_and_receives_one_by_one(
    sockets: tuple[socket.socket, socket.socket],
) -> None:
    sender, receiver = sockets
    out = udp.UdpBatching(sender, gso=False)
    into = udp.UdpBatching(receiver, gro=False)
    sent = datagrams(50)
    assert out.send(sent, receiver.getsockname()) == 50
    assert receive_all(into, len(sent)) == sent
    assert into.syscalls == 50


def test_kernel_refusal_falls_back_for_good(sockets: tuple[socket.socket, socket.socket]) -> None:
    """The kernel refuses more than 64 (128 on newer kernels) segments per send
    (EINVAL), as a device
    without checksum offload refuses any (EIO): the datagrams still go out."""
    sender, receiver = sockets
    out = udp.UdpBatching(sender, max_segments=400)
    sent = datagrams(300, size=100, last=100)
    assert out.send(sent, receiver.getsockname()) == 300
    assert not out.gso
    assert receive_all(udp.UdpBatching(receiver), len(sent)) == sent
    assert out.send(sent[:3], receiver.getsockname()) == 3


class _Recorder(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.error: asyncio.Future[Exception] = asyncio.get_running_loop().create_future()

    def error_received(self, exc: Exception) -> None:
        if not self.error.done():
            self.error.set_result(exc)


async def send_like_aioquic(connected: bool, *, wrap: bool) -> bytes | Exception:
    """Send the way brpc dials (a connected socket handed to the loop) and aioquic
    transmits (``sendto(data, addr)``); return what arrived or the error reported."""
    loop = asyncio.get_running_loop()
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.setblocking(False)
    address = receiver.getsockname()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    if connected:
        sock.connect(address)
    transport, protocol = await loop.create_datagram_endpoint(_Recorder, sock=sock)
    arrival = asyncio.ensure_future(loop.sock_recv(receiver, 100))
    try:
        (udp.connected_sendto(transport) if wrap else transport).sendto(b"hello", address)
        done, _ = await asyncio.wait(
            [protocol.error, arrival], timeout=5, return_when=asyncio.FIRST_COMPLETED
        )
        assert done, "neither the datagram nor an error arrived"
        return done.pop().result()
    finally:
        arrival.cancel()
        transport.close()
        receiver.close()


def test_uvloop_refuses_sendto_with_address_on_a_connected_socket() -> None:
    """The problem the wrapper solves (if uvloop stops refusing, it is not needed)."""
    import errno

    import uvloop

    result = uvloop.run(send_like_aioquic(True, wrap=False))
    assert isinstance(result, OSError) and result.errno == errno.EISCONN


@pytest.mark.parametrize("connected", [True, False])
def test_connected_sendto_under_uvloop(connected: bool) -> None:
    import uvloop

    assert uvloop.run(send_like_aioquic(connected, wrap=True)) == b"hello"


@pytest.mark.parametrize("connected", [True, False])
async def test_connected_sendto_under_asyncio(connected: bool) -> None:
    assert await send_like_aioquic(connected, wrap=True) == b"hello"
    assert await send_like_aioquic(connected, wrap=False) == b"hello"


async def aioquic_handshake_over_a_connected_socket(certs: Any) -> None:
    """Dial the way brpc does (a connected socket handed to the loop) with aioquic's
    own asyncio protocol, its transport wrapped by ``connected_sendto``."""
    from aioquic.asyncio.protocol import QuicConnectionProtocol
    from aioquic.asyncio.server import serve
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import QuicConnection

    class Dialer(QuicConnectionProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            # uvloop's UDPTransport does not subclass asyncio.DatagramTransport.
            wrapped = udp.connected_sendto(cast(asyncio.DatagramTransport, transport))
            super().connection_made(wrapped)

    server_config = QuicConfiguration(is_client=False, alpn_protocols=["brpc/1"])
    server_config.load_cert_chain(str(certs.server_cert), str(certs.server_key))
    server = await serve("127.0.0.1", 0, configuration=server_config)
    address = server._transport.get_extra_info("sockname")[:2]
    client_config = QuicConfiguration(is_client=True, alpn_protocols=["brpc/1"])
    client_config.server_name = "localhost"
    client_config.load_verify_locations(cafile=str(certs.ca))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.connect(address)
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: Dialer(QuicConnection(configuration=client_config)), sock=sock
    )
    try:
        protocol.connect(address)
        async with asyncio.timeout(10):
            await protocol.wait_connected()
    finally:
        protocol.close()
        transport.close()
        server.close()


def test_aioquic_dials_under_uvloop_with_the_wrapper(certs: Any) -> None:
    import uvloop

    uvloop.run(aioquic_handshake_over_a_connected_socket(certs))


def test_receive_buffer_hands_qh3_the_coalesced_buffer(
    sockets: tuple[socket.socket, socket.socket],
) -> None:
    sender, receiver = sockets
    into = udp.UdpBatching(receiver)  # GRO applies to datagrams queued after this
    sent = datagrams(10)
    udp.UdpBatching(sender).send(sent, receiver.getsockname())
    data, segment_size, addr = into.receive_buffer()
    assert (data, segment_size, addr) == (b"".join(sent), 1200, sender.getsockname())

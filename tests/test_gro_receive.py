"""Receiving with UDP GRO: splitting what ``recvmsg`` returns (pure), the reader
that takes over a transport's socket (batching.GroReader) and its fallbacks,
and brpc end to end with GRO on and off."""

from __future__ import annotations

import asyncio
import errno
import functools
import socket
import struct
import sys
from collections.abc import Iterator
from typing import Any, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

import brpc.client
import brpc.server
from brpc._session.quic import batching, udp
from brpc._session.quic.batching import GroReader
from brpc._session.quic.options import QuicOptions
from brpc.testing import EchoService
from brpc.testing.v1.echo_grpc import EchoStub
from brpc.testing.v1.echo_pb2 import EchoRequest

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="UDP GRO is Linux's")


def gro_cmsg(size: int) -> list[tuple[int, int, bytes]]:
    """The control message Linux attaches to a coalesced buffer."""
    return [(udp.SOL_UDP, udp.UDP_GRO, struct.pack("=i", size))]


# -- the pure splitter -----------------------------------------------------------------


def test_a_buffer_without_segment_size_is_one_datagram() -> None:
    assert udp.gro_datagrams(b"abcde", []) == [b"abcde"]
    assert udp.gro_datagrams(b"", []) == [b""]
    other = [(socket.IPPROTO_IP, 8, b"\x01\x00\x00\x00")]  # not UDP_GRO: ignored
    assert udp.gro_datagrams(b"abcde", other) == [b"abcde"]


def test_a_coalesced_buffer_splits_by_segment_size_the_last_shorter() -> None:
    assert udp.gro_datagrams(b"aabbc", gro_cmsg(2)) == [b"aa", b"bb", b"c"]
    assert udp.gro_datagrams(b"aabbcc", gro_cmsg(2)) == [b"aa", b"bb", b"cc"]
    assert udp.gro_datagrams(b"aab", gro_cmsg(3)) == [b"aab"]
    assert udp.gro_datagrams(b"aa", gro_cmsg(5)) == [b"aa"]  # one datagram, shorter


def test_a_nonsense_segment_size_leaves_the_buffer_whole() -> None:
    assert udp.gro_datagrams(b"abc", gro_cmsg(0)) == [b"abc"]
    assert udp.gro_datagrams(b"abc", gro_cmsg(-4)) == [b"abc"]
    assert udp.gro_datagrams(b"abc", [(udp.SOL_UDP, udp.UDP_GRO, b"\x01")]) == [b"abc"]


def test_a_truncated_buffer_loses_its_incomplete_last_datagram() -> None:
    assert udp.gro_datagrams(b"aabbc", gro_cmsg(2), socket.MSG_TRUNC) == [b"aa", b"bb"]
    assert udp.gro_datagrams(b"abc", [], socket.MSG_TRUNC) == []


@given(
    sizes=st.integers(min_value=1, max_value=3000),
    count=st.integers(min_value=1, max_value=64),
    last=st.integers(min_value=1, max_value=3000),
)
def test_splitting_gives_back_what_gso_sent(sizes: int, count: int, last: int) -> None:
    last = min(last, sizes)
    sent = [bytes([i % 256]) * sizes for i in range(count - 1)] + [b"\xff" * last]
    assert udp.gro_datagrams(b"".join(sent), gro_cmsg(sizes)) == sent


def test_the_kernel_refusing_gro_is_reported_not_raised() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
        assert not udp.enable_gro(tcp)  # not a UDP socket: ENOPROTOOPT


# -- the reader's logic, on a scripted socket -------------------------------------------------


class ScriptedSocket:
    """What ``recvmsg`` returns, one entry per call; then EAGAIN."""

    def __init__(self, *results: tuple[bytes, int | None] | OSError) -> None:
        self.results = list(results)
        self.calls = 0

    def recvmsg(self, bufsize: int, ancbufsize: int) -> tuple[bytes, Any, int, Any]:
        self.calls += 1
        if not self.results:
            raise BlockingIOError(errno.EAGAIN, "nothing waits")
        result = self.results.pop(0)
        if isinstance(result, OSError):
            raise result
        data, size = result
        return data, gro_cmsg(size) if size else [], 0, ("127.0.0.1", 9)

    def close(self) -> None:
        pass


class OpenTransport:
    def is_closing(self) -> bool:
        return False


class Recorder:
    def __init__(self, go_on: bool = True) -> None:
        self.received: list[bytes] = []
        self.flushed_at: list[int] = []
        self.errors: list[OSError] = []
        self.go_on = go_on

    def reader(self, sock: ScriptedSocket, limit: int) -> GroReader:
        return GroReader(
            cast(asyncio.DatagramTransport, OpenTransport()),
            cast(socket.socket, sock),
            limit=limit,
            receive=self.receive,
            flush=lambda: self.flushed_at.append(len(self.received)),
            on_error=self.errors.append,
        )

    def receive(self, data: bytes, addr: Any) -> bool:
        self.received.append(data)
        return self.go_on


def buffer_of(count: int, size: int = 4) -> tuple[bytes, int]:
    return b"".join(bytes([i]) * size for i in range(count)), size


@pytest.fixture
def unhurried(monkeypatch: pytest.MonkeyPatch) -> None:
    """No early flush: the tests below count datagrams, not time."""
    monkeypatch.setattr(batching, "_BATCH_BUDGET", 3600.0)


async def test_a_wake_up_reads_buffers_until_read_batch_datagrams_came(unhurried: None) -> None:
    sock = ScriptedSocket(buffer_of(3), buffer_of(3), buffer_of(3), buffer_of(3))
    recorder = Recorder()
    reader = recorder.reader(sock, limit=8)
    reader._read_ready()
    assert len(recorder.received) == 9  # three buffers: 8 datagrams reached inside the third
    assert recorder.flushed_at == [9]  # one transmit, at the end
    assert len(sock.results) == 1  # the fourth waits for the next wake-up
    assert (reader.reads, reader.coalesced, reader.datagrams) == (3, 3, 9)
    reader._read_ready()
    assert len(recorder.received) == 12 and recorder.flushed_at == [9, 12]


async def test_a_buffer_past_read_batch_is_read_whole_then_transmitted(unhurried: None) -> None:
    sock = ScriptedSocket(buffer_of(20), buffer_of(20))
    recorder = Recorder()
    recorder.reader(sock, limit=8)._read_ready()
    assert len(recorder.received) == 20 and recorder.flushed_at == [20]
    assert len(sock.results) == 1


async def test_a_read_batch_of_one_transmits_after_every_datagram(unhurried: None) -> None:
    sock = ScriptedSocket(buffer_of(3), buffer_of(2))
    recorder = Recorder()
    reader = recorder.reader(sock, limit=1)
    reader._read_ready()
    assert len(recorder.received) == 3 and recorder.flushed_at == [1, 2, 3]
    reader._read_ready()
    assert recorder.flushed_at == [1, 2, 3, 4, 5]


async def test_eagain_ends_a_burst(unhurried: None) -> None:
    sock = ScriptedSocket(buffer_of(2), (b"single", None))
    recorder = Recorder()
    reader = recorder.reader(sock, limit=100)
    reader._read_ready()
    assert recorder.received == [b"\x00" * 4, b"\x01" * 4, b"single"]
    assert recorder.flushed_at == [3] and sock.calls == 3
    assert (reader.reads, reader.coalesced, reader.datagrams) == (2, 1, 3)
    reader._read_ready()  # a wake-up with nothing to read transmits nothing
    assert recorder.flushed_at == [3]


async def test_an_oserror_goes_to_the_error_handler_and_ends_the_burst(unhurried: None) -> None:
    refused = ConnectionRefusedError(errno.ECONNREFUSED, "refused")
    sock = ScriptedSocket(buffer_of(2), refused, buffer_of(2))
    recorder = Recorder()
    recorder.reader(sock, limit=100)._read_ready()
    assert recorder.errors == [refused]
    assert len(recorder.received) == 2 and recorder.flushed_at == [2]
    assert len(sock.results) == 1


async def test_the_early_flush_ends_a_wake_up_after_a_buffer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(batching, "_BATCH_BUDGET", -1.0)  # always past it
    sock = ScriptedSocket(buffer_of(3), buffer_of(3))
    recorder = Recorder()
    recorder.reader(sock, limit=100)._read_ready()
    assert len(recorder.received) == 3 and recorder.flushed_at == [3]
    assert len(sock.results) == 1


async def test_a_receiver_that_stops_ends_reading_after_the_buffer(unhurried: None) -> None:
    sock = ScriptedSocket(buffer_of(3), buffer_of(3))
    recorder = Recorder(go_on=False)
    recorder.reader(sock, limit=100)._read_ready()
    assert len(recorder.received) == 3 and recorder.flushed_at == [3]
    assert len(sock.results) == 1


# -- the reader on real sockets -------------------------------------------------------------


class TakenOver(asyncio.DatagramProtocol):
    """A datagram protocol whose socket a GroReader reads (if it can)."""

    def __init__(self, expected: int = 0) -> None:
        self.reader: GroReader | None = None
        self.received: list[bytes] = []
        self.plain: list[bytes] = []
        self.flushes = 0
        self.expected = expected
        self.done = asyncio.Event()
        self.error: asyncio.Future[OSError] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.reader = GroReader.take_over(
            cast(asyncio.DatagramTransport, transport),
            limit=8,
            receive=self.receive,
            flush=self.flush,
            on_error=self.error_received,
        )

    def connection_lost(self, exc: Exception | None) -> None:
        if self.reader is not None:
            self.reader.close()

    def receive(self, data: bytes, addr: Any) -> bool:
        self.received.append(data)
        if len(self.received) >= self.expected:
            self.done.set()
        return True

    def flush(self) -> None:
        self.flushes += 1

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        self.plain.append(cast(bytes, data))
        self.done.set()

    def error_received(self, exc: Exception) -> None:
        if not self.error.done():
            self.error.set_result(cast(OSError, exc))


def datagrams(count: int, size: int = 1200, last: int = 517) -> list[bytes]:
    return [*(i.to_bytes(4, "big") * (size // 4) for i in range(count - 1)), b"z" * last]


@pytest.fixture
def sender() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    yield sock
    sock.close()


def gro_enabled(sock: Any) -> bool:
    return bool(sock.getsockopt(udp.SOL_UDP, udp.UDP_GRO))


@linux_only
async def test_gso_flights_arrive_coalesced_and_split_in_order(sender: socket.socket) -> None:
    sent = datagrams(100)  # two GSO sends, within the default receive buffer
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: TakenOver(expected=len(sent)), local_addr=("127.0.0.1", 0)
    )
    try:
        assert protocol.reader is not None, "this kernel supports UDP GRO"
        assert gro_enabled(transport.get_extra_info("socket"))
        assert udp.UdpBatching(sender, gro=False).send(sent, transport.get_extra_info("sockname"))
        async with asyncio.timeout(10):
            await protocol.done.wait()
        assert protocol.received == sent and protocol.plain == []
        assert protocol.reader.coalesced >= 1 and protocol.reader.reads < len(sent) // 10
        assert 1 <= protocol.flushes <= protocol.reader.reads  # one per wake-up
    finally:
        transport.close()


@linux_only
async def test_icmp_errors_reach_error_received(sender: socket.socket) -> None:
    """A connected socket learns of a closed port from an ICMP error, which
    ``recvmsg`` raises: it reaches the protocol's error handling, as the
    transport's own read would have made it."""
    loop = asyncio.get_running_loop()
    address = sender.getsockname()
    sender.close()  # nothing listens there any more
    transport, protocol = await loop.create_datagram_endpoint(
        TakenOver, remote_addr=address, family=socket.AF_INET
    )
    try:
        assert protocol.reader is not None
        transport.sendto(b"anyone?")
        async with asyncio.timeout(10):
            error = await protocol.error
        assert isinstance(error, ConnectionRefusedError)
    finally:
        transport.close()


async def test_a_refused_option_leaves_the_transport_reading(
    sender: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(batching, "enable_gro", lambda sock: False)
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        TakenOver, local_addr=("127.0.0.1", 0)
    )
    try:
        assert protocol.reader is None
        sender.sendto(b"plain", transport.get_extra_info("sockname"))
        async with asyncio.timeout(10):
            await protocol.done.wait()
        assert protocol.plain == [b"plain"] and protocol.received == []
    finally:
        transport.close()


async def _under_uvloop() -> tuple[GroReader | None, bool, list[bytes]]:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        TakenOver, local_addr=("127.0.0.1", 0)
    )
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sender.sendto(b"plain", transport.get_extra_info("sockname"))
        async with asyncio.timeout(10):
            await protocol.done.wait()
        return protocol.reader, gro_enabled(transport.get_extra_info("socket")), protocol.plain
    finally:
        transport.close()


@linux_only
def test_uvloop_transports_keep_reading_without_gro() -> None:
    """uvloop's transports read through libuv and cannot pause: no GRO there."""
    import uvloop

    reader, enabled, plain = uvloop.run(_under_uvloop())
    assert reader is None and not enabled and plain == [b"plain"]


# -- brpc end to end ---------------------------------------------------------------------------


def without_gro(monkeypatch: pytest.MonkeyPatch) -> None:
    make = functools.partial(QuicOptions, gro=False)
    monkeypatch.setattr(brpc.client, "QuicOptions", make)
    monkeypatch.setattr(brpc.server, "QuicOptions", make)


@linux_only
@pytest.mark.parametrize("read_batch", [8, 1])
async def test_bulk_echo_arrives_in_coalesced_buffers(
    make_server: Any, connect: Any, read_batch: int
) -> None:
    server = await make_server([EchoService()], max_message_size=4 << 20, read_batch=read_batch)
    conn = await connect(server, max_message_size=4 << 20, read_batch=read_batch)
    payload = b"x" * (1 << 20)
    reply = await EchoStub(conn).Unary(EchoRequest(payload=payload))
    assert reply.payload == payload
    server_reader = server._listener.gro_reader
    client_reader = conn._link.session.gro_reader
    assert server_reader is not None, "this kernel supports UDP GRO: the server should use it"
    assert client_reader is not None, "this kernel supports UDP GRO: the client should use it"
    for reader in (server_reader, client_reader):
        assert reader.coalesced > 0, "GSO flights on loopback arrive coalesced"
        assert reader.datagrams > reader.reads
    assert server._listener._endpoint._drain is None  # the reader batches instead


@linux_only
async def test_without_gro_the_transports_read_one_datagram_at_a_time(
    make_server: Any, connect: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    without_gro(monkeypatch)
    server = await make_server([EchoService()], max_message_size=4 << 20)
    conn = await connect(server, max_message_size=4 << 20)
    payload = b"x" * (1 << 20)
    assert (await EchoStub(conn).Unary(EchoRequest(payload=payload))).payload == payload
    session = conn._link.session
    assert server._listener.gro_reader is None and session.gro_reader is None
    for transport in (server._listener._udp, session._udp):
        assert transport.is_reading()
        assert not gro_enabled(transport.get_extra_info("socket"))
    assert server._listener._endpoint._drain is not None and session._drain is not None

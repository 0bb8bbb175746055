"""What a hostile or crashed peer can do at the QUIC level: Initial floods,
amplification, restarted servers, and peers whose address changes."""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for

import brpc
from brpc.testing import EchoService
from brpc.testing.v1.echo_grpc import EchoStub
from brpc.testing.v1.echo_pb2 import EchoRequest
from examples.greeter import greeter_grpc, greeter_pb2

HERE = Path(__file__).resolve().parent


def _varint2(value: int) -> bytes:
    return (0x4000 | value).to_bytes(2, "big")


def fake_initial(dcid: bytes) -> bytes:
    """A 1,200-byte QUIC v1 Initial with a fresh destination connection ID and a
    payload nobody can decrypt: what a flood of spoofed Initials looks like."""
    header = bytes([0xC3]) + (1).to_bytes(4, "big")
    header += bytes([len(dcid)]) + dcid + bytes([8]) + os.urandom(8) + b"\x00"
    payload_length = 1200 - len(header) - 2
    return header + _varint2(payload_length) + os.urandom(payload_length)


def real_initial() -> bytes:
    """The first datagram of a real aioquic client: a valid ClientHello."""
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import QuicConnection

    quic = QuicConnection(
        configuration=QuicConfiguration(is_client=True, alpn_protocols=["brpc/1"])
    )
    quic.connect(("127.0.0.1", 1), now=time.monotonic())
    ((datagram, _),) = quic.datagrams_to_send(now=time.monotonic())
    return datagram


# -- amplification (RFC 9000 section 8.1) ----------------------------------------------


@pytest.mark.parametrize("engine", ["aioquic", "qh3"])
async def test_an_unanswered_initial_gets_at_most_three_times_its_size(
    make_server: Any, engine: str
) -> None:
    server = await make_server([EchoService()], handshake_timeout=1.0, engine=engine)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    try:
        initial = real_initial()
        assert len(initial) == 1200
        sock.sendto(initial, ("127.0.0.1", server.port))
        await wait_for(lambda: server.connection_count == 1)
        # The handshake times out; everything the server sends before and with
        # its close has been sent once the connection is gone.
        await wait_for(lambda: server.connection_count == 0)
        received = 0
        loop = asyncio.get_running_loop()
        for _ in range(100):
            try:
                async with asyncio.timeout(0.2):
                    received += len(await loop.sock_recv(sock, 65536))
            except TimeoutError:
                break
    finally:
        sock.close()
    assert 0 < received <= 3 * 1200


# -- Initial floods ------------------------------------------------------------------------


async def test_a_flood_of_initials_turns_on_retry_and_honest_calls_go_on(
    make_server: Any, connect: Any
) -> None:
    server = await make_server([EchoService()])
    conn = await connect(server)
    stub = EchoStub(conn)
    await stub.Unary(EchoRequest(text="before"))

    flooding = True
    peak = 0
    latencies: list[float] = []

    async def flood() -> None:
        socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(20)]
        try:
            for burst in range(100):  # 2,000 Initials from 20 ports, about 2,000/s
                for sock in socks:
                    sock.sendto(fake_initial(os.urandom(8)), ("127.0.0.1", server.port))
                await asyncio.sleep(0.01)  # the flood's rate (load, not synchronisation)
                del burst
        finally:
            for sock in socks:
                sock.close()

    async def honest() -> None:
        for i in range(2000):
            if not flooding and i > 20:
                return
            started = time.perf_counter()
            reply = await stub.Unary(EchoRequest(text=f"call {i}"), timeout=5)
            latencies.append(time.perf_counter() - started)
            assert reply.text == f"call {i}"

    async def watch() -> None:
        nonlocal peak
        while flooding:
            peak = max(peak, server.half_open_count)
            await asyncio.sleep(0.005)  # sampling interval of the half-open count

    async with asyncio.timeout(10):
        calls = asyncio.create_task(honest())
        watcher = asyncio.create_task(watch())
        await flood()
        # A new honest client gets through while the flood's handshakes are half-open.
        late = await connect(server)
        assert (await EchoStub(late).Unary(EchoRequest(text="late"))).text == "late"
        flooding = False
        await calls
        await watcher
    assert peak <= 64 + 20  # the threshold, plus one burst in flight
    assert server.half_open_count <= 64
    print(
        f"flood: peak half-open {peak}; honest calls {len(latencies)}, "
        f"p50 {statistics.median(latencies) * 1e3:.2f} ms, max {max(latencies) * 1e3:.1f} ms"
    )


async def test_half_open_handshakes_are_capped_without_retry(make_server: Any) -> None:
    server = await make_server([EchoService()], retry=False, max_half_open=50)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for _ in range(120):
            sock.sendto(fake_initial(os.urandom(8)), ("127.0.0.1", server.port))
        await wait_for(lambda: server.half_open_count == 50)
    finally:
        sock.close()
    assert server.half_open_count == 50


# -- restarted servers -------------------------------------------------------------------


async def _start_server_process(port: int, certs: Any) -> tuple[asyncio.subprocess.Process, int]:
    """The greeter example server on ``port`` (0: any), in its own process."""
    process = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "examples.greeter.server", "--certs", str(certs.directory)],
        *["--port", str(port)],
        cwd=HERE.parent,
        # Reset tokens derived from the server's key need an aioquic server.
        env={**os.environ, "BRPC_ENGINE": "aioquic"},
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    line = (await asyncio.wait_for(process.stdout.readline(), 30)).decode().strip()
    return process, int(line.rsplit(":", 1)[1])


class _Namer(greeter_grpc.NamerBase):
    async def Name(self, stream: Any) -> None:
        await stream.recv_message()
        await stream.send_message(greeter_pb2.NameReply(name="survivor"))


@pytest.mark.parametrize("engine", ["aioquic", "qh3"])
async def test_a_restarted_server_is_noticed_at_once(certs: Any, engine: str) -> None:
    """The restarted server answers the old connection's packets with a stateless
    reset (its tokens come from the server's key), so the client reconnects at
    once instead of after the dead-peer timeout."""
    first, port = await _start_server_process(0, certs)
    second: asyncio.subprocess.Process | None = None
    try:
        conn = await brpc.dial(
            f"127.0.0.1:{port}",
            ca=certs.ca,
            services=[_Namer()],
            engine=engine,
            dead_peer_timeout=30,
            keepalive_interval=10,
            reconnect=brpc.ReconnectPolicy(initial_delay=0.1, max_delay=0.5),
        )
        greeter = greeter_grpc.GreeterStub(conn)
        await greeter.Greet(greeter_pb2.GreetRequest())
        first.kill()  # no CONNECTION_CLOSE
        await first.wait()
        second, _ = await _start_server_process(port, certs)
        listening = time.perf_counter()
        # The next packet reaches the new process, which resets the connection.
        with pytest.raises(Exception):
            await greeter.Greet(greeter_pb2.GreetRequest(), timeout=3)
        await conn.wait_ready(timeout=5)
        noticed = time.perf_counter() - listening
        assert conn.connections_made == 2
        await greeter.Greet(greeter_pb2.GreetRequest())
        assert noticed < 5  # far under the 30 s dead-peer timeout
        print(f"restart noticed and reconnected in {noticed * 1e3:.0f} ms")
        await conn.close()
    finally:
        for process in (first, second):
            if process is not None and process.returncode is None:
                process.kill()
                await process.wait()


async def test_a_stateless_reset_token_survives_a_restart(certs: Any) -> None:
    """Tokens are derived from the server's key and the connection ID only."""
    a = brpc.Server([], certfile=certs.server_cert, keyfile=certs.server_key)
    b = brpc.Server([], certfile=certs.server_cert, keyfile=certs.server_key)
    cid = os.urandom(8)
    assert a._listener.reset_token(cid) == b._listener.reset_token(cid)
    assert a._listener.reset_token(cid) != a._listener.reset_token(os.urandom(8))


# -- address changes ---------------------------------------------------------------------


class _Relay(asyncio.DatagramProtocol):
    """A UDP relay on loopback whose upstream source port can be changed: what a
    NAT rebinding looks like to the server."""

    def __init__(self, server: tuple[str, int]) -> None:
        self.server = server
        self.client: Any = None
        self.transport: asyncio.DatagramTransport | None = None
        self.upstream: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.client = addr
        if self.upstream is not None:
            self.upstream.sendto(data, self.server)

    async def rebind(self) -> int:
        relay = self

        class _Up(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                if relay.transport is not None and relay.client is not None:
                    relay.transport.sendto(data, relay.client)

        old = self.upstream
        loop = asyncio.get_running_loop()
        self.upstream, _ = await loop.create_datagram_endpoint(_Up, local_addr=("127.0.0.1", 0))
        if old is not None:
            old.close()
        port: int = self.upstream.get_extra_info("sockname")[1]
        return port

    def close(self) -> None:
        for transport in (self.transport, self.upstream):
            if transport is not None:
                transport.close()


async def test_client_info_address_follows_a_nat_rebinding(
    make_server: Any, connect: Any, caplog: Any
) -> None:
    server = await make_server([EchoService()])
    loop = asyncio.get_running_loop()
    relay = _Relay(("127.0.0.1", server.port))
    await loop.create_datagram_endpoint(lambda: relay, local_addr=("127.0.0.1", 0))
    try:
        first_port = await relay.rebind()
        assert relay.transport is not None
        relay_port = relay.transport.get_extra_info("sockname")[1]
        conn = await connect(f"127.0.0.1:{relay_port}", server_name="127.0.0.1")
        stub = EchoStub(conn)
        await stub.Unary(EchoRequest(text="before"))
        (info,) = server.clients_snapshot()
        assert info.address == ("127.0.0.1", first_port)
        second_port = await relay.rebind()
        caplog.set_level("INFO", logger="brpc._session.quic.session")
        assert (await stub.Unary(EchoRequest(text="after"), timeout=5)).text == "after"
        await wait_for(lambda: info.address == ("127.0.0.1", second_port))
        assert any("peer address changed" in r.getMessage() for r in caplog.records)
    finally:
        relay.close()


async def test_a_server_port_that_goes_unreachable_ends_the_connection_quickly(
    certs: Any,
) -> None:
    """After the handshake one ICMP port unreachable only triggers a PING; a second
    one with nothing from the server in between ends the connection."""
    server, port = await _start_server_process(0, certs)
    try:
        conn = await brpc.dial(
            f"127.0.0.1:{port}",
            ca=certs.ca,
            services=[_Namer()],
            dead_peer_timeout=30,
            keepalive_interval=10,
            reconnect=False,
        )
        greeter = greeter_grpc.GreeterStub(conn)
        await greeter.Greet(greeter_pb2.GreetRequest())
        server.kill()
        await server.wait()
        started = time.perf_counter()
        with pytest.raises(Exception):
            await greeter.Greet(greeter_pb2.GreetRequest(), timeout=10)
        await wait_for(lambda: conn.state is brpc.ConnState.CLOSED, timeout=5)
        assert time.perf_counter() - started < 5  # not the 30 s dead-peer timeout
    finally:
        if server.returncode is None:
            server.kill()
            await server.wait()

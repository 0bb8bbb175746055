"""Garbage on the wire and floods: the server never crashes, never leaks, and keeps
serving an honest client throughout."""

from __future__ import annotations

import asyncio
import random
from typing import Any

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from conftest import wait_for
from probes import Probe

import brpc
from brpc.testing.v1.echo_grpc import EchoStub
from brpc.testing.v1.echo_pb2 import EchoRequest


class _Blaster(asyncio.DatagramProtocol):
    """Sends datagrams from one socket and ignores whatever comes back."""


async def _socket(port: int) -> asyncio.DatagramTransport:
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        _Blaster, remote_addr=("127.0.0.1", port)
    )
    return transport


def _initial(port: int, now: float = 0.0) -> bytes:
    quic = QuicConnection(
        configuration=QuicConfiguration(is_client=True, alpn_protocols=["brpc/1"])
    )
    quic.connect(("127.0.0.1", port), now=now)
    return quic.datagrams_to_send(now=now)[0][0]


async def _honest_calls(conn: brpc.ClientConn, stop: asyncio.Event) -> int:
    done = 0
    while not stop.is_set():
        assert (await EchoStub(conn).Unary(EchoRequest(text=str(done)))).text == str(done)
        done += 1
    return done


async def test_random_truncated_and_mutated_datagrams(make_server: Any, connect: Any) -> None:
    server = await make_server([Probe()], handshake_timeout=0.5)
    honest = await connect(server)
    stop = asyncio.Event()
    calls = asyncio.create_task(_honest_calls(honest, stop))
    rng = random.Random(1234)
    senders = [await _socket(server.port) for _ in range(8)]
    try:
        for round_ in range(300):
            sock = senders[round_ % len(senders)]
            kind = round_ % 4
            if kind == 0:  # random bytes of random length
                sock.sendto(rng.randbytes(rng.randint(0, 1500)))
            elif kind == 1:  # a valid Initial, truncated
                packet = _initial(server.port)
                sock.sendto(packet[: rng.randint(0, len(packet) - 1)])
            elif kind == 2:  # a valid Initial with bytes flipped
                packet = bytearray(_initial(server.port))
                for _ in range(rng.randint(1, 20)):
                    packet[rng.randrange(len(packet))] ^= rng.randint(1, 255)
                sock.sendto(bytes(packet))
            else:  # a long-header looking prefix followed by noise
                sock.sendto(
                    bytes([0xC0 | rng.randint(0, 0x3F)]) + rng.randbytes(rng.randint(1, 1300))
                )
            if round_ % 20 == 0:
                await asyncio.sleep(0)  # let the honest client's packets through
        stop.set()
        assert await calls > 0
        # half-open connections from mangled Initials hit the handshake timeout
        await wait_for(lambda: server.connection_count == 1, timeout=20)
        assert len(server.clients_snapshot()) == 1
        assert (await EchoStub(honest).Unary(EchoRequest(text="after"))).text == "after"
    finally:
        stop.set()
        for sock in senders:
            sock.close()


async def test_connection_flood_beyond_the_limit(make_server: Any, connect: Any) -> None:
    server = await make_server([Probe()], max_connections=10, handshake_timeout=0.5)
    honest = await connect(server)
    stop = asyncio.Event()
    calls = asyncio.create_task(_honest_calls(honest, stop))
    sockets = [await _socket(server.port) for _ in range(100)]
    try:
        for sock in sockets:  # 100 handshakes that never finish
            sock.sendto(_initial(server.port))
        await wait_for(lambda: server.connection_count == 10)  # capped
        stop.set()
        assert await calls > 0
        await wait_for(lambda: server.connection_count == 1, timeout=20)
        # room again for honest clients once the flood timed out
        again = await connect(server)
        assert (await EchoStub(again).Unary(EchoRequest(text="in"))).text == "in"
    finally:
        stop.set()
        for sock in sockets:
            sock.close()

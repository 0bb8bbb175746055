"""Limits: each configurable, each with a clear error when hit."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from conftest import wait_for
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from layers import on_both_call_layers
from probes import Probe

import brpc
from brpc.testing.v1.echo_grpc import EchoStub
from brpc.testing.v1.echo_pb2 import EchoRequest

pytestmark = on_both_call_layers


async def test_max_connections(make_server: Any, connect: Any) -> None:
    server = await make_server([Probe()], max_connections=3)
    conns = [await connect(server) for _ in range(3)]
    with pytest.raises(brpc.ConnectError) as caught:
        await connect(server, timeout=5)
    assert "limit of 3 connections" in str(caught.value)
    await conns[0].close()
    await wait_for(lambda: server.connection_count == 2)
    extra = await connect(server)
    assert (await EchoStub(extra).Unary(EchoRequest(text="in"))).text == "in"


@pytest.mark.parametrize("direction", ["client_to_server", "server_to_client"])
async def test_max_concurrent_calls_per_direction(
    make_server: Any, connect: Any, direction: str
) -> None:
    server_probe, client_probe = Probe(), Probe()
    server = await make_server([server_probe], client_stub=EchoStub, max_concurrent_calls=4)
    conn = await connect(server, services=[client_probe], max_concurrent_calls=4)
    (info,) = server.clients_snapshot()
    stub, callee = (
        (EchoStub(conn), server_probe)
        if direction == "client_to_server"
        else (info.stub, client_probe)
    )
    blocked = [asyncio.create_task(stub.Unary(EchoRequest(text="block"))) for _ in range(4)]
    await wait_for(lambda: len(callee.seen_metadata) == 4)
    with pytest.raises(GRPCError) as caught:
        await stub.Unary(EchoRequest(text="one too many"))
    assert caught.value.status is Status.RESOURCE_EXHAUSTED
    assert "more than 4 concurrent calls" in (caught.value.message or "")
    for task in blocked:
        task.cancel()
    await asyncio.gather(*blocked, return_exceptions=True)
    await wait_for(lambda: server.clients_snapshot()[0].calls_in_flight == 0)
    assert (await stub.Unary(EchoRequest(text="room again"))).text == "room again"


async def test_handshake_timeout_frees_the_connection(make_server: Any) -> None:
    """A peer that starts a handshake and never finishes it is dropped."""
    server = await make_server([Probe()], handshake_timeout=0.3)
    configuration = QuicConfiguration(is_client=True, alpn_protocols=["brpc/1"])
    quic = QuicConnection(configuration=configuration)
    quic.connect(("127.0.0.1", server.port), now=0.0)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for data, _ in quic.datagrams_to_send(now=0.0):
            sock.sendto(data, ("127.0.0.1", server.port))
        await wait_for(lambda: server.connection_count == 1)
        # never answer the server's handshake
        await wait_for(lambda: server.connection_count == 0, timeout=10)


async def test_options_are_checked(certs: Any) -> None:
    with pytest.raises(ValueError, match="keepalive_interval"):
        brpc.Server([], certfile=certs.server_cert, keyfile=certs.server_key, keepalive_interval=30)
    with pytest.raises(ValueError, match="needs a port"):
        brpc.dial("localhost")
    with pytest.raises(ValueError, match="positive"):
        brpc.dial("localhost:1", lanes=0)
    with pytest.raises(FileNotFoundError, match=r"python -m brpc\.certs"):
        brpc.Server([], certfile="/nonexistent/server.pem")

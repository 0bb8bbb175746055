"""What happens to calls and to the server's table when a connection goes away."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from conftest import wait_for
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from layers import on_both_call_layers
from probes import Probe

import brpc
from brpc.testing import NetworkConditions
from brpc.testing.v1.echo_grpc import EchoStub
from brpc.testing.v1.echo_pb2 import EchoRequest

pytestmark = on_both_call_layers


async def test_client_close_fails_server_calls_at_once(make_server: Any, connect: Any) -> None:
    """The client closes while the server waits on it: the server's call fails with
    UNAVAILABLE right away (the idle timeout is 60 s, far beyond the test's bound)."""
    probe = Probe()
    server = await make_server(client_stub=EchoStub, dead_peer_timeout=60, keepalive_interval=20)
    conn = await connect(server, services=[probe], dead_peer_timeout=60, keepalive_interval=20)
    (info,) = server.clients_snapshot()
    call = asyncio.create_task(EchoStub(info.channel).Unary(EchoRequest(text="block")))
    async with asyncio.timeout(5):
        await probe.started.wait()
    await conn.close()
    async with asyncio.timeout(5):
        with pytest.raises(GRPCError) as caught:
            await call
    assert caught.value.status is Status.UNAVAILABLE
    assert "client closed the connection" in (caught.value.message or "")
    await wait_for(lambda: not server.clients_snapshot())
    assert info.closed
    with pytest.raises(GRPCError) as again:
        await info.stub.Unary(EchoRequest(text="late"))
    assert again.value.status is Status.UNAVAILABLE


async def test_server_close_fails_client_calls_at_once(make_server: Any, connect: Any) -> None:
    probe = Probe()
    server = await make_server([probe], dead_peer_timeout=60, keepalive_interval=20)
    conn = await connect(server, reconnect=False, dead_peer_timeout=60, keepalive_interval=20)
    call = asyncio.create_task(EchoStub(conn).Unary(EchoRequest(text="block")))
    async with asyncio.timeout(5):
        await probe.started.wait()
    server.close()
    async with asyncio.timeout(5):
        with pytest.raises(GRPCError) as caught:
            await call
    assert caught.value.status is Status.UNAVAILABLE
    assert "shutting down" in (caught.value.message or "")
    await conn.wait_closed()
    assert conn.state is brpc.ConnState.CLOSED


async def test_vanished_client_is_dropped_after_the_dead_peer_timeout(
    make_server: Any, connect: Any
) -> None:
    """The client's packets stop (as if its process died): the server's call fails
    with UNAVAILABLE once the dead-peer timeout passes, and the client is forgotten."""
    probe = Probe()
    network = NetworkConditions()
    server = await make_server(dead_peer_timeout=1.0, keepalive_interval=0.25)
    await connect(
        server,
        services=[probe],
        network_conditions=network,
        dead_peer_timeout=1.0,
        keepalive_interval=0.25,
        reconnect=False,
    )
    (info,) = server.clients_snapshot()
    call = asyncio.create_task(EchoStub(info.channel).Unary(EchoRequest(text="block")))
    async with asyncio.timeout(5):
        await probe.started.wait()
    network.drop = 1.0
    async with asyncio.timeout(10):
        with pytest.raises(GRPCError) as caught:
            await call
    assert caught.value.status is Status.UNAVAILABLE
    assert "timed out" in (caught.value.message or "")
    assert not server.clients_snapshot()


async def test_idle_connection_outlives_the_idle_timeout(make_server: Any, connect: Any) -> None:
    """With keepalive, a connection idle for several idle timeouts stays up."""
    server = await make_server([Probe()], dead_peer_timeout=0.6, keepalive_interval=0.15)
    conn = await connect(server, dead_peer_timeout=0.6, keepalive_interval=0.15)
    session = conn._link.session
    # Each acknowledged ping proves the peer is alive a keepalive interval later:
    # 16 of them span four idle timeouts.
    await wait_for(lambda: session.pings_acknowledged >= 16, timeout=20)
    assert conn.state is brpc.ConnState.READY
    assert (await EchoStub(conn).Unary(EchoRequest(text="still here"))).text == "still here"
    assert len(server.clients_snapshot()) == 1


async def test_without_keepalive_an_idle_connection_dies(make_server: Any, connect: Any) -> None:
    """The control for the test above: keepalive off, the idle timeout closes it."""
    server = await make_server([Probe()], dead_peer_timeout=0.6, keepalive_interval=None)
    conn = await connect(server, dead_peer_timeout=0.6, keepalive_interval=None, reconnect=False)
    async with asyncio.timeout(10):
        await conn.wait_closed()
    assert conn.state is brpc.ConnState.CLOSED
    assert "timed out" in (conn.close_reason or "")

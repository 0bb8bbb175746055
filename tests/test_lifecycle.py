"""Reconnecting, waiting for readiness, and graceful drains in both directions."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from conftest import wait_for
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from layers import on_both_call_layers
from probes import Probe

import brpc
from brpc.testing.v1.echo_grpc import EchoStub
from brpc.testing.v1.echo_pb2 import EchoReply, EchoRequest

pytestmark = on_both_call_layers

FAST = brpc.ReconnectPolicy(initial_delay=0.02, max_delay=0.1)


def test_backoff_is_full_jitter_under_a_growing_ceiling() -> None:
    policy = brpc.ReconnectPolicy(initial_delay=0.5, max_delay=8, multiplier=2)
    rng = random.Random(7)
    for attempt, ceiling in [(0, 0.5), (1, 1.0), (3, 4.0), (4, 8.0), (30, 8.0)]:
        delays = [policy.delay(attempt, rng) for _ in range(2000)]
        assert min(delays) >= 0 and max(delays) <= ceiling
        assert max(delays) > 0.9 * ceiling and min(delays) < 0.1 * ceiling  # spread over all of it
    with pytest.raises(ValueError):
        brpc.ReconnectPolicy(initial_delay=0)


async def test_reconnects_when_the_server_comes_back(make_server: Any, connect: Any) -> None:
    """The server goes away and comes back on the same port: the client reconnects
    with a fresh hello and serves its services again."""
    first = await make_server([Probe()], client_stub=EchoStub)
    port = first.port
    client_probe = Probe()
    conn = await connect(first, services=[client_probe], name="phoenix", reconnect=FAST)
    old_id = conn.connection_id
    first.close()
    await first.wait_closed()
    await wait_for(lambda: conn.state is brpc.ConnState.RECONNECTING)
    with pytest.raises(GRPCError) as caught:  # fail fast while disconnected
        await EchoStub(conn).Unary(EchoRequest(text="now?"))
    assert caught.value.status is Status.UNAVAILABLE
    assert "not connected" in (caught.value.message or "")

    second = await make_server([Probe()], client_stub=EchoStub, port=port)
    await conn.wait_ready(timeout=10)
    assert conn.connection_id not in ("", old_id)
    assert conn.connections_made == 2
    assert (await EchoStub(conn).Unary(EchoRequest(text="back"))).text == "back"
    (info,) = second.clients_snapshot()
    assert info.name == "phoenix"
    assert (await info.stub.Unary(EchoRequest(text="served again"))).text == "served again"


async def test_wait_for_ready_waits_within_the_deadline(make_server: Any, connect: Any) -> None:
    first = await make_server([Probe()])
    port = first.port
    conn = await connect(first, reconnect=FAST, wait_for_ready=True)
    first.close()
    await first.wait_closed()
    await wait_for(lambda: conn.state is brpc.ConnState.RECONNECTING)
    with pytest.raises(brpc.DeadlineExceededError):
        await EchoStub(conn).Unary(EchoRequest(text="too soon"), timeout=0.2)
    waiting = asyncio.create_task(EchoStub(conn).Unary(EchoRequest(text="later"), timeout=20))
    await make_server([Probe()], port=port)
    reply = await waiting
    assert reply.text == "later"


async def test_wait_for_ready_without_deadline_is_bounded(make_server: Any, connect: Any) -> None:
    first = await make_server([Probe()])
    conn = await connect(first, reconnect=FAST, wait_for_ready=True, timeout=0.3)
    first.close()
    await first.wait_closed()
    await wait_for(lambda: conn.state is brpc.ConnState.RECONNECTING)
    with pytest.raises(GRPCError) as caught:
        await EchoStub(conn).Unary(EchoRequest(text="never"))
    assert caught.value.status is Status.UNAVAILABLE
    assert "within 0.3 s" in (caught.value.message or "")


async def test_without_reconnect_a_loss_is_final(make_server: Any, connect: Any) -> None:
    server = await make_server([Probe()])
    conn = await connect(server, reconnect=False)
    server.close()
    await conn.wait_closed()
    assert conn.state is brpc.ConnState.CLOSED
    assert "reconnect is off" in (conn.close_reason or "")
    with pytest.raises(GRPCError) as caught:
        await EchoStub(conn).Unary(EchoRequest())
    assert caught.value.status is Status.UNAVAILABLE


async def test_reconnect_gives_up_after_max_attempts(make_server: Any, connect: Any) -> None:
    server = await make_server([Probe()])
    policy = brpc.ReconnectPolicy(initial_delay=0.01, max_delay=0.02, max_attempts=3)
    conn = await connect(server, reconnect=policy, timeout=1)
    server.close()
    async with asyncio.timeout(20):
        await conn.wait_closed()
    assert "gave up after 3 attempts" in (conn.close_reason or "")


async def test_server_drain_lets_calls_in_flight_finish_both_ways(
    make_server: Any, connect: Any
) -> None:
    gate = asyncio.Event()
    entered = {"server": asyncio.Event(), "client": asyncio.Event()}

    class Gated(Probe):
        def __init__(self, side: str) -> None:
            super().__init__()
            self.side = side

        async def Unary(self, stream: Any) -> None:
            request = await stream.recv_message()
            if request.text == "gated":
                entered[self.side].set()
                await gate.wait()
            await stream.send_message(EchoReply(text=f"{self.side}:{request.text}"))

    server = await make_server([Gated("server")], client_stub=EchoStub)
    port = server.port
    conn = await connect(server, services=[Gated("client")], reconnect=FAST)
    (info,) = server.clients_snapshot()
    to_server = asyncio.create_task(EchoStub(conn).Unary(EchoRequest(text="gated")))
    to_client = asyncio.create_task(info.stub.Unary(EchoRequest(text="gated")))
    await entered["server"].wait()
    await entered["client"].wait()

    server.close(grace=30)
    # the client hears the go-away and starts reconnecting; new calls are refused
    await wait_for(lambda: conn.state is brpc.ConnState.RECONNECTING)
    with pytest.raises(GRPCError) as new_to_client:
        await info.stub.Unary(EchoRequest(text="new"))
    assert new_to_client.value.status is Status.UNAVAILABLE
    with pytest.raises(GRPCError) as new_to_server:
        await EchoStub(conn).Unary(EchoRequest(text="new"))
    assert new_to_server.value.status is Status.UNAVAILABLE
    assert not to_server.done() and not to_client.done()

    gate.set()
    assert (await to_server).text == "server:gated"
    assert (await to_client).text == "client:gated"
    async with asyncio.timeout(10):
        await server.wait_closed()
    # a new server on the same port: the client, told to go away, just reconnects
    await make_server([Gated("server")], port=port)
    await conn.wait_ready(timeout=10)
    assert (await EchoStub(conn).Unary(EchoRequest(text="again"))).text == "server:again"


async def test_server_drain_ends_at_the_grace_period(make_server: Any, connect: Any) -> None:
    probe = Probe()
    server = await make_server([probe])
    conn = await connect(server, reconnect=False)
    call = asyncio.create_task(EchoStub(conn).Unary(EchoRequest(text="block")))
    await probe.started.wait()
    server.close(grace=0.3)
    async with asyncio.timeout(10):
        await server.wait_closed()
    with pytest.raises(GRPCError) as caught:
        await call
    assert caught.value.status is Status.UNAVAILABLE
    assert "shutting down" in (caught.value.message or "")


async def test_client_drain_lets_calls_finish_both_ways(make_server: Any, connect: Any) -> None:
    gate = asyncio.Event()
    server_probe, client_probe = Probe(), Probe()

    class GatedProbe(Probe):
        async def Unary(self, stream: Any) -> None:
            request = await stream.recv_message()
            self.started.set()
            await gate.wait()
            await stream.send_message(EchoReply(text=request.text))

    server_side, client_side = GatedProbe(), GatedProbe()
    del server_probe, client_probe
    server = await make_server([server_side], client_stub=EchoStub)
    conn = await connect(server, services=[client_side])
    (info,) = server.clients_snapshot()
    to_server = asyncio.create_task(EchoStub(conn).Unary(EchoRequest(text="up")))
    to_client = asyncio.create_task(info.stub.Unary(EchoRequest(text="down")))
    await server_side.started.wait()
    await client_side.started.wait()

    closing = conn.close(grace=30)  # already running: close() returns its task
    await wait_for(lambda: info._link.peer_going_away)  # the server heard the go-away
    with pytest.raises(GRPCError) as refused:
        await info.stub.Unary(EchoRequest(text="new"))
    assert refused.value.status is Status.UNAVAILABLE
    assert not closing.done()
    gate.set()
    assert (await to_server).text == "up"
    assert (await to_client).text == "down"
    async with asyncio.timeout(10):
        await closing
    assert conn.state is brpc.ConnState.CLOSED
    await wait_for(lambda: not server.clients_snapshot())

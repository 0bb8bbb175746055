"""The relay between brpc clients, its authorization, and backpressure across the two legs."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

import brpc
from brpc.certs import DevCertificates
from brpc.testing.v1.echo_grpc import EchoStub
from brpc.testing.v1.echo_pb2 import EchoReply, EchoRequest
from tests.conftest import DialFactory, ServerFactory, wait_for
from tests.relay_kit import Far, client_ssl

TARGET = {"brpc-target": "far"}


async def test_brpc_client_calls_another_client_when_allowed(
    make_server: ServerFactory, connect: DialFactory
) -> None:
    seen: list[tuple[str, str, list[str]]] = []

    def authorize(caller: Any, method: str, targets: Any) -> bool:
        seen.append((caller.name, method, [t.name for t in targets]))
        return bool(caller.name == "a")

    server = await make_server(relay=brpc.Relay(authorize=authorize))
    far = Far()
    await connect(server, services=[far], name="far", labels={"role": "worker"}, health=True)
    conn_a = await connect(server, name="a")
    conn_b = await connect(server, name="b")
    await wait_for(lambda: len(server.clients) == 3)

    reply = await EchoStub(conn_a).Unary(EchoRequest(text="hi"), metadata=TARGET)
    assert reply == EchoReply(text="far:hi")
    assert seen == [("a", "/brpc.testing.v1.Echo/Unary", ["far"])]
    # Selection by labels and service works the same way.
    by_select = {"brpc-select": "role=worker,service=brpc.testing.v1.Echo"}
    reply = await EchoStub(conn_a).Unary(EchoRequest(text="sel"), metadata=by_select)
    assert reply.text == "far:sel"
    far_id = next(c for c in server.clients if c.name == "far").connection_id
    reply = await EchoStub(conn_a).Unary(
        EchoRequest(text="id"), metadata={"brpc-target-id": far_id}
    )
    assert reply.text == "far:id"

    # dial(health=True): the client serves grpc.health.v1.Health, reachable through the relay.
    health = await HealthStub(conn_a).Check(HealthCheckRequest(), metadata=TARGET)
    assert health.status == HealthCheckResponse.SERVING

    with pytest.raises(GRPCError) as caught:
        await EchoStub(conn_b).Unary(EchoRequest(text="hi"), metadata=TARGET)
    assert caught.value.status is Status.PERMISSION_DENIED


async def test_brpc_clients_may_not_relay_by_default(
    make_server: ServerFactory, connect: DialFactory
) -> None:
    server = await make_server(relay=brpc.Relay())
    await connect(server, services=[Far()], name="far")
    conn = await connect(server, name="a")
    await wait_for(lambda: len(server.clients) == 2)
    with pytest.raises(GRPCError) as caught:
        await EchoStub(conn).Unary(EchoRequest(text="hi"), metadata=TARGET)
    assert caught.value.status is Status.PERMISSION_DENIED
    assert "Relay(authorize=...)" in str(caught.value.message)


async def test_servers_without_relay_do_not_relay(
    make_server: ServerFactory, connect: DialFactory
) -> None:
    server = await make_server()
    await connect(server, services=[Far()], name="far")
    conn = await connect(server, name="a")
    with pytest.raises(GRPCError) as caught:
        await EchoStub(conn).Unary(EchoRequest(text="hi"), metadata=TARGET)
    assert caught.value.status is Status.UNIMPLEMENTED


async def test_slow_target_holds_back_the_callers_sender(
    make_server: ServerFactory, connect: DialFactory, certs: DevCertificates
) -> None:
    server = await make_server(relay=brpc.Relay())
    port = await server.listen_tcp("127.0.0.1", 0)
    far = Far()
    await connect(server, services=[far], name="far")
    await wait_for(lambda: len(server.clients) == 1)
    target = next(iter(server.clients))
    size, count = 64 << 10, 200  # 12.5 MiB offered
    sent = 0
    channel = Channel("127.0.0.1", port, ssl=client_ssl(certs))
    try:
        async with EchoStub(channel).ClientStream.open(metadata={**TARGET, "x-stall": "1"}) as call:

            async def send() -> None:
                nonlocal sent
                for _ in range(count):
                    await call.send_message(EchoRequest(payload=b"x" * size))
                    sent += 1
                await call.end()

            sender = asyncio.create_task(send())
            await asyncio.wait_for(far.hanging.wait(), 5)
            done, _ = await asyncio.wait({sender}, timeout=1.0)
            assert not done, "the caller sent everything although the target read nothing"
            to_target = sum(s["bytes_sent"] for s in target.transport_stats())
            # Bounded by the flow-control windows of the two legs (4 MiB each by
            # default), not by what was offered.
            assert to_target < 6 << 20
            assert sent * size < 10 << 20
            # Cancelling the caller's call cancels the target's.
            sender.cancel()
            await call.cancel()
        await asyncio.wait_for(far.cancelled.wait(), 5)
    finally:
        channel.close()


async def test_a_caller_message_over_the_limit_ends_both_legs(
    make_server: ServerFactory, connect: DialFactory
) -> None:
    server = await make_server(relay=brpc.Relay(), max_message_size=4096)
    port = await server.listen_tcp("127.0.0.1", 0, plaintext=True)
    far = Far()
    await connect(server, services=[far], name="far")
    await wait_for(lambda: len(server.clients) == 1)
    channel = Channel("127.0.0.1", port)
    try:
        with pytest.raises(GRPCError) as caught:
            async with EchoStub(channel).Bidi.open(metadata=TARGET) as call:
                await call.send_message(EchoRequest(text="small"))
                assert (await call.recv_message()) is not None
                await call.send_message(EchoRequest(payload=b"x" * 8192))
                await call.recv_message()
                await call.recv_trailing_metadata()
        assert caught.value.status is Status.RESOURCE_EXHAUSTED
        assert "max_message_size" in str(caught.value.message)
    finally:
        channel.close()

"""Who is calling comes from the connection a call arrived on, never from headers."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from layers import on_both_call_layers

import brpc
from examples.greeter import greeter_grpc, greeter_pb2

pytestmark = on_both_call_layers


class Namer(greeter_grpc.NamerBase):
    def __init__(self, name: str) -> None:
        self.name = name
        self.calls = 0

    async def Name(self, stream: Any) -> None:
        await stream.recv_message()
        self.calls += 1
        await stream.send_message(greeter_pb2.NameReply(name=self.name))


class Greeter(greeter_grpc.GreeterBase):
    """Greets the caller by the name its own Namer returns."""

    def __init__(self) -> None:
        self.server: brpc.Server[greeter_grpc.NamerStub] | None = None
        self.seen: list[tuple[str, str]] = []  # (connection id from context, metadata claim)

    async def Greet(self, stream: Any) -> None:
        request = await stream.recv_message()
        assert self.server is not None
        namer = self.server.client_from_context(stream)
        info = brpc.current_connection()
        assert isinstance(info, brpc.ClientInfo)
        self.seen.append((info.connection_id, stream.metadata.get("x-connection-id", "")))
        name = (await namer.Name(greeter_pb2.NameRequest())).name
        await stream.send_message(greeter_pb2.GreetReply(message=f"{request.greeting} {name}"))


async def _greeter_server(make_server: Any) -> tuple[brpc.Server[Any], Greeter]:
    greeter = Greeter()
    server = await make_server([greeter], client_stub=greeter_grpc.NamerStub)
    greeter.server = server
    return server, greeter


async def test_each_handler_reaches_its_own_caller(make_server: Any, connect: Any) -> None:
    server, _ = await _greeter_server(make_server)
    alice_namer, bob_namer = Namer("alice"), Namer("bob")
    alice = await connect(server, services=[alice_namer], name="alice")
    bob = await connect(server, services=[bob_namer], name="bob")
    assert alice.connection_id != bob.connection_id

    async def greet(conn: brpc.ClientConn) -> str:
        reply = await greeter_grpc.GreeterStub(conn).Greet(greeter_pb2.GreetRequest(greeting="Hi"))
        return reply.message

    results = await asyncio.gather(*(greet(c) for c in [alice, bob] * 25))
    assert results == ["Hi alice", "Hi bob"] * 25
    assert alice_namer.calls == bob_namer.calls == 25


async def test_metadata_naming_another_connection_is_ignored(
    make_server: Any, connect: Any
) -> None:
    """Bob claims to be Alice's connection in metadata; the server still calls Bob."""
    server, greeter = await _greeter_server(make_server)
    alice_namer, bob_namer = Namer("alice"), Namer("bob")
    alice = await connect(server, services=[alice_namer], name="alice")
    bob = await connect(server, services=[bob_namer], name="bob")
    stub = greeter_grpc.GreeterStub(bob)
    for header in ("x-connection-id", "brpc-connection-id", "x-brpc-connection-id"):
        reply = await stub.Greet(
            greeter_pb2.GreetRequest(greeting="Hi"), metadata={header: alice.connection_id}
        )
        assert reply.message == "Hi bob"
    assert alice_namer.calls == 0
    assert greeter.seen[0] == (bob.connection_id, alice.connection_id)


async def test_client_from_context_outside_a_call(make_server: Any) -> None:
    server, _ = await _greeter_server(make_server)
    with pytest.raises(TypeError):
        server.client_from_context(object())  # type: ignore[arg-type]
    with pytest.raises(GRPCError) as caught:
        brpc.current_connection()
    assert caught.value.status is Status.FAILED_PRECONDITION


async def test_client_from_context_after_the_caller_left(make_server: Any, connect: Any) -> None:
    """A handler that outlives its caller gets UNAVAILABLE, not another client's stub."""
    outcome: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
    release = asyncio.Event()
    entered = asyncio.Event()

    class Lingering(greeter_grpc.GreeterBase):
        async def Greet(self, stream: Any) -> None:
            await stream.recv_message()
            entered.set()
            try:
                await release.wait()
            finally:
                # runs even though the caller is gone and the handler was cancelled
                try:
                    server.client_from_context(stream)
                except GRPCError as exc:
                    outcome.set_result(exc)
                else:
                    outcome.set_result(None)

    server = await make_server([Lingering()], client_stub=greeter_grpc.NamerStub)
    conn = await connect(server, services=[Namer("gone")])
    call = asyncio.create_task(greeter_grpc.GreeterStub(conn).Greet(greeter_pb2.GreetRequest()))
    async with asyncio.timeout(5):
        await entered.wait()
    await conn.close()
    async with asyncio.timeout(5):
        error = await outcome
    assert isinstance(error, GRPCError) and error.status is Status.UNAVAILABLE
    assert "disconnected" in (error.message or "")
    with pytest.raises(GRPCError):
        await call


async def test_client_side_handlers_see_their_client_conn(make_server: Any, connect: Any) -> None:
    seen: list[Any] = []

    class RecordingNamer(greeter_grpc.NamerBase):
        async def Name(self, stream: Any) -> None:
            await stream.recv_message()
            seen.append(brpc.current_connection())
            await stream.send_message(greeter_pb2.NameReply(name="me"))

    server, _ = await _greeter_server(make_server)
    conn = await connect(server, services=[RecordingNamer()])
    await greeter_grpc.GreeterStub(conn).Greet(greeter_pb2.GreetRequest(greeting="Yo"))
    assert seen == [conn]


async def test_connection_ids_are_random_and_long(make_server: Any, connect: Any) -> None:
    server, _ = await _greeter_server(make_server)
    conns = [await connect(server) for _ in range(5)]
    ids = {c.connection_id for c in conns}
    assert len(ids) == 5
    assert all(len(bytes.fromhex(i)) * 8 >= 128 for i in ids)
    assert {info.connection_id for info in server.clients_snapshot()} == ids

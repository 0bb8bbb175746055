"""gRPC semantics over brpc, each test run in both directions.

``client_to_server``: the client calls a service the server serves.
``server_to_client``: the server calls a service the client serves, over the
same connection, through the client's :class:`brpc.ClientInfo`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import pytest
from google.rpc import error_details_pb2
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from layers import on_both_call_layers
from probes import Probe

import brpc
from brpc.testing.v1.echo_grpc import EchoStub
from brpc.testing.v1.echo_pb2 import EchoRequest

pytestmark = on_both_call_layers

MIB = 1 << 20


@dataclass
class Pair:
    direction: str
    caller: Any  # the channel the test calls through
    callee: Probe  # the service answering
    other: Probe  # the service on the caller's side (for nested calls)
    server: brpc.Server[Any]
    conn: brpc.ClientConn

    @property
    def stub(self) -> EchoStub:
        return EchoStub(self.caller)


DIRECTIONS = ["client_to_server", "server_to_client"]


@pytest.fixture(params=DIRECTIONS)
async def make_pair(request: pytest.FixtureRequest, make_server: Any, connect: Any) -> Any:
    direction = request.param

    async def factory(*, barrier_size: int = 0, **options: Any) -> Pair:
        server_probe, client_probe = Probe(barrier_size), Probe(barrier_size)
        server_options = {k[7:]: v for k, v in options.items() if k.startswith("server_")}
        client_options = {k[7:]: v for k, v in options.items() if k.startswith("client_")}
        server = await make_server([server_probe], client_stub=EchoStub, **server_options)
        conn = await connect(server, services=[client_probe], **client_options)
        (info,) = server.clients_snapshot()
        if direction == "client_to_server":
            return Pair(direction, conn, server_probe, client_probe, server, conn)
        return Pair(direction, info.channel, client_probe, server_probe, server, conn)

    factory.direction = direction  # type: ignore[attr-defined]
    return factory


async def test_unary(make_pair: Any) -> None:
    pair = await make_pair()
    reply = await pair.stub.Unary(EchoRequest(text="hi", payload=b"\x01\x02"))
    assert (reply.text, reply.payload) == ("hi", b"\x01\x02")


async def test_server_streaming(make_pair: Any) -> None:
    pair = await make_pair()
    replies = await pair.stub.ServerStream(EchoRequest(text="s", count=7))
    assert [r.index for r in replies] == list(range(7))


async def test_client_streaming(make_pair: Any) -> None:
    pair = await make_pair()
    reply = await pair.stub.ClientStream([EchoRequest(text=str(i)) for i in range(5)])
    assert (reply.text, reply.received) == ("0,1,2,3,4", 5)


async def test_bidi_streaming_interleaved(make_pair: Any) -> None:
    pair = await make_pair()
    async with pair.stub.Bidi.open() as stream:
        for i, word in enumerate(["alpha", "beta", "gamma"]):
            await stream.send_message(EchoRequest(text=word))
            reply = await stream.recv_message()
            assert reply is not None
            assert (reply.text, reply.index) == (word.upper(), i)
        await stream.end()
        assert await stream.recv_message() is None


async def test_metadata_both_ways(make_pair: Any) -> None:
    pair = await make_pair()
    async with pair.stub.Unary.open(
        metadata={"x-request-id": "r-17", "x-token-bin": b"\x00\x01"}
    ) as stream:
        await stream.send_message(EchoRequest(text="metadata"), end=True)
        reply = await stream.recv_message()
        assert reply is not None and reply.text == "with metadata"
        await stream.recv_trailing_metadata()
    assert stream.initial_metadata is not None and stream.trailing_metadata is not None
    assert stream.initial_metadata["x-initial"] == "hello"
    assert stream.trailing_metadata["x-trailing"] == "bye"
    assert stream.trailing_metadata["x-raw-bin"] == b"\x00\xff"
    seen = pair.callee.seen_metadata[-1]
    assert seen["x-request-id"] == "r-17"
    assert seen["x-token-bin"] == b"\x00\x01"


async def test_status_message_and_details(make_pair: Any) -> None:
    pair = await make_pair()
    with pytest.raises(GRPCError) as caught:
        await pair.stub.Unary(EchoRequest(text="fail"))
    assert caught.value.status is Status.NOT_FOUND
    assert caught.value.message == "no such thing"
    (detail,) = caught.value.details
    assert isinstance(detail, error_details_pb2.ErrorInfo)
    assert (detail.reason, detail.domain) == ("MISSING", "brpc.test")


async def test_status_after_streamed_messages(make_pair: Any) -> None:
    pair = await make_pair()
    received = []
    with pytest.raises(GRPCError) as caught:
        async with pair.stub.ServerStream.open() as stream:
            await stream.send_message(EchoRequest(text="fail-after", count=3), end=True)
            async for reply in stream:
                received.append(reply.index)
    assert caught.value.status is Status.ABORTED
    assert received == [0, 1, 2]


async def test_unknown_method_is_unimplemented(make_pair: Any) -> None:
    pair = await make_pair()
    from grpclib.const import Cardinality

    async with pair.caller.request(
        "/no.such.Service/Method", Cardinality.UNARY_UNARY, EchoRequest, EchoRequest
    ) as stream:
        with pytest.raises(GRPCError) as caught:
            await stream.send_message(EchoRequest(), end=True)
            await stream.recv_message()
    assert caught.value.status is Status.UNIMPLEMENTED


async def test_deadline_propagates_and_expires(make_pair: Any) -> None:
    pair = await make_pair()
    with pytest.raises(brpc.DeadlineExceededError) as caught:
        await pair.stub.Unary(EchoRequest(text="block"), timeout=0.5)
    assert caught.value.status is Status.DEADLINE_EXCEEDED
    assert isinstance(caught.value, TimeoutError)  # what plain grpclib code catches
    remaining = pair.callee.seen_deadlines[-1]
    assert remaining is not None and 0 < remaining <= 0.5
    async with asyncio.timeout(5):
        await pair.callee.cancelled.wait()


@pytest.mark.parametrize("how", ["nested-block", "nested-auto"])
async def test_nested_call_obeys_the_handlers_deadline(make_pair: Any, how: str) -> None:
    """The handler calls back the caller's side ("nested-block" passes its remaining
    deadline explicitly, "nested-auto" relies on brpc's deadline propagation); the
    nested call must end with the outer deadline, not hang."""
    pair = await make_pair()
    with pytest.raises(GRPCError) as caught:
        await pair.stub.Unary(EchoRequest(text=how), timeout=0.8)
    assert caught.value.status is Status.DEADLINE_EXCEEDED
    async with asyncio.timeout(5):
        await pair.other.cancelled.wait()  # the nested callee was cancelled
    nested_remaining = pair.other.seen_deadlines[-1]
    assert nested_remaining is not None and nested_remaining <= 0.8
    (error,) = pair.callee.nested_errors
    assert isinstance(error, GRPCError | asyncio.CancelledError)


async def test_cancellation_reaches_the_handler(make_pair: Any) -> None:
    pair = await make_pair()
    call = asyncio.create_task(pair.stub.Unary(EchoRequest(text="block")))
    async with asyncio.timeout(5):
        await pair.callee.started.wait()
    call.cancel()
    async with asyncio.timeout(5):
        await pair.callee.cancelled.wait()
    with pytest.raises(asyncio.CancelledError):
        await call


async def test_cancelling_a_bidi_stream_reaches_the_handler(make_pair: Any) -> None:
    pair = await make_pair()

    async def chat() -> None:
        async with pair.stub.Bidi.open() as stream:
            await stream.send_message(EchoRequest(text="ok"))
            await stream.recv_message()
            await stream.send_message(EchoRequest(text="block"))
            await stream.recv_message()

    call = asyncio.create_task(chat())
    async with asyncio.timeout(5):
        await pair.callee.started.wait()
    call.cancel()
    async with asyncio.timeout(5):
        await pair.callee.cancelled.wait()


async def test_four_mib_messages(make_pair: Any) -> None:
    pair = await make_pair()
    payload = bytes(range(256)) * (4 * MIB // 256 - 1) + b"x" * 251  # message is 4 MiB
    request = EchoRequest(payload=payload)
    assert request.ByteSize() == 4 * MIB
    reply = await pair.stub.Unary(request)
    assert reply.payload == payload


async def test_sending_above_the_limit_is_resource_exhausted(make_pair: Any) -> None:
    pair = await make_pair()
    with pytest.raises(GRPCError) as caught:
        await pair.stub.Unary(EchoRequest(payload=b"x" * (4 * MIB)))
    assert caught.value.status is Status.RESOURCE_EXHAUSTED
    assert "max_message_size" in (caught.value.message or "")
    # the connection is fine afterwards
    assert (await pair.stub.Unary(EchoRequest(text="after"))).text == "after"


async def test_receiving_above_the_limit_is_resource_exhausted(make_pair: Any) -> None:
    """The callee's limit is lower than the caller's: the callee refuses the message
    by its length prefix and the caller gets RESOURCE_EXHAUSTED."""
    small, large = 64 << 10, 8 * MIB
    if make_pair.direction == "client_to_server":
        pair = await make_pair(server_max_message_size=small, client_max_message_size=large)
    else:
        pair = await make_pair(server_max_message_size=large, client_max_message_size=small)
    with pytest.raises(GRPCError) as caught:
        await pair.stub.Unary(EchoRequest(payload=b"x" * (small + 100)))
    assert caught.value.status is Status.RESOURCE_EXHAUSTED
    assert "exceeds the limit" in (caught.value.message or "")
    assert (await pair.stub.Unary(EchoRequest(text="after"))).text == "after"


async def test_two_hundred_concurrent_calls(make_pair: Any) -> None:
    """Every call waits until all 200 are in flight, so none can finish unless the
    connection carries 200 calls at once."""
    pair = await make_pair(barrier_size=200)
    replies = await asyncio.gather(
        *(pair.stub.Unary(EchoRequest(text="barrier")) for _ in range(200))
    )
    assert len(replies) == 200 and pair.callee.waiting == 200


async def test_nested_calls_do_not_deadlock(make_pair: Any) -> None:
    """caller -> callee -> caller's side -> callee ... six levels deep, many at once."""
    pair = await make_pair()
    replies = await asyncio.gather(
        *(pair.stub.Unary(EchoRequest(text="relay:6"), timeout=20) for _ in range(20))
    )
    assert {(r.text, r.index) for r in replies} == {("bottom", 6)}

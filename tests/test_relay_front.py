"""The relay through the standard gRPC/TCP front: grpclib and grpcio callers reach a brpc client."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import pytest
from grpclib.client import Channel
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

import brpc
from brpc.certs import DevCertificates
from brpc.testing.v1.echo_grpc import EchoStub
from brpc.testing.v1.echo_pb2 import EchoReply, EchoRequest
from tests.conftest import DialFactory, ServerFactory, wait_for
from tests.relay_kit import UNKNOWN_DETAILS, Far, client_ssl

ECHO = "/brpc.testing.v1.Echo"
TARGET = {"brpc-target": "far", "x-req": "v"}


@pytest.fixture
async def front(
    make_server: ServerFactory, connect: DialFactory, certs: DevCertificates
) -> tuple[brpc.Server[Any], Far, int]:
    server = await make_server(relay=brpc.Relay(max_timeout=5.0), health=True)
    port = await server.listen_tcp("127.0.0.1", 0)
    far = Far()
    await connect(server, services=[far], name="far")
    await wait_for(lambda: len(server.clients) == 1)
    return server, far, port


@pytest.fixture
async def grpclib_channel(front: Any, certs: DevCertificates) -> Any:
    channel = Channel("127.0.0.1", front[2], ssl=client_ssl(certs))
    yield channel
    channel.close()


async def test_listen_tcp_reports_port_and_serves_own_services(
    front: Any, grpclib_channel: Channel
) -> None:
    server, _, port = front
    assert server.tcp_port == port
    reply = await HealthStub(grpclib_channel).Check(HealthCheckRequest())
    assert reply.status == HealthCheckResponse.SERVING


async def test_grpclib_four_cardinalities(front: Any, grpclib_channel: Channel) -> None:
    _, far, _ = front
    stub = EchoStub(grpclib_channel)

    async with stub.Unary.open(metadata=TARGET, timeout=3) as call:
        await call.send_message(EchoRequest(text="hi", payload=b"\x00\xff"), end=True)
        await call.recv_initial_metadata()
        reply = await call.recv_message()
        await call.recv_trailing_metadata()
    assert call.initial_metadata is not None and call.initial_metadata["x-init"] == "far-Unary"
    assert reply == EchoReply(text="far:hi", payload=b"\x00\xff")
    assert call.trailing_metadata is not None and call.trailing_metadata["x-trail"] == "ok"
    seen = far.seen[-1]
    assert seen.metadata["x-req"] == "v" and seen.metadata["brpc-hops"] == "1"
    assert "brpc-target" not in seen.metadata
    assert seen.deadline is not None and 0 < seen.deadline.time_remaining() <= 3

    async with stub.ServerStream.open(metadata=TARGET) as call:
        await call.send_message(EchoRequest(text="s", count=3), end=True)
        replies = [reply async for reply in call]
    assert [r.index for r in replies] == [0, 1, 2]
    assert call.trailing_metadata is not None and call.trailing_metadata["x-trail"] == "ok"
    # No deadline from the caller: the relay's max_timeout is the target's deadline.
    deadline = far.seen[-1].deadline
    assert deadline is not None and 4 < deadline.time_remaining() <= 5

    async with stub.ClientStream.open(metadata=TARGET) as call:
        for text in ("a", "b", "c"):
            await call.send_message(EchoRequest(text=text))
        await call.end()
        reply = await call.recv_message()
    assert reply is not None and (reply.text, reply.received) == ("a+b+c", 3)

    async with stub.Bidi.open(metadata=TARGET) as call:
        for index, text in enumerate(("x", "y")):
            await call.send_message(EchoRequest(text=text))
            reply = await call.recv_message()
            assert reply is not None and (reply.text, reply.received) == (f"far:{text}", index + 1)
        await call.end()
        assert await call.recv_message() is None
    assert [s.method for s in far.seen] == ["Unary", "ServerStream", "ClientStream", "Bidi"]


async def test_grpclib_failure_carries_status_details_and_trailers(
    front: Any, grpclib_channel: Channel
) -> None:
    stub = EchoStub(grpclib_channel)
    async with stub.Unary.open(metadata=TARGET) as call:
        await call.send_message(EchoRequest(text="fail"), end=True)
        assert await call.recv_message() is None
        with pytest.raises(GRPCError) as caught:
            await call.recv_trailing_metadata()
    assert caught.value.status is Status.FAILED_PRECONDITION
    assert caught.value.message == "no good"
    # grpclib decodes details it does not know to a placeholder naming the type.
    assert [type(d).__name__ for d in caught.value.details] == ["_Unknown"]
    assert call.initial_metadata is not None and call.initial_metadata["x-init"] == "far-Unary"
    assert call.trailing_metadata is not None and call.trailing_metadata["x-trail"] == "failed"


async def test_grpclib_deadline_and_cancellation_reach_the_far_end(
    front: Any, grpclib_channel: Channel
) -> None:
    _, far, _ = front
    stub = EchoStub(grpclib_channel)
    # A plain grpclib client enforces its deadline itself (asyncio.TimeoutError).
    with pytest.raises(TimeoutError):
        await stub.Unary(EchoRequest(text="hang"), metadata=TARGET, timeout=0.3)
    await asyncio.wait_for(far.cancelled.wait(), 5)
    deadline = far.seen[-1].deadline
    assert deadline is not None and deadline.time_remaining() <= 0.3

    far.cancelled.clear()
    far.hanging.clear()
    async with stub.Bidi.open(metadata=TARGET) as call:
        await call.send_message(EchoRequest(text="hang"))
        await asyncio.wait_for(far.hanging.wait(), 5)
        await call.cancel()
    await asyncio.wait_for(far.cancelled.wait(), 5)


async def test_no_target_unknown_method_and_loops_are_refused(
    front: Any, grpclib_channel: Channel
) -> None:
    stub = EchoStub(grpclib_channel)
    with pytest.raises(GRPCError) as caught:
        await stub.Unary(EchoRequest(), metadata={"brpc-target": "nobody"})
    assert caught.value.status is Status.UNAVAILABLE
    assert "nobody" in str(caught.value.message) and f"{ECHO}/Unary" in str(caught.value.message)

    with pytest.raises(GRPCError) as caught:
        await stub.Unary(EchoRequest())
    assert caught.value.status is Status.UNIMPLEMENTED

    # A method the server serves itself is never relayed.
    reply = await HealthStub(grpclib_channel).Check(HealthCheckRequest(), metadata=TARGET)
    assert reply.status == HealthCheckResponse.SERVING

    async with grpclib_channel.request(
        "/other.v1.Thing/Do", Cardinality.UNARY_UNARY, EchoRequest, EchoReply, metadata=TARGET
    ) as call:
        await call.send_message(EchoRequest(), end=True)
        with pytest.raises(GRPCError) as caught:
            await call.recv_message()
    assert caught.value.status is Status.UNIMPLEMENTED
    assert "'far'" in str(caught.value.message) and "/other.v1.Thing/Do" in str(
        caught.value.message
    )

    with pytest.raises(GRPCError) as caught:
        await stub.Unary(EchoRequest(), metadata={**TARGET, "brpc-hops": "3"})
    assert caught.value.status is Status.FAILED_PRECONDITION
    assert "brpc-hops" in str(caught.value.message)


async def test_target_leaving_mid_call_is_unavailable_naming_it(
    front: Any, grpclib_channel: Channel
) -> None:
    server, far, _ = front
    stub = EchoStub(grpclib_channel)
    task = asyncio.create_task(stub.Unary(EchoRequest(text="hang"), metadata=TARGET))
    await asyncio.wait_for(far.hanging.wait(), 5)
    next(iter(server.clients)).close("test: leaving")
    with pytest.raises(GRPCError) as caught:
        await task
    assert caught.value.status is Status.UNAVAILABLE
    assert "'far'" in str(caught.value.message) and f"{ECHO}/Unary" in str(caught.value.message)


# -- grpcio (C-core) ----------------------------------------------------------------------


def _grpcio(port: int, certs: DevCertificates) -> grpc.aio.Channel:
    credentials = grpc.ssl_channel_credentials(root_certificates=certs.ca.read_bytes())
    return grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials)


def _method(channel: grpc.aio.Channel, kind: str, name: str) -> Any:
    factory = getattr(channel, kind)
    return factory(
        f"{ECHO}/{name}",
        request_serializer=EchoRequest.SerializeToString,
        response_deserializer=EchoReply.FromString,
    )


async def test_grpcio_four_cardinalities_with_metadata_details_deadline_and_cancel(
    front: Any, certs: DevCertificates
) -> None:
    _, far, port = front
    metadata = tuple(TARGET.items())
    async with _grpcio(port, certs) as channel:
        call = _method(channel, "unary_unary", "Unary")(
            EchoRequest(text="hi"), metadata=metadata, timeout=3
        )
        assert await call == EchoReply(text="far:hi")
        assert ("x-init", "far-Unary") in tuple(await call.initial_metadata())
        assert ("x-trail", "ok") in tuple(await call.trailing_metadata())
        assert far.seen[-1].metadata["x-req"] == "v"
        deadline = far.seen[-1].deadline
        assert deadline is not None and deadline.time_remaining() <= 3

        stream = _method(channel, "unary_stream", "ServerStream")(
            EchoRequest(text="s", count=2), metadata=metadata
        )
        assert [r.index async for r in stream] == [0, 1]

        async def requests() -> Any:
            for text in ("a", "b"):
                yield EchoRequest(text=text)

        reply = await _method(channel, "stream_unary", "ClientStream")(
            requests(), metadata=metadata
        )
        assert (reply.text, reply.received) == ("a+b", 2)

        bidi = _method(channel, "stream_stream", "Bidi")(metadata=metadata)
        await bidi.write(EchoRequest(text="x"))
        assert (await bidi.read()).text == "far:x"
        await bidi.done_writing()
        assert await bidi.read() == grpc.aio.EOF

        failing = _method(channel, "unary_unary", "Unary")(
            EchoRequest(text="fail"), metadata=metadata
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await failing
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert caught.value.details() == "no good"
        trailers = dict(caught.value.trailing_metadata())
        assert trailers["grpc-status-details-bin"] == UNKNOWN_DETAILS
        assert trailers["x-trail"] == "failed"

        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _method(channel, "unary_unary", "Unary")(
                EchoRequest(text="hang"), metadata=metadata, timeout=0.3
            )
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - started < 3
        await asyncio.wait_for(far.cancelled.wait(), 5)

        far.cancelled.clear()
        far.hanging.clear()
        hanging = _method(channel, "stream_stream", "Bidi")(metadata=metadata)
        await hanging.write(EchoRequest(text="hang"))
        await asyncio.wait_for(far.hanging.wait(), 5)
        hanging.cancel()
        await asyncio.wait_for(far.cancelled.wait(), 5)

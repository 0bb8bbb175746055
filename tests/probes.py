"""Test services: an Echo implementation that reports what it saw and can be told
to fail, block, stream or call back the other side of the connection."""

from __future__ import annotations

import asyncio
from typing import Any

from google.rpc import error_details_pb2
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.server import Stream

import brpc
from brpc.testing.v1 import echo_grpc
from brpc.testing.v1.echo_pb2 import EchoReply, EchoRequest


def peer_channel() -> Any:
    """A channel to the other side of the connection of the call being handled."""
    connection = brpc.current_connection()
    if isinstance(connection, brpc.ClientConn):
        return connection
    return connection.channel


class Probe(echo_grpc.EchoBase):
    """Echo with behaviours chosen by the request text.

    - ``"fail"``: NOT_FOUND with a message and an ErrorInfo detail;
    - ``"block"``: wait until cancelled (sets ``started``, then ``cancelled``);
    - ``"metadata"``: send initial and trailing metadata;
    - ``"relay:N"``: call the other side with ``relay:N-1`` (0 answers);
    - ``"nested-block"``: call the other side with ``block`` using the remaining
      deadline explicitly, and report how that ended;
    - ``"barrier"``: answer only when ``barrier_size`` calls are waiting;
    - anything else: echo.
    """

    def __init__(self, barrier_size: int = 0) -> None:
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.seen_metadata: list[Any] = []
        self.seen_deadlines: list[float | None] = []
        self.nested_errors: list[BaseException] = []
        self.barrier_size = barrier_size
        self.waiting = 0
        self._barrier = asyncio.Event()

    async def _record(self, stream: Stream[Any, Any]) -> None:
        self.seen_metadata.append(stream.metadata)
        deadline = stream.deadline
        self.seen_deadlines.append(deadline.time_remaining() if deadline else None)

    async def _block(self) -> None:
        self.started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise

    async def Unary(self, stream: Stream[EchoRequest, EchoReply]) -> None:
        request = await stream.recv_message()
        assert request is not None
        await self._record(stream)
        text = request.text
        if text == "fail":
            raise GRPCError(
                Status.NOT_FOUND,
                "no such thing",
                [error_details_pb2.ErrorInfo(reason="MISSING", domain="brpc.test")],
            )
        if text == "block":
            await self._block()
        if text == "metadata":
            await stream.send_initial_metadata(metadata={"x-initial": "hello"})
            await stream.send_message(EchoReply(text="with metadata"))
            await stream.send_trailing_metadata(
                metadata={"x-trailing": "bye", "x-raw-bin": b"\x00\xff"}
            )
            return
        if text.startswith("relay:"):
            depth = int(text.split(":")[1])
            if depth > 0:
                stub = echo_grpc.EchoStub(peer_channel())
                reply = await stub.Unary(EchoRequest(text=f"relay:{depth - 1}"))
                await stream.send_message(EchoReply(text=reply.text, index=reply.index + 1))
            else:
                await stream.send_message(EchoReply(text="bottom", index=0))
            return
        if text == "nested-block":
            stub = echo_grpc.EchoStub(peer_channel())
            assert stream.deadline is not None
            try:
                await stub.Unary(
                    EchoRequest(text="block"), timeout=stream.deadline.time_remaining()
                )
            except BaseException as exc:
                self.nested_errors.append(exc)
                raise
        if text == "nested-auto":
            stub = echo_grpc.EchoStub(peer_channel())
            try:
                await stub.Unary(EchoRequest(text="block"))
            except BaseException as exc:
                self.nested_errors.append(exc)
                raise
        if text == "barrier":
            self.waiting += 1
            if self.waiting >= self.barrier_size:
                self._barrier.set()
            await self._barrier.wait()
        await stream.send_message(EchoReply(text=text, payload=request.payload))

    async def ServerStream(self, stream: Stream[EchoRequest, EchoReply]) -> None:
        request = await stream.recv_message()
        assert request is not None
        await self._record(stream)
        for index in range(request.count):
            await stream.send_message(EchoReply(text=request.text, index=index))
        if request.text == "fail-after":
            raise GRPCError(Status.ABORTED, "stopped after streaming")

    async def ClientStream(self, stream: Stream[EchoRequest, EchoReply]) -> None:
        await self._record(stream)
        texts = [request.text async for request in stream]
        await stream.send_message(EchoReply(text=",".join(texts), received=len(texts)))

    async def Bidi(self, stream: Stream[EchoRequest, EchoReply]) -> None:
        await self._record(stream)
        received = 0
        async for request in stream:
            received += 1
            if request.text == "block":
                await self._block()
            await stream.send_message(
                EchoReply(text=request.text.upper(), index=received - 1, received=received)
            )

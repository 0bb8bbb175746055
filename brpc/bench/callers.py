"""What the load generators call: one Echo client, whatever carries it.

:class:`EchoCaller` is the small surface the workloads need (a unary call and
a server-streaming call). :class:`StubCaller` adapts any grpclib-generated
``EchoStub`` — over a brpc :class:`~brpc.ClientConn`, a server's
``ClientInfo.stub`` or a plain grpclib ``Channel`` — so every grpclib-based
path runs the very same client code. grpcio has its own adapter in
:mod:`brpc.bench.echo_grpcio`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from brpc.testing.v1.echo_grpc import EchoStub
from brpc.testing.v1.echo_pb2 import EchoReply, EchoRequest

__all__ = ["EchoCaller", "StubCaller"]


class EchoCaller(Protocol):
    """Calls ``brpc.testing.v1.Echo`` somewhere."""

    async def unary(self, request: EchoRequest) -> EchoReply: ...

    def server_stream(self, request: EchoRequest) -> AsyncIterator[EchoReply]: ...


class StubCaller:
    """:class:`EchoCaller` over a grpclib ``EchoStub``."""

    def __init__(self, stub: EchoStub) -> None:
        self._stub = stub

    async def unary(self, request: EchoRequest) -> EchoReply:
        return await self._stub.Unary(request)

    async def server_stream(self, request: EchoRequest) -> AsyncIterator[EchoReply]:
        async with self._stub.ServerStream.open() as stream:
            await stream.send_message(request, end=True)
            async for reply in stream:
                yield reply

"""The Echo service and an Echo client for grpcio (``grpc.aio``), the second baseline.

grpcio does not need generated service code: generic method handlers on the
server and ``channel.unary_unary(path, ...)`` on the client take the method
paths and the (de)serializers of the messages brpc's tests already use
(``brpc.testing.v1.echo_pb2``). So the baseline serves and calls the same
``brpc.testing.v1.Echo`` methods with the same messages as brpc and grpclib,
without a second copy of generated code to keep in step.

grpcio ships no type information; this module is where its untyped objects
are kept.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio

from brpc.testing.v1.echo_pb2 import EchoReply, EchoRequest

__all__ = ["GrpcioCaller", "grpcio_channel", "start_grpcio_server"]

_SERVICE = "brpc.testing.v1.Echo"
#: One TCP connection per channel: grpcio otherwise shares connections between
#: channels to the same address, which would hide per-connection costs.
_CHANNEL_OPTIONS = [("grpc.use_local_subchannel_pool", 1)]
_MESSAGE_LIMIT = 8 << 20


def _reply(request: EchoRequest, index: int = 0) -> EchoReply:
    payload = b"x" * request.reply_size if request.reply_size else request.payload
    return EchoReply(text=request.text, payload=payload, index=index, received=1)


async def _unary(request: EchoRequest, context: Any) -> EchoReply:
    return _reply(request)


async def _server_stream(request: EchoRequest, context: Any) -> AsyncIterator[EchoReply]:
    for index in range(request.count):
        yield _reply(request, index)


def _handler() -> Any:
    return grpc.method_handlers_generic_handler(
        _SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(
                _unary,
                request_deserializer=EchoRequest.FromString,
                response_serializer=EchoReply.SerializeToString,
            ),
            "ServerStream": grpc.unary_stream_rpc_method_handler(
                _server_stream,
                request_deserializer=EchoRequest.FromString,
                response_serializer=EchoReply.SerializeToString,
            ),
        },
    )


class GrpcioServer:
    """A running ``grpc.aio`` Echo server on TCP loopback."""

    def __init__(self, server: Any, port: int) -> None:
        self._server = server
        self.port = port

    async def close(self) -> None:
        await self._server.stop(grace=None)


async def start_grpcio_server(host: str) -> GrpcioServer:
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", _MESSAGE_LIMIT),
            ("grpc.max_send_message_length", _MESSAGE_LIMIT),
        ]
    )
    server.add_generic_rpc_handlers((_handler(),))
    port = int(server.add_insecure_port(f"{host}:0"))
    await server.start()
    return GrpcioServer(server, port)


def grpcio_channel(host: str, port: int) -> Any:
    """A new ``grpc.aio`` channel with a TCP connection of its own."""
    return grpc.aio.insecure_channel(
        f"{host}:{port}",
        options=[
            *_CHANNEL_OPTIONS,
            ("grpc.max_receive_message_length", _MESSAGE_LIMIT),
            ("grpc.max_send_message_length", _MESSAGE_LIMIT),
        ],
    )


class GrpcioCaller:
    """:class:`~brpc.bench.callers.EchoCaller` over a ``grpc.aio`` channel."""

    def __init__(self, channel: Any) -> None:
        self._unary = channel.unary_unary(
            f"/{_SERVICE}/Unary",
            request_serializer=EchoRequest.SerializeToString,
            response_deserializer=EchoReply.FromString,
        )
        self._server_stream = channel.unary_stream(
            f"/{_SERVICE}/ServerStream",
            request_serializer=EchoRequest.SerializeToString,
            response_deserializer=EchoReply.FromString,
        )

    async def unary(self, request: EchoRequest) -> EchoReply:
        reply: EchoReply = await self._unary(request)
        return reply

    async def server_stream(self, request: EchoRequest) -> AsyncIterator[EchoReply]:
        async for reply in self._server_stream(request):
            yield reply

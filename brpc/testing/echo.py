"""A plain implementation of ``brpc.testing.v1.Echo``."""

from __future__ import annotations

from grpclib.server import Stream

from .v1 import echo_grpc
from .v1.echo_pb2 import EchoReply, EchoRequest

__all__ = ["EchoService"]


class EchoService(echo_grpc.EchoBase):
    """Echoes text and payload; ``reply_size`` asks for a payload of that size."""

    @staticmethod
    def _reply(request: EchoRequest, index: int = 0, received: int = 1) -> EchoReply:
        payload = b"x" * request.reply_size if request.reply_size else request.payload
        return EchoReply(text=request.text, payload=payload, index=index, received=received)

    async def Unary(self, stream: Stream[EchoRequest, EchoReply]) -> None:
        request = await stream.recv_message()
        assert request is not None
        await stream.send_message(self._reply(request))

    async def ServerStream(self, stream: Stream[EchoRequest, EchoReply]) -> None:
        request = await stream.recv_message()
        assert request is not None
        for index in range(request.count):
            await stream.send_message(self._reply(request, index))

    async def ClientStream(self, stream: Stream[EchoRequest, EchoReply]) -> None:
        received = 0
        last = EchoRequest()
        async for request in stream:
            received += 1
            last = request
        await stream.send_message(EchoReply(text=last.text, received=received))

    async def Bidi(self, stream: Stream[EchoRequest, EchoReply]) -> None:
        received = 0
        async for request in stream:
            await stream.send_message(self._reply(request, received, received + 1))
            received += 1

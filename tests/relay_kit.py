"""What the relay tests share: a far-end Echo service that records what reached it."""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from typing import Any

from google.protobuf.any_pb2 import Any as AnyProto
from google.rpc import status_pb2
from grpclib.const import Status
from grpclib.metadata import Deadline
from grpclib.server import Stream

from brpc._calls.serving import RawStatusDetails
from brpc.certs import DevCertificates
from brpc.testing.v1 import echo_grpc
from brpc.testing.v1.echo_pb2 import EchoReply, EchoRequest

#: google.rpc.Status with a detail of a type nobody here knows: it must reach
#: the caller byte for byte (a relay that decoded it could not re-encode it).
UNKNOWN_DETAILS = status_pb2.Status(
    code=Status.FAILED_PRECONDITION.value,
    message="no good",
    details=[AnyProto(type_url="type.example.com/far.Unknown", value=b"\x08\x2a\x12\x02hi")],
).SerializeToString()


@dataclass
class Seen:
    method: str
    metadata: dict[str, Any]
    deadline: Deadline | None


class Far(echo_grpc.EchoBase):
    """Echo with initial and trailing metadata, failures with raw details, hangs."""

    def __init__(self, tag: str = "far", mode: str = "") -> None:
        self.tag = tag
        #: Overrides what requests ask for: "fail", "hang", "slow" (answer once
        #: released), "stall" (ClientStream reads nothing until released).
        self.mode = mode
        self.seen: list[Seen] = []
        self.hanging = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.release = asyncio.Event()
        #: ClientStream request messages read so far.
        self.read = 0

    async def _begin(self, stream: Stream[Any, Any], method: str) -> None:
        self.seen.append(Seen(method, dict(stream.metadata or {}), stream.deadline))
        await stream.send_initial_metadata(metadata={"x-init": f"{self.tag}-{method}"})

    async def _finish(self, stream: Stream[Any, Any], text: str) -> bool:
        """Fail or hang as ``text`` (or the mode) asks; True when the call is over."""
        text = self.mode or text
        if text == "slow":
            await self.release.wait()
            return False
        if text == "fail":
            await stream.send_trailing_metadata(
                status=Status.FAILED_PRECONDITION,
                status_message="no good",
                status_details=RawStatusDetails(UNKNOWN_DETAILS),
                metadata={"x-trail": "failed"},
            )
            return True
        if text == "hang":
            self.hanging.set()
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        return False

    async def Unary(self, stream: Stream[EchoRequest, EchoReply]) -> None:
        request = await stream.recv_message()
        assert request is not None
        await self._begin(stream, "Unary")
        if await self._finish(stream, request.text):
            return
        await stream.send_message(
            EchoReply(text=f"{self.tag}:{request.text}", payload=request.payload)
        )
        await stream.send_trailing_metadata(metadata={"x-trail": "ok"})

    async def ServerStream(self, stream: Stream[EchoRequest, EchoReply]) -> None:
        request = await stream.recv_message()
        assert request is not None
        await self._begin(stream, "ServerStream")
        for index in range(request.count):
            await stream.send_message(EchoReply(text=f"{self.tag}:{request.text}", index=index))
        if await self._finish(stream, request.text):
            return
        await stream.send_trailing_metadata(metadata={"x-trail": "ok"})

    async def ClientStream(self, stream: Stream[EchoRequest, EchoReply]) -> None:
        await self._begin(stream, "ClientStream")
        if self.mode == "stall" or (stream.metadata or {}).get("x-stall"):
            # Read nothing until released: the caller's sender must be held back.
            self.hanging.set()
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        texts = []
        async for request in stream:
            texts.append(request.text)
            self.read += 1
        if texts and await self._finish(stream, texts[-1]):
            return
        await stream.send_message(EchoReply(text="+".join(texts), received=len(texts)))
        await stream.send_trailing_metadata(metadata={"x-trail": "ok"})

    async def Bidi(self, stream: Stream[EchoRequest, EchoReply]) -> None:
        await self._begin(stream, "Bidi")
        received = 0
        async for request in stream:
            received += 1
            if await self._finish(stream, request.text):
                return
            await stream.send_message(
                EchoReply(text=f"{self.tag}:{request.text}", received=received)
            )
        await stream.send_trailing_metadata(metadata={"x-trail": "ok"})


def client_ssl(certs: DevCertificates) -> ssl.SSLContext:
    """TLS for a plain grpclib client of the front, trusting the dev CA."""
    context = ssl.create_default_context(cafile=str(certs.ca))
    context.set_alpn_protocols(["h2"])
    return context

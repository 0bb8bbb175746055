"""What both ends of a call's stream share: frames in, events queued, writes with backpressure.

:class:`CallStreamProtocol` is the asyncio protocol on one call's QUIC stream.
It decodes frames (:class:`~brpc._wire.callframe.FrameDecoder`), checks their
order (a receive state machine from :mod:`brpc._wire.callstate`) and queues
the events for the application, which takes them with :meth:`next_event`.
Reading pauses while more than :data:`READ_AHEAD` bytes of complete messages
wait unread, so that the transport withholds the peer's flow-control credit
(credit follows consumption); it resumes as the application takes them.
Writes wait for the transport's ``resume_writing`` when its send buffer is full.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Any

from grpclib.const import Status
from grpclib.exceptions import GRPCError

from ..._wire.callframe import (
    CallStreamError,
    FrameDecoder,
    FrameEvent,
    MessageReceived,
    StreamError,
)
from ..._wire.callstate import CalleeReceiveState, CallerReceiveState

if TYPE_CHECKING:
    from ..._session.stream_transport import StreamTransport

__all__ = ["MAX_HEADER_SIZE", "READ_AHEAD", "CallStreamProtocol"]

#: Largest header or trailer block accepted (docs/protocol.md §4.7).
MAX_HEADER_SIZE = 64 << 10
#: Bytes of complete, unread messages a call buffers before it stops reading.
READ_AHEAD = 256 << 10


class CallStreamProtocol(asyncio.Protocol):
    """One end of one call's stream (see the module docstring)."""

    _state: CallerReceiveState | CalleeReceiveState

    def __init__(self, max_message_size: int) -> None:
        self._decoder = FrameDecoder(max_message_size, MAX_HEADER_SIZE)
        self.transport: StreamTransport | None = None
        self._events: deque[FrameEvent] = deque()
        self._queued = 0
        #: The peer's FIN arrived (after every event it ended).
        self.ended = False
        #: The stream is gone (both sides closed, reset, or the connection lost).
        self.lost = False
        #: What readers and writers raise from now on.
        self.error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._write_paused = False

    # -- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            events = self._decoder.feed(data)
            receive = self._state.receive
            for event in events:
                receive(event)
                self._event_received(event)
        except CallStreamError as exc:
            self.stream_error(exc)
            return
        if self._queued > READ_AHEAD and self.transport is not None:
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        try:
            self._decoder.end_of_stream()
            self._state.end_of_stream()
        except CallStreamError as exc:
            self.stream_error(exc)
            return True
        self.ended = True
        self._wake()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.transport = None  # no cycle with the transport: both go with refcounting
        if exc is not None and self.error is None:
            self.error = self._lost_error(exc)
        self._wake()
        self._wake_writer()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_writer()

    # -- for subclasses and the stream objects ------------------------------------------

    def receive_overflowed(self) -> None:
        """The session could hold no more unread data for this call (see
        ``StreamTransport._receive_overflowed``): fail it, tell the peer why."""
        self.fail(
            GRPCError(
                Status.RESOURCE_EXHAUSTED,
                "more of the call's messages waited unread than the connection can hold: "
                "its QUIC engine grants the sender credit as data arrives, so it cannot "
                "hold the sender back; read sooner, or use engine='aioquic'",
            ),
            StreamError.RECEIVE_OVERFLOW,
        )

    def _event_received(self, event: FrameEvent) -> None:
        if type(event) is MessageReceived:
            self._queued += len(event.data)
        self._events.append(event)
        self._wake()

    def _lost_error(self, exc: Exception) -> BaseException:
        return exc

    def current_error(self) -> BaseException:
        """The call's failure as the application sees it now."""
        assert self.error is not None
        return self.error

    def stream_error(self, exc: CallStreamError) -> None:
        """A frame broke the call: abort the stream with the error's code, fail readers."""
        self.fail(exc.grpc_error(), exc.code)

    def fail(self, error: BaseException, code: int | None) -> None:
        """Fail the call with ``error``; abort the stream with ``code`` unless None."""
        if self.error is None:
            self.error = error
        transport = self.transport
        if code is not None and transport is not None and not self.lost:
            transport.abort(code)
        self._wake()
        self._wake_writer()

    async def next_event(self) -> FrameEvent | None:
        """The next received event; None once the peer ended its side."""
        while True:
            events = self._events
            if events:
                event = events.popleft()
                if type(event) is MessageReceived:
                    self._queued -= len(event.data)
                    transport = self.transport
                    if (
                        self._queued <= READ_AHEAD // 2
                        and transport is not None
                        and transport.reading_paused
                    ):
                        transport.resume_reading()
                return event
            if self.error is not None:
                raise self.current_error()
            if self.ended or self.lost:
                return None
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None

    def write(self, data: bytes, *, end: bool = False) -> None:
        """Write ``data`` (and FIN with ``end``); raise the call's error if it failed."""
        if self.error is not None:
            raise self.current_error()
        transport = self.transport
        if transport is None or transport.is_closing():
            raise self._closed_for_writing()
        if end:
            transport.write_eof(data)
        else:
            transport.write(data)

    async def drain(self) -> None:
        """Wait while the stream's send buffer is above its high-water mark."""
        while self._write_paused and self.error is None and not self.lost:
            waiter = self._drain_waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._drain_waiter = None
        if self.error is not None:
            raise self.current_error()

    def _closed_for_writing(self) -> BaseException:
        return ConnectionResetError("the call's stream is closed for writing")

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake_writer(self) -> None:
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def describe(self) -> dict[str, Any]:
        """State for diagnostics."""
        return {"queued": self._queued, "ended": self.ended, "lost": self.lost}

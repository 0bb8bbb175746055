"""The caller's side of the streams layer: one QUIC stream per outgoing call.

:class:`StreamsCaller` is the layer's :class:`~brpc._calls.base.Caller`: its
``request()`` returns a :class:`ClientCallStream`, which has grpclib's client
``Stream`` API (``send_request``, ``send_message(end=)``, ``end``,
``recv_initial_metadata``, ``recv_message``, ``recv_trailing_metadata``,
``cancel``, ``async with``, async iteration, ``initial_metadata``,
``trailing_metadata``, ``peer``) and fires grpclib's channel events. It opens
its stream on the connection its :class:`~brpc._calls.base.CallTarget` gives
when the request is sent; docs/protocol.md §4 is the wire.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast

from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError, ProtocolError
from grpclib.metadata import Deadline
from multidict import MultiDict

from ..._session.stream_transport import StreamResetError
from ..._wire.callframe import (
    CallStreamError,
    FrameEvent,
    MessageReceived,
    ResponseHeadersReceived,
    StreamError,
    TrailersReceived,
    encode_request_headers,
    message_prefix,
    peer_error,
)
from ..._wire.callstate import CallerReceiveState, EndedWithoutStatus
from ..._wire.metadata import MetadataError
from ...errors import DeadlineExceededError
from .._grpclib import (
    GRPC_CONTENT_TYPE,
    USER_AGENT,
    ClientStream,
    EventDispatch,
    Metadata,
    MetadataLike,
    Peer,
    RecvType,
    SendType,
    opening_deadline,
)
from ._protocol import CallStreamProtocol

if TYPE_CHECKING:
    from ..base import CallConnection, CallTarget

__all__ = ["ClientCallStream", "StreamsCaller"]

# Messages up to this size are written with their prefix in one piece.
_JOIN_LIMIT = 64 << 10


class _ConnectionLost(ConnectionError):
    """The connection ended under the call; its status is UNAVAILABLE with the
    connection's reason, read when the application sees it (the link learns
    why just after its streams do)."""


class _CallerProtocol(CallStreamProtocol):
    """The caller's end of one call's stream."""

    def __init__(self, connection: CallConnection) -> None:
        super().__init__(connection.max_message_size)
        self._state = CallerReceiveState()
        self.connection = connection
        self.trailers_received = False
        #: The code of the callee's STOP_SENDING, once it stopped reading.
        self.stopped_code: int | None = None

    def _event_received(self, event: FrameEvent) -> None:
        if type(event) is TrailersReceived:
            self.trailers_received = True
        super()._event_received(event)

    def sending_stopped(self, code: int) -> bool:
        """The callee stopped reading the request; its trailers may still come."""
        self.stopped_code = code
        self._wake_writer()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self.trailers_received:
            exc = None  # the call has its status; later resets change nothing
        super().connection_lost(exc)

    def _lost_error(self, exc: Exception) -> BaseException:
        if isinstance(exc, StreamResetError):
            return peer_error(exc.code)
        return _ConnectionLost(str(exc))

    def current_error(self) -> BaseException:
        error = super().current_error()
        if isinstance(error, _ConnectionLost):
            connection = self.connection
            reason = connection.loss_reason() if connection.lost else f"connection lost: {error}"
            return GRPCError(Status.UNAVAILABLE, reason)
        return error

    def stream_error(self, exc: CallStreamError) -> None:
        if isinstance(exc, EndedWithoutStatus):
            connection = self.connection
            code = self.stopped_code
            error: GRPCError
            if code:
                error = peer_error(code)
            elif connection.lost or not connection.usable:
                error = GRPCError(
                    Status.UNAVAILABLE,
                    f"{connection.loss_reason()} before the call's status arrived",
                )
            else:
                error = exc.grpc_error()
            self.fail(error, exc.code)
            return
        super().stream_error(exc)

    def write(self, data: bytes, *, end: bool = False) -> None:
        code = self.stopped_code
        if code is not None and self.error is None:
            if code == StreamError.NO_ERROR:
                return  # the callee needs no more of the request; its status follows
            raise peer_error(code)
        super().write(data, end=end)

    def _closed_for_writing(self) -> BaseException:
        return GRPCError(Status.UNAVAILABLE, self.connection.loss_reason())


_STATUSES = {status.value: status for status in Status}


def _status(value: int) -> Status:
    return _STATUSES.get(value, Status.UNKNOWN)


class ClientCallStream(ClientStream[SendType, RecvType]):
    """One outgoing call on its own stream, with grpclib's client ``Stream`` API.

    - a deadline fails the call with :class:`~brpc.DeadlineExceededError` (a
      ``GRPCError`` and a ``TimeoutError``) and resets the stream with
      ``DEADLINE_EXCEEDED``;
    - a lost connection fails it with UNAVAILABLE and the reason;
    - a non-OK status in the trailers raises ``GRPCError(status, message,
      details)``, details decoded by the channel's status details codec.
    """

    #: Set before the call starts: the call fails with it instead of sending its request.
    refused: GRPCError | None = None
    _dispatch: EventDispatch

    def __init__(
        self,
        caller: StreamsCaller,
        method_name: str,
        metadata: Metadata,
        *,
        cardinality: Cardinality,
        send_type: type[SendType],
        recv_type: type[RecvType],
        deadline: Deadline | None,
    ) -> None:
        # grpclib's __init__ only stores these; nothing of its HTTP/2 machinery is used.
        self._caller = caller
        self._method_name = method_name
        self._metadata = metadata
        self._cardinality = cardinality
        self._send_type = send_type
        self._recv_type = recv_type
        self._codec = caller.codec
        self._status_details_codec = caller.status_details_codec
        self._dispatch = caller.dispatch
        self._deadline = deadline
        self._protocol: _CallerProtocol | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._expired = False
        self._peeked: MessageReceived | None = None
        #: The header frame, when it waits to go out with the first message.
        self._headers = b""
        self._trailers: TrailersReceived | None = None

    # -- sending ---------------------------------------------------------------------

    async def send_request(self, *, end: bool = False) -> None:
        await self._send_request(end=end, defer=False)

    async def _send_request(self, *, end: bool, defer: bool) -> None:
        """Open the call's stream; with ``defer``, keep the header frame to go
        out with the first message (one write, one packet for a unary call)."""
        if self.refused is not None:
            raise self.refused
        if self._send_request_done:
            raise ProtocolError("Request is already sent")
        if end and not self._cardinality.client_streaming:
            raise ProtocolError(
                "Unary request requires a message to be sent before ending outgoing stream"
            )
        self._check_deadline()
        dispatch = self._dispatch
        metadata = self._metadata
        if dispatch.listened("send_request"):
            (metadata,) = await dispatch.send_request(
                metadata,
                method_name=self._method_name,
                deadline=self._deadline,
                content_type=GRPC_CONTENT_TYPE,
            )
        connection = await self._acquire()
        deadline = self._deadline
        try:
            frame = encode_request_headers(
                self._method_name,
                metadata,
                deadline.time_remaining() if deadline is not None else None,
                USER_AGENT,
            )
        except MetadataError as exc:
            raise ValueError(str(exc)) from None
        protocol = _CallerProtocol(connection)
        connection.open_stream(protocol)
        self._protocol = protocol
        connection.outgoing_started()
        self._caller.started(protocol)
        if self._expired:
            self._deadline_passed()
        if defer:
            self._headers = frame
        else:
            protocol.write(frame, end=end)
        self.peer = Peer(cast(Any, protocol.transport))
        self._send_request_done = True
        if end:
            self._end_done = True

    async def _acquire(self) -> CallConnection:
        target = self._caller.target
        deadline = self._deadline
        token = opening_deadline.set(deadline)
        try:
            if deadline is None:
                return await target.acquire()
            try:
                async with asyncio.timeout(deadline.time_remaining()):
                    return await target.acquire()
            except TimeoutError:
                raise DeadlineExceededError() from None
        finally:
            opening_deadline.reset(token)

    async def send_message(self, message: SendType, *, end: bool = False) -> None:
        if not self._send_request_done:
            await self._send_request(end=False, defer=True)
        end_stream = end
        if not self._cardinality.client_streaming:
            if self._send_message_done:
                raise ProtocolError("Message was already sent")
            end_stream = True
        if self._end_done:
            raise ProtocolError("Stream is ended")
        protocol = self._protocol
        assert protocol is not None
        dispatch = self._dispatch
        if dispatch.listened("send_message"):
            (message,) = await dispatch.send_message(message)
        try:
            data = self._codec.encode(message, self._send_type)
        finally:
            headers, self._headers = self._headers, b""
        if len(data) <= _JOIN_LIMIT:
            protocol.write(headers + message_prefix(len(data)) + data, end=end_stream)
        else:
            protocol.write(headers + message_prefix(len(data)))
            protocol.write(data, end=end_stream)
        await protocol.drain()
        self._send_message_done = True
        self._messages_sent += 1
        if end:
            self._end_done = True

    async def end(self) -> None:
        if not self._send_request_done:
            raise ProtocolError("Request was not sent")
        if self._end_done:
            raise ProtocolError("Stream was already ended")
        if not self._cardinality.client_streaming:
            if not self._send_message_done:
                raise ProtocolError("Unary request requires a single message to be sent")
            self._end_done = True
            return
        protocol = self._protocol
        assert protocol is not None
        protocol.write(b"", end=True)
        self._end_done = True

    # -- receiving -------------------------------------------------------------------

    async def _next(self) -> FrameEvent | None:
        protocol = self._protocol
        assert protocol is not None
        return await protocol.next_event()

    async def recv_initial_metadata(self) -> None:
        if not self._send_request_done:
            raise ProtocolError("Request was not sent yet")
        if self._recv_initial_metadata_done:
            raise ProtocolError("Initial metadata was already received")
        event = await self._next()
        self._recv_initial_metadata_done = True
        if type(event) is ResponseHeadersReceived:
            metadata = cast(Metadata, MultiDict(event.metadata))
        else:
            metadata = cast(Metadata, MultiDict())
        dispatch = self._dispatch
        if dispatch.listened("recv_initial_metadata"):
            (metadata,) = await dispatch.recv_initial_metadata(metadata)
        self.initial_metadata = metadata
        if type(event) is MessageReceived:
            self._peeked = event
        elif type(event) is TrailersReceived:
            self._trailers_only = True
            await self._process_trailers(event)
        elif event is None:
            raise self._no_status()

    async def recv_message(self) -> RecvType | None:
        if not self._recv_initial_metadata_done:
            await self.recv_initial_metadata()
        event: FrameEvent | None
        if self._peeked is not None:
            event, self._peeked = self._peeked, None
        elif self._trailers_only or self._trailers is not None:
            return None
        else:
            event = await self._next()
        if type(event) is MessageReceived:
            message = self._codec.decode(event.data, self._recv_type)
            dispatch = self._dispatch
            if dispatch.listened("recv_message"):
                (message,) = await dispatch.recv_message(message)
            self._messages_received += 1
            return cast(RecvType, message)
        if type(event) is TrailersReceived:
            self._trailers = event
            return None
        raise self._no_status()

    async def recv_trailing_metadata(self) -> None:
        if not self._end_done and not (
            not self._cardinality.client_streaming and self._send_message_done
        ):
            raise ProtocolError("Outgoing stream was not ended")
        if not self._recv_initial_metadata_done:
            raise ProtocolError(
                "Initial metadata was not received before waiting for trailing metadata"
            )
        if self._recv_trailing_metadata_done:
            raise ProtocolError("Trailing metadata was already received")
        if self._trailers_only:
            self._recv_trailing_metadata_done = True
            return
        self._peeked = None
        trailers = self._trailers
        while trailers is None:
            event = await self._next()
            if type(event) is TrailersReceived:
                trailers = event
            elif event is None:
                raise self._no_status()
            # unread messages are dropped, as grpclib does
        self._recv_trailing_metadata_done = True
        await self._process_trailers(trailers)

    async def _process_trailers(self, trailers: TrailersReceived) -> None:
        status = _status(trailers.status)
        message: str | None = None
        details: Any = None
        if status is not Status.OK:
            message = trailers.message or None
            codec = self._status_details_codec
            if trailers.details and codec is not None:
                details = codec.decode(status, message, trailers.details)
        metadata = cast(Metadata, MultiDict(trailers.metadata))
        dispatch = self._dispatch
        if dispatch.listened("recv_trailing_metadata"):
            (metadata,) = await dispatch.recv_trailing_metadata(
                metadata, status=status, status_message=message, status_details=details
            )
        self.trailing_metadata = metadata
        if status is not Status.OK:
            raise GRPCError(status, message, details)

    def _no_status(self) -> GRPCError:
        protocol = self._protocol
        assert protocol is not None
        error = protocol.error and protocol.current_error()
        if isinstance(error, GRPCError):
            return error
        return GRPCError(
            Status.UNAVAILABLE,
            f"{protocol.connection.loss_reason()} before the call's status arrived",
        )

    # -- ending ----------------------------------------------------------------------

    async def cancel(self) -> None:
        if not self._send_request_done:
            raise ProtocolError("Request was not sent yet")
        if self._cancel_done:
            raise ProtocolError("Stream was already cancelled")
        protocol = self._protocol
        assert protocol is not None
        protocol.fail(GRPCError(Status.CANCELLED, "the call was cancelled"), StreamError.CANCELLED)
        self._cancel_done = True

    def _check_deadline(self) -> None:
        if self._expired:
            raise DeadlineExceededError()

    def _deadline_passed(self) -> None:
        self._expired = True
        self._timer = None
        protocol = self._protocol
        if protocol is not None and not (protocol.lost and protocol.trailers_received):
            protocol.fail(DeadlineExceededError(), StreamError.DEADLINE_EXCEEDED)

    async def __aenter__(self) -> ClientCallStream[SendType, RecvType]:
        deadline = self._deadline
        if deadline is not None:
            remaining = deadline.time_remaining()
            if remaining <= 0:
                raise DeadlineExceededError()
            self._timer = asyncio.get_running_loop().call_later(remaining, self._deadline_passed)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        protocol = self._protocol
        try:
            if protocol is not None and exc_val is None and not self._cancel_done:
                if not self._recv_initial_metadata_done:
                    await self.recv_initial_metadata()
                if not self._recv_trailing_metadata_done:
                    await self.recv_trailing_metadata()
        finally:
            timer = self._timer
            if timer is not None:
                timer.cancel()
                self._timer = None
            if protocol is not None:
                if not protocol.lost:
                    code = (
                        StreamError.NO_ERROR
                        if protocol.trailers_received
                        else StreamError.CANCELLED
                    )
                    protocol.fail(GRPCError(Status.CANCELLED, "the call was cancelled"), code)
                self._caller.finished(protocol)
                protocol.connection.outgoing_finished()


class StreamsCaller:
    """The streams layer's outgoing half for one channel."""

    def __init__(
        self,
        target: CallTarget,
        *,
        codec: Any,
        status_details_codec: Any,
        dispatch: EventDispatch,
    ) -> None:
        self.target = target
        self.codec = codec
        self.status_details_codec = status_details_codec
        self.dispatch = dispatch
        self._calls: set[_CallerProtocol] = set()

    def request(
        self,
        name: str,
        cardinality: Cardinality,
        request_type: type[SendType],
        reply_type: type[RecvType],
        *,
        deadline: Deadline | None,
        metadata: MetadataLike | None,
    ) -> ClientCallStream[SendType, RecvType]:
        return ClientCallStream(
            self,
            name,
            cast(Metadata, MultiDict(metadata or ())),
            cardinality=cardinality,
            send_type=request_type,
            recv_type=reply_type,
            deadline=deadline,
        )

    def started(self, protocol: _CallerProtocol) -> None:
        self._calls.add(protocol)

    def finished(self, protocol: _CallerProtocol) -> None:
        self._calls.discard(protocol)

    def close(self) -> None:
        """Fail the calls in flight with UNAVAILABLE; later calls start afresh.

        Calls on a connection that is going away (the peer is draining) are left
        to finish, or to fail with the connection, within the drain's grace.
        """
        calls, self._calls = self._calls, set()
        for protocol in calls:
            connection = protocol.connection
            if protocol.lost or (not connection.usable and not connection.lost):
                continue
            protocol.fail(
                GRPCError(Status.UNAVAILABLE, connection.loss_reason()), StreamError.CANCELLED
            )

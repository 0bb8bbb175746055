"""The callee's side of the streams layer: each stream the peer opens is one call.

:class:`CalleeProtocol` runs on a peer-opened stream. Its first frame names
the method; an unknown one is answered trailers-only UNIMPLEMENTED, a call
arriving while the connection drains is reset with ``CONNECTION_CLOSING``
(it never started), anything else runs the (admission-checking) handler from
:class:`~brpc._calls.serving.Serving` as a task. A call admission turns away
before its handler starts (:class:`~brpc._calls.base.RefusedBeforeStart`)
is reset with ``CONNECTION_CLOSING`` or ``REFUSED``; other refusals are
trailers-only statuses. The task is created inside
``data_received``, which the transport runs in the link's context, so the
handler knows the connection it serves. The handler gets a
:class:`ServerCallStream`, with grpclib's server ``Stream`` API, and errors
are turned into statuses as grpclib's server does.
"""

from __future__ import annotations

import asyncio
import logging
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast

from grpclib.const import Handler, Status
from grpclib.exceptions import GRPCError, ProtocolError
from grpclib.metadata import Deadline
from multidict import MultiDict

from ..._session.stream_transport import StreamResetError
from ..._wire.callframe import (
    CallStreamError,
    FrameEvent,
    MessageReceived,
    MessageTooLarge,
    RequestHeadersReceived,
    StreamError,
    encode_response_headers,
    encode_trailers,
    message_prefix,
    peer_error_status,
)
from ..._wire.callstate import CalleeReceiveState
from ..._wire.metadata import MetadataError
from .._grpclib import (
    GRPC_CONTENT_TYPE,
    EventDispatch,
    Metadata,
    MetadataLike,
    Peer,
    ServerStream,
)
from ..base import RefusedBeforeStart
from ._protocol import CallStreamProtocol

if TYPE_CHECKING:
    from ..base import CallConnection
    from ..serving import Serving

__all__ = ["CalleeProtocol", "ServerCallStream"]

log = logging.getLogger(__name__)

_JOIN_LIMIT = 64 << 10


class CalleeProtocol(CallStreamProtocol):
    """The callee's end of one call's stream."""

    def __init__(self, serving: Serving, connection: CallConnection) -> None:
        super().__init__(connection.max_message_size)
        self._state = CalleeReceiveState()
        self._serving = serving
        self.connection = connection
        self._task: asyncio.Task[None] | None = None
        #: The trailers went out: the call is over for this side.
        self.finished = False
        #: The peer cancelled the call (reset or stopped it).
        self.cancelled_by_peer = False
        #: STOP_SENDING code for a request side still open when the trailers go.
        self.stop_code = StreamError.NO_ERROR

    def _event_received(self, event: FrameEvent) -> None:
        if type(event) is MessageReceived:
            super()._event_received(event)
        else:
            self._start(cast(RequestHeadersReceived, event))

    def _start(self, headers: RequestHeadersReceived) -> None:
        connection = self.connection
        if not connection.accepting:
            self.fail(
                GRPCError(Status.UNAVAILABLE, "the connection is closing"),
                StreamError.CONNECTION_CLOSING,
            )
            return
        # Methods not served here go to the serving side's fallback (a relay),
        # or to a handler answering UNIMPLEMENTED that names the method.
        method = self._serving.resolve(headers.path)
        # The deadline runs from now (docs/protocol.md §4.5); the stream object
        # takes the transport's peer now, while the transport is surely there.
        timeout = headers.timeout
        stream = ServerCallStream(
            self,
            headers.path,
            method,
            deadline=Deadline.from_timeout(timeout) if timeout is not None else None,
            user_agent=headers.user_agent or None,
        )
        self._task = asyncio.get_running_loop().create_task(self._serve(stream, method, headers))

    def connection_lost(self, exc: Exception | None) -> None:
        task = self._task
        if exc is not None and not self.finished and task is not None and not task.done():
            if isinstance(exc, StreamResetError):
                status, message = peer_error_status(exc.code)
            else:
                status, message = Status.UNAVAILABLE, self.connection.loss_reason()
            self.error = GRPCError(status, message)
            self.cancelled_by_peer = True
            task.cancel()
        super().connection_lost(exc)

    def stream_error(self, exc: CallStreamError) -> None:
        if self.finished:
            # Trailers went out: the call is over here. What still arrives (the
            # rest of a refused message, its truncated end) changes nothing.
            return
        if isinstance(exc, MessageTooLarge):
            if self.lost:
                return
            # Tell the caller why, with trailers, rather than with a bare code.
            error = exc.grpc_error()
            if self.error is None:
                self.error = error
            self.finish(encode_trailers(error.status, error.message), stop_code=exc.code)
            self._wake()
            return
        super().stream_error(exc)

    def finish(self, trailers: bytes, *, stop_code: int | None = None) -> None:
        """Send ``trailers`` and FIN; stop the request side (``stop_code``, by
        default :attr:`stop_code`) if it is still open."""
        if self.finished:
            return
        self.finished = True
        transport = self.transport
        if transport is None or self.lost:
            return
        transport.write_eof(trailers)
        if not self.lost:
            transport.stop_reading(self.stop_code if stop_code is None else stop_code)

    async def _run(
        self, stream: ServerCallStream, method: Handler, headers: RequestHeadersReceived
    ) -> None:
        """grpclib's RecvRequest event, then the handler."""
        metadata = cast(Metadata, MultiDict(headers.metadata))
        method_func = method.func
        dispatch = self._serving.dispatch
        if dispatch.listened("recv_request"):
            metadata, method_func = await dispatch.recv_request(
                metadata,
                method_func,
                method_name=headers.path,
                deadline=stream.deadline,
                content_type=GRPC_CONTENT_TYPE,
                user_agent=stream.user_agent,
                peer=stream.peer,
            )
        stream.metadata = metadata
        await method_func(stream)

    async def _serve(
        self, stream: ServerCallStream, method: Handler, headers: RequestHeadersReceived
    ) -> None:
        deadline = stream.deadline
        try:
            async with stream:
                scope: asyncio.Timeout | None = None
                try:
                    if deadline is None:
                        await self._run(stream, method, headers)
                    else:
                        scope = asyncio.timeout(deadline.time_remaining())
                        async with scope:
                            await self._run(stream, method, headers)
                except TimeoutError:
                    if scope is not None and scope.expired():
                        log.info("Deadline exceeded")
                        self.stop_code = StreamError.DEADLINE_EXCEEDED
                        raise GRPCError(Status.DEADLINE_EXCEEDED) from None
                    log.exception("Timeout occurred")
                    raise
                except GRPCError:
                    raise
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("Application error")
                    raise
        except asyncio.CancelledError:
            if not self.cancelled_by_peer:
                raise
            log.info("Request was cancelled: %s", self.error)
        except ProtocolError:
            log.exception("Application error")
        except Exception:
            log.exception("Server error")
        finally:
            self._task = None  # the task refers to this protocol: no cycle
            if not self.finished and not self.lost:
                # Nothing more will be sent (a cancellation inside the handler, say).
                self.finished = True
                transport = self.transport
                if transport is not None:
                    transport.abort(StreamError.INTERNAL)


class ServerCallStream(ServerStream[Any, Any]):
    """One incoming call, with grpclib's server ``Stream`` API."""

    _dispatch: EventDispatch

    def __init__(
        self,
        protocol: CalleeProtocol,
        method_name: str,
        method: Handler,
        *,
        deadline: Deadline | None,
        user_agent: str | None,
    ) -> None:
        # grpclib's __init__ needs an HTTP/2 stream; set what it would set.
        serving = protocol._serving
        self._protocol = protocol
        self._method_name = method_name
        self._cardinality = method.cardinality
        self._recv_type = method.request_type
        self._send_type = method.reply_type
        self._codec = serving.codec
        self._status_details_codec = serving.status_details_codec
        self._dispatch = serving.dispatch
        self.deadline = deadline
        self.metadata: Metadata | None = None
        self.user_agent = user_agent
        self.peer = Peer(cast(Any, protocol.transport))

    @property
    def call_connection(self) -> CallConnection:
        """The connection the call arrived on (see ``brpc._calls.base.connection_of``)."""
        return self._protocol.connection

    async def recv_message(self) -> Any:
        event = await self._protocol.next_event()
        if event is None:
            return None
        message = self._codec.decode(cast(MessageReceived, event).data, self._recv_type)
        dispatch = self._dispatch
        if dispatch.listened("recv_message"):
            (message,) = await dispatch.recv_message(message)
        self._messages_received += 1
        return message

    async def send_initial_metadata(self, *, metadata: MetadataLike | None = None) -> None:
        if self._send_initial_metadata_done:
            raise ProtocolError("Initial metadata was already sent")
        sent: MetadataLike | None = metadata
        dispatch = self._dispatch
        if dispatch.listened("send_initial_metadata"):
            (sent,) = await dispatch.send_initial_metadata(MultiDict(metadata or ()))
        if sent:
            try:
                frame = encode_response_headers(sent)
            except MetadataError as exc:
                raise ValueError(str(exc)) from None
            self._protocol.write(frame)
        # Without metadata the frame is optional: the first message or the
        # trailers say as much, in fewer bytes.
        self._send_initial_metadata_done = True

    async def send_message(self, message: Any) -> None:
        if not self._send_initial_metadata_done:
            await self.send_initial_metadata()
        if not self._cardinality.server_streaming and self._send_message_done:
            raise ProtocolError("Message was already sent")
        dispatch = self._dispatch
        if dispatch.listened("send_message"):
            (message,) = await dispatch.send_message(message)
        data = self._codec.encode(message, self._send_type)
        protocol = self._protocol
        if len(data) <= _JOIN_LIMIT:
            protocol.write(message_prefix(len(data)) + data)
        else:
            protocol.write(message_prefix(len(data)))
            protocol.write(data)
        self._send_message_done = True
        self._messages_sent += 1
        await protocol.drain()

    async def send_trailing_metadata(
        self,
        *,
        status: Status = Status.OK,
        status_message: str | None = None,
        status_details: Any = None,
        metadata: MetadataLike | None = None,
    ) -> None:
        if self._send_trailing_metadata_done:
            raise ProtocolError("Trailing metadata was already sent")
        if (
            not self._cardinality.server_streaming
            and not self._send_message_done
            and status is Status.OK
        ):
            raise ProtocolError(
                "Unary response with OK status requires a single message to be sent"
            )
        details: bytes | None = None
        codec = self._status_details_codec
        if status_details is not None and codec is not None:
            details = codec.encode(status, status_message, status_details)
        sent: MetadataLike | None = metadata
        dispatch = self._dispatch
        if dispatch.listened("send_trailing_metadata"):
            (sent,) = await dispatch.send_trailing_metadata(
                MultiDict(metadata or ()),
                status=status,
                status_message=status_message,
                status_details=status_details,
            )
        try:
            frame = encode_trailers(status, status_message, details, sent)
        except MetadataError as exc:
            raise ValueError(str(exc)) from None
        self._send_trailing_metadata_done = True
        self._protocol.finish(frame)

    async def cancel(self) -> None:
        if self._cancel_done:
            raise ProtocolError("Stream was already cancelled")
        protocol = self._protocol
        protocol.finished = True
        protocol.fail(GRPCError(Status.CANCELLED, "the call was cancelled"), StreamError.CANCELLED)
        self._cancel_done = True

    async def __aenter__(self) -> ServerCallStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> bool | None:
        protocol = self._protocol
        if self._send_trailing_metadata_done or self._cancel_done or protocol.lost:
            return True
        protocol_error = None
        if exc_val is not None:
            if isinstance(exc_val, RefusedBeforeStart):
                # Admission turned the call away before its handler started:
                # say so with the stream's code, which only means "never ran".
                code = StreamError.CONNECTION_CLOSING if exc_val.closing else StreamError.REFUSED
                protocol.fail(exc_val, code)
                return True
            if isinstance(exc_val, GRPCError):
                status = exc_val.status
                status_message = exc_val.message
                status_details = exc_val.details
            elif isinstance(exc_val, Exception):
                status = Status.UNKNOWN
                status_message = "Internal Server Error"
                status_details = None
            else:
                return None  # cancellation: propagate
        elif not self._cardinality.server_streaming and not self._send_message_done:
            status = Status.UNKNOWN
            status_message = "Internal Server Error"
            status_details = None
            protocol_error = (
                "Unary response with OK status requires a single message to be sent: "
                f"{self._method_name!r}"
            )
        else:
            status = Status.OK
            status_message = None
            status_details = None
        await self.send_trailing_metadata(
            status=status, status_message=status_message, status_details=status_details
        )
        if protocol_error is not None:
            raise ProtocolError(protocol_error)
        return True

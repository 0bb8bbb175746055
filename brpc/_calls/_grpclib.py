"""The only module that touches grpclib's private attributes.

grpclib (tested with 0.4.8-0.4.9, pinned in pyproject.toml) runs HTTP/2 over
any asyncio transport, but the seams brpc needs are private:

- :class:`LaneChannel` overrides ``Channel._create_connection`` so that each
  (re)connection opens a new stream instead of a TCP socket, and builds
  :class:`CallStream` objects instead of grpclib's ``Stream``;
- :class:`CallStream` turns transport failures and passed deadlines into
  ``GRPCError`` with the right status;
- :class:`LaneProtocol` is grpclib's HTTP/2 protocol with brpc's received
  message limit (checked by each message's length prefix, before its body is
  buffered, with no per-call closure) and, on the serving side, brpc's
  concurrent-stream limit;
- :class:`EventDispatch` dispatches grpclib's channel *and* server events, so
  ``grpclib.events.listen(conn, RecvRequest, cb)`` works on a dialing client
  that serves services as on a server.
- the streams layer subclasses grpclib's client and server ``Stream``
  (:data:`ClientStream`, :data:`ServerStream`) without their HTTP/2
  machinery, setting the state flags grpclib keeps as class attributes, and
  takes :class:`Peer`, the metadata multi-dict type, ``USER_AGENT`` and the
  gRPC content type from here.

``tests/test_grpclib_adapter.py`` exercises each of these so that a grpclib
upgrade that moves them fails there.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import logging
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeAlias, TypeVar, cast

import h2.exceptions
from grpclib.client import Channel, Stream
from grpclib.client import Handler as ClientHandler
from grpclib.client import Stream as ClientStream
from grpclib.config import Configuration
from grpclib.const import Cardinality, Handler, Status
from grpclib.encoding.base import GRPC_CONTENT_TYPE
from grpclib.events import _DispatchChannelEvents, _DispatchServerEvents, _ident
from grpclib.exceptions import GRPCError, StreamTerminatedError
from grpclib.metadata import USER_AGENT, Deadline, _Metadata, _MetadataLike
from grpclib.protocol import AbstractHandler, Connection, EventsProcessor, H2Protocol, Peer
from grpclib.protocol import Stream as H2Stream
from grpclib.server import Handler as ServerHandler
from grpclib.server import Server
from grpclib.server import Stream as ServerStream
from grpclib.utils import Wrapper
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.settings import SettingCodes
from multidict import MultiDict

from ..errors import DeadlineExceededError

log = logging.getLogger(__name__)

#: Bytes beyond twice a lane's high-water mark that its send buffer may hold
#: (frames being written when the mark was crossed: grpclib writes at most one
#: 16 KiB DATA frame between checks) before the peer is deemed not to be reading.
_UNSENT_SLACK = 64 << 10

# grpclib's names for these types are private; the rest of brpc uses these.
MetadataLike: TypeAlias = _MetadataLike
#: grpclib's metadata multi-dict (``MultiDict[str | bytes]``).
Metadata: TypeAlias = _Metadata
SendType = TypeVar("SendType")
RecvType = TypeVar("RecvType")

__all__ = [
    "GRPC_CONTENT_TYPE",
    "USER_AGENT",
    "CallStream",
    "ClientStream",
    "EventDispatch",
    "LaneChannel",
    "LaneProtocol",
    "Metadata",
    "MetadataLike",
    "Peer",
    "RecvType",
    "SendType",
    "ServerStream",
    "close_lane",
    "deadline_fired",
    "opening_deadline",
    "serving_server",
]


#: The deadline of the call whose request is being sent; a channel that has to
#: wait before it can open a lane bounds the wait with it.
opening_deadline: contextvars.ContextVar[Deadline | None] = contextvars.ContextVar(
    "brpc_opening_deadline", default=None
)


class EventDispatch(_DispatchServerEvents, _DispatchChannelEvents):
    """grpclib's event dispatcher for both sides of calls.

    A brpc endpoint both calls and serves over one connection, so one object
    dispatches channel events (SendRequest, RecvTrailingMetadata, ...) and
    server events (RecvRequest, SendTrailingMetadata, ...). SendMessage and
    RecvMessage fire for messages this side sends and receives, either way.
    """

    def listened(self, method: str) -> bool:
        """Whether a listener waits for the event ``method`` (``"send_message"``, ...)
        dispatches. Without one the method only returns its arguments (grpclib
        binds it to an identity coroutine until a listener is added), and a call
        layer may skip it."""
        return self.__dict__.get(method) is not _ident


class _LimitedStream(H2Stream):
    """grpclib's HTTP/2 stream, refusing gRPC messages longer than ``_limit``.

    grpclib reads a message as ``recv_data(5)`` (flag and length) followed by
    ``recv_data(length)``, acknowledging flow-control credit as it goes, so a
    peer could make it buffer up to 4 GiB. The second read is refused by its
    size, before any of the body is buffered.

    A call whose whole response (headers, messages, trailers, end of stream)
    has arrived is not failed when its lane ends before the caller read it
    (a reset of the call's own stream still ends it, also a caller still sending):
    the peer's last reply and its close can arrive together, and the reply
    is all there.
    """

    _limit: int

    def __terminated__(self, reason: str) -> None:
        if cast(_LimitedConnection, self.connection).lost and _arrived_whole(self):
            return  # the lane ended after a whole response arrived: let it be read
        super().__terminated__(reason)

    async def recv_data(self, size: int) -> bytes:
        if size > self._limit:
            raise GRPCError(
                Status.RESOURCE_EXHAUSTED,
                f"received message of {size} bytes exceeds the limit of {self._limit} bytes "
                "(max_message_size)",
            )
        return await super().recv_data(size)


def _arrived_whole(stream: H2Stream) -> bool:
    """Whether a calling side's HTTP/2 stream received its whole response."""
    return stream.headers is not None and stream.buffer._eof


class _LimitedConnection(Connection):
    """grpclib's HTTP/2 connection whose streams are :class:`_LimitedStream`."""

    def __init__(self, *args: Any, max_message_size: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._max_message_size = max_message_size
        #: The lane's stream ended (a stream reset still terminates its call).
        self.lost = False

    def create_stream(
        self, *, stream_id: int | None = None, wrapper: Wrapper | None = None
    ) -> H2Stream:
        stream = super().create_stream(stream_id=stream_id, wrapper=wrapper)
        # Same layout, one more method: retyping adds no per-call objects or cycles.
        stream.__class__ = _LimitedStream
        cast(_LimitedStream, stream)._limit = self._max_message_size
        return stream


class LaneProtocol(H2Protocol):
    """grpclib's HTTP/2 protocol for one lane, either side, with brpc's limits.

    ``resume_writing`` sends what was queued while paused (grpclib would wait
    for the next write). ``connection_made`` takes grpclib's own steps, with two differences: every
    stream refuses messages above ``max_message_size`` by their length prefix,
    and with ``max_concurrent_streams`` (the serving side) the first SETTINGS
    frame announces that limit while h2 enforces twice it. h2 starts every
    connection with an inbound limit of 100 streams, enforced at once, while a
    client may open streams before it has seen our SETTINGS; 200 concurrent
    calls on a fresh lane would otherwise kill it.
    """

    def __init__(
        self,
        handler: AbstractHandler,
        config: Configuration,
        h2_config: H2Configuration,
        *,
        max_message_size: int,
        max_concurrent_streams: int | None = None,
    ) -> None:
        super().__init__(handler, config, h2_config)
        self._max_message_size = max_message_size
        self._max_concurrent_streams = max_concurrent_streams

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        h2_conn = H2Connection(config=self.h2_config)
        settings = h2_conn.local_settings
        limit = self._max_concurrent_streams
        if limit is not None:
            settings[SettingCodes.MAX_CONCURRENT_STREAMS] = limit
            settings.acknowledge()
        h2_conn.initiate_connection()  # announces the limit
        if limit is not None:
            settings[SettingCodes.MAX_CONCURRENT_STREAMS] = 2 * limit
            settings.acknowledge()  # enforced, not announced

        initial = settings.initial_window_size
        conn_delta = self.config.http2_connection_window_size - initial
        stream_delta = self.config.http2_stream_window_size - initial
        if conn_delta:
            h2_conn.increment_flow_control_window(conn_delta)
        if stream_delta:
            h2_conn.update_settings(
                {SettingCodes.INITIAL_WINDOW_SIZE: self.config.http2_stream_window_size}
            )
        self.connection = _LimitedConnection(
            h2_conn,
            cast(asyncio.Transport, transport),
            config=self.config,
            max_message_size=self._max_message_size,
        )
        self.connection.flush()
        self.connection.initialize()
        self.processor = EventsProcessor(self.handler, self.connection)

    def resume_writing(self) -> None:
        super().resume_writing()
        # grpclib leaves frames made while the transport was paused (a stream
        # reset from a cancelled call, for one) in h2's buffer until the next
        # write, which may never come: send them now.
        if not self.connection.is_closing():
            self.connection.flush()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # h2 answers some frames (PING, SETTINGS) by itself, paused or not: a
        # peer that sends them but reads nothing would make us buffer the
        # answers without limit. Writers of calls stop at the high-water mark,
        # so well past it only such answers can be piling up.
        transport: asyncio.Transport | None = getattr(self.connection, "_transport", None)
        if transport is None or transport.is_closing():
            return
        _, high_water = transport.get_write_buffer_limits()
        if transport.get_write_buffer_size() > 2 * high_water + _UNSENT_SLACK:
            log.warning(
                "lane peer left more than %d bytes unread while still sending; resetting the lane",
                2 * high_water + _UNSENT_SLACK,
            )
            transport.abort()

    def connection_lost(self, exc: BaseException | None) -> None:
        cast(_LimitedConnection, self.connection).lost = True
        super().connection_lost(exc)
        # A writer waiting for a paused lane would wait forever: nothing
        # resumes a lost transport. Wake it; its next write fails or goes
        # nowhere, and the call ends.
        self.connection.write_ready.set()


class _LaneHandler(ServerHandler):
    """grpclib's per-connection server handler, ending *every* handler task on close.

    grpclib's own ``close()`` cancels only the tasks whose streams were not
    cancelled already; a task cancelled earlier (the client reset its call)
    that is still sending its trailers on a paused lane would wait forever.
    """

    def close(self) -> None:
        for task in self._cancelled:
            if not task.done():
                task.cancel()
        super().close()


def serving_server(
    resolve: Callable[[str], Handler | None],
    *,
    codec: Any,
    status_details_codec: Any,
    dispatch: Any,
) -> Server:
    """A grpclib server whose handler of each path is ``resolve(path)`` and whose
    events go to ``dispatch``.

    grpclib copies its services' mappings into a dict and finds a call's
    handler with ``mapping.get(path)``; the server gets an object whose
    ``get`` asks ``resolve`` instead, so methods nobody listed (relayed ones)
    are served too, and unknown ones fail with brpc's UNIMPLEMENTED message.
    """
    server = Server([], codec=codec, status_details_codec=status_details_codec)
    server._mapping = cast(dict[str, Handler], _LookupMapping(resolve))
    server.__dispatch__ = dispatch
    return server


def server_lane_protocol(
    server: Server, *, max_message_size: int, max_concurrent_streams: int
) -> LaneProtocol:
    """A new serving-side HTTP/2 protocol of ``server`` for one lane.

    Unlike grpclib's ``Server._protocol_factory`` this does not add the lane's
    handler to the server's set of handlers, which grpclib prunes only when
    new connections arrive: a closed lane (and its connection) is released as
    soon as nothing else refers to it, even on an idle server.
    """
    handler = _LaneHandler(
        server._mapping, server._codec, server._status_details_codec, server.__dispatch__
    )
    return LaneProtocol(
        handler,
        # No HTTP/2 keepalive: the session has its own. grpclib's (two hours
        # for servers) would leave a timer per lane whose context, even once
        # cancelled, keeps the connection's objects alive until it is due.
        dataclasses.replace(server._config, _keepalive_time=None),
        server._h2_config,
        max_message_size=max_message_size,
        max_concurrent_streams=max_concurrent_streams,
    )


def deadline_fired(stream: Any) -> bool:
    """Whether grpclib's deadline for the served call ``stream`` fired (cancelling its handler)."""
    wrapper = getattr(stream._stream, "wrapper", None)
    return bool(wrapper is not None and wrapper.cancelled)


class _LookupMapping:
    """What grpclib's request handler needs of a mapping: ``get(path)``."""

    __slots__ = ("get",)

    def __init__(self, lookup: Callable[[str], Handler | None]) -> None:
        self.get = lookup


class CallStream(Stream[SendType, RecvType]):
    """grpclib's client stream with brpc's limits and error mapping.

    - received messages are bounded by the lane's ``max_message_size``;
    - a deadline raises :class:`DeadlineExceededError` (a ``GRPCError`` and a
      ``TimeoutError``);
    - a lost lane or connection raises ``GRPCError(UNAVAILABLE)`` with the
      reason, also when the reply arrived but the status never did.
    """

    _channel: LaneChannel
    #: The connection this call is counted on while in flight (see LaneChannel.call_started).
    counted_on: Any = None
    #: Set before the call starts: the call fails with it instead of sending its request.
    refused: GRPCError | None = None

    async def __aenter__(self) -> CallStream[SendType, RecvType]:
        try:
            await super().__aenter__()
        except TimeoutError:
            # The deadline had passed before the call started.
            raise DeadlineExceededError() from None
        return self

    async def send_request(self, *, end: bool = False) -> None:
        if self.refused is not None:
            raise self.refused
        token = opening_deadline.set(self._deadline)
        try:
            await super().send_request(end=end)
        finally:
            opening_deadline.reset(token)
        self._channel.call_started(self)

    def _raise_for_content_type(self, headers_map: dict[str, str]) -> None:
        # A trailers-only response carries the call's status; grpclib's own
        # server omits content-type from some of them (unknown method), which
        # must still read as UNIMPLEMENTED, not "missing content-type".
        if "grpc-status" not in headers_map:
            super()._raise_for_content_type(headers_map)

    async def recv_initial_metadata(self) -> None:
        try:
            await super().recv_initial_metadata()
        except GRPCError:
            # grpclib raises on a bad :status or content-type before noting that
            # the headers ended the response; without this, leaving the call
            # would wait forever for trailers that will never come.
            if self._stream.headers is not None:
                self._trailers_only = True
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        try:
            await super().__aexit__(exc_type, exc_val, exc_tb)
        except Exception as exc:
            raise self._translate(exc) from exc
        finally:
            self._channel.call_ended(self)
        if exc_val is not None:
            if isinstance(exc_val, Exception):
                translated = self._translate(exc_val)
                if translated is not exc_val:
                    raise translated from exc_val
            return
        if (
            self._send_request_done
            and not self._recv_trailing_metadata_done
            and not self._cancel_done
            and self._stream._transport.is_closing()
        ):
            if not _arrived_whole(self._stream):
                raise GRPCError(
                    Status.UNAVAILABLE,
                    f"{self._channel.loss_reason()} before the call's status arrived",
                )
            # grpclib does not read the status once the lane is closing; it
            # arrived before the lane ended, so it is the call's outcome.
            if not self._recv_initial_metadata_done:
                await self.recv_initial_metadata()
            await self.recv_trailing_metadata()

    def _translate(self, exc: Exception) -> Exception:
        if isinstance(exc, GRPCError):
            return exc
        if isinstance(exc, TimeoutError) and self._wrapper_ctx is not None:
            if self._wrapper.cancelled:
                return DeadlineExceededError()
            return exc
        if isinstance(exc, StreamTerminatedError | ConnectionError | h2.exceptions.ProtocolError):
            if self._channel.lane_lost():
                return GRPCError(Status.UNAVAILABLE, self._channel.loss_reason())
            if isinstance(exc, StreamTerminatedError):
                return GRPCError(
                    Status.INTERNAL, f"the peer ended the call without a status: {exc}"
                )
        return exc


def _lost(protocol: H2Protocol) -> bool:
    """Whether a client-side HTTP/2 protocol's connection is gone."""
    return bool(cast(ClientHandler, protocol.handler).connection_lost)


def close_lane(protocol: H2Protocol) -> None:
    """Close a client-side lane; calls still on it fail."""
    if not _lost(protocol):
        protocol.processor.close()


class LaneChannel(Channel):
    """A grpclib channel whose connections are streams of a session ("lanes").

    Subclasses open the stream in :meth:`open_lane`. When the lane dies,
    grpclib calls ``_create_connection`` again on the next call, which opens a
    new stream: the QUIC connection lives on.
    """

    def __init__(
        self,
        *,
        authority: str,
        max_message_size: int,
        codec: Any,
        status_details_codec: Any,
        dispatch: Any | None = None,
    ) -> None:
        super().__init__(
            host=authority, port=443, codec=codec, status_details_codec=status_details_codec
        )
        self._authority = authority
        self._scheme = "https"
        self.max_message_size = max_message_size
        if dispatch is not None:
            self.__dispatch__ = dispatch

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._authority}>"

    async def open_lane(self, protocol: H2Protocol) -> None:
        """Run ``protocol`` on a new stream (calls its ``connection_made``)."""
        raise NotImplementedError

    def loss_reason(self) -> str:
        """Why calls on this lane failed, for UNAVAILABLE messages."""
        return "the lane closed"

    def lane_lost(self) -> bool:
        """Whether the current lane (or the whole connection) is gone."""
        protocol = self._protocol
        return protocol is None or _lost(protocol)

    def call_started(self, stream: CallStream[Any, Any]) -> None:
        """``stream`` sent its request on the current lane."""

    def call_ended(self, stream: CallStream[Any, Any]) -> None:
        """``stream`` left its ``async with`` block (whether or not it started)."""

    def _protocol_factory(self) -> H2Protocol:
        return LaneProtocol(
            ClientHandler(), self._config, self._h2_config, max_message_size=self.max_message_size
        )

    @property
    def protocol(self) -> H2Protocol | None:
        """The current lane's HTTP/2 protocol, if one is open."""
        return self._protocol

    def detach(self) -> H2Protocol | None:
        """Stop sending new calls on the current lane and return it.

        Calls in flight on it carry on; the next call opens a new lane.
        """
        protocol, self._protocol = self._protocol, None
        return protocol

    async def _create_connection(self) -> H2Protocol:
        protocol = self._protocol_factory()
        await self.open_lane(protocol)
        return protocol

    def request(
        self,
        name: str,
        cardinality: Cardinality,
        request_type: type[SendType],
        reply_type: type[RecvType],
        *,
        timeout: float | None = None,
        deadline: Deadline | None = None,
        metadata: _MetadataLike | None = None,
    ) -> CallStream[SendType, RecvType]:
        if timeout is not None:
            by_timeout = Deadline.from_timeout(timeout)
            deadline = by_timeout if deadline is None else min(by_timeout, deadline)
        return CallStream(
            self,
            name,
            cast(_Metadata, MultiDict(metadata or ())),
            cardinality,
            request_type,
            reply_type,
            codec=self._codec,
            status_details_codec=self._status_details_codec,
            dispatch=self.__dispatch__,
            deadline=deadline,
        )

    def close(self) -> None:
        """Close the current lane, if any; a later call opens a new one."""
        if self._protocol is not None:
            super().close()

"""The only module that touches grpclib's private attributes.

grpclib (tested with 0.4.8-0.4.9, pinned in pyproject.toml) runs HTTP/2 over
any asyncio transport, but the seams brpc needs are private:

- :class:`LaneChannel` overrides ``Channel._create_connection`` so that each
  (re)connection opens a new QUIC stream instead of a TCP socket, and builds
  :class:`CallStream` objects instead of grpclib's ``Stream``;
- :class:`CallStream` installs a received-message size limit on the HTTP/2
  stream and turns transport failures into ``GRPCError`` with the right status;
- :func:`server_lane_protocol` builds the server-side HTTP/2 protocol of a
  ``grpclib.server.Server`` for one lane and caps concurrent streams on it;
- :func:`limit_received_message_size` refuses a message by its length prefix,
  before buffering its body.

``tests/test_grpclib_adapter.py`` exercises each of these so that a grpclib
upgrade that moves them fails there.
"""

from __future__ import annotations

import asyncio
import contextvars
from types import TracebackType
from typing import Any, TypeAlias, TypeVar, cast

import h2.exceptions
from grpclib.client import Channel, Stream
from grpclib.client import Handler as ClientHandler
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError, StreamTerminatedError
from grpclib.metadata import Deadline, _Metadata, _MetadataLike
from grpclib.protocol import Connection, EventsProcessor, H2Protocol
from grpclib.protocol import Stream as H2Stream
from grpclib.server import Server
from grpclib.server import Stream as ServerStream
from h2.connection import H2Connection
from h2.settings import SettingCodes
from multidict import MultiDict

from .errors import DeadlineExceededError

# grpclib's names for these types are private; the rest of brpc uses these.
MetadataLike: TypeAlias = _MetadataLike
SendType = TypeVar("SendType")
RecvType = TypeVar("RecvType")

__all__ = [
    "CallStream",
    "LaneChannel",
    "MetadataLike",
    "RecvType",
    "SendType",
    "close_lane",
    "limit_received_message_size",
    "opening_deadline",
    "server_h2_stream",
    "server_lane_protocol",
    "wait_lane_idle",
]


#: The deadline of the call whose request is being sent; a channel that has to
#: wait before it can open a lane bounds the wait with it.
opening_deadline: contextvars.ContextVar[Deadline | None] = contextvars.ContextVar(
    "brpc_opening_deadline", default=None
)


def limit_received_message_size(h2_stream: H2Stream, limit: int) -> None:
    """Make ``h2_stream`` refuse gRPC messages longer than ``limit`` bytes.

    grpclib reads a message as ``recv_data(5)`` (flag and length) followed by
    ``recv_data(length)``, acknowledging flow-control credit as it goes, so a
    peer could make it buffer up to 4 GiB. The wrapper rejects the second read
    by its size, before any of the body is buffered.
    """
    original = h2_stream.recv_data

    async def recv_data(size: int) -> bytes:
        if size > limit:
            raise GRPCError(
                Status.RESOURCE_EXHAUSTED,
                f"received message of {size} bytes exceeds the limit of {limit} bytes "
                "(max_message_size)",
            )
        return await original(size)

    h2_stream.recv_data = recv_data  # type: ignore[method-assign]


def server_h2_stream(stream: ServerStream[Any, Any]) -> H2Stream:
    """The HTTP/2 stream under a server-side gRPC stream."""
    return stream._stream


class _ServerLaneProtocol(H2Protocol):
    """grpclib's server HTTP/2 protocol, announcing brpc's concurrent-stream limit.

    h2 starts every connection with an inbound limit of 100 streams, enforced at
    once, while a client may open streams before it has seen our SETTINGS; 200
    concurrent calls on a fresh lane would kill it. So ``connection_made`` (the
    same steps as grpclib's) announces ``max_concurrent_streams`` in the first
    SETTINGS frame and lets h2 enforce twice that, so that streams opened before
    the SETTINGS arrive survive.
    """

    def __init__(self, template: H2Protocol, max_concurrent_streams: int) -> None:
        super().__init__(template.handler, template.config, template.h2_config)
        self._max_concurrent_streams = max_concurrent_streams

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        h2_conn = H2Connection(config=self.h2_config)
        settings = h2_conn.local_settings
        settings[SettingCodes.MAX_CONCURRENT_STREAMS] = self._max_concurrent_streams
        settings.acknowledge()
        h2_conn.initiate_connection()  # announces the limit
        settings[SettingCodes.MAX_CONCURRENT_STREAMS] = 2 * self._max_concurrent_streams
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
        self.connection = Connection(
            h2_conn, cast(asyncio.Transport, transport), config=self.config
        )
        self.connection.flush()
        self.connection.initialize()
        self.processor = EventsProcessor(self.handler, self.connection)


def server_lane_protocol(server: Server, *, max_concurrent_streams: int) -> H2Protocol:
    """A new server-side HTTP/2 protocol of ``server`` for one lane."""
    template = server._protocol_factory()
    return _ServerLaneProtocol(template, max_concurrent_streams)


class CallStream(Stream[SendType, RecvType]):
    """grpclib's client stream with brpc's limits and error mapping.

    - received messages are bounded by the lane's ``max_message_size``;
    - a deadline raises :class:`DeadlineExceededError` (a ``GRPCError`` and a
      ``TimeoutError``);
    - a lost lane or connection raises ``GRPCError(UNAVAILABLE)`` with the
      reason, also when the reply arrived but the status never did.
    """

    _channel: LaneChannel

    async def send_request(self, *, end: bool = False) -> None:
        token = opening_deadline.set(self._deadline)
        try:
            await super().send_request(end=end)
        finally:
            opening_deadline.reset(token)
        limit_received_message_size(self._stream, self._channel.max_message_size)

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
            raise GRPCError(
                Status.UNAVAILABLE,
                f"{self._channel.loss_reason()} before the call's status arrived",
            )

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


def lane_streams(protocol: H2Protocol) -> int:
    """Calls with an HTTP/2 stream open on a client-side lane."""
    return 0 if _lost(protocol) else len(protocol.processor.streams)


async def wait_lane_idle(protocol: H2Protocol) -> None:
    """Wait until no call has an HTTP/2 stream open on a client-side lane."""
    while lane_streams(protocol):
        released = protocol.connection.stream_close_waiter
        released.clear()
        await released.wait()


def close_lane(protocol: H2Protocol) -> None:
    """Close a client-side lane; calls still on it fail."""
    if not _lost(protocol):
        protocol.processor.close()


class LaneChannel(Channel):
    """A grpclib channel whose connections are QUIC streams ("lanes").

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

"""The frames of the per-call stream layer ("streams"), without I/O.

Each gRPC call is one bidirectional QUIC stream. Every unit on it is a frame
with gRPC's 5-byte prefix (a type byte, a 4-byte big-endian body length) and
a body: a message, or a protobuf header or trailer block from
``brpc/v1/call.proto``. This module owns turning frames into bytes
(``encode_*``), bytes back into events (:class:`FrameDecoder`), the stream
error codes that RESET_STREAM and STOP_SENDING carry (:class:`StreamError`)
and what each of them means to gRPC. docs/protocol.md is the specification.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Any, TypeVar

from google.protobuf.message import DecodeError
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from ..errors import BrpcError, CallNotStartedError
from ..v1 import call_pb2 as pb
from .metadata import (
    MetadataError,
    MetadataLike,
    MetadataPairs,
    add_proto_metadata,
    from_proto_metadata,
    timeout_from_us,
    timeout_to_us,
)

__all__ = [
    "FRAME_PREFIX_SIZE",
    "CallStreamError",
    "FrameDecoder",
    "FrameEvent",
    "FrameType",
    "MessageReceived",
    "MessageTooLarge",
    "RequestHeadersReceived",
    "ResponseHeadersReceived",
    "StreamError",
    "TrailersReceived",
    "encode_message",
    "encode_request_headers",
    "encode_response_headers",
    "encode_trailers",
    "message_prefix",
    "peer_error",
    "peer_error_status",
    "refused_before_start",
]

#: Bytes in a frame's prefix: the type byte and the 4-byte body length.
FRAME_PREFIX_SIZE = 5
_PREFIX = struct.Struct(">BI")
_PACK_PREFIX = _PREFIX.pack
_UNPACK_PREFIX_FROM = _PREFIX.unpack_from
_MAX_BODY = (1 << 32) - 1


class FrameType(enum.IntEnum):
    """The type byte of a frame."""

    #: A gRPC message, uncompressed.
    MESSAGE = 0x00
    #: A compressed gRPC message; never sent by brpc, refused by receivers.
    COMPRESSED_MESSAGE = 0x01
    #: The caller's first frame: a ``brpc.v1.RequestHeaders`` block.
    REQUEST_HEADERS = 0x40
    #: The callee's initial metadata: a ``brpc.v1.ResponseHeaders`` block.
    RESPONSE_HEADERS = 0x41
    #: The callee's last frame: a ``brpc.v1.Trailers`` block.
    TRAILERS = 0x42


class StreamError(enum.IntEnum):
    """Application error codes of RESET_STREAM and STOP_SENDING on a call's stream."""

    #: No error: the sender needs no more data (for example a callee that has
    #: sent its trailers stops the caller's upload).
    NO_ERROR = 0x00
    #: The caller cancelled the call.
    CANCELLED = 0x10
    #: The call's deadline passed.
    DEADLINE_EXCEEDED = 0x11
    #: A frame was larger than the receiver's limit.
    MESSAGE_TOO_LARGE = 0x12
    #: The callee refused the call before its handler started: nothing ran, a
    #: retry is safe.
    REFUSED = 0x13
    #: The peer broke this protocol on the stream.
    PROTOCOL_ERROR = 0x14
    #: An unexpected error in the sender.
    INTERNAL = 0x15
    #: The callee refused the call because its connection is draining; the
    #: handler never started, a retry on another connection is safe.
    CONNECTION_CLOSING = 0x16
    #: The receiver had more of the call's data unread than it can hold (its
    #: QUIC engine could not withhold flow-control credit) and ended the call.
    RECEIVE_OVERFLOW = 0x17


# Plain ints for the hot path (enum member lookups cost more than the comparison).
_MESSAGE = int(FrameType.MESSAGE)
_COMPRESSED_MESSAGE = int(FrameType.COMPRESSED_MESSAGE)
_REQUEST_HEADERS = int(FrameType.REQUEST_HEADERS)
_RESPONSE_HEADERS = int(FrameType.RESPONSE_HEADERS)
_TRAILERS = int(FrameType.TRAILERS)

_PEER_ERROR_STATUS: dict[int, tuple[Status, str]] = {
    StreamError.NO_ERROR: (
        Status.INTERNAL,
        "the peer closed the call's stream without an error code before the call completed",
    ),
    StreamError.CANCELLED: (Status.CANCELLED, "the caller cancelled the call"),
    StreamError.DEADLINE_EXCEEDED: (Status.DEADLINE_EXCEEDED, "deadline exceeded"),
    StreamError.MESSAGE_TOO_LARGE: (
        Status.RESOURCE_EXHAUSTED,
        "the peer refused a message larger than its limit (max_message_size)",
    ),
    StreamError.REFUSED: (
        Status.UNAVAILABLE,
        "the peer refused the call before starting it; it is safe to retry",
    ),
    StreamError.PROTOCOL_ERROR: (
        Status.INTERNAL,
        "the peer reported a protocol error on the call's stream",
    ),
    StreamError.INTERNAL: (Status.INTERNAL, "the peer failed the call with an internal error"),
    StreamError.CONNECTION_CLOSING: (
        Status.UNAVAILABLE,
        "the peer is closing the connection and refused the call before starting it; "
        "it is safe to retry on a new connection",
    ),
    StreamError.RECEIVE_OVERFLOW: (
        Status.RESOURCE_EXHAUSTED,
        "the peer ended the call: more of its data waited unread there than it can hold",
    ),
}


def peer_error_status(code: int) -> tuple[Status, str]:
    """Return the gRPC status and message a side reports when the peer resets
    (RESET_STREAM) or stops (STOP_SENDING) a call's stream with ``code``
    before the call completed. Codes this version does not know map to INTERNAL.
    """
    found = _PEER_ERROR_STATUS.get(code)
    if found is not None:
        return found
    return Status.INTERNAL, f"the peer reset the call's stream with unknown error code {code:#x}"


def refused_before_start(code: int) -> bool:
    """Whether a stream reset with ``code`` proves the callee never ran the call."""
    return code in (StreamError.REFUSED, StreamError.CONNECTION_CLOSING)


def peer_error(code: int) -> GRPCError:
    """The error a caller reports when the callee reset or stopped the call's
    stream with ``code`` before the call completed: a
    :class:`~brpc.errors.CallNotStartedError` for the codes that prove the
    callee never ran it (:func:`refused_before_start`), else a ``GRPCError``
    with the status of :func:`peer_error_status`."""
    status, message = peer_error_status(code)
    if refused_before_start(code):
        return CallNotStartedError(message)
    return GRPCError(status, message)


class CallStreamError(BrpcError):
    """What was received on a call's stream breaks the call.

    :attr:`code` is what to reset the stream with (RESET_STREAM and
    STOP_SENDING); :meth:`grpc_error` is what the local side reports.
    """

    def __init__(self, code: StreamError, message: str, status: Status | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.status = status if status is not None else peer_error_status(code)[0]

    def grpc_error(self) -> GRPCError:
        """The failure as the application sees it."""
        return GRPCError(self.status, str(self))


class MessageTooLarge(CallStreamError):
    """A frame's length prefix exceeds the receiver's limit; its body was not buffered."""

    def __init__(self, message: str) -> None:
        super().__init__(StreamError.MESSAGE_TOO_LARGE, message, Status.RESOURCE_EXHAUSTED)


# -- events -----------------------------------------------------------------------------


@dataclass(slots=True)
class RequestHeadersReceived:
    """The caller's header block."""

    #: The method, ``"/package.Service/Method"``.
    path: str
    metadata: MetadataPairs
    #: Seconds from when the block was received, or ``None``.
    timeout: float | None
    user_agent: str


@dataclass(slots=True)
class ResponseHeadersReceived:
    """The callee's initial metadata."""

    metadata: MetadataPairs


@dataclass(slots=True)
class MessageReceived:
    """One complete gRPC message."""

    data: bytes


@dataclass(slots=True)
class TrailersReceived:
    """The callee's status and trailing metadata."""

    #: The gRPC status code; values grpclib does not know are the receiver's to map (UNKNOWN).
    status: int
    message: str
    #: A serialized ``google.rpc.Status``, exactly as sent, or ``None``.
    details: bytes | None
    metadata: MetadataPairs


FrameEvent = RequestHeadersReceived | ResponseHeadersReceived | MessageReceived | TrailersReceived


# -- encoders ---------------------------------------------------------------------------


def message_prefix(length: int) -> bytes:
    """Return the 5-byte prefix of a message frame whose body is ``length`` bytes.

    For writing a large message as prefix and body without concatenating them.
    """
    if length > _MAX_BODY:
        raise ValueError(f"a message of {length} bytes does not fit a frame (at most 4 GiB - 1)")
    return _PACK_PREFIX(_MESSAGE, length)


def encode_message(data: bytes | bytearray | memoryview) -> bytes:
    """Return the message frame carrying ``data``."""
    return message_prefix(len(data)) + data


def _block_frame(kind: int, body: bytes) -> bytes:
    return _PACK_PREFIX(kind, len(body)) + body


_EMPTY_RESPONSE_HEADERS = _block_frame(_RESPONSE_HEADERS, b"")
_OK_TRAILERS = _block_frame(_TRAILERS, b"")


def encode_request_headers(
    path: str,
    metadata: MetadataLike | None = None,
    timeout: float | None = None,
    user_agent: str = "",
) -> bytes:
    """Return the caller's header frame.

    ``timeout`` is in seconds (``None`` for none). Raises
    :class:`~brpc._wire.metadata.MetadataError` for metadata that may not be sent.
    """
    key = (path, user_agent)
    body = _REQUEST_BASES.get(key)
    if body is None:
        body = pb.RequestHeaders(path=path, user_agent=user_agent).SerializeToString()
        if len(body) <= _CACHED_BLOCK_LIMIT:
            _remember(_REQUEST_BASES, key, body)
    timeout_us = timeout_to_us(timeout)
    if timeout_us or metadata:
        # Serialized blocks concatenated are one block with the fields of both.
        rest = pb.RequestHeaders(timeout_us=timeout_us)
        if metadata:
            add_proto_metadata(rest.metadata, metadata)
        body += rest.SerializeToString()
    return _block_frame(_REQUEST_HEADERS, body)


#: Bound of the caches of header blocks (a cache that fills up starts afresh).
_CACHE_LIMIT = 1024
#: Largest block remembered (each cache holds at most 256 KiB of them).
_CACHED_BLOCK_LIMIT = 256
#: (path, user agent) -> the request header block with those two fields.
_REQUEST_BASES: dict[tuple[str, str], bytes] = {}
#: A received request header block without metadata or timeout -> (path, user agent).
_RECEIVED_REQUESTS: dict[bytes, tuple[str, str]] = {}


def _remember(cache: dict[Any, Any], key: Any, value: Any) -> None:
    if len(cache) >= _CACHE_LIMIT:
        cache.clear()
    cache[key] = value


def encode_response_headers(metadata: MetadataLike | None = None) -> bytes:
    """Return the callee's initial-metadata frame."""
    if not metadata:
        return _EMPTY_RESPONSE_HEADERS
    block = pb.ResponseHeaders()
    add_proto_metadata(block.metadata, metadata)
    return _block_frame(_RESPONSE_HEADERS, block.SerializeToString())


def encode_trailers(
    status: Status | int,
    message: str | None = None,
    details: bytes | None = None,
    metadata: MetadataLike | None = None,
) -> bytes:
    """Return the callee's trailer frame.

    ``status`` is a grpclib :class:`~grpclib.const.Status` or its number;
    ``details`` is a serialized ``google.rpc.Status`` and is sent as is.
    """
    code = status.value if isinstance(status, Status) else status
    if not (message or details or metadata):
        if code == 0:
            return _OK_TRAILERS
        return _block_frame(_TRAILERS, pb.Trailers(status=code).SerializeToString())
    block = pb.Trailers(status=code, message=message or "", details=details or b"")
    if metadata:
        add_proto_metadata(block.metadata, metadata)
    return _block_frame(_TRAILERS, block.SerializeToString())


# -- decoder ----------------------------------------------------------------------------


def _protocol_error(message: str) -> CallStreamError:
    return CallStreamError(StreamError.PROTOCOL_ERROR, message)


_Block = TypeVar("_Block", pb.RequestHeaders, pb.ResponseHeaders, pb.Trailers)


def _parse_block(block: _Block, body: bytes) -> _Block:
    try:
        block.ParseFromString(body)
    except DecodeError as exc:
        name = type(block).__name__
        raise _protocol_error(
            f"received a {name} block that is not valid protobuf: {exc}"
        ) from None
    return block


def _metadata(block: pb.RequestHeaders | pb.ResponseHeaders | pb.Trailers) -> MetadataPairs:
    if not block.metadata:
        return []
    try:
        return from_proto_metadata(block.metadata)
    except MetadataError as exc:
        raise _protocol_error(f"received {type(block).__name__} with {exc}") from None


def _block_event(kind: int, body: bytes) -> FrameEvent:
    if not body and kind != _REQUEST_HEADERS:
        # An empty block is every field's default (OK trailers, for one): no parse.
        if kind == _TRAILERS:
            return TrailersReceived(0, "", None, [])
        return ResponseHeadersReceived([])
    if kind == _REQUEST_HEADERS:
        known = _RECEIVED_REQUESTS.get(body)
        if known is not None:
            return RequestHeadersReceived(known[0], [], None, known[1])
        request = _parse_block(pb.RequestHeaders(), body)
        path = request.path
        if not path.startswith("/"):
            raise _protocol_error(
                f"received request headers with path {path[:200]!r}, not '/package.Service/Method'"
            )
        if not request.metadata and not request.timeout_us and len(body) <= _CACHED_BLOCK_LIMIT:
            # The same bytes on every such call of a method: parse them once.
            _remember(_RECEIVED_REQUESTS, body, (path, request.user_agent))
        return RequestHeadersReceived(
            path,
            _metadata(request),
            timeout_from_us(request.timeout_us),
            request.user_agent,
        )
    if kind == _RESPONSE_HEADERS:
        return ResponseHeadersReceived(_metadata(_parse_block(pb.ResponseHeaders(), body)))
    trailers = _parse_block(pb.Trailers(), body)
    return TrailersReceived(
        trailers.status, trailers.message, trailers.details or None, _metadata(trailers)
    )


_BLOCK_TYPES = frozenset({_REQUEST_HEADERS, _RESPONSE_HEADERS, _TRAILERS})


class FrameDecoder:
    """Incremental decoder of the frames on one call's stream.

    :meth:`feed` takes chunks as they arrive and returns the events they
    complete. A frame whose length prefix exceeds ``max_message_size`` (messages)
    or ``max_header_size`` (header and trailer blocks) is refused as soon as its
    prefix is read, before any of its body is buffered. Every error is a
    :class:`CallStreamError`; after one, the decoder raises it again on every feed.

    A message body is copied once: a frame that arrives whole is sliced out of
    its chunk; one split over chunks is joined from views of them. Chunks must
    not be modified after they are fed (``bytes`` never are; other buffers are
    copied when their bytes must outlive :meth:`feed`).
    """

    __slots__ = (
        "_error",
        "_kind",
        "_max_header",
        "_max_message",
        "_parts",
        "_prefix",
        "_remaining",
    )

    def __init__(self, max_message_size: int, max_header_size: int) -> None:
        self._max_message = max_message_size
        self._max_header = max_header_size
        self._prefix = bytearray()  # a prefix split over chunks, fewer than 5 bytes
        self._kind = -1  # the type of the frame whose body is being collected, or -1
        self._remaining = 0  # bytes of that body still to come
        self._parts: list[bytes | memoryview] = []  # the body's bytes so far
        self._error: CallStreamError | None = None

    @property
    def buffered(self) -> int:
        """Bytes held for a frame not yet complete."""
        return len(self._prefix) + sum(len(part) for part in self._parts)

    @property
    def mid_frame(self) -> bool:
        """Whether a frame has started and not finished (the stream ending now is an error)."""
        return bool(self._prefix) or self._kind >= 0

    def end_of_stream(self) -> None:
        """Check the stream may end here (FIN): raise if it ends inside a frame."""
        if self._error is not None:
            raise self._error
        if self.mid_frame:
            self._error = _protocol_error("the stream ended inside a frame")
            self._parts = []
            raise self._error

    def feed(self, data: bytes | bytearray | memoryview) -> list[FrameEvent]:
        """Add ``data``; return the events it completed, in order."""
        if self._error is not None:
            raise self._error
        try:
            if type(data) is bytes and self._kind < 0 and not self._prefix:
                return self._feed_frames(data)
            return self._feed(data)
        except CallStreamError as exc:
            self._error = exc
            self._parts = []
            raise

    def _feed_frames(self, data: bytes) -> list[FrameEvent]:
        """:meth:`_feed` of a chunk that starts a frame: whole frames are sliced
        out in a tight loop (a call's frames usually arrive in one chunk); a
        frame the chunk ends inside goes the general way."""
        events: list[FrameEvent] = []
        size = len(data)
        pos = 0
        max_message = self._max_message
        unpack = _UNPACK_PREFIX_FROM
        while size - pos >= FRAME_PREFIX_SIZE:
            kind, length = unpack(data, pos)
            if kind != _MESSAGE or length > max_message:
                self._check(kind, length)
            end = pos + FRAME_PREFIX_SIZE + length
            if end > size:
                break
            body = data[pos + FRAME_PREFIX_SIZE : end]
            pos = end
            if kind == _MESSAGE:
                events.append(MessageReceived(body))
            else:
                events.append(_block_event(kind, body))
        if pos < size:
            events.extend(self._feed(data[pos:]))
        return events

    def _feed(self, chunk: bytes | bytearray | memoryview) -> list[FrameEvent]:
        events: list[FrameEvent] = []
        # Slices of a memoryview are views, copied once into bytes.
        data = memoryview(chunk) if isinstance(chunk, bytearray) else chunk
        size = len(data)
        pos = 0
        if self._kind >= 0:
            pos = self._continue_body(data, 0, events)
        while pos < size:
            if self._prefix or size - pos < FRAME_PREFIX_SIZE:
                take = min(FRAME_PREFIX_SIZE - len(self._prefix), size - pos)
                self._prefix += data[pos : pos + take]
                pos += take
                if len(self._prefix) < FRAME_PREFIX_SIZE:
                    break
                kind, length = _PREFIX.unpack(self._prefix)
                self._prefix.clear()
            else:
                kind, length = _UNPACK_PREFIX_FROM(data, pos)
                pos += FRAME_PREFIX_SIZE
            if kind != _MESSAGE or length > self._max_message:
                self._check(kind, length)
            end = pos + length
            if end <= size:
                # The fast path: the whole body is in this chunk.
                body = data[pos:end]
                if type(body) is not bytes:
                    body = bytes(body)
                pos = end
                if kind == _MESSAGE:
                    events.append(MessageReceived(body))
                else:
                    events.append(_block_event(kind, body))
            else:
                self._kind = kind
                self._remaining = length
                pos = self._continue_body(data, pos, events)
        return events

    def _continue_body(self, data: bytes | memoryview, pos: int, events: list[FrameEvent]) -> int:
        """Add ``data[pos:]``, up to the end of the body being collected; return the new pos."""
        size = len(data)
        take = min(self._remaining, size - pos)
        part: bytes | memoryview
        if type(data) is bytes:
            # Immutable: keep a view, copy once when the body is complete.
            part = data if pos == 0 and take == size else memoryview(data)[pos : pos + take]
        else:
            part = bytes(data[pos : pos + take])
        self._parts.append(part)
        self._remaining -= take
        if self._remaining == 0:
            parts, self._parts = self._parts, []
            body = b"".join(parts)
            kind, self._kind = self._kind, -1
            if kind == _MESSAGE:
                events.append(MessageReceived(body))
            else:
                events.append(_block_event(kind, body))
        return pos + take

    def _check(self, kind: int, length: int) -> None:
        if kind == _MESSAGE:
            if length > self._max_message:
                raise MessageTooLarge(
                    f"received message of {length} bytes exceeds the limit of "
                    f"{self._max_message} bytes (max_message_size)"
                )
        elif kind in _BLOCK_TYPES:
            if length > self._max_header:
                name = FrameType(kind).name.lower().replace("_", " ")
                raise MessageTooLarge(
                    f"received {name} block of {length} bytes exceeds the limit of "
                    f"{self._max_header} bytes (max_header_size)"
                )
        elif kind == _COMPRESSED_MESSAGE:
            raise CallStreamError(
                StreamError.INTERNAL, "compressed messages are not supported", Status.INTERNAL
            )
        else:
            raise _protocol_error(f"received a frame of unknown type {kind:#04x}")

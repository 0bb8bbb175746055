"""The control-stream wire format, without I/O.

Owns turning control messages into bytes and bytes back into messages: each
message is a ``brpc.v1.Envelope`` prefixed with its length as a protobuf varint.
:class:`ControlDecoder` is a small state machine fed arbitrary chunks of bytes;
it returns complete envelopes and raises :class:`ProtocolViolation` for
anything malformed or oversized. :func:`check_client_hello` validates a hello's
fields against :class:`HelloLimits`. Nothing here touches sockets or asyncio.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from ..errors import ProtocolViolation
from ..v1 import control_pb2 as pb

__all__ = [
    "ALPN",
    "CONTROL_MESSAGE_LIMIT",
    "PROTOCOL_VERSION",
    "RESUME_SECRET_LENGTH",
    "ControlDecoder",
    "HelloLimits",
    "check_client_hello",
    "encode_envelope",
]

#: The ALPN identifier of the brpc protocol on QUIC.
ALPN = "brpc/1"
#: The control-protocol version this implementation speaks.
PROTOCOL_VERSION = 1
#: Largest control message (one envelope) either side accepts, in bytes.
CONTROL_MESSAGE_LIMIT = 64 << 10

_MAX_VARINT_BYTES = 10
_SERVICE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_envelope(envelope: pb.Envelope) -> bytes:
    """Serialize ``envelope`` with its varint length prefix."""
    body = envelope.SerializeToString()
    return _encode_varint(len(body)) + body


class ControlDecoder:
    """Incremental decoder of length-prefixed envelopes.

    ``max_message_size`` bounds a single envelope; a longer length prefix is
    rejected as soon as it is read, before any of the body is buffered.
    """

    def __init__(self, max_message_size: int) -> None:
        self._max = max_message_size
        self._buffer = bytearray()

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete envelope."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[pb.Envelope]:
        """Add ``data``; return the envelopes it completed, in order."""
        self._buffer += data
        out: list[pb.Envelope] = []
        while True:
            parsed = self._parse_length()
            if parsed is None:
                return out
            length, header = parsed
            if len(self._buffer) < header + length:
                return out
            body = bytes(self._buffer[header : header + length])
            del self._buffer[: header + length]
            out.append(self._parse_body(body))

    def _parse_length(self) -> tuple[int, int] | None:
        value = 0
        for index in range(min(len(self._buffer), _MAX_VARINT_BYTES)):
            byte = self._buffer[index]
            value |= (byte & 0x7F) << (7 * index)
            if value > self._max:
                raise ProtocolViolation(
                    f"control message of at least {value} bytes exceeds the limit of "
                    f"{self._max} bytes"
                )
            if not byte & 0x80:
                return value, index + 1
        if len(self._buffer) >= _MAX_VARINT_BYTES:
            raise ProtocolViolation("control message length prefix is not a valid varint")
        return None

    @staticmethod
    def _parse_body(body: bytes) -> pb.Envelope:
        envelope = pb.Envelope()
        try:
            envelope.ParseFromString(body)
        except DecodeError as exc:
            raise ProtocolViolation(f"control message is not a valid Envelope: {exc}") from exc
        return envelope


#: Bytes of a connection's resume secret (ServerHello.resume_secret).
RESUME_SECRET_LENGTH = 32


@dataclass(frozen=True)
class HelloLimits:
    """Bounds on the fields of a client hello."""

    max_name_length: int = 256
    max_labels: int = 64
    max_label_key_length: int = 128
    max_label_value_length: int = 1024
    max_services: int = 256
    max_service_name_length: int = 256
    max_token_length: int = 16384


def _printable(text: str) -> bool:
    return text.isprintable()


def check_client_hello(hello: pb.ClientHello, limits: HelloLimits) -> str | None:
    """Return why ``hello`` is unacceptable, or ``None`` if it is fine.

    The protocol version is checked separately by the caller, because an
    unsupported version is refused with its own code.
    """
    if len(hello.name) > limits.max_name_length:
        return f"name is longer than {limits.max_name_length} characters"
    if hello.name and not _printable(hello.name):
        return "name contains non-printable characters"
    if len(hello.labels) > limits.max_labels:
        return f"more than {limits.max_labels} labels"
    for key, value in hello.labels.items():
        if not key or len(key) > limits.max_label_key_length or not _printable(key):
            return f"label key {key[:64]!r} is empty, too long or not printable"
        if len(value) > limits.max_label_value_length or not _printable(value):
            return f"value of label {key!r} is too long or not printable"
    if len(hello.services) > limits.max_services:
        return f"more than {limits.max_services} services"
    for service in hello.services:
        if len(service) > limits.max_service_name_length or not _SERVICE_NAME.fullmatch(service):
            return f"{service[:64]!r} is not a fully-qualified gRPC service name"
    if len(hello.token) > limits.max_token_length:
        return f"token is longer than {limits.max_token_length} bytes"
    if len(hello.replaces) > RESUME_SECRET_LENGTH:
        return f"replaces is longer than {RESUME_SECRET_LENGTH} bytes"
    return None

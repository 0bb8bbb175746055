"""The Connect protocol's conventions, as pure functions.

Owns the mapping between gRPC status codes, Connect's code names and HTTP
statuses; Connect error bodies (``{"code", "message", "details"}``); reading
deadlines from ``Connect-Timeout-Ms`` and ``Grpc-Timeout``; and turning HTTP
headers into call metadata and call metadata into headers (``-bin`` values
base64). No I/O.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import re
from collections.abc import Iterable, Sequence
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message
from grpclib.const import Status

__all__ = [
    "CONTENT_JSON",
    "CONTENT_PROTO",
    "GatewayError",
    "code_name",
    "connect_error",
    "decode_bin",
    "details_json",
    "encode_bin",
    "error_body",
    "headers_from_metadata",
    "http_status",
    "metadata_from_headers",
    "parse_duration",
    "parse_timeout",
]

CONTENT_JSON = "application/json"
CONTENT_PROTO = "application/proto"

_HTTP_STATUS = {
    Status.CANCELLED: 499,
    Status.INVALID_ARGUMENT: 400,
    Status.FAILED_PRECONDITION: 400,
    Status.OUT_OF_RANGE: 400,
    Status.UNAUTHENTICATED: 401,
    Status.PERMISSION_DENIED: 403,
    Status.NOT_FOUND: 404,
    Status.ALREADY_EXISTS: 409,
    Status.ABORTED: 409,
    Status.RESOURCE_EXHAUSTED: 429,
    Status.UNIMPLEMENTED: 501,
    Status.UNAVAILABLE: 503,
    Status.DEADLINE_EXCEEDED: 504,
}

#: Request headers that are HTTP's or the gateway's own, never call metadata.
_NOT_METADATA = frozenset(
    {
        "accept",
        "accept-encoding",
        "accept-language",
        "cache-control",
        "connection",
        "content-encoding",
        "content-length",
        "content-type",
        "cookie",
        "expect",
        "host",
        "keep-alive",
        "origin",
        "pragma",
        "referer",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "brpc-target",
        "brpc-target-id",
        "brpc-select",
    }
)
_NOT_METADATA_PREFIXES = ("connect-", "grpc-", "sec-", "proxy-", "x-forwarded-", ":")
_METADATA_KEY = re.compile(r"[0-9a-z_.\-]+")
_GRPC_TIMEOUT = re.compile(r"([0-9]{1,8})([HMSmun])")
_GRPC_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]*)?)(ms|s|m)?")
_DURATION_UNITS = {"ms": 1e-3, "s": 1.0, "m": 60.0, None: 1.0}


class GatewayError(Exception):
    """A call the gateway answers itself with a Connect error.

    ``http`` overrides the HTTP status the code maps to (415 for an
    unsupported content type, 413 for an oversized body, 404 for a path that
    names no method).
    """

    def __init__(self, status: Status, message: str, *, http: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.http = http if http is not None else http_status(status)


def code_name(status: Status) -> str:
    """Connect's name of a gRPC status: ``"invalid_argument"``, ``"canceled"``."""
    if status is Status.CANCELLED:
        return "canceled"
    return status.name.lower()


def http_status(status: Status) -> int:
    """The HTTP status Connect gives a gRPC status (200 for OK, 500 for the rest)."""
    if status is Status.OK:
        return 200
    return _HTTP_STATUS.get(status, 500)


def details_json(details: Sequence[Any] | None) -> list[dict[str, Any]]:
    """grpclib's decoded status details as Connect's ``details`` list.

    Known message types carry ``type``, ``value`` (base64 of the message,
    unpadded) and ``debug`` (its JSON); details of a type this process does not
    know carry the type name only.
    """
    result: list[dict[str, Any]] = []
    for detail in details or ():
        if isinstance(detail, Message):
            entry: dict[str, Any] = {
                "type": detail.DESCRIPTOR.full_name,
                "value": encode_bin(detail.SerializeToString()),
            }
            with contextlib.suppress(TypeError, json_format.Error):
                entry["debug"] = json_format.MessageToDict(detail)
            result.append(entry)
        else:
            name = getattr(detail, "_name", None)
            result.append({"type": name if isinstance(name, str) else repr(detail)})
    return result


def error_body(
    status: Status, message: str | None, details: Sequence[Any] | None = None
) -> dict[str, Any]:
    """A Connect error: ``{"code", "message", "details"}`` (empty parts left out)."""
    body: dict[str, Any] = {"code": code_name(status)}
    if message:
        body["message"] = message
    detail_list = details_json(details)
    if detail_list:
        body["details"] = detail_list
    return body


def connect_error(
    status: Status, message: str | None, details: Sequence[Any] | None = None
) -> tuple[int, dict[str, Any]]:
    """``(HTTP status, Connect error body)`` of a gRPC status, for applications'
    own routes that answer the way the gateway does."""
    return http_status(status), error_body(status, message, details)


def encode_bin(value: bytes) -> str:
    """Base64 without padding, as Connect and gRPC send binary values."""
    return base64.b64encode(value).decode("ascii").rstrip("=")


def decode_bin(text: str) -> bytes:
    """Base64 (standard or URL-safe alphabet, padded or not) to bytes; ValueError if not."""
    cleaned = text.strip().replace("-", "+").replace("_", "/")
    cleaned += "=" * (-len(cleaned) % 4)
    try:
        return base64.b64decode(cleaned, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"not base64: {exc}") from None


def parse_timeout(connect_timeout_ms: str | None, grpc_timeout: str | None) -> float | None:
    """Seconds a call may take from ``Connect-Timeout-Ms`` or ``Grpc-Timeout``
    (the smaller when both are given), or None; ValueError on a malformed value."""
    timeouts = []
    if connect_timeout_ms is not None:
        text = connect_timeout_ms.strip()
        if not text.isdigit() or len(text) > 10:
            raise ValueError(
                f"Connect-Timeout-Ms must be a positive integer of at most 10 digits, not {text!r}"
            )
        timeouts.append(int(text) / 1000)
    if grpc_timeout is not None:
        match = _GRPC_TIMEOUT.fullmatch(grpc_timeout.strip())
        if match is None:
            raise ValueError(
                f"Grpc-Timeout must be up to 8 digits and a unit (H M S m u n), "
                f"not {grpc_timeout!r}"
            )
        timeouts.append(int(match.group(1)) * _GRPC_UNITS[match.group(2)])
    return min(timeouts) if timeouts else None


def parse_duration(text: str) -> float:
    """``"5s"``, ``"250ms"``, ``"1m"`` or ``"2.5"`` (seconds) in seconds; ValueError if not."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"duration {text!r} is not a number with an optional ms, s or m unit")
    seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if seconds <= 0:
        raise ValueError(f"duration {text!r} must be positive")
    return seconds


def metadata_from_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str | bytes]]:
    """Call metadata from HTTP request headers, by Connect's rules.

    HTTP's own headers, ``Connect-*``, ``Grpc-*`` and the gateway's
    ``Brpc-Target*``/``Brpc-Select`` stay behind; names are lowercased; a
    ``-bin`` header's value is base64 and becomes bytes (ValueError if it is
    not base64); names gRPC cannot carry are dropped.
    """
    metadata: list[tuple[str, str | bytes]] = []
    for raw_name, value in headers:
        name = raw_name.lower()
        if name in _NOT_METADATA or name.startswith(_NOT_METADATA_PREFIXES):
            continue
        if not _METADATA_KEY.fullmatch(name):
            continue
        if name.endswith("-bin"):
            try:
                metadata.append((name, decode_bin(value)))
            except ValueError as exc:
                raise ValueError(f"header {raw_name}: {exc}") from None
        else:
            metadata.append((name, value))
    return metadata


def headers_from_metadata(
    metadata: Iterable[tuple[str, str | bytes]] | None, *, prefix: str = ""
) -> list[tuple[str, str]]:
    """HTTP headers from call metadata (``prefix`` is ``"trailer-"`` for trailers)."""
    headers: list[tuple[str, str]] = []
    for name, value in metadata or ():
        text = encode_bin(value) if isinstance(value, bytes) else value
        headers.append((prefix + name, text))
    return headers

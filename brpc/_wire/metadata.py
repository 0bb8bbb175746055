"""gRPC metadata and timeouts as the per-call stream layer carries them.

Owns the rules for metadata keys and values (the same ones grpclib applies, so
a call behaves the same on every call layer), the conversion between
grpclib-style metadata (a mapping or pairs; ``str`` values, ``bytes`` for keys
ending in ``-bin``) and the ``brpc.v1.Metadata`` entries of header and trailer
blocks, and timeouts in seconds <-> the blocks' microseconds. Pure functions.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Iterable, Mapping
from typing import TypeAlias

from google.protobuf.internal.containers import RepeatedCompositeFieldContainer

from ..v1 import call_pb2 as pb

__all__ = [
    "MAX_TIMEOUT_US",
    "MetadataError",
    "MetadataLike",
    "MetadataPairs",
    "add_proto_metadata",
    "check_metadata_key",
    "from_proto_metadata",
    "timeout_from_us",
    "timeout_to_us",
]

#: grpclib-style metadata as users pass it.
MetadataLike: TypeAlias = Mapping[str, str | bytes] | Collection[tuple[str, str | bytes]]
#: Metadata as the decoder returns it: pairs in wire order, keys may repeat.
MetadataPairs: TypeAlias = list[tuple[str, str | bytes]]

#: The largest timeout a header block can carry (uint64 microseconds).
MAX_TIMEOUT_US = (1 << 64) - 1

_KEY = re.compile(r"[0-9a-z_.\-]+")
# Keys HTTP/2 gRPC uses for itself; their meaning is carried by block fields.
_RESERVED_KEYS = frozenset({"te", "content-type", "user-agent"})
# "grpc-" keys gRPC lets travel as metadata (retry bookkeeping); all others are reserved.
_ALLOWED_GRPC_KEYS = frozenset({"grpc-previous-rpc-attempts", "grpc-retry-pushback-ms"})


# Keys already found valid, so that the usual few keys are checked once. Bounded: keys
# come from peers too.
_VALID_KEYS: set[str] = set()
_VALID_KEYS_LIMIT = 1024


class MetadataError(ValueError):
    """Metadata a block may not carry; the message names the entry."""


def check_metadata_key(key: str) -> None:
    """Raise :class:`MetadataError` unless ``key`` may be sent as custom metadata.

    Keys are lowercase ``[0-9a-z_.-]`` (so never ``:``-pseudo headers), not
    ``te``, ``content-type`` or ``user-agent``, and not ``grpc-...`` except the
    retry keys gRPC lets applications see.
    """
    if not _KEY.fullmatch(key):
        raise MetadataError(
            f"invalid metadata key {key!r}: keys are lowercase letters, digits, '-', '_' and '.'"
        )
    if key in _RESERVED_KEYS or (key.startswith("grpc-") and key not in _ALLOWED_GRPC_KEYS):
        raise MetadataError(f"invalid metadata key {key!r}: the key is reserved by gRPC")
    if len(_VALID_KEYS) < _VALID_KEYS_LIMIT:
        _VALID_KEYS.add(key)


def _check_entry(key: str, value: object) -> None:
    if key not in _VALID_KEYS:
        check_metadata_key(key)
    if key.endswith("-bin"):
        if not isinstance(value, bytes | bytearray | memoryview):
            raise MetadataError(f"metadata key {key!r} ends in '-bin': its value must be bytes")
    elif not isinstance(value, str):
        raise MetadataError(f"metadata key {key!r} does not end in '-bin': its value must be str")
    elif not (value and value.isascii() and value.isprintable()):
        # One or more of space and printable ASCII (0x20-0x7E).
        raise MetadataError(
            f"invalid value for metadata key {key!r}: text values are one or more printable "
            "ASCII characters (use a key ending in '-bin' for anything else)"
        )


def _pairs(metadata: MetadataLike | None) -> Iterable[tuple[str, str | bytes]]:
    if not metadata:
        return ()
    if isinstance(metadata, Mapping):
        # grpclib's MultiDict is a Mapping whose items() yields every value of a repeated key.
        return metadata.items()
    return metadata


def add_proto_metadata(
    entries: RepeatedCompositeFieldContainer[pb.Metadata], metadata: MetadataLike | None
) -> None:
    """Check ``metadata`` and append it to a block's ``entries``, in order.

    Raises :class:`MetadataError` for a key or value that may not be sent.
    """
    for key, value in _pairs(metadata):
        _check_entry(key, value)
        if isinstance(value, str):
            entries.add(key=key, text=value)
        else:
            entries.add(key=key, binary=bytes(value))


def from_proto_metadata(entries: Iterable[pb.Metadata]) -> MetadataPairs:
    """Return received block entries as ``(key, str | bytes)`` pairs, in order.

    Raises :class:`MetadataError` for an entry a conforming sender never sends:
    a bad or reserved key, a text value under a ``-bin`` key or the reverse, an
    invalid text value.
    """
    out: MetadataPairs = []
    for entry in entries:
        key = entry.key
        kind = entry.WhichOneof("value")
        value: str | bytes
        if kind == "binary":
            value = entry.binary
        elif kind == "text":
            value = entry.text
        else:
            raise MetadataError(f"metadata entry {key!r} has no value")
        _check_entry(key, value)
        out.append((key, value))
    return out


def timeout_to_us(timeout: float | None) -> int:
    """Return ``timeout`` (seconds, ``None`` for none) as a block's ``timeout_us``.

    ``0`` means no timeout, so a positive timeout rounds up to at least one
    microsecond, and a timeout that already passed (zero or negative) becomes one
    microsecond: the callee sees it expire at once. Timeouts beyond the field's
    range are clamped to it.
    """
    if timeout is None:
        return 0
    if math.isnan(timeout):
        raise ValueError("timeout must be a number of seconds or None, not NaN")
    if timeout >= MAX_TIMEOUT_US / 1e6:
        return MAX_TIMEOUT_US
    micros = timeout * 1e6
    nearest = round(micros)
    if abs(micros - nearest) < 1e-6:
        # 0.000253 s is 253.00000000000003 us in floating point: not 254.
        return max(1, nearest)
    return max(1, math.ceil(micros))


def timeout_from_us(timeout_us: int) -> float | None:
    """Return a block's ``timeout_us`` in seconds, ``None`` for no timeout."""
    return timeout_us / 1e6 if timeout_us else None

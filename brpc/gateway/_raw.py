"""Messages as bytes: a marker type that brpc's protobuf codec passes through.

grpclib's ``ProtoCodec`` (and brpc's ``SizeLimitedCodec``) encode with
``message.SerializeToString()`` after an ``isinstance`` check and decode with
``message_type.FromString(data)``. :class:`RawMessage` is ``bytes`` that
answers both, so ``channel.request(path, cardinality, RawMessage, RawMessage)``
relays any method's messages untouched, with the codec's content subtype
still ``proto``.
"""

from __future__ import annotations

__all__ = ["RawMessage"]


class RawMessage(bytes):
    """A serialized protobuf message, passed through as is."""

    def SerializeToString(self) -> bytes:
        return bytes(self)

    @classmethod
    def FromString(cls, data: bytes) -> RawMessage:
        return cls(data)

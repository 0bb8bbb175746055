"""Refusals of a client's hello, as data.

A server that refuses a hello sends a ``Refusal`` message on the control stream
and then closes the connection. The close itself carries the refusal code as
data: its application error code is ``REFUSAL_BASE + code`` (for example
``0x103`` for UNAUTHENTICATED), so a client that never read the message (lost,
or overtaken by the close) still knows exactly why, without parsing text.
This module owns the codes, which of them are final, and that mapping.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ..v1 import control_pb2 as pb

__all__ = ["REFUSAL_BASE", "Refusal", "RefusalCode"]

#: Application close codes ``REFUSAL_BASE + RefusalCode`` mean "refused with that code".
REFUSAL_BASE = 0x100


class RefusalCode(enum.IntEnum):
    """Why a server refused a hello (the values of ``brpc.v1.Refusal.Code``)."""

    INVALID_HELLO = pb.Refusal.INVALID_HELLO
    UNSUPPORTED_VERSION = pb.Refusal.UNSUPPORTED_VERSION
    UNAUTHENTICATED = pb.Refusal.UNAUTHENTICATED
    PERMISSION_DENIED = pb.Refusal.PERMISSION_DENIED
    RESOURCE_EXHAUSTED = pb.Refusal.RESOURCE_EXHAUSTED
    ALREADY_EXISTS = pb.Refusal.ALREADY_EXISTS
    UNAVAILABLE = pb.Refusal.UNAVAILABLE


#: Refusals that another attempt with the same hello cannot fix.
_PERMANENT = frozenset(
    {
        RefusalCode.INVALID_HELLO,
        RefusalCode.UNSUPPORTED_VERSION,
        RefusalCode.UNAUTHENTICATED,
        RefusalCode.PERMISSION_DENIED,
    }
)


@dataclass(frozen=True)
class Refusal:
    """A refused hello: the code and the server's reason."""

    code: RefusalCode
    reason: str

    @property
    def permanent(self) -> bool:
        """Whether retrying with the same hello is pointless."""
        return self.code in _PERMANENT

    @property
    def close_code(self) -> int:
        """The application error code of the CONNECTION_CLOSE that carries this refusal."""
        return REFUSAL_BASE + int(self.code)

    def to_message(self) -> pb.Refusal:
        return pb.Refusal(code=self.code.name, reason=self.reason)

    @classmethod
    def from_message(cls, message: pb.Refusal) -> Refusal:
        try:
            code = RefusalCode(message.code)
        except ValueError:
            code = RefusalCode.INVALID_HELLO
        return cls(code, message.reason)

    @classmethod
    def from_close(cls, error_code: int, reason: str) -> Refusal | None:
        """The refusal an application close code carries, or None if it carries none."""
        try:
            code = RefusalCode(error_code - REFUSAL_BASE)
        except ValueError:
            return None
        return cls(code, reason)

    def __str__(self) -> str:
        return f"{self.code.name}: {self.reason}"

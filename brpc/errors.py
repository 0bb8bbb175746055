"""Exceptions brpc raises and the codes it closes connections with.

Failures of calls are always :class:`grpclib.exceptions.GRPCError` with the
gRPC status that fits (UNAVAILABLE when the connection is gone,
DEADLINE_EXCEEDED when a deadline passes, ...); two subclasses say more:
:class:`DeadlineExceededError`, and :class:`CallNotStartedError` for a call
the callee provably never ran. The other exceptions here describe failures to
establish or keep a connection.
"""

from __future__ import annotations

import enum

from grpclib.const import Status
from grpclib.exceptions import GRPCError

__all__ = [
    "BrpcError",
    "CallNotStartedError",
    "CloseCode",
    "ConnectError",
    "DeadlineExceededError",
    "HandshakeError",
    "ProtocolViolation",
    "RefusedError",
]


class CloseCode(enum.IntEnum):
    """Application error codes brpc puts in a QUIC CONNECTION_CLOSE frame."""

    #: Orderly close by either side.
    NO_ERROR = 0x0
    #: The peer broke the brpc protocol (malformed control message, stream
    #: opened before the hello, oversized hello, ...).
    PROTOCOL_VIOLATION = 0x1
    #: The server refused the client's hello. Refusals close with
    #: ``0x100 + Refusal.Code`` instead, so the code is data, not text.
    REFUSED = 0x2
    #: The sender is shutting down.
    GOING_AWAY = 0x3
    #: The client did not send its hello in time.
    HELLO_TIMEOUT = 0x4
    #: An unexpected error inside brpc.
    INTERNAL_ERROR = 0x5
    #: A newer connection with the same client name replaced this one.
    REPLACED = 0x6
    #: The peer did not finish the TLS handshake in time.
    HANDSHAKE_TIMEOUT = 0x7


class BrpcError(Exception):
    """Base class of brpc's own exceptions."""


class ConnectError(BrpcError, ConnectionError):
    """A connection could not be established: network, timeout, TLS or refusal."""


class HandshakeError(ConnectError):
    """The QUIC/TLS handshake failed: certificate verification, ALPN, version."""


class RefusedError(ConnectError):
    """The server completed the handshake but refused the client's hello."""

    def __init__(self, message: str, *, code: str, reason: str, permanent: bool = False) -> None:
        super().__init__(message)
        #: Refusal code name, for example ``"UNAUTHENTICATED"``.
        self.code = code
        #: The server's reason, as the server wrote it.
        self.reason = reason
        #: Whether retrying with the same hello cannot succeed (a reconnecting
        #: client gives up on these).
        self.permanent = permanent


class ProtocolViolation(BrpcError):
    """The peer sent something the brpc protocol does not allow."""


class DeadlineExceededError(GRPCError, TimeoutError):
    """A call's deadline passed.

    It is a :class:`GRPCError` with status ``DEADLINE_EXCEEDED`` (gRPC
    semantics) and also a :class:`TimeoutError`, which is what plain grpclib
    raises, so code written for either keeps working.
    """

    def __init__(self, message: str = "Deadline exceeded") -> None:
        super().__init__(Status.DEADLINE_EXCEEDED, message)


class CallNotStartedError(GRPCError):
    """A call failed before the callee started its handler: nothing ran there.

    It is a :class:`GRPCError` with status ``UNAVAILABLE``, raised only when
    brpc knows the call never started: the callee refused it before its
    handler started (it could not take the call, or its connection is
    draining: stream error ``REFUSED`` or ``CONNECTION_CLOSING``), or the
    call was never sent because its connection was closing, gone or not
    connected. Retrying it is safe even for a method that is not idempotent,
    preferably on another connection; brpc does not retry by itself. A plain
    ``GRPCError(UNAVAILABLE)`` may come from a call that ran, all or in part.

    Only the side that made the call sees this type: a handler that lets one
    escape answers its own caller with a plain ``UNAVAILABLE`` status.
    """

    def __init__(self, message: str) -> None:
        super().__init__(Status.UNAVAILABLE, message)

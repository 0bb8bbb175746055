"""The session seam: what every transport under brpc offers the layers above.

A :class:`Session` is one authenticated connection to a peer, multiplexing
bidirectional byte streams (QUIC today; an in-memory pair for tests; TCP+TLS
with a stream multiplexer later). The layers above open streams on it, are
told about streams the peer opens through their :class:`SessionHandler`, and
learn why it ended from :class:`SessionClosed`. Every session is also the
:class:`~brpc._session.stream_transport.StreamHost` its stream transports
call back into.
"""

from __future__ import annotations

import asyncio
import contextvars
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from .._wire.refusal import Refusal
from ..errors import CloseCode
from .stream_transport import StreamHost, StreamTransport

if TYPE_CHECKING:
    from cryptography import x509

__all__ = ["AddressWatcher", "Session", "SessionClosed", "SessionHandler", "describe_close_code"]


def describe_close_code(error_code: int) -> str:
    """The name of a brpc application close code (refusals included)."""
    try:
        return CloseCode(error_code).name
    except ValueError:
        pass
    refusal = Refusal.from_close(error_code, "")
    if refusal is not None:
        return f"REFUSED {refusal.code.name}"
    return f"application error 0x{error_code:x}"


@dataclass(frozen=True)
class SessionClosed:
    """Why a session ended."""

    error_code: int
    reason: str
    #: True for transport errors (including TLS alerts), False for brpc close codes.
    transport_error: bool
    #: True when this side initiated the close.
    local: bool
    #: The transport's name for a transport error code (for example ``"CRYPTO_ERROR"``).
    code_name: str = ""

    @property
    def refusal(self) -> Refusal | None:
        """The server's refusal of the hello, when that is how the session ended."""
        if self.transport_error:
            return None
        return Refusal.from_close(self.error_code, self.reason)

    def describe(self) -> str:
        """A sentence for humans: who closed, with which code, why."""
        if self.reason == "Idle timeout":
            return "connection timed out: no packets from peer within the idle timeout"
        who = "closed locally" if self.local else "closed by peer"
        if self.transport_error:
            code = self.code_name or f"transport error 0x{self.error_code:x}"
        else:
            code = describe_close_code(self.error_code)
        return f"connection {who} ({code}): {self.reason or 'no reason given'}"


class Session(StreamHost, Protocol):
    """One connection to a peer, as bidirectional streams."""

    #: Why the session ended; None while it is up.
    closed: SessionClosed | None
    #: Whether the transport handshake (TLS) completed.
    handshake_done: bool

    def open_stream(
        self, protocol: asyncio.Protocol, context: contextvars.Context | None = None
    ) -> StreamTransport:
        """Open a local bidirectional stream running ``protocol``; raise
        ``ConnectionError`` if the session is closed."""
        ...

    def close(
        self,
        error_code: int = CloseCode.NO_ERROR,
        reason: str = "",
        *,
        transport_error: bool = False,
    ) -> None:
        """Close with ``error_code`` and a reason the peer sees; pending stream data goes first."""
        ...

    def abort(self) -> None:
        """Drop the connection without waiting for a closing period."""
        ...

    @property
    def peer_address(self) -> tuple[str, int] | None:
        """Where the peer's packets come from now."""
        ...

    def peer_certificate(self) -> x509.Certificate | None:
        """The certificate the peer presented in the handshake, if any."""
        ...

    def peer_certificate_chain(self) -> list[x509.Certificate]:
        """The intermediate certificates the peer sent after its own."""
        ...

    def transport_stats(self) -> list[dict[str, int]]:
        """Byte counters of every live stream."""
        ...

    def prove_peer_certificate(
        self, certificate: x509.Certificate, chain: list[x509.Certificate]
    ) -> None:
        """Record the peer's certificate as proven above TLS (see ``keyproof.py``):
        :meth:`peer_certificate` returns it from now on when TLS carried none."""
        ...

    def exporter_secret(self, label: bytes, length: int) -> bytes:
        """TLS-Exporter(label, "", length) of this connection (RFC 8446 section 7.5):
        the same at both ends, different for any other connection."""
        ...


class SessionHandler(Protocol):
    """What a session reports to the layer above it."""

    def handshake_completed(self, session: Session) -> None: ...

    def stream_opened(
        self, session: Session, stream_id: int
    ) -> tuple[asyncio.Protocol, contextvars.Context | None] | None:
        """Return the protocol (and context) for a new peer-opened stream, or
        ``None`` to refuse it (the stream is reset)."""
        ...

    def session_closed(self, session: Session, closed: SessionClosed) -> None: ...

    def address_changed(self, session: Session, address: tuple[str, int]) -> None:
        """The peer's packets now come from ``address`` (migration, NAT rebinding);
        the connection goes on. Reported once per change, after the handshake."""
        ...


class AddressWatcher(Protocol):
    """What a :class:`SessionHandler` may also have: sessions call
    ``address_changed`` (when the handler has it) after the peer's address
    changed under a live connection (NAT rebinding, migration)."""

    def address_changed(self, session: Session, address: tuple[str, int]) -> None: ...

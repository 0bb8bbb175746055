"""The server's side of one incoming QUIC connection, up to and including its hello.

:class:`IncomingConnection` is the session handler of every connection a
:class:`brpc.Server` accepts. In order, it:

1. verifies the client certificate right after the TLS handshake, when the
   server requires mutual TLS (a bad one closes the connection with
   ``REFUSED`` and a reason);
2. refuses any stream data that arrives before the handshake completed (that
   can only be 0-RTT early data, which attackers can replay);
3. reads the client's hello on the control stream (the first stream; anything
   else first is a protocol violation), within the hello timeout;
4. checks the hello, runs the server's authentication hook, and asks the
   server to admit the client; refusals go back as a ``Refusal`` message plus a
   ``REFUSED`` close whose reason repeats it;
5. from then on hands new streams (lanes) to the connection's :class:`Link`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from typing import TYPE_CHECKING, Any

from aioquic.quic.packet import QuicErrorCode

from . import _aioquic
from ._control import PROTOCOL_VERSION, check_client_hello
from ._control_stream import ControlProtocol
from ._verify import CertificateRejected
from .auth import AuthRequest, Identity, PermissionDenied, Unauthenticated
from .errors import CloseCode, ProtocolViolation
from .v1 import control_pb2 as pb

if TYPE_CHECKING:
    from ._link import Link
    from ._session import QuicSession, SessionClosed
    from .server import Server

__all__ = ["IncomingConnection", "Refused"]

log = logging.getLogger(__name__)

_CONTROL_MESSAGE_LIMIT = 64 << 10


class Refused(Exception):
    """Raised by the server's admission to refuse a hello."""

    def __init__(self, code: pb.Refusal.Code, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class IncomingConnection:
    """One QUIC connection accepted by a server, before and after its hello."""

    def __init__(self, server: Server[Any], session: QuicSession | None = None) -> None:
        self.server = server
        self.session = session
        self.control: ControlProtocol | None = None
        self.link: Link | None = None
        self.certificate_identity: Identity | None = None
        self._hello_timer: asyncio.TimerHandle | None = None
        self._accepting: asyncio.Task[None] | None = None

    @property
    def peer(self) -> Any:
        return self.session.get_extra_info("peername") if self.session is not None else None

    # -- SessionHandler ------------------------------------------------------------------

    def handshake_completed(self, session: QuicSession) -> None:
        verifier = self.server._client_verifier
        if verifier is not None:
            try:
                self.certificate_identity = verifier.verify(
                    _aioquic.peer_certificate(session.quic),
                    _aioquic.peer_certificate_chain(session.quic),
                )
            except CertificateRejected as exc:
                log.info("refused connection from %s: %s", self.peer, exc)
                session.close(CloseCode.REFUSED, f"UNAUTHENTICATED: {exc}")
                return
        timeout = self.server._hello_timeout
        self._hello_timer = asyncio.get_running_loop().call_later(timeout, self._hello_timed_out)

    def stream_opened(
        self, session: QuicSession, stream_id: int
    ) -> tuple[asyncio.Protocol, Any] | None:
        if self.link is not None:
            return self.link.incoming_lane()
        if not session.handshake_done:
            # Only 0-RTT data can arrive before the handshake completes, and it
            # can be replayed. Application close codes lose their reason during
            # the handshake, so this is a transport-level close.
            reason = "stream data before the handshake completed (0-RTT is refused)"
            log.info("closing connection from %s: %s", self.peer, reason)
            session.close(QuicErrorCode.PROTOCOL_VIOLATION, reason, transport_error=True)
            return None
        if self.control is None and stream_id == 0:
            self.control = ControlProtocol(
                max_message_size=_CONTROL_MESSAGE_LIMIT,
                on_message=self._hello_received,
                on_violation=self._violation,
                on_closed=self._control_closed,
            )
            return self.control, None
        self._violation(ProtocolViolation(f"stream {stream_id} opened before the hello exchange"))
        return None

    def session_closed(self, session: QuicSession, closed: SessionClosed) -> None:
        if self._hello_timer is not None:
            self._hello_timer.cancel()
        if self._accepting is not None and not self._accepting.done():
            self._accepting.cancel()
        self.server._connections.discard(self)
        if self.link is not None:
            self.link.session_closed(closed)
        else:
            log.info("connection from %s: %s", self.peer, closed.describe())

    # -- the hello -------------------------------------------------------------------------

    def _hello_received(self, envelope: pb.Envelope) -> None:
        kind = envelope.WhichOneof("message")
        if self._accepting is not None:
            self._violation(ProtocolViolation(f"{kind} message before the hello was answered"))
        elif kind != "client_hello":
            self._violation(ProtocolViolation(f"expected a ClientHello, got {kind or 'nothing'}"))
        else:
            if self._hello_timer is not None:
                self._hello_timer.cancel()
            self._accepting = asyncio.get_running_loop().create_task(
                self._accept(envelope.client_hello), name=f"brpc accept {self.peer}"
            )

    async def _accept(self, hello: pb.ClientHello) -> None:
        try:
            self._check(hello)
            identity = await self._authenticate(hello)
            if self.session is None or self.session.closed is not None:
                return
            self.server._admit(self, hello, identity)  # sets self.link
        except Refused as refused:
            self._refuse(refused.code, refused.reason)

    def _check(self, hello: pb.ClientHello) -> None:
        if hello.protocol_version != PROTOCOL_VERSION:
            raise Refused(
                pb.Refusal.UNSUPPORTED_VERSION,
                f"protocol version {hello.protocol_version} is not supported; "
                f"this server speaks {PROTOCOL_VERSION}",
            )
        problem = check_client_hello(hello, self.server._hello_limits)
        if problem is not None:
            raise Refused(pb.Refusal.INVALID_HELLO, problem)
        if self.server._closing:
            raise Refused(pb.Refusal.UNAVAILABLE, "the server is shutting down")

    async def _authenticate(self, hello: pb.ClientHello) -> Identity | None:
        hook = self.server._authenticate
        if hook is None:
            return self.certificate_identity
        request = AuthRequest(
            name=hello.name,
            labels=dict(hello.labels),
            services=tuple(hello.services),
            token=hello.token,
            address=self.peer,
            certificate=self.certificate_identity,
        )
        try:
            result = hook(request)
            if inspect.isawaitable(result):
                result = await result
        except Unauthenticated as exc:
            raise Refused(pb.Refusal.UNAUTHENTICATED, str(exc) or "unauthenticated") from None
        except PermissionDenied as exc:
            raise Refused(pb.Refusal.PERMISSION_DENIED, str(exc) or "permission denied") from None
        except Exception:
            log.exception("the authentication hook failed for %s", self.peer)
            raise Refused(
                pb.Refusal.UNAUTHENTICATED, "the server could not authenticate the client"
            ) from None
        if result is not None and not isinstance(result, Identity):
            log.error("the authentication hook returned %r, not an Identity", result)
            raise Refused(
                pb.Refusal.UNAUTHENTICATED, "the server could not authenticate the client"
            )
        return result if result is not None else self.certificate_identity

    def _refuse(self, code: pb.Refusal.Code, reason: str) -> None:
        session, control = self.session, self.control
        assert session is not None and control is not None
        name = pb.Refusal.Code.Name(code)
        log.info("refused connection from %s (%s): %s", self.peer, name, reason)
        control.send(pb.Envelope(refusal=pb.Refusal(code=code, reason=reason)))
        session.transmit()  # the refusal leaves before the CONNECTION_CLOSE
        session.close(CloseCode.REFUSED, f"{name}: {reason}")

    def _violation(self, exc: ProtocolViolation) -> None:
        if self.session is not None:
            log.info("closing connection from %s: %s", self.peer, exc)
            self.session.close(CloseCode.PROTOCOL_VIOLATION, str(exc))

    def _control_closed(self, exc: Exception | None) -> None:
        if self.link is None and self.session is not None:
            self.session.close(
                CloseCode.PROTOCOL_VIOLATION, "control stream closed before the hello"
            )

    def _hello_timed_out(self) -> None:
        if self.link is None and self.session is not None and self._accepting is None:
            timeout = self.server._hello_timeout
            self.session.close(CloseCode.HELLO_TIMEOUT, f"no hello within {timeout} s")

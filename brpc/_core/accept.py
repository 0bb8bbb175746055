"""The accepting side of one connection, up to and including its hello.

:class:`Acceptor` is the session handler of every connection a server
accepts. It moves through :class:`AcceptPhase` in order:

1. HANDSHAKE: the transport handshake; stream data before it completed can
   only be 0-RTT early data, which attackers can replay: refused. When the
   server requires client certificates, the certificate is verified right
   after the handshake (a bad one is refused as UNAUTHENTICATED).
2. HELLO: the client's hello on the control stream (the first stream;
   anything else first is a protocol violation), within the hello timeout.
3. AUTHENTICATING: the hello is checked, the authentication hook runs and
   the server (an :class:`Admitter`) admits the client and makes its link.
4. ACCEPTED: the server hello went out; new streams and control messages
   belong to the link.
5. CLOSED. A refusal sends a ``Refusal`` message and closes with the refusal
   code carried as data (see :mod:`brpc._wire.refusal`).

The acceptor knows the server only through :class:`Admitter` and the
:class:`AcceptSettings` it was built with.
"""

from __future__ import annotations

import asyncio
import contextvars
import enum
import inspect
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from .._security.keyproof import EXPORTER_LABEL, EXPORTER_LENGTH, verify_key_proof
from .._security.verify import CertificateRejected, ClientCertificateVerifier
from .._wire.control import CONTROL_MESSAGE_LIMIT, PROTOCOL_VERSION, HelloLimits, check_client_hello
from .._wire.refusal import Refusal, RefusalCode
from ..auth import AuthRequest, Identity, PermissionDenied, Unauthenticated
from ..errors import CloseCode, ProtocolViolation
from ..v1 import control_pb2 as pb
from .control_stream import ControlProtocol

if TYPE_CHECKING:
    from .._session.base import Session, SessionClosed
    from ..auth import Authenticator
    from .link import Link

__all__ = ["AcceptPhase", "AcceptSettings", "Acceptor", "Admitter", "Hello", "Refused"]

log = logging.getLogger(__name__)

# Close codes of the QUIC transport (RFC 9000 §20.1) the acceptor uses before the hello.
_PROTOCOL_VIOLATION = 0xA


class AcceptPhase(enum.Enum):
    """Where an accepted connection is."""

    HANDSHAKE = "handshake"
    HELLO = "hello"
    AUTHENTICATING = "authenticating"
    ACCEPTED = "accepted"
    CLOSED = "closed"


class Refused(Exception):
    """Raised by an :class:`Admitter` to refuse a hello."""

    def __init__(self, code: RefusalCode, reason: str) -> None:
        super().__init__(reason)
        self.refusal = Refusal(code, reason)


@dataclass(frozen=True)
class Hello:
    """A checked and authenticated hello, for the server to admit."""

    message: pb.ClientHello
    identity: Identity | None
    session: Session
    control: ControlProtocol


class Admitter(Protocol):
    """The server, as an acceptor sees it."""

    @property
    def closing(self) -> bool:
        """Whether the server refuses new clients (it is shutting down)."""
        ...

    async def admit(self, hello: Hello) -> tuple[Link, pb.ServerHello]:
        """Make the client's link and the server hello, or raise :class:`Refused`.

        May wait (a cluster claims the client's name); once it returns, the
        acceptor answers the hello without waiting again."""
        ...

    def connected(self, link: Link) -> None:
        """The server hello of ``link`` went out: register the client."""
        ...

    def moved(self, link: Link, address: tuple[str, int]) -> None:
        """The client of ``link`` now sends from ``address`` (NAT rebinding, migration)."""
        ...


@dataclass(frozen=True)
class AcceptSettings:
    """What every acceptor of one server works with."""

    hello_timeout: float
    hello_limits: HelloLimits
    verifier: ClientCertificateVerifier | None = None
    authenticate: Authenticator | None = None
    #: Verify the client certificate from the hello's key proof (bound to the TLS
    #: exporter secret) instead of the TLS handshake: for engines whose TLS server
    #: cannot ask for a client certificate.
    certificate_proof: bool = False


class Acceptor:
    """One connection a server accepted, before and after its hello."""

    def __init__(self, settings: AcceptSettings, admitter: Admitter) -> None:
        self._settings = settings
        self._admitter = admitter
        self.phase = AcceptPhase.HANDSHAKE
        self._session: Session | None = None
        self._control: ControlProtocol | None = None
        #: The client's link, once accepted.
        self.link: Link | None = None
        self._certificate_identity: Identity | None = None
        self._hello_timer: asyncio.TimerHandle | None = None
        self._accepting: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<Acceptor {self._peer} {self.phase.value}>"

    @property
    def _peer(self) -> tuple[str, int] | None:
        return self._session.peer_address if self._session is not None else None

    # -- SessionHandler --------------------------------------------------------------

    def handshake_completed(self, session: Session) -> None:
        self._session = session
        verifier = self._settings.verifier
        if verifier is not None and not self._settings.certificate_proof:
            try:
                self._certificate_identity = verifier.verify(
                    session.peer_certificate(), session.peer_certificate_chain()
                )
            except CertificateRejected as exc:
                log.info("refused connection from %s: %s", self._peer, exc)
                self._close_refused(Refusal(RefusalCode.UNAUTHENTICATED, str(exc)))
                return
        self.phase = AcceptPhase.HELLO
        self._hello_timer = asyncio.get_running_loop().call_later(
            self._settings.hello_timeout, self._hello_timed_out
        )

    def stream_opened(
        self, session: Session, stream_id: int
    ) -> tuple[asyncio.Protocol, contextvars.Context | None] | None:
        self._session = session
        phase = self.phase
        if phase is AcceptPhase.ACCEPTED and self.link is not None:
            return self.link.accept_stream()
        if phase is AcceptPhase.HANDSHAKE:
            # Only 0-RTT data can arrive before the handshake completes, and it
            # can be replayed. Application close codes lose their reason during
            # the handshake, so this is a transport-level close.
            reason = "stream data before the handshake completed (0-RTT is refused)"
            log.info("closing connection from %s: %s", self._peer, reason)
            session.close(_PROTOCOL_VIOLATION, reason, transport_error=True)
            return None
        if phase is AcceptPhase.HELLO and self._control is None and stream_id == 0:
            self._control = ControlProtocol(self, max_message_size=CONTROL_MESSAGE_LIMIT)
            return self._control, None
        self.control_violation(
            ProtocolViolation(f"stream {stream_id} opened before the hello exchange")
        )
        return None

    def session_closed(self, session: Session, closed: SessionClosed) -> None:
        self.phase = AcceptPhase.CLOSED
        if self._hello_timer is not None:
            self._hello_timer.cancel()
        if self._accepting is not None and not self._accepting.done():
            self._accepting.cancel()
        link, self.link = self.link, None
        self._session = None
        self._control = None
        if link is not None:
            link.session_closed(closed)
        else:
            log.info("connection from %s: %s", session.peer_address, closed.describe())

    def address_changed(self, session: Session, address: tuple[str, int]) -> None:
        if self.phase is AcceptPhase.ACCEPTED and self.link is not None:
            self._admitter.moved(self.link, address)

    # -- ControlReceiver -------------------------------------------------------------

    def control_received(self, envelope: pb.Envelope) -> None:
        if self.phase is AcceptPhase.ACCEPTED and self.link is not None:
            self.link.control_received(envelope)
            return
        kind = envelope.WhichOneof("message")
        if self.phase is not AcceptPhase.HELLO:
            self.control_violation(
                ProtocolViolation(f"{kind} message before the hello was answered")
            )
        elif kind != "client_hello":
            self.control_violation(
                ProtocolViolation(f"expected a ClientHello, got {kind or 'nothing'}")
            )
        else:
            self.phase = AcceptPhase.AUTHENTICATING
            if self._hello_timer is not None:
                self._hello_timer.cancel()
            self._accepting = asyncio.get_running_loop().create_task(
                self._accept(envelope.client_hello), name=f"brpc accept {self._peer}"
            )

    def control_violation(self, exc: ProtocolViolation) -> None:
        if self.phase is AcceptPhase.ACCEPTED and self.link is not None:
            self.link.control_violation(exc)
        elif self._session is not None:
            log.info("closing connection from %s: %s", self._peer, exc)
            self._session.close(CloseCode.PROTOCOL_VIOLATION, str(exc))

    def control_closed(self, exc: Exception | None) -> None:
        if self.phase is AcceptPhase.ACCEPTED and self.link is not None:
            self.link.control_closed(exc)
        elif self._session is not None and self.phase is not AcceptPhase.CLOSED:
            self._session.close(
                CloseCode.PROTOCOL_VIOLATION, "control stream closed before the hello"
            )

    # -- the hello -------------------------------------------------------------------

    async def _accept(self, message: pb.ClientHello) -> None:
        try:
            await self._answer(message)
        finally:
            # Done with: a finished task (its name, context and result) need not
            # stay with every connection.
            self._accepting = None

    async def _answer(self, message: pb.ClientHello) -> None:
        session, control = self._session, self._control
        assert session is not None and control is not None
        try:
            self._check(message)
            self._verify_proof(session, message)
            identity = await self._authenticate(message)
            if session.closed is not None:
                return
            _check_name(message.name, identity)
            link, server_hello = await self._admitter.admit(
                Hello(message, identity, session, control)
            )
        except Refused as refused:
            if session.closed is None:
                self._refuse(refused.refusal)
            return
        self.link = link
        self.phase = AcceptPhase.ACCEPTED
        control.send(pb.Envelope(server_hello=server_hello))
        # Last: connect callbacks may call the client (its hello is answered)
        # or close it (the connection already knows its link).
        self._admitter.connected(link)

    def _check(self, hello: pb.ClientHello) -> None:
        if hello.protocol_version != PROTOCOL_VERSION:
            raise Refused(
                RefusalCode.UNSUPPORTED_VERSION,
                f"protocol version {hello.protocol_version} is not supported; "
                f"this server speaks {PROTOCOL_VERSION}",
            )
        problem = check_client_hello(hello, self._settings.hello_limits)
        if problem is not None:
            raise Refused(RefusalCode.INVALID_HELLO, problem)
        if self._admitter.closing:
            raise Refused(RefusalCode.UNAVAILABLE, "the server is shutting down")

    def _verify_proof(self, session: Session, hello: pb.ClientHello) -> None:
        """Verify the client certificate the hello proves (see ``keyproof.py``)."""
        verifier = self._settings.verifier
        if verifier is None or not self._settings.certificate_proof:
            return
        try:
            exporter = session.exporter_secret(EXPORTER_LABEL, EXPORTER_LENGTH)
            certificate, chain = verify_key_proof(
                hello.client_certificates, hello.client_proof, exporter
            )
            self._certificate_identity = verifier.verify(certificate, chain)
            assert certificate is not None  # the verifier refuses a missing one
            session.prove_peer_certificate(certificate, chain)
        except CertificateRejected as exc:
            raise Refused(RefusalCode.UNAUTHENTICATED, str(exc)) from None

    async def _authenticate(self, hello: pb.ClientHello) -> Identity | None:
        hook = self._settings.authenticate
        if hook is None:
            return self._certificate_identity
        request = AuthRequest(
            name=hello.name,
            labels=dict(hello.labels),
            services=tuple(hello.services),
            token=hello.token,
            address=self._peer,
            certificate=self._certificate_identity,
        )
        try:
            result = hook(request)
            if inspect.isawaitable(result):
                result = await result
        except Unauthenticated as exc:
            raise Refused(RefusalCode.UNAUTHENTICATED, str(exc) or "unauthenticated") from None
        except PermissionDenied as exc:
            raise Refused(RefusalCode.PERMISSION_DENIED, str(exc) or "permission denied") from None
        except Exception:
            log.exception("the authentication hook failed for %s", self._peer)
            raise Refused(
                RefusalCode.UNAUTHENTICATED, "the server could not authenticate the client"
            ) from None
        if result is not None and not isinstance(result, Identity):
            log.error("the authentication hook returned %r, not an Identity", result)
            raise Refused(
                RefusalCode.UNAUTHENTICATED, "the server could not authenticate the client"
            )
        return result if result is not None else self._certificate_identity

    def _refuse(self, refusal: Refusal) -> None:
        log.info("refused connection from %s: %s", self._peer, refusal)
        if self._control is not None:
            self._control.send(pb.Envelope(refusal=refusal.to_message()))
        self._close_refused(refusal)

    def _close_refused(self, refusal: Refusal) -> None:
        if self._session is not None:
            self._session.close(refusal.close_code, refusal.reason)

    def _hello_timed_out(self) -> None:
        if self.phase is AcceptPhase.HELLO and self._session is not None:
            timeout = self._settings.hello_timeout
            self._session.close(CloseCode.HELLO_TIMEOUT, f"no hello within {timeout} s")


def _check_name(name: str, identity: Identity | None) -> None:
    """Refuse a name that is not bound to the client's verified identity."""
    if identity is None or identity.may_use_name(name):
        return
    raise Refused(
        RefusalCode.PERMISSION_DENIED,
        f"the name {name!r} does not belong to this client's identity {identity.name!r}: "
        f"say hello as {identity.name!r} or with no name, or have the server's "
        "authenticate hook allow the name (Identity(names=...))",
    )

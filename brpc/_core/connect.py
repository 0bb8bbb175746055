"""The dialing side of one connection: its hello, after the transport handshake.

:func:`connect_link` asks its :data:`Dialer` for a session (for QUIC:
resolve, UDP socket, handshake, server certificate verified), opens the
control stream, sends the hello and waits for the server's answer. The attempt
moves through :class:`ConnectPhase`: HANDSHAKE, HELLO, READY (a link exists),
or FAILED. It returns a :class:`Link` or raises an exception that says what
went wrong: :class:`HandshakeError` for TLS (raised by the dialer),
:class:`RefusedError` for a refused hello, :class:`ConnectError` for anything
else. Reconnecting is the caller's business (:class:`brpc.ClientConn`).
"""

from __future__ import annotations

import asyncio
import contextvars
import enum
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

from .._security.keyproof import EXPORTER_LABEL, EXPORTER_LENGTH, ClientKeyProof
from .._wire.callframe import StreamError
from .._wire.control import CONTROL_MESSAGE_LIMIT, PROTOCOL_VERSION
from .._wire.refusal import Refusal
from ..errors import CloseCode, ConnectError, ProtocolViolation, RefusedError
from ..v1 import control_pb2 as pb
from .control_stream import ControlProtocol

if TYPE_CHECKING:
    from .._session.base import Session, SessionClosed, SessionHandler
    from .._session.stream_transport import StreamTransport
    from .link import Link

__all__ = ["ConnectPhase", "Dialer", "HelloSettings", "MakeLink", "connect_link"]

#: Makes a session to the server whose handler is the given one, once its
#: handshake completed; raises ConnectError (or HandshakeError) otherwise.
Dialer = Callable[["SessionHandler"], Awaitable["Session"]]
#: Makes the link of an accepted hello.
MakeLink = Callable[["Session", ControlProtocol, pb.ServerHello], "Link"]

# Streams the server may open before its ServerHello has been read here; more are refused.
_MAX_PENDING_STREAMS = 8


class ConnectPhase(enum.Enum):
    """Where a connection attempt is."""

    HANDSHAKE = "handshake"
    HELLO = "hello"
    READY = "ready"
    FAILED = "failed"


@dataclass(frozen=True)
class HelloSettings:
    """What a client says in its hello."""

    target: str
    name: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    token: str = ""
    services: tuple[str, ...] = ()
    #: Bytes a stream the server opens before its hello arrives may buffer.
    pending_stream_limit: int = 4 << 20
    #: Call layers offered, most preferred first (docs/protocol.md §3).
    call_layers: tuple[str, ...] = ()
    #: The resume secret of the connection this one replaces (b"" for none).
    replaces: bytes = b""
    #: The client certificate and key, proven to servers that cannot ask for it in TLS.
    key_proof: ClientKeyProof | None = None

    def message(self, session: Session | None = None) -> pb.ClientHello:
        hello = pb.ClientHello(
            protocol_version=PROTOCOL_VERSION,
            name=self.name,
            labels=dict(self.labels),
            services=list(self.services),
            token=self.token,
            call_layers=list(self.call_layers),
            replaces=self.replaces,
        )
        proof = self.key_proof
        if proof is not None and session is not None:
            exporter = session.exporter_secret(EXPORTER_LABEL, EXPORTER_LENGTH)
            hello.client_certificates.extend(proof.chain)
            hello.client_proof = proof.sign(exporter)
        return hello


class _PendingStream(asyncio.Protocol):
    """A stream the server opened before its ServerHello was read here.

    Streams are independent in QUIC: with loss or reordering a server's first
    call can arrive before the control-stream message that accepted us. Its
    bytes are kept (up to a bound) and handed to the real protocol once the
    link exists.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._transport: StreamTransport | None = None
        self._buffer: list[bytes] = []
        self._size = 0
        self._lost: tuple[Exception | None] | None = None
        self._eof = False
        #: More arrived than the bound: the stream was refused, never to be handed over.
        self._refused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast("StreamTransport", transport)

    def data_received(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > self._limit and self._transport is not None:
            # Nothing of it ran: refused, so the server may send it again.
            self._refused = True
            self._buffer.clear()
            self._transport.abort(StreamError.REFUSED)
        else:
            self._buffer.append(data)

    def eof_received(self) -> bool:
        # Keep our side open: the protocol it is handed to may still answer.
        self._eof = True
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = (exc,)

    def hand_over(self, protocol: asyncio.Protocol, context: contextvars.Context) -> None:
        if self._refused:
            return
        transport = self._transport
        assert transport is not None
        transport.set_protocol(protocol)
        set_context = getattr(transport, "set_context", None)
        if set_context is not None:
            set_context(context)
        context.run(protocol.connection_made, transport)
        for chunk in self._buffer:
            context.run(protocol.data_received, chunk)
        self._buffer.clear()
        if self._lost is not None:
            context.run(protocol.connection_lost, self._lost[0])
        elif self._eof and not context.run(protocol.eof_received):
            transport.close()


class _RefusedStream(asyncio.Protocol):
    """A stream the server opened that this side cannot take yet (its
    ServerHello has not been read and enough streams wait already): reset both
    ways with ``REFUSED`` (docs/protocol.md §4.6). Nothing of it ran; the
    connection goes on."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        cast("StreamTransport", transport).abort(StreamError.REFUSED)


class _Attempt:
    """The session handler and control receiver of one attempt, and later of its link."""

    def __init__(self, settings: HelloSettings, make_link: MakeLink) -> None:
        loop = asyncio.get_running_loop()
        self._settings = settings
        self._make_link: MakeLink | None = make_link
        self.phase = ConnectPhase.HANDSHAKE
        self.reply: asyncio.Future[pb.Envelope] = loop.create_future()
        self.session: Session | None = None
        self.control: ControlProtocol | None = None
        self.link: Link | None = None
        self.closed: SessionClosed | None = None
        self._pending: list[_PendingStream] = []

    # -- SessionHandler --------------------------------------------------------------

    def handshake_completed(self, session: Session) -> None:
        self.session = session

    def stream_opened(
        self, session: Session, stream_id: int
    ) -> tuple[asyncio.Protocol, contextvars.Context | None] | None:
        if self.link is not None:
            return self.link.accept_stream()
        if self.control is None:
            session.close(CloseCode.PROTOCOL_VIOLATION, "server opened streams before the hello")
            return None
        if len(self._pending) >= _MAX_PENDING_STREAMS:
            # The server may open streams right after its hello, and they may
            # all overtake it: not a violation, but more than we keep.
            return _RefusedStream(), None
        pending = _PendingStream(self._settings.pending_stream_limit)
        self._pending.append(pending)
        return pending, None

    def session_closed(self, session: Session, closed: SessionClosed) -> None:
        self.closed = closed
        if not self.reply.done():
            self.reply.set_exception(ConnectionError(closed.describe()))
            self.reply.exception()  # whoever awaits it still gets it; no "never retrieved"
        # The session refers to this handler and the link to the session: without
        # letting go of the link (and of make_link, a method of its owner) they
        # would be a cycle. Phase READY says whether a link was made.
        link, self.link = self.link, None
        self._make_link = None
        self.session = None
        if link is not None:
            link.session_closed(closed)
        elif self.phase is not ConnectPhase.READY:
            self.phase = ConnectPhase.FAILED

    def address_changed(self, session: Session, address: tuple[str, int]) -> None:
        """The server's address changed; the link reads it live (``Link.address``)."""

    # -- ControlReceiver -------------------------------------------------------------

    def control_received(self, envelope: pb.Envelope) -> None:
        if self.link is not None:
            self.link.control_received(envelope)
            return
        if self.reply.done():
            return
        if envelope.WhichOneof("message") == "server_hello" and envelope.server_hello.connection_id:
            # Make the link at once, in this callback: streams the server opens
            # right after its hello must find it.
            session, control, make_link = self.session, self.control, self._make_link
            assert session is not None and control is not None and make_link is not None
            try:
                self.link = link = make_link(session, control, envelope.server_hello)
            except ProtocolViolation as exc:
                self.reply.set_exception(exc)
                return
            self.phase = ConnectPhase.READY
            for pending in self._pending:
                accepted = link.accept_stream()
                if accepted is not None:
                    pending.hand_over(*accepted)
            self._pending.clear()
        self.reply.set_result(envelope)

    def control_violation(self, exc: ProtocolViolation) -> None:
        if self.link is not None:
            self.link.control_violation(exc)
        elif not self.reply.done():
            self.reply.set_exception(exc)

    def control_closed(self, exc: Exception | None) -> None:
        if self.link is not None:
            self.link.control_closed(exc)
        elif not self.reply.done():
            self.reply.set_exception(ConnectionError("the server closed the control stream"))


async def connect_link(
    dial: Dialer, settings: HelloSettings, *, make_link: MakeLink, timeout: float
) -> Link:
    """Make one connection with ``dial`` and say hello, within ``timeout`` seconds."""
    attempt = _Attempt(settings, make_link)
    session: Session | None = None
    try:
        async with asyncio.timeout(timeout):
            session = await dial(attempt)
            attempt.session = session
            attempt.phase = ConnectPhase.HELLO
            return await _hello(session, attempt, settings)
    except TimeoutError:
        if session is not None:
            session.abort()
        attempt.phase = ConnectPhase.FAILED
        raise ConnectError(
            f"could not connect to {settings.target} within {timeout} s: no answer to the "
            "handshake or the hello (is a brpc server listening on that UDP port?)"
        ) from None
    except BaseException:
        if session is not None:
            session.abort()
        attempt.phase = ConnectPhase.FAILED
        raise


async def _hello(session: Session, attempt: _Attempt, settings: HelloSettings) -> Link:
    control = attempt.control = ControlProtocol(attempt, max_message_size=CONTROL_MESSAGE_LIMIT)
    session.open_stream(control)
    control.send(pb.Envelope(client_hello=settings.message(session)))
    target = settings.target
    try:
        reply = await attempt.reply
    except ProtocolViolation as exc:
        session.close(CloseCode.PROTOCOL_VIOLATION, str(exc))
        raise ConnectError(f"server {target} broke the protocol: {exc}") from None
    except ConnectionError:
        assert attempt.closed is not None
        raise _closed_during_hello(attempt.closed, target) from None
    kind = reply.WhichOneof("message")
    if kind == "refusal":
        raise _refused(Refusal.from_message(reply.refusal), target)
    if attempt.phase is not ConnectPhase.READY:  # no link was made
        reason = f"expected a ServerHello, got {kind or 'an empty message'}"
        session.close(CloseCode.PROTOCOL_VIOLATION, reason)
        raise ConnectError(f"server {target} broke the protocol: {reason}")
    link = attempt.link
    if attempt.closed is not None or link is None:
        # Accepted, then closed at once (a connect callback closed us, say).
        assert attempt.closed is not None
        raise _closed_during_hello(attempt.closed, target)
    return link


def _refused(refusal: Refusal, target: str) -> RefusedError:
    return RefusedError(
        f"server {target} refused the connection ({refusal.code.name}): {refusal.reason}",
        code=refusal.code.name,
        reason=refusal.reason,
        permanent=refusal.permanent,
    )


def _closed_during_hello(closed: SessionClosed, target: str) -> ConnectError:
    refusal = closed.refusal
    if refusal is not None:
        return _refused(refusal, target)
    return ConnectError(f"connection to {target} failed during the hello: {closed.describe()}")

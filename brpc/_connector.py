"""Making one brpc connection from the dialing side.

:func:`connect_link` resolves the target, opens a connected UDP socket, runs the
QUIC handshake (TLS 1.3, ALPN ``brpc/1``, server certificate verified), opens
the control stream, sends the hello and waits for the server's answer. It
returns a :class:`Link` or raises an exception that says what went wrong:
:class:`HandshakeError` for TLS, :class:`RefusedError` for a refused hello,
:class:`ConnectError` for everything else. Reconnecting is the caller's
business (:class:`brpc.ClientConn`).
"""

from __future__ import annotations

import asyncio
import contextvars
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from aioquic.quic.connection import QuicConnection
from aioquic.tls import SessionTicket

from . import _aioquic
from ._control import ALPN, PROTOCOL_VERSION
from ._control_stream import ControlProtocol
from ._link import Link, LinkSettings, PeerInfo
from ._session import QuicSession, SessionClosed, SessionOptions
from ._stream_transport import QuicStreamTransport
from ._tls import client_configuration, describe_handshake_failure, is_tls_failure
from .errors import CloseCode, ConnectError, HandshakeError, ProtocolViolation, RefusedError
from .v1 import control_pb2 as pb

if TYPE_CHECKING:
    import os

    from grpclib.server import Server

    from .auth import Authorizer
    from .testing.network import NetworkConditions

__all__ = ["ConnectSettings", "TicketBox", "connect_link"]

_CONTROL_MESSAGE_LIMIT = 64 << 10
# Streams the server may have open towards us at once: its lanes and their replacements.
_MAX_SERVER_STREAMS = 64
# Lanes the server may open before its ServerHello has been read here.
_MAX_PENDING_LANES = 8


@dataclass(frozen=True)
class ConnectSettings:
    """Everything needed to make one connection."""

    target: str
    host: str
    port: int
    server_name: str
    ca: str | os.PathLike[str] | None = None
    certfile: str | os.PathLike[str] | None = None
    keyfile: str | os.PathLike[str] | None = None
    name: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    token: str = ""
    services: tuple[str, ...] = ()
    keepalive_interval: float | None = 5.0
    dead_peer_timeout: float = 15.0
    max_datagram_size: int = 1200
    network_conditions: NetworkConditions | None = None
    read_batch: int = 1
    link: LinkSettings = field(default_factory=LinkSettings)
    #: Skip verifying the server's certificate (never in production).
    insecure: bool = False
    #: Decides per call from the server whether it may run.
    authorize: Authorizer | None = None


class TicketBox:
    """The latest TLS session ticket from a server, for resuming the next handshake."""

    def __init__(self) -> None:
        self.ticket: SessionTicket | None = None

    def store(self, ticket: SessionTicket) -> None:
        self.ticket = ticket


class _PendingLane(asyncio.Protocol):
    """A lane the server opened before its ServerHello was read here.

    Streams are independent in QUIC: with loss or reordering a server's first
    lane can arrive before the control-stream message that accepted us. Its
    bytes are kept (up to a bound) and handed to the real lane once the link
    exists.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._transport: QuicStreamTransport | None = None
        self._buffer: list[bytes] = []
        self._size = 0
        self._lost: tuple[Exception | None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(QuicStreamTransport, transport)

    def data_received(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > self._limit and self._transport is not None:
            self._transport.abort()
        else:
            self._buffer.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = (exc,)

    def hand_over(self, protocol: asyncio.Protocol, context: contextvars.Context) -> None:
        transport = self._transport
        assert transport is not None
        transport.set_context(context)
        transport.set_protocol(protocol)
        context.run(protocol.connection_made, transport)
        for chunk in self._buffer:
            context.run(protocol.data_received, chunk)
        self._buffer.clear()
        if self._lost is not None:
            context.run(protocol.connection_lost, self._lost[0])


class _Attempt:
    """The session handler of one connection attempt, and later of its link."""

    def __init__(self, settings: ConnectSettings, serving: Server) -> None:
        loop = asyncio.get_running_loop()
        self.settings = settings
        self.serving = serving
        self.handshake: asyncio.Future[None] = loop.create_future()
        self.reply: asyncio.Future[pb.Envelope] = loop.create_future()
        self.session: QuicSession | None = None
        self.control: ControlProtocol | None = None
        self.link: Link | None = None
        self.closed: SessionClosed | None = None
        self._pending: list[_PendingLane] = []

    def handshake_completed(self, session: QuicSession) -> None:
        self.session = session
        if not self.handshake.done():
            self.handshake.set_result(None)

    def stream_opened(
        self, session: QuicSession, stream_id: int
    ) -> tuple[asyncio.Protocol, Any] | None:
        if self.link is not None:
            return self.link.incoming_lane()
        if self.control is None or len(self._pending) >= _MAX_PENDING_LANES:
            session.close(CloseCode.PROTOCOL_VIOLATION, "server opened streams before the hello")
            return None
        pending = _PendingLane(self.settings.link.max_message_size + (64 << 10))
        self._pending.append(pending)
        return pending, None

    def session_closed(self, session: QuicSession, closed: SessionClosed) -> None:
        self.closed = closed
        for future in (self.handshake, self.reply):
            if not future.done():
                future.set_exception(ConnectionError(closed.describe()))
                future.exception()  # whoever awaits it still gets it; no "never retrieved"
        if self.link is not None:
            self.link.session_closed(closed)

    # the control stream, until the link takes it over
    def control_message(self, envelope: pb.Envelope) -> None:
        if self.reply.done():
            return
        if envelope.WhichOneof("message") == "server_hello" and envelope.server_hello.connection_id:
            # Make the link at once, in this callback: lanes the server opens
            # right after its hello must find it.
            self.link = self._make_link(envelope.server_hello)
            for pending in self._pending:
                lane = self.link.incoming_lane()
                if lane is not None:
                    pending.hand_over(*lane)
            self._pending.clear()
        self.reply.set_result(envelope)

    def control_violation(self, exc: ProtocolViolation) -> None:
        if not self.reply.done():
            self.reply.set_exception(exc)

    def control_closed(self, exc: Exception | None) -> None:
        if not self.reply.done():
            self.reply.set_exception(ConnectionError("the server closed the control stream"))

    def _make_link(self, hello: pb.ServerHello) -> Link:
        session, control = self.session, self.control
        assert session is not None and control is not None
        link = Link(
            session,
            control,
            connection_id=hello.connection_id,
            peer=PeerInfo(address=session.get_extra_info("peername")),
            serving=self.serving,
            settings=self.settings.link,
            describe=f"server {self.settings.target}",
        )
        link.authorizer = self.settings.authorize
        return link


async def connect_link(
    settings: ConnectSettings,
    *,
    serving: Server,
    timeout: float,
    tickets: TicketBox | None = None,
) -> Link:
    """Make one connection to ``settings.target`` within ``timeout`` seconds.

    With ``tickets``, resume the TLS session of the ticket it holds (if any) and
    keep the server's next ticket in it.
    """
    try:
        async with asyncio.timeout(timeout):
            return await _connect(settings, serving, tickets)
    except TimeoutError:
        raise ConnectError(
            f"could not connect to {settings.target} within {timeout} s: no answer to the "
            "QUIC handshake or the hello (is a brpc server listening on that UDP port?)"
        ) from None


async def _connect(settings: ConnectSettings, serving: Server, tickets: TicketBox | None) -> Link:
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(settings.host, settings.port, type=socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        raise ConnectError(f"could not resolve {settings.host!r}: {exc}") from exc
    family, _, proto, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_DGRAM, proto)
    try:
        sock.setblocking(False)
        # A connected socket receives ICMP errors: a missing server fails fast.
        sock.connect(address)
    except OSError as exc:
        sock.close()
        raise ConnectError(f"could not reach {settings.target}: {exc}") from exc

    quic = QuicConnection(
        configuration=client_configuration(
            server_name=settings.server_name,
            ca=settings.ca,
            certfile=settings.certfile,
            keyfile=settings.keyfile,
            idle_timeout=settings.dead_peer_timeout,
            max_datagram_size=settings.max_datagram_size,
            insecure=settings.insecure,
            session_ticket=tickets.ticket if tickets is not None else None,
        ),
        session_ticket_handler=tickets.store if tickets is not None else None,
    )
    _aioquic.set_peer_bidi_stream_limit(quic, _MAX_SERVER_STREAMS)
    attempt = _Attempt(settings, serving)
    options = SessionOptions(
        keepalive_interval=settings.keepalive_interval,
        handshake_timeout=None,  # bounded by the caller's timeout
        alpn=ALPN,
        network_conditions=settings.network_conditions,
        read_batch=settings.read_batch,
    )
    _, session = await loop.create_datagram_endpoint(
        lambda: QuicSession(quic, handler=attempt, options=options, owns_transport=True),
        sock=sock,
    )
    try:
        await _handshake(session, attempt, address, settings)
        return await _hello(session, attempt, settings)
    except BaseException:
        session.abort()
        raise


async def _handshake(
    session: QuicSession, attempt: _Attempt, address: Any, settings: ConnectSettings
) -> None:
    session.connect(address)
    try:
        await attempt.handshake
    except ConnectionError:
        closed = attempt.closed
        assert closed is not None
        message = describe_handshake_failure(
            closed, target=settings.target, server_name=settings.server_name
        )
        if is_tls_failure(closed):
            raise HandshakeError(message) from None
        raise ConnectError(message) from None


async def _hello(session: QuicSession, attempt: _Attempt, settings: ConnectSettings) -> Link:
    control = attempt.control = ControlProtocol(
        max_message_size=_CONTROL_MESSAGE_LIMIT,
        on_message=attempt.control_message,
        on_violation=attempt.control_violation,
        on_closed=attempt.control_closed,
    )
    session.open_stream(control)
    control.send(
        pb.Envelope(
            client_hello=pb.ClientHello(
                protocol_version=PROTOCOL_VERSION,
                name=settings.name,
                labels=dict(settings.labels),
                services=list(settings.services),
                token=settings.token,
            )
        )
    )
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
        code = pb.Refusal.Code.Name(reply.refusal.code)
        raise RefusedError(
            f"server {target} refused the connection ({code}): {reply.refusal.reason}",
            code=code,
            reason=reply.refusal.reason,
        )
    link = attempt.link
    if link is None:
        reason = f"expected a ServerHello, got {kind or 'an empty message'}"
        session.close(CloseCode.PROTOCOL_VIOLATION, reason)
        raise ConnectError(f"server {target} broke the protocol: {reason}")
    if attempt.closed is not None:
        link.session_closed(attempt.closed)
    return link


def _closed_during_hello(closed: SessionClosed, target: str) -> ConnectError:
    if closed.error_code == CloseCode.REFUSED and not closed.transport_error:
        code, _, reason = closed.reason.partition(": ")
        return RefusedError(
            f"server {target} refused the connection ({code}): {reason}", code=code, reason=reason
        )
    return ConnectError(f"connection to {target} failed during the hello: {closed.describe()}")

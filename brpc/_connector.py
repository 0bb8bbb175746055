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
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aioquic.quic.connection import QuicConnection
from aioquic.tls import SessionTicket

from . import _aioquic
from ._control import ALPN, PROTOCOL_VERSION
from ._control_stream import ControlProtocol
from ._link import Link, LinkSettings, PeerInfo
from ._session import QuicSession, SessionClosed, SessionOptions
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


class _Attempt:
    """The session handler of one connection attempt, and later of its link."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.handshake: asyncio.Future[None] = loop.create_future()
        self.reply: asyncio.Future[pb.Envelope] = loop.create_future()
        self.link: Link | None = None
        self.closed: SessionClosed | None = None

    def handshake_completed(self, session: QuicSession) -> None:
        if not self.handshake.done():
            self.handshake.set_result(None)

    def stream_opened(
        self, session: QuicSession, stream_id: int
    ) -> tuple[asyncio.Protocol, Any] | None:
        if self.link is not None:
            return self.link.incoming_lane()
        session.close(CloseCode.PROTOCOL_VIOLATION, "server opened a stream before the hello")
        return None

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
        if not self.reply.done():
            self.reply.set_result(envelope)

    def control_violation(self, exc: ProtocolViolation) -> None:
        if not self.reply.done():
            self.reply.set_exception(exc)

    def control_closed(self, exc: Exception | None) -> None:
        if not self.reply.done():
            self.reply.set_exception(ConnectionError("the server closed the control stream"))


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
    attempt = _Attempt()
    options = SessionOptions(
        keepalive_interval=settings.keepalive_interval,
        handshake_timeout=None,  # bounded by the caller's timeout
        alpn=ALPN,
        network_conditions=settings.network_conditions,
    )
    _, session = await loop.create_datagram_endpoint(
        lambda: QuicSession(quic, handler=attempt, options=options, owns_transport=True),
        sock=sock,
    )
    try:
        await _handshake(session, attempt, address, settings)
        return await _hello(session, attempt, settings, serving)
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


async def _hello(
    session: QuicSession, attempt: _Attempt, settings: ConnectSettings, serving: Server
) -> Link:
    control = ControlProtocol(
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
    if kind != "server_hello" or not reply.server_hello.connection_id:
        reason = f"expected a ServerHello, got {kind or 'an empty message'}"
        session.close(CloseCode.PROTOCOL_VIOLATION, reason)
        raise ConnectError(f"server {target} broke the protocol: {reason}")
    link = Link(
        session,
        control,
        connection_id=reply.server_hello.connection_id,
        peer=PeerInfo(address=session.get_extra_info("peername")),
        serving=serving,
        settings=settings.link,
        describe=f"server {target}",
    )
    link.authorizer = settings.authorize
    attempt.link = link
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

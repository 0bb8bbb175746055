"""Opening a QUIC session to a server: resolve, connected UDP socket, handshake.

:func:`dial_quic` returns a :class:`QuicSession` whose TLS handshake completed
(server certificate verified for the server name, ALPN ``brpc/1``), or raises
:class:`HandshakeError` (what TLS did not like) or :class:`ConnectError`.
What runs over the session is its handler's business.
"""

from __future__ import annotations

import asyncio
import contextvars
import ipaddress
import socket
from typing import TYPE_CHECKING, Any

from ..._wire.control import ALPN
from ...errors import ConnectError, HandshakeError
from ..base import Session, SessionClosed, SessionHandler
from .engine import Engine
from .pmtu import loopback_datagram_size
from .session import QuicSession
from .tls import describe_handshake_failure, is_tls_failure
from .udp import forbid_fragmentation, route_mtu

if TYPE_CHECKING:
    from ..._security.tickets import TicketBox
    from ...options import Options
    from .options import QuicOptions

__all__ = ["dial_quic"]


class _Dialing:
    """Forwards to the real handler, and tells the dialer how the handshake ended."""

    def __init__(self, handler: SessionHandler) -> None:
        self._handler = handler
        self.done: asyncio.Future[SessionClosed | None] = asyncio.get_running_loop().create_future()

    def handshake_completed(self, session: Session) -> None:
        self._handler.handshake_completed(session)
        if not self.done.done():
            self.done.set_result(None)

    def stream_opened(
        self, session: Session, stream_id: int
    ) -> tuple[asyncio.Protocol, contextvars.Context | None] | None:
        return self._handler.stream_opened(session, stream_id)

    def session_closed(self, session: Session, closed: SessionClosed) -> None:
        if not self.done.done():
            self.done.set_result(closed)
        self._handler.session_closed(session, closed)

    def address_changed(self, session: Session, address: tuple[str, int]) -> None:
        changed = getattr(self._handler, "address_changed", None)
        if changed is not None:
            changed(session, address)


async def _resolve(loop: asyncio.AbstractEventLoop, host: str, port: int) -> list[Any]:
    """``getaddrinfo`` for a UDP socket to ``host:port``. An IP address needs no
    lookup: it is parsed here (AI_NUMERICHOST never blocks) instead of in the
    loop's resolver thread, which costs a thread hand-off on every dial."""
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    return socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM, flags=socket.AI_NUMERICHOST)


async def dial_quic(
    *,
    host: str,
    port: int,
    target: str,
    server_name: str,
    configuration: Any,
    engine: Engine,
    handler: SessionHandler,
    options: Options,
    quic_options: QuicOptions,
    peer_stream_limit: int,
    tickets: TicketBox[Any] | None = None,
) -> QuicSession:
    """A handshaken QUIC session to ``host:port`` whose streams ``handler`` serves."""
    loop = asyncio.get_running_loop()
    try:
        infos = await _resolve(loop, host, port)
    except socket.gaierror as exc:
        raise ConnectError(f"could not resolve {host!r}: {exc}") from exc
    family, _, proto, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_DGRAM, proto)
    try:
        sock.setblocking(False)
        # A connected socket receives ICMP errors: a missing server fails fast.
        sock.connect(address)
        forbid_fragmentation(sock)
    except OSError as exc:
        sock.close()
        raise ConnectError(f"could not reach {target}: {exc}") from exc

    if not engine.probes_datagram_size:
        # The engine cannot probe: towards a loopback address the route's MTU
        # is the path's, so start there (elsewhere stay at the configured size).
        configuration.max_datagram_size = loopback_datagram_size(
            address[0],
            route_mtu(sock),
            size=configuration.max_datagram_size,
            ceiling=quic_options.max_probed_datagram_size,
        )
    if tickets is not None:
        configuration.session_ticket = tickets.ticket
    quic = engine.client_connection(
        configuration,
        peer_stream_limit=peer_stream_limit,
        session_ticket_handler=tickets.store if tickets is not None else None,
    )
    dialing = _Dialing(handler)

    def make_session() -> QuicSession:
        return QuicSession(
            quic,
            engine=engine,
            handler=dialing,
            options=options,
            quic_options=quic_options,
            alpn=ALPN,
            owns_transport=True,
        )

    _, session = await loop.create_datagram_endpoint(make_session, sock=sock)
    session.datagram_size = configuration.max_datagram_size
    try:
        session.connect(address)
        closed = await dialing.done
    except BaseException:
        session.abort()
        raise
    if closed is not None:
        message = describe_handshake_failure(closed, target=target, server_name=server_name)
        if is_tls_failure(closed):
            raise HandshakeError(message)
        raise ConnectError(message)
    return session

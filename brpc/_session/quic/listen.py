"""A server's UDP socket and the QUIC sessions on it.

:class:`QuicListener` accepts QUIC connections on one UDP port (reading
datagrams in batches), gives each new session the handler its ``accept``
factory makes, refuses connections over ``max_connections`` or while the
listener stops accepting (CONNECTION_REFUSED, with the reason), and keeps
the set of live sessions.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import QuicErrorCode

from ..._wire.control import ALPN
from ..base import Session, SessionClosed, SessionHandler
from . import _aioquic
from .batching import BatchingQuicServer, DatagramBatch
from .session import QuicSession

if TYPE_CHECKING:
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.tls import SessionTicket

    from ..._security.tickets import TicketStore
    from ...options import Options
    from .options import QuicOptions

__all__ = ["QuicListener"]

log = logging.getLogger(__name__)


class _Tracked:
    """Forwards to a session's handler and drops the session from the live set at its end."""

    def __init__(self, handler: SessionHandler, sessions: set[QuicSession]) -> None:
        self._handler = handler
        self._sessions = sessions

    def handshake_completed(self, session: Session) -> None:
        self._handler.handshake_completed(session)

    def stream_opened(
        self, session: Session, stream_id: int
    ) -> tuple[asyncio.Protocol, contextvars.Context | None] | None:
        return self._handler.stream_opened(session, stream_id)

    def session_closed(self, session: Session, closed: SessionClosed) -> None:
        self._sessions.discard(cast(QuicSession, session))
        self._handler.session_closed(session, closed)

    def address_changed(self, session: Session, address: tuple[str, int]) -> None:
        self._handler.address_changed(session, address)


class _Endpoint(BatchingQuicServer):
    """aioquic's server protocol, telling when its socket is really closed."""

    def __init__(self, socket_closed: asyncio.Event, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._socket_closed = socket_closed

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._socket_closed.set()


class QuicListener:
    """Accepts QUIC sessions on one UDP port."""

    def __init__(
        self,
        *,
        configuration: QuicConfiguration,
        options: Options,
        quic_options: QuicOptions,
        accept: Callable[[], SessionHandler],
        max_connections: int,
        peer_stream_limit: int,
        request_client_certificate: bool = False,
        retry: bool = False,
        tickets: TicketStore[SessionTicket] | None = None,
    ) -> None:
        self._configuration = configuration
        self._options = options
        self._quic_options = quic_options
        self._accept = accept
        self._max_connections = max_connections
        self._peer_stream_limit = peer_stream_limit
        self._request_client_certificate = request_client_certificate
        self._retry = retry
        self._tickets = tickets
        #: Live sessions, including those still in their handshake.
        self.sessions: set[QuicSession] = set()
        self._accepting = True
        self._udp: asyncio.DatagramTransport | None = None
        self._socket_closed = asyncio.Event()
        self._endpoint: _Endpoint | None = None
        self.host = ""
        self.port = 0

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> None:
        """Bind UDP ``host:port`` (port 0 picks one) and start accepting.

        ``reuse_port`` sets SO_REUSEPORT: several processes bind the same port
        and the kernel spreads UDP flows over them by their addresses.
        """
        loop = asyncio.get_running_loop()
        tickets = self._tickets
        transport, endpoint = await loop.create_datagram_endpoint(
            lambda: _Endpoint(
                self._socket_closed,
                configuration=self._configuration,
                create_protocol=self._new_session,
                read_batch=self._quic_options.read_batch,
                retry=self._retry,
                session_ticket_fetcher=tickets.pop if tickets is not None else None,
                session_ticket_handler=tickets.add if tickets is not None else None,
            ),
            local_addr=(host, port),
            reuse_port=reuse_port or None,
        )
        self._udp = transport
        self._endpoint = endpoint
        self.host, self.port = transport.get_extra_info("sockname")[:2]

    @property
    def engine_connections(self) -> int:
        """Connections the QUIC engine still holds, those in their closing period included."""
        endpoint = self._endpoint
        return _aioquic.endpoint_connection_count(endpoint) if endpoint is not None else 0

    def stop_accepting(self) -> None:
        """Refuse new connections from now on (CONNECTION_REFUSED, "server is shutting down")."""
        self._accepting = False

    def close(self) -> None:
        """Close the UDP socket; sessions on it are gone with it."""
        if self._udp is not None:
            self._udp.close()

    async def wait_closed(self) -> None:
        """Wait until the UDP port is free again."""
        if self._udp is not None:
            await self._socket_closed.wait()

    def _new_session(
        self, quic: QuicConnection, stream_handler: Any = None, batch: DatagramBatch | None = None
    ) -> QuicSession:
        _aioquic.set_peer_bidi_stream_limit(quic, self._peer_stream_limit)
        if self._request_client_certificate:
            _aioquic.request_client_certificate(quic)
        refuse: tuple[int, str] | None = None
        if not self._accepting:
            refuse = (QuicErrorCode.CONNECTION_REFUSED, "server is shutting down")
        elif len(self.sessions) >= self._max_connections:
            refuse = (
                QuicErrorCode.CONNECTION_REFUSED,
                f"server is at its limit of {self._max_connections} connections",
            )
        session = QuicSession(
            quic,
            handler=_Tracked(self._accept(), self.sessions),
            options=self._options,
            quic_options=self._quic_options,
            alpn=ALPN,
            handshake_timeout=self._options.handshake_timeout,
            batch=batch,
            refuse=refuse,
        )
        if refuse is None:
            self.sessions.add(session)
        return session

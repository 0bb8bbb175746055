"""A server's UDP socket and the QUIC sessions on it.

:class:`QuicListener` accepts QUIC connections of one engine on one UDP port:

- it routes each datagram to its session by destination connection ID (reading
  datagrams in batches, with UDP GRO where the kernel and the event loop allow,
  see ``batching.py``), answers unsupported versions with
  Version Negotiation and creates a session for each new valid Initial;
- it bounds handshakes in progress ("half-open" connections) separately from
  connections: past ``max_half_open`` new Initials are dropped unanswered, and
  with ``retry="auto"`` (the default) address validation by Retry (RFC 9000
  section 8.1.2) starts once ``retry_threshold`` handshakes are half-open, so a
  flood of Initials from forged addresses costs one small Retry each and no state;
- it refuses connections over ``max_connections`` (counting completed handshakes
  only) or while it stops accepting (CONNECTION_REFUSED, with the reason);
- it answers a short-header datagram for a connection it does not know with a
  stateless reset (RFC 9000 section 10.3) whose token is derived from the
  server's private key and the connection ID, so that a restarted server with
  the same key resets the connections of the process before it and clients
  reconnect at once; its aioquic connections issue those same tokens;
- it keeps the set of live sessions.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import hmac
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, cast

from aioquic.buffer import Buffer  # type: ignore[attr-defined]
from aioquic.quic.packet import (
    QuicErrorCode,
    QuicPacketType,
    encode_quic_retry,
    encode_quic_version_negotiation,
    pull_quic_header,
)
from aioquic.quic.retry import QuicRetryTokenHandler
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..._wire.control import ALPN
from ..base import Session, SessionClosed, SessionHandler
from .batching import DatagramBatch, GroReader, drain_socket, dup_socket
from .engine import Engine
from .pmtu import is_loopback, loopback_datagram_size
from .session import QuicSession
from .udp import UdpBatching, forbid_fragmentation, route_mtu_to

if TYPE_CHECKING:
    from ..._security.tickets import TicketStore
    from ...options import Options
    from .options import QuicOptions

__all__ = ["DEFAULT_MAX_HALF_OPEN", "DEFAULT_RETRY_THRESHOLD", "QuicListener", "reset_key"]

log = logging.getLogger(__name__)

DEFAULT_RETRY_THRESHOLD = 64
"""Half-open handshakes at which ``retry="auto"`` starts validating addresses."""
DEFAULT_MAX_HALF_OPEN = 1024
"""Half-open handshakes past which new Initials are dropped."""

RetryMode = bool | Literal["auto"]

_SMALLEST_INITIAL = 1200  # RFC 9000 section 14.1: clients pad Initial datagrams to this
_RESET_TOKEN_SIZE = 16
_RESET_MIN_SIZE = 21  # RFC 9000 section 10.3
_RESET_MAX_SIZE = 43
_RESETS_PER_SECOND = 200


def reset_key(private_key_der: bytes) -> bytes:
    """The key stateless reset tokens are derived from: HKDF-SHA256 of the server's
    private key, so it is the same after a restart and unknown to anyone without it."""
    return HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=b"brpc stateless reset v1",
        info=b"",
    ).derive(private_key_der)


class _Tracked:
    """Forwards to a session's handler and keeps the listener's counts."""

    def __init__(self, handler: SessionHandler, listener: QuicListener) -> None:
        self._handler = handler
        self._listener = listener

    def handshake_completed(self, session: Session) -> None:
        self._listener._handshake_completed(cast(QuicSession, session))
        if session.closed is None:
            self._handler.handshake_completed(session)

    def stream_opened(
        self, session: Session, stream_id: int
    ) -> tuple[asyncio.Protocol, contextvars.Context | None] | None:
        return self._handler.stream_opened(session, stream_id)

    def session_closed(self, session: Session, closed: SessionClosed) -> None:
        self._listener._session_gone(cast(QuicSession, session))
        self._handler.session_closed(session, closed)

    def address_changed(self, session: Session, address: tuple[str, int]) -> None:
        self._handler.address_changed(session, address)


class _Endpoint(asyncio.DatagramProtocol):
    """The server socket's protocol: reads datagrams (in batches) for the listener."""

    def __init__(self, listener: QuicListener, read_batch: int, *, gro: bool) -> None:
        self._listener = listener
        self._read_batch = read_batch
        self._gro = gro
        self.batch = DatagramBatch()
        self._drain: socket.socket | None = None
        #: The socket's reader when it receives with UDP GRO.
        self.gro_reader: GroReader | None = None
        self.batching = read_batch > 1
        self.socket_closed = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        udp = cast(asyncio.DatagramTransport, transport)
        if self._gro:
            self.gro_reader = GroReader.take_over(
                udp,
                limit=self._read_batch,
                receive=self._receive_batched,
                flush=self._flush,
                on_error=self._error,
            )
        if self.gro_reader is None and self._read_batch > 1:
            self._drain = dup_socket(udp)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.gro_reader is not None:
            self.gro_reader.close()
        if self._drain is not None:
            self._drain.close()
            self._drain = None
        self.socket_closed.set()

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        batch, drain = self.batch, self._drain
        if drain is None:
            self._listener._receive(cast(bytes, data), addr)
            return
        batch.active = True
        try:
            drain_socket(
                drain, data, addr, self._read_batch, receive=self._receive_one, on_error=self._error
            )
        finally:
            batch.active = False
            batch.flush()

    def _receive_one(self, data: bytes | str, addr: Any) -> bool:
        self._listener._receive(cast(bytes, data), addr)
        return True

    def _receive_batched(self, data: bytes, addr: Any) -> bool:
        """One datagram the GRO reader read: its session transmits at :meth:`_flush`."""
        self.batch.active = self.batching
        self._listener._receive(data, addr)
        return True

    def _flush(self) -> None:
        self.batch.active = False
        self.batch.flush()

    def error_received(self, exc: Exception) -> None:
        log.debug("UDP error on the server socket: %r", exc)

    def _error(self, exc: OSError) -> None:
        self.error_received(exc)


class QuicListener:
    """Accepts QUIC sessions on one UDP port."""

    def __init__(
        self,
        *,
        engine: Engine,
        configuration: Any,
        options: Options,
        quic_options: QuicOptions,
        accept: Callable[[], SessionHandler],
        max_connections: int,
        peer_stream_limit: int,
        private_key: bytes,
        request_client_certificate: bool = False,
        retry: RetryMode = "auto",
        retry_threshold: int = DEFAULT_RETRY_THRESHOLD,
        max_half_open: int = DEFAULT_MAX_HALF_OPEN,
        tickets: TicketStore[Any] | None = None,
    ) -> None:
        if retry not in (True, False, "auto"):
            raise ValueError(f"retry must be True, False or 'auto', not {retry!r}")
        if retry_threshold < 0 or max_half_open < 1:
            raise ValueError("retry_threshold must be >= 0 and max_half_open positive")
        self._engine = engine
        self._configuration = configuration
        self._options = options
        self._quic_options = quic_options
        self._accept = accept
        self._max_connections = max_connections
        self._peer_stream_limit = peer_stream_limit
        self._request_client_certificate = request_client_certificate
        self._retry_mode = retry
        self._retry_threshold = retry_threshold
        self._max_half_open = max_half_open
        self._retry: QuicRetryTokenHandler | None = None
        self._tickets = tickets
        self._reset_key = reset_key(private_key)
        self._cid_length: int = configuration.connection_id_length
        self._versions: list[int] = list(configuration.supported_versions)
        #: Live sessions, including those still in their handshake.
        self.sessions: set[QuicSession] = set()
        #: Sessions whose handshake has not completed.
        self.half_open: set[QuicSession] = set()
        self._established = 0
        self._routes: dict[bytes, QuicSession] = {}
        self._cids: dict[QuicSession, set[bytes]] = {}
        self._accepting = True
        self._udp: asyncio.DatagramTransport | None = None
        self._endpoint: _Endpoint | None = None
        self._gso: UdpBatching | None = None
        self._loopback_datagram_size: int | None = None
        self._reset_window = 0.0
        self._resets_in_window = 0
        #: Counters: Initials dropped over ``max_half_open``, Retries and stateless resets sent.
        self.initials_dropped = 0
        self.retries_sent = 0
        self.resets_sent = 0
        self.host = ""
        self.port = 0

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> None:
        """Bind UDP ``host:port`` (port 0 picks one) and start accepting.

        ``reuse_port`` sets SO_REUSEPORT: several processes bind the same port
        and the kernel spreads UDP flows over them by their addresses.
        """
        loop = asyncio.get_running_loop()
        transport, endpoint = await loop.create_datagram_endpoint(
            lambda: _Endpoint(
                self,
                self._quic_options.read_batch,
                gro=self._quic_options.gro and self._quic_options.network_conditions is None,
            ),
            local_addr=(host, port),
            reuse_port=reuse_port or None,
        )
        self._udp = transport
        self._endpoint = endpoint
        sock = transport.get_extra_info("socket")
        forbid_fragmentation(sock)
        if self._quic_options.gso and self._quic_options.network_conditions is None:
            self._gso = UdpBatching(dup_socket(transport), gro=False)
        self.host, self.port = transport.get_extra_info("sockname")[:2]

    @property
    def gro_reader(self) -> GroReader | None:
        """The socket's reader when it receives with UDP GRO (its counters show
        how many datagrams each system call brought), else None."""
        return self._endpoint.gro_reader if self._endpoint is not None else None

    @property
    def engine_connections(self) -> int:
        """Connections the QUIC engine still holds, those in their closing period included."""
        return len(self._cids)

    def stop_accepting(self) -> None:
        """Refuse new connections from now on (CONNECTION_REFUSED, "server is shutting down")."""
        self._accepting = False

    def close(self) -> None:
        """Close the UDP socket; sessions on it are gone with it."""
        if self._udp is not None:
            self._udp.close()
        if self._gso is not None:
            self._gso.sock.close()
            self._gso = None

    async def wait_closed(self) -> None:
        """Wait until the UDP port is free again."""
        if self._endpoint is not None:
            await self._endpoint.socket_closed.wait()

    # -- routing -------------------------------------------------------------------

    def reset_token(self, cid: bytes) -> bytes:
        """The stateless reset token of connection ID ``cid`` (RFC 9000 section 10.3.2)."""
        return hmac.new(self._reset_key, cid, hashlib.sha256).digest()[:_RESET_TOKEN_SIZE]

    def _receive(self, data: bytes, addr: Any) -> None:
        try:
            header = pull_quic_header(Buffer(data=data), host_cid_length=self._cid_length)
        except ValueError:
            return
        session = self._routes.get(header.destination_cid)
        if session is not None:
            session.datagram_received(data, addr)
            return
        if header.version is None:
            self._send_reset(data, header.destination_cid, addr)
            return
        if header.packet_type == QuicPacketType.VERSION_NEGOTIATION:
            return
        if header.version not in self._versions:
            if len(data) >= _SMALLEST_INITIAL:
                self._sendto(
                    encode_quic_version_negotiation(
                        source_cid=header.destination_cid,
                        destination_cid=header.source_cid,
                        supported_versions=self._versions,
                    ),
                    addr,
                )
            return
        if header.packet_type == QuicPacketType.INITIAL and len(data) >= _SMALLEST_INITIAL:
            self._admit(header, data, addr)

    def _admit(self, header: Any, data: bytes, addr: Any) -> None:
        half_open = len(self.half_open)
        if half_open >= self._max_half_open:
            self.initials_dropped += 1
            return
        loop = asyncio.get_running_loop()
        original_dcid: bytes = header.destination_cid
        retry_scid: bytes | None = None
        validated = False
        if header.token:
            try:
                original_dcid = self._retry_handler().validate_token(
                    address=addr,
                    destination_cid=header.destination_cid,
                    token=header.token,
                    now=loop.time(),
                )
                retry_scid = header.destination_cid
                validated = True
            except ValueError:
                pass  # not a Retry token of ours (or expired): as if it had none
        if not validated and (
            self._retry_mode is True
            or (self._retry_mode == "auto" and half_open >= self._retry_threshold)
        ):
            source_cid = os.urandom(self._cid_length)
            self._sendto(
                encode_quic_retry(
                    version=header.version,
                    source_cid=source_cid,
                    destination_cid=header.source_cid,
                    original_destination_cid=header.destination_cid,
                    retry_token=self._retry_handler().create_token(
                        address=addr,
                        original_destination_connection_id=header.destination_cid,
                        retry_source_connection_id=source_cid,
                        now=loop.time(),
                    ),
                ),
                addr,
            )
            self.retries_sent += 1
            return
        tickets = self._tickets
        datagram_size = self._datagram_size(addr)
        quic = self._engine.server_connection(
            self._configuration,
            original_destination_connection_id=original_dcid,
            retry_source_connection_id=retry_scid,
            peer_stream_limit=self._peer_stream_limit,
            request_client_certificate=self._request_client_certificate,
            reset_token=self.reset_token,
            session_ticket_fetcher=tickets.pop if tickets is not None else None,
            session_ticket_handler=tickets.add if tickets is not None else None,
            datagram_size=datagram_size,
        )
        session = self._new_session(quic)
        if datagram_size is not None:
            session.datagram_size = datagram_size
        self.connection_id_issued(session, header.destination_cid)
        self.connection_id_issued(session, quic.host_cid)
        assert self._udp is not None
        session.connection_made(self._udp)
        session.datagram_received(data, addr)

    def _datagram_size(self, addr: Any) -> int | None:
        """The datagram size to send a new client at, for an engine brpc cannot
        probe with (None: the engine's own, which probes). Bigger than the
        configured size only towards a loopback address, where the path is this
        host and the route's MTU is the whole story; the engine then also keeps
        to the client's ``max_udp_payload_size``."""
        if self._engine.probes_datagram_size:
            return None
        size: int = self._quic_options.max_datagram_size
        if not is_loopback(addr[0]) or self._udp is None:
            return size
        if self._loopback_datagram_size is None:
            # Every loopback address routes through the loopback interface: its
            # MTU, asked once, holds for all of them.
            family = self._udp.get_extra_info("socket").family
            self._loopback_datagram_size = loopback_datagram_size(
                addr[0],
                route_mtu_to(family, addr),
                size=size,
                ceiling=self._quic_options.max_probed_datagram_size,
            )
        return self._loopback_datagram_size

    def _new_session(self, quic: Any) -> QuicSession:
        refuse: tuple[int, str] | None = None
        if not self._accepting:
            refuse = (QuicErrorCode.CONNECTION_REFUSED, "server is shutting down")
        elif self._established >= self._max_connections:
            refuse = self._at_limit()
        endpoint = self._endpoint
        session = QuicSession(
            quic,
            engine=self._engine,
            handler=_Tracked(self._accept(), self),
            options=self._options,
            quic_options=self._quic_options,
            alpn=ALPN,
            handshake_timeout=self._options.handshake_timeout,
            batch=endpoint.batch
            if endpoint is not None and self._quic_options.read_batch > 1
            else None,
            refuse=refuse,
            routes=self,
            gso=self._gso,
        )
        if refuse is None:
            self.sessions.add(session)
            self.half_open.add(session)
        return session

    def _at_limit(self) -> tuple[int, str]:
        return (
            QuicErrorCode.CONNECTION_REFUSED,
            f"server is at its limit of {self._max_connections} connections",
        )

    def _handshake_completed(self, session: QuicSession) -> None:
        if session in self.half_open:
            self.half_open.discard(session)
            self._established += 1
            if self._established > self._max_connections:
                code, reason = self._at_limit()
                session.close(code, reason, transport_error=True)

    def _session_gone(self, session: QuicSession) -> None:
        if session in self.sessions:
            self.sessions.discard(session)
            if session in self.half_open:
                self.half_open.discard(session)
            else:
                self._established -= 1

    def _send_reset(self, data: bytes, cid: bytes, addr: Any) -> None:
        """A stateless reset for a datagram of a connection this server does not know."""
        size = min(len(data) - 1, _RESET_MAX_SIZE)
        if size < _RESET_MIN_SIZE or len(cid) != self._cid_length:
            return  # too small to answer without a reset loop
        now = time.monotonic()
        if now - self._reset_window >= 1.0:
            self._reset_window, self._resets_in_window = now, 0
        if self._resets_in_window >= _RESETS_PER_SECOND:
            return
        self._resets_in_window += 1
        unpredictable = bytearray(os.urandom(size - _RESET_TOKEN_SIZE))
        unpredictable[0] = 0x40 | (unpredictable[0] & 0x3F)  # short header, fixed bit
        self._sendto(bytes(unpredictable) + self.reset_token(cid), addr)
        self.resets_sent += 1

    def _sendto(self, data: bytes, addr: Any) -> None:
        if self._udp is not None and not self._udp.is_closing():
            self._udp.sendto(data, addr)

    def _retry_handler(self) -> QuicRetryTokenHandler:
        if self._retry is None:
            self._retry = QuicRetryTokenHandler()
        return self._retry

    # -- SessionRoutes -------------------------------------------------------------

    def connection_id_issued(self, session: QuicSession, cid: bytes) -> None:
        self._routes[cid] = session
        self._cids.setdefault(session, set()).add(cid)

    def connection_id_retired(self, session: QuicSession, cid: bytes) -> None:
        if self._routes.get(cid) is session:
            del self._routes[cid]
        self._cids.get(session, set()).discard(cid)

    def session_terminated(self, session: QuicSession) -> None:
        for cid in self._cids.pop(session, ()):
            if self._routes.get(cid) is session:
                del self._routes[cid]

"""The QUIC session: one QUIC connection and the streams on it.

:class:`QuicSession` drives one QUIC connection of either engine (see
``engine.py``) from asyncio and is brpc's :class:`~brpc._session.base.Session`
on QUIC. It knows streams, not gRPC:

- it opens local bidirectional streams and announces new peer-opened ones to
  its :class:`SessionHandler`, which supplies the protocol that runs on them;
- it routes stream data, FINs, resets and STOP_SENDING to each stream's
  :class:`StreamTransport`, and resumes paused writers when acknowledgements
  drain their send buffers;
- it sends QUIC PINGs every ``keepalive_interval`` (the engines send none by
  themselves), so that an idle connection outlives the idle timeout and NAT
  bindings stay open;
- it enforces a handshake timeout and checks the negotiated ALPN;
- it reports the end of the connection exactly once, as soon as it is known
  (when the peer's CONNECTION_CLOSE arrives, not three probe timeouts later),
  failing every stream with the reason; a valid stateless reset (RFC 9000
  section 10.3) or repeated ICMP errors after the handshake end it at once;
- it never sends an unvalidated client more than three times what it received
  (RFC 9000 section 8.1), closes included;
- it tells its handler when the peer's address changes (migration, NAT rebinding);
- it sends a flight of datagrams with one GSO system call where the kernel
  allows, and a dialing session reads its socket with UDP GRO (several
  datagrams per system call, see ``batching.GroReader``) where the kernel and
  the event loop allow;
- it gives the engine the monotonic clock, not the event loop's (uvloop's
  ``loop.time()`` moves in whole milliseconds: the engines' pacers then refill in
  1 ms steps and loopback RTTs read as 0 or 1 ms, which collapsed bulk transfer),
  and runs timers due within a millisecond on the next loop iteration instead
  of waiting for a timer event loops round up to a millisecond or more;
- it transmits stream data that has waited behind other work for a few
  milliseconds at the next write, not only at the end of the loop iteration
  (see ``flush.py``: otherwise busy peers take turns idling);
- after datagrams arrive it transmits once the callbacks they made ready have
  run (a handler started, a caller woken), and handles an engine timer that is
  due anyway (a delayed acknowledgement) in the same transmit: a small call's
  reply leaves with the acknowledgement of its request, in one datagram;
- on aioquic it probes the path for bigger datagrams (``PathMtuProber``) up to
  ``QuicOptions.max_probed_datagram_size``.
"""

from __future__ import annotations

import asyncio
import contextvars
import ipaddress
import itertools
import logging
import socket
import time
from collections.abc import Sequence
from functools import lru_cache, partial
from typing import TYPE_CHECKING, Any, Protocol, cast

from aioquic.quic.packet import QuicErrorCode, QuicFrameType

from ..._security.peercert import PeerCertificate
from ...errors import CloseCode
from ...options import Options
from ..base import SessionClosed, SessionHandler
from ..stream_transport import StreamTransport
from .batching import DatagramBatch, GroReader, drain_socket, dup_socket
from .engine import Engine
from .flush import EarlyFlush
from .impair import ImpairedTransport
from .options import QuicOptions
from .pmtu import PathMtuProber, max_datagram_for_mtu
from .udp import UdpBatching, connected_sendto

if TYPE_CHECKING:
    from cryptography import x509

__all__ = ["UNCREDITED_HOLD_LIMIT", "QuicSession", "SessionRoutes", "transport_code_name"]

log = logging.getLogger(__name__)

_CRYPTO_ERROR_BASE = 0x100
#: Timers closer than this run on the next loop iteration instead (see the module docstring).
_TIMER_GRANULARITY = 0.001
#: RFC 9000 section 8.1: at most this many times the bytes an unvalidated address sent.
_AMPLIFICATION_FACTOR = 3
_RESET_MIN_SIZE = 21  # RFC 9000 section 10.3: 5 unpredictable bytes and the 16-byte token
#: After a first ICMP error (after the handshake), how long to wait before the PING
#: whose ICMP error ends the connection (when nothing came from the peer meanwhile).
_ICMP_CONFIRM_DELAY = 0.1
_IP_MTU = 14  # linux/in.h: the path MTU of a connected socket
#: How long :meth:`QuicSession.close` waits for held-back stream data before closing.
_CLOSE_FLUSH_LIMIT = 1.0
_ETHERNET_DATAGRAM = 1452  # 1,500 minus IPv6 and UDP headers (IPv4 could carry 1,472)
#: Unread bytes a connection holds on engines that grant the peer credit as they
#: deliver data (qh3): the stream whose data goes over this is ended instead
#: (the call fails with RESOURCE_EXHAUSTED). aioquic withholds credit instead.
UNCREDITED_HOLD_LIMIT = 8 << 20


def transport_code_name(error_code: int) -> str:
    """A QUIC transport error code's name; TLS alerts as ``TLS alert N``."""
    if _CRYPTO_ERROR_BASE <= error_code < 0x200:
        return f"TLS alert {error_code - _CRYPTO_ERROR_BASE}"
    try:
        return QuicErrorCode(error_code).name
    except ValueError:
        return f"transport error 0x{error_code:x}"


def _closed(error_code: int, reason: str, *, transport_error: bool, local: bool) -> SessionClosed:
    return SessionClosed(
        error_code=error_code,
        reason=reason,
        transport_error=transport_error,
        local=local,
        code_name=transport_code_name(error_code) if transport_error else "",
    )


class SessionRoutes(Protocol):
    """What a server endpoint learns from its sessions: which connection IDs reach them."""

    def connection_id_issued(self, session: QuicSession, cid: bytes) -> None: ...

    def connection_id_retired(self, session: QuicSession, cid: bytes) -> None: ...

    def session_terminated(self, session: QuicSession) -> None: ...


class QuicSession(asyncio.DatagramProtocol):
    """One QUIC connection, either side, as streams for the layers above."""

    def __init__(
        self,
        quic: Any,
        *,
        engine: Engine,
        handler: SessionHandler,
        options: Options,
        quic_options: QuicOptions,
        alpn: str | None = None,
        handshake_timeout: float | None = None,
        owns_transport: bool = False,
        batch: DatagramBatch | None = None,
        refuse: tuple[int, str] | None = None,
        routes: SessionRoutes | None = None,
        gso: UdpBatching | None = None,
    ) -> None:
        """``engine``: the engine ``quic`` belongs to; ``alpn``: the ALPN the
        handshake must negotiate; ``handshake_timeout``: close if the handshake
        takes longer; ``owns_transport``: the session has its own UDP socket (the
        dialing side); ``batch``: the server's read batch this session defers its
        transmits to; ``refuse``: a transport error code and reason to close with
        as soon as the first datagram is processed; ``routes``: the server
        endpoint routing datagrams to it; ``gso``: the server socket's batched sender."""
        self._loop = asyncio.get_running_loop()
        self.quic = quic
        self.engine = engine
        self.handler = handler
        self.options = options
        self.quic_options = quic_options
        self._alpn = alpn
        self._handshake_timeout = handshake_timeout
        self._owns_transport = owns_transport
        self._is_client: bool = quic.configuration.is_client
        self._udp: asyncio.DatagramTransport | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self._routes = routes
        self._gso = gso
        self._streams: dict[int, StreamTransport] = {}
        # Streams we finished with but the engine still tracks; late frames for
        # them must not look like new streams.
        self._retired: set[int] = set()
        self._retired_prune_at = 64
        #: Lowest ID a new peer-opened bidirectional stream can have, and the
        #: lower ones implicitly opened whose data has not arrived yet.
        self._next_peer_stream = 0 if not self._is_client else 1
        self._unseen_peer_streams: set[int] = set()
        self._paused: set[StreamTransport] = set()
        #: Bytes paused transports hold unread (see credit_held).
        self._held_bytes = 0
        self._flush_handle: asyncio.Handle | None = None
        self._timer: asyncio.Handle | None = None
        self._timer_at: float | None = None
        self._last_now = 0.0
        self._proven: tuple[x509.Certificate, list[x509.Certificate]] | None = None
        self._close_after: tuple[tuple[int, int | None, str], list[int]] | None = None
        # Streams with data the engine may still hold back (see close()).
        self._unflushed: set[int] = set()
        self._timers: list[asyncio.TimerHandle] = []
        self._ping_ids = itertools.count(1)
        self._pings_in_flight: set[int] = set()
        self.pings_acknowledged = 0
        self.handshake_done = False
        self.alpn_protocol: str | None = None
        #: Whether the TLS handshake resumed an earlier session (ticket).
        self.session_resumed = False
        self.closed: SessionClosed | None = None
        self.terminated = asyncio.Event()
        self._refuse = refuse
        self._batch = batch
        self._transmit_deferred = False
        self._early_flush = EarlyFlush()
        self._drain: socket.socket | None = None
        #: The reader of a dialing session's socket when it receives with UDP GRO.
        self.gro_reader: GroReader | None = None
        # Anti-amplification (server side, until the client's address is validated).
        self._unvalidated = not self._is_client
        self._received_unvalidated = 0
        self._sent_unvalidated = 0
        #: Datagrams not sent because they would have exceeded the 3x allowance.
        self.amplification_dropped = 0
        self._icmp_since: float | None = None
        self._icmp_ping_sent = False
        self._last_address: tuple[str, int] | None = None
        self._prober: PathMtuProber | None = None
        self._probe_handle: asyncio.Handle | None = None
        #: The datagram size in use (raised by path MTU probes on aioquic).
        self.datagram_size: int = quic_options.max_datagram_size

    # -- asyncio.DatagramProtocol ----------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._udp = cast(asyncio.DatagramTransport, transport)
        udp = self._udp
        conditions = self.quic_options.network_conditions
        if conditions is not None:
            self._transport = ImpairedTransport(udp, conditions)
        elif self._owns_transport:
            self._transport = connected_sendto(udp)
            if self.quic_options.gro:
                self.gro_reader = GroReader.take_over(
                    udp,
                    limit=self.quic_options.read_batch,
                    receive=self._receive_deferred,
                    flush=self.flush_batch,
                    on_error=self.error_received,
                )
            if self.gro_reader is None and self.quic_options.read_batch > 1:
                self._drain = dup_socket(udp)
            if self.quic_options.gso:
                self._gso = UdpBatching(dup_socket(udp), gro=False)
        else:
            self._transport = udp
        if self._handshake_timeout is not None:
            self._later(self._handshake_timeout, self._handshake_timed_out)

    def connect(self, addr: Any) -> None:
        """Start the handshake with the server at ``addr`` (the dialing side)."""
        self.quic.connect(addr, now=self._clock())
        self.transmit()

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        conditions = self.quic_options.network_conditions
        if conditions is not None:
            conditions.deliver(self._datagram_received, data, addr)
        else:
            self._datagram_received(data, addr)

    def _datagram_received(self, data: bytes | str, addr: Any) -> None:
        if self.closed is not None and self.terminated.is_set():
            return
        batch = self._batch
        if batch is not None and batch.active:
            batch.add(self)
            self._transmit_deferred = True
        elif self._drain is not None:
            self._receive_batch(data, addr, self._drain)
            return
        try:
            self._receive_one(data, addr)
        except Exception:
            log.exception("failed to process a datagram; closing the connection")
            self.close(CloseCode.INTERNAL_ERROR, "internal error")
            return
        if self._transmit_deferred:
            return  # the batch flushes
        self._flush_soon()
        self._after_receive()

    def flush_batch(self) -> None:
        """Transmit what the datagrams of a batch called for (see :meth:`_flush_soon`)."""
        if self._transmit_deferred:
            self._transmit_deferred = False
            self._flush_soon()
            self._after_receive()

    def _receive_batch(self, data: bytes | str, addr: Any, drain: socket.socket) -> None:
        """Process ``data`` and the datagrams already waiting behind it, then transmit once."""
        self._transmit_deferred = True
        try:
            drain_socket(
                drain,
                data,
                addr,
                self.quic_options.read_batch,
                receive=self._receive_and_go_on,
                on_error=self.error_received,
            )
        except Exception:
            self._transmit_deferred = False
            log.exception("failed to process a datagram; closing the connection")
            self.close(CloseCode.INTERNAL_ERROR, "internal error")
            return
        self.flush_batch()

    def _receive_and_go_on(self, data: bytes | str, addr: Any) -> bool:
        """Process one datagram of a drain; whether to go on draining."""
        self._receive_one(data, addr)
        return self.closed is None

    def _receive_deferred(self, data: bytes, addr: Any) -> bool:
        """Process one datagram the GRO reader read, deferring the transmit to
        :meth:`flush_batch`; whether to read on."""
        if self.closed is not None and self.terminated.is_set():
            return False
        self._transmit_deferred = True
        try:
            self._receive_one(data, addr)
        except Exception:
            self._transmit_deferred = False
            log.exception("failed to process a datagram; closing the connection")
            self.close(CloseCode.INTERNAL_ERROR, "internal error")
            return False
        return self.closed is None

    def _receive_one(self, data: bytes | str, addr: Any) -> None:
        datagram = cast(bytes, data)
        self._icmp_since = None
        self._icmp_ping_sent = False
        if self._is_client and self._is_stateless_reset(datagram):
            return
        if self._unvalidated:
            self._received_unvalidated += len(datagram)
        self.quic.receive_datagram(datagram, addr, now=self._clock())
        self._process_events()

    def _after_receive(self) -> None:
        if self._refuse is not None and self.closed is None:
            code, reason = self._refuse
            self.close(code, reason, transport_error=True)
            return
        self._check_closing()
        self._check_address()

    def error_received(self, exc: Exception) -> None:
        # ICMP errors (port unreachable, ...) on connected UDP sockets.
        if not isinstance(exc, ConnectionRefusedError) or self.closed is not None:
            log.debug("UDP error on QUIC connection: %r", exc)
            return
        if not self.handshake_done:
            self._lost("nothing is listening on that UDP port (ICMP port unreachable)")
            return
        # After the handshake an ICMP error may be stale (a packet sent before the
        # peer came back) or forged: wait a moment, ask with a PING, and give up
        # only if that PING also gets an ICMP error and nothing came from the peer
        # in between.
        if self._icmp_since is None:
            self._icmp_since = self._loop.time()
            self._later(_ICMP_CONFIRM_DELAY, self._confirm_unreachable)
        elif self._icmp_ping_sent:
            self._lost("the peer's UDP port is unreachable (ICMP port unreachable)")

    def _confirm_unreachable(self) -> None:
        if self._icmp_since is None or self.closed is not None:
            return  # the peer answered meanwhile
        self._icmp_ping_sent = True
        self.quic.send_ping(next(self._ping_ids))
        self.transmit()

    def _lost(self, reason: str) -> None:
        self._report_closed(
            _closed(QuicErrorCode.CONNECTION_REFUSED, reason, transport_error=True, local=True)
        )
        self.quic.close(error_code=QuicErrorCode.CONNECTION_REFUSED)
        self.transmit()
        self._stop_sending()

    def _is_stateless_reset(self, datagram: bytes) -> bool:
        """Whether ``datagram`` is a stateless reset from the server (RFC 9000 section
        10.3): a short-header datagram ending with one of the peer's reset tokens."""
        if len(datagram) < _RESET_MIN_SIZE or datagram[0] & 0x80 or not self.handshake_done:
            return False
        if datagram[-16:] not in self.engine.peer_reset_tokens(self.quic):
            return False
        log.info("stateless reset from %s: the server lost this connection", self.peer_address)
        self._report_closed(
            _closed(
                QuicErrorCode.NO_ERROR,
                "the server no longer knows this connection (stateless reset; "
                "it restarted or lost its state)",
                transport_error=True,
                local=False,
            )
        )
        self._stop_sending()
        return True

    def _stop_sending(self) -> None:
        """Send nothing more: the connection is gone at the peer."""
        self._cancel_timer()
        self.terminated.set()
        if self._owns_transport and self._udp is not None:
            self._udp.close()

    # -- sending -------------------------------------------------------------------

    def transmit(self) -> None:
        """Send what the engine has to send, and arm its timer."""
        if self._transmit_deferred:
            return
        self._flush_handle = None
        self._transmit(self._clock())

    def _flush(self) -> None:
        """The transmit :meth:`_flush_soon` scheduled.

        An engine timer due within :data:`_TIMER_GRANULARITY` (an acknowledgement
        held back for its delay, say) is handled first, so that what it sends
        shares the datagrams of this transmit instead of following on its own.
        Not once closed (an engine that closes for a reason of its own is
        reported closed as soon as it did, see ``_check_closing``): qh3 handles a
        closing connection's timer by ending it, and the CONNECTION_CLOSE must
        leave first, as :meth:`transmit` sends it.
        """
        self._flush_handle = None  # first: a deferred batch schedules it again
        if self._transmit_deferred:
            return
        now = self._clock()
        timer_at = self.quic.get_timer()
        if timer_at is not None and timer_at - now <= _TIMER_GRANULARITY and self.closed is None:
            armed_at = self._timer_at
            if armed_at is None or armed_at - now <= _TIMER_GRANULARITY:
                self._cancel_timer()  # it would run right after this, for nothing
            # else the armed timer is later: it stays (it re-arms if it fires early)
            self._run_timer(timer_at)
            return
        self._transmit(now)

    def _transmit(self, now: float) -> None:
        self._early_flush.transmitted()
        udp = self._udp
        if udp is None or udp.is_closing():
            return
        datagrams = self.engine.datagrams_to_send(self.quic, now)
        if datagrams:
            self._send(datagrams)
        if self._unflushed and self._close_after is None:
            unsent = self.engine.unsent_bytes
            self._unflushed = {sid for sid in self._unflushed if unsent(self.quic, sid)}
        pending = self._close_after
        if pending is not None and not any(
            self.engine.unsent_bytes(self.quic, sid) for sid in pending[1]
        ):
            self._close_now()
            return
        self._arm_timer()
        if self._paused:
            for transport in list(self._paused):
                if transport.check_resume():
                    self._paused.discard(transport)

    def _send(self, datagrams: Sequence[tuple[bytes, Any]]) -> None:
        if self._unvalidated:
            if self.handshake_done or self.engine.address_validated(self.quic):
                self._unvalidated = False
            else:
                datagrams = self._within_allowance(datagrams)
        transport = self._transport
        assert transport is not None
        gso = self._gso
        if (
            gso is not None
            and len(datagrams) > 1
            and not cast(asyncio.WriteTransport, transport).get_write_buffer_size()
        ):
            address = None if self._owns_transport else datagrams[0][1]
            if all(addr == datagrams[0][1] for _, addr in datagrams):
                try:
                    gso.send([data for data, _ in datagrams], address)
                except (BlockingIOError, InterruptedError):
                    pass  # the socket buffer is full: as lost on the way
                except OSError as exc:
                    self.error_received(exc)
                return
        for data, addr in datagrams:
            transport.sendto(data, addr)

    def _within_allowance(self, datagrams: Sequence[tuple[bytes, Any]]) -> list[tuple[bytes, Any]]:
        allowed = _AMPLIFICATION_FACTOR * self._received_unvalidated - self._sent_unvalidated
        kept = []
        for data, addr in datagrams:
            if len(data) <= allowed:
                kept.append((data, addr))
                allowed -= len(data)
                self._sent_unvalidated += len(data)
            else:
                self.amplification_dropped += 1
        return kept

    def _close_now(self) -> None:
        """Send the CONNECTION_CLOSE that :meth:`close` held back, if any."""
        pending, self._close_after = self._close_after, None
        if pending is not None and not self.terminated.is_set():
            error_code, frame_type, reason = pending[0]
            self.quic.close(error_code=error_code, frame_type=frame_type, reason_phrase=reason)
            self._transmit(self._clock())

    def _arm_timer(self) -> None:
        timer_at = self.quic.get_timer()
        armed_at = self._timer_at
        if self._timer is not None and armed_at is not None:
            if timer_at == armed_at:
                return
            if timer_at is not None and timer_at > armed_at:
                # Later than the armed timer, which fires early and re-arms: the
                # engine's timer moves with every packet sent and acknowledged,
                # and a cancel and a new timer on each transmit cost more.
                return
        self._cancel_timer()
        if timer_at is None:
            return
        self._timer_at = timer_at
        delay = timer_at - self._clock()
        if delay <= _TIMER_GRANULARITY:
            self._timer = self._loop.call_soon(self._handle_timer)
        else:
            self._timer = self._loop.call_later(delay, self._handle_timer)

    def _clock(self, at_least: float | None = None) -> float:
        """The time to give the engine: the monotonic clock, never going backwards
        (a timer run early, see :data:`_TIMER_GRANULARITY`, is handled at its own
        time). Not ``loop.time()``: uvloop's advances in whole milliseconds, which
        starves the engines' pacers and inflates their loopback RTT estimates."""
        now = time.monotonic()
        if at_least is not None and at_least > now:
            now = at_least
        if now < self._last_now:
            return self._last_now
        self._last_now = now
        return now

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._timer_at = None

    def _handle_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        if self.terminated.is_set() and self.closed is not None:
            return
        timer_at = self.quic.get_timer()
        if timer_at is None:
            return
        if timer_at - self._clock() > _TIMER_GRANULARITY:
            self._arm_timer()  # armed for an earlier time the engine's timer moved from
            return
        self._run_timer(timer_at)

    def _run_timer(self, timer_at: float) -> None:
        """Handle the engine's timer due at ``timer_at`` (now, or within the granularity)."""
        if self.terminated.is_set() and self.closed is not None:
            return
        now = self._clock(timer_at)
        try:
            self.quic.handle_timer(now=now)
            self._process_events()
        except Exception:
            log.exception("failed to handle a QUIC timer; closing the connection")
            self.close(CloseCode.INTERNAL_ERROR, "internal error")
            return
        if self._udp is not None:
            self._transmit(now)
        self._check_closing()

    def _process_events(self) -> None:
        quic = self.quic
        events = self.engine.events
        routes = self._routes
        event = quic.next_event()
        while event is not None:
            if routes is not None:
                if isinstance(event, events.ConnectionIdIssued):
                    routes.connection_id_issued(self, event.connection_id)
                elif isinstance(event, events.ConnectionIdRetired):
                    routes.connection_id_retired(self, event.connection_id)
                elif isinstance(event, events.ConnectionTerminated):
                    routes.session_terminated(self)
            self.quic_event_received(event)
            event = quic.next_event()

    # -- events ------------------------------------------------------------------

    def quic_event_received(self, event: Any) -> None:
        try:
            self._dispatch(event)
        except Exception:
            log.exception("failed to handle %s; closing the connection", type(event).__name__)
            self.close(CloseCode.INTERNAL_ERROR, "internal error")

    def close(
        self,
        error_code: int = CloseCode.NO_ERROR,
        reason_phrase: str = "",
        *,
        transport_error: bool = False,
    ) -> None:
        """Close the connection with ``error_code`` and a reason the peer sees.

        Application (brpc) codes are the default; ``transport_error`` sends a
        QUIC transport error code instead (for example CONNECTION_REFUSED).
        """
        if self.closed is None:
            self.transmit()  # stream data already written leaves before the close
            frame_type = QuicFrameType.PADDING if transport_error else None
            held = [sid for sid in self._unflushed if self.engine.unsent_bytes(self.quic, sid)]
            udp = self._udp
            if held and udp is not None and not udp.is_closing():
                # The engine's pacing holds stream data back and its close would
                # drop it: close once it is out (or after a bound).
                self._close_after = ((error_code, frame_type, reason_phrase), held)
                # Close at the bound regardless: data the peer grants no credit
                # for never leaves, and then nothing else may run _transmit.
                self._loop.call_later(_CLOSE_FLUSH_LIMIT, self._close_now)
            else:
                self.quic.close(
                    error_code=error_code, frame_type=frame_type, reason_phrase=reason_phrase
                )
                self.transmit()
            self._report_closed(
                _closed(error_code, reason_phrase, transport_error=transport_error, local=True)
            )

    # -- streams -----------------------------------------------------------------

    def open_stream(
        self, protocol: asyncio.Protocol, context: contextvars.Context | None = None
    ) -> StreamTransport:
        """Open a local bidirectional stream running ``protocol``."""
        if self.closed is not None:
            raise ConnectionError(self.closed.describe())
        if self.engine.close_event(self.quic) is not None:
            raise ConnectionError("the connection is closing")
        credit = self.engine.stream_credit(self.quic)
        if credit is not None and credit <= 0 and self.handshake_done:
            raise ConnectionError(
                f"the peer allows no more concurrent streams ({self.engine.name} cannot queue them)"
            )
        stream_id = self.quic.get_next_available_stream_id()
        # Sending nothing creates the stream, so the next call gets a new ID.
        self.quic.send_stream_data(stream_id, b"")
        return self._attach(stream_id, protocol, context)

    def send_stream_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        self.quic.send_stream_data(stream_id, data, end_stream)
        if self.engine.holds_unsent:
            self._unflushed.add(stream_id)
        if self._early_flush.wrote(time.monotonic()) and not self._transmit_deferred:
            self.transmit()
        else:
            self._flush_soon()

    def reset_stream(self, stream_id: int, error_code: int = 0) -> None:
        if self.closed is None:
            try:
                self.quic.reset_stream(stream_id, error_code)
            except ValueError:
                return  # qh3: the sending side already finished; nothing to reset
            self._flush_soon()

    def stop_stream(self, stream_id: int, error_code: int = 0) -> None:
        if self.closed is None and self.engine.is_stream_known(self.quic, stream_id):
            try:
                self.quic.stop_stream(stream_id, error_code)
            except ValueError:
                return  # qh3: the receiving side already finished
            self._flush_soon()

    def send_buffer_size(self, stream_id: int) -> int:
        return self.engine.send_buffer_size(self.quic, stream_id)

    def watch_paused(self, transport: StreamTransport) -> None:
        self._paused.add(transport)

    def credit_paused(self, stream_id: int, paused: bool) -> None:
        self.engine.set_stream_credit_paused(self.quic, stream_id, paused)
        if not paused and self.closed is None:
            self._flush_soon()

    def credit_held(self, delta: int) -> bool:
        self._held_bytes += delta
        self.engine.add_unconsumed(self.quic, delta)
        if delta < 0 and self.closed is None:
            self._flush_soon()
        return self._held_bytes > UNCREDITED_HOLD_LIMIT and not self.engine.withholds_credit

    def forget_stream(self, transport: StreamTransport) -> None:
        sid = transport.stream_id
        if self._streams.get(sid) is transport:
            del self._streams[sid]
            self._paused.discard(transport)
            if self.engine.is_stream_known(self.quic, sid):
                self._retired.add(sid)
            if len(self._retired) > self._retired_prune_at:
                # The engine forgets streams once both sides are done; so do we,
                # in batches (a scan per stream closed would cost O(streams)).
                known = self.engine.is_stream_known
                self._retired = {s for s in self._retired if known(self.quic, s)}
                self._retired_prune_at = max(64, 2 * len(self._retired))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.gro_reader is not None:
            self.gro_reader.close()
        if self._drain is not None:
            self._drain.close()
            self._drain = None
        if self._gso is not None and self._owns_transport:
            self._gso.sock.close()
            self._gso = None
        self._cancel_timer()

    def abort(self) -> None:
        """Drop the connection without waiting for the closing period."""
        if self.closed is None:
            self.close(CloseCode.NO_ERROR, "")
        self._close_now()
        if self._owns_transport and self._udp is not None:
            self._udp.close()

    def transport_stats(self) -> list[dict[str, int]]:
        """Counters of every live stream transport."""
        return [
            {
                "stream_id": t.stream_id,
                "bytes_sent": t.counters.bytes_sent,
                "bytes_received": t.counters.bytes_received,
                "send_buffer": self.send_buffer_size(t.stream_id),
                "peak_send_buffer": t.counters.peak_send_buffer,
                "pauses": t.counters.pauses,
                "read_pauses": t.counters.read_pauses,
                "peak_held": t.counters.peak_held,
            }
            for t in self._streams.values()
        ]

    @property
    def peer_address(self) -> tuple[str, int] | None:
        return _normalize_address(self.engine.peer_address(self.quic))

    def peer_certificate(self) -> x509.Certificate | None:
        certificate = self.engine.peer_certificate(self.quic)
        if certificate is None and self._proven is not None:
            return self._proven[0]
        return certificate

    def peer_certificate_chain(self) -> list[x509.Certificate]:
        if self._proven is not None and self.engine.peer_certificate(self.quic) is None:
            return list(self._proven[1])
        return self.engine.peer_certificate_chain(self.quic)

    def prove_peer_certificate(
        self, certificate: x509.Certificate, chain: list[x509.Certificate]
    ) -> None:
        self._proven = (certificate, list(chain))

    def exporter_secret(self, label: bytes, length: int) -> bytes:
        return self.engine.exporter_secret(self.quic, label, length)

    def extra_info(self, name: str, default: Any = None) -> Any:
        """What stream transports answer for ``get_extra_info(name)``."""
        return self.get_extra_info(name, default)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return self.peer_address or default
        if name == "sockname":
            return self._udp.get_extra_info("sockname") if self._udp is not None else default
        if name in ("peercert", "ssl_object"):
            certificate = self.peer_certificate()
            if certificate is None:
                return default
            return certificate if name == "peercert" else PeerCertificate(certificate)
        if name == "quic_session":
            return self
        return default

    # -- internals ---------------------------------------------------------------

    def _dispatch(self, event: Any) -> None:
        events = self.engine.events
        if isinstance(event, events.StreamDataReceived):
            transport = self._streams.get(event.stream_id) or self._incoming(event.stream_id)
            if transport is not None:
                transport.data_received(event.data, event.end_stream)
        elif isinstance(event, events.StreamReset):
            transport = self._streams.get(event.stream_id)
            if transport is not None:
                transport.reset_received(event.error_code)
            else:
                self._finish_unknown(event.stream_id)
        elif isinstance(event, events.StopSendingReceived):
            transport = self._streams.get(event.stream_id)
            if transport is not None:
                transport.stop_sending_received(event.error_code)
            else:
                self._finish_unknown(event.stream_id)
        elif isinstance(event, events.PingAcknowledged):
            if event.uid in self._pings_in_flight:
                self._pings_in_flight.discard(event.uid)
                self.pings_acknowledged += 1
        elif isinstance(event, events.HandshakeCompleted):
            self._handshake_completed(event)
        elif isinstance(event, events.ConnectionTerminated):
            self._report_closed(
                _closed(
                    event.error_code,
                    event.reason_phrase,
                    transport_error=event.frame_type is not None,
                    local=False,
                )
            )
            self.terminated.set()
            if self._owns_transport and self._udp is not None:
                self._udp.close()
            self.engine.break_cycles(self.quic)

    def _incoming(self, stream_id: int) -> StreamTransport | None:
        if (
            stream_id in self._retired
            or (stream_id & 1 == 0) == self._is_client
            or self.closed is not None
            or (stream_id < self._next_peer_stream and stream_id not in self._unseen_peer_streams)
        ):
            # Late data for a stream we are done with. A peer opens its streams
            # in order (a stream implicitly opens the lower ones, which may
            # arrive later), so an ID below the next one that was already seen
            # is never new, whatever the engine still remembers of it (qh3
            # forgets a peer's finished stream early).
            return None
        if stream_id & 2:
            self.close(CloseCode.PROTOCOL_VIOLATION, "brpc does not use unidirectional streams")
            return None
        if stream_id >= self._next_peer_stream:
            self._unseen_peer_streams.update(range(self._next_peer_stream, stream_id, 4))
            self._next_peer_stream = stream_id + 4
        else:
            self._unseen_peer_streams.discard(stream_id)
        accepted = self.handler.stream_opened(self, stream_id)
        if accepted is None:
            self._finish_unknown(stream_id)
            self._retired.add(stream_id)
            return None
        protocol, context = accepted
        return self._attach(stream_id, protocol, context)

    def _attach(
        self, stream_id: int, protocol: asyncio.Protocol, context: contextvars.Context | None
    ) -> StreamTransport:
        transport = StreamTransport(
            self,
            stream_id,
            protocol,
            context=context,
            high_water=self.options.write_high_water,
            low_water=self.options.write_low_water,
        )
        self._streams[stream_id] = transport
        transport.start()
        return transport

    def _finish_unknown(self, stream_id: int) -> None:
        """Make aioquic forget a peer stream nobody will read or write."""
        if self.closed is None and self.engine.is_stream_known(self.quic, stream_id):
            self.quic.reset_stream(stream_id, 0)
            self.quic.stop_stream(stream_id, 0)
            self._flush_soon()

    def _handshake_completed(self, event: Any) -> None:
        self.handshake_done = True
        self.engine.handshake_completed(self.quic)
        # An engine that sizes datagrams itself has now heard the peer's
        # max_udp_payload_size, which may be below the size it started at.
        self.datagram_size = self.engine.path_datagram_size(self.quic) or self.datagram_size
        self.alpn_protocol = event.alpn_protocol
        self.session_resumed = event.session_resumed
        wanted = self._alpn
        if wanted is not None and event.alpn_protocol != wanted:
            got = event.alpn_protocol or "none"
            self.close(
                QuicErrorCode.CRYPTO_ERROR + 120,  # TLS no_application_protocol
                f"peer negotiated ALPN {got!r}, brpc needs {wanted!r}",
                transport_error=True,
            )
            return
        if self.options.keepalive_interval is not None:
            self._later(self.options.keepalive_interval, self._keepalive)
        self._last_address = self.peer_address
        self._start_probing()
        self.handler.handshake_completed(self)

    # -- path MTU ------------------------------------------------------------------

    def _start_probing(self) -> None:
        options = self.quic_options
        ceiling = options.max_probed_datagram_size
        if (
            not self.engine.probes_datagram_size
            or ceiling <= options.max_datagram_size
            or options.network_conditions is not None
        ):
            return
        mtu = self._path_mtu()
        if mtu is not None:
            ceiling = min(ceiling, mtu)
        elif not self._peer_is_loopback():
            # A server's shared socket has no route to ask: probe no further than
            # an Ethernet MTU, so that each client does not cost a long search
            # of large lost probes (configure max_datagram_size for jumbo frames).
            ceiling = min(ceiling, _ETHERNET_DATAGRAM)
        if ceiling <= options.max_datagram_size:
            return
        self._prober = PathMtuProber(base_size=options.max_datagram_size, max_size=ceiling)
        self._loop.call_soon(self._probe)

    def _peer_is_loopback(self) -> bool:
        address = self.peer_address
        try:
            return address is not None and ipaddress.ip_address(address[0]).is_loopback
        except ValueError:
            return False

    def _path_mtu(self) -> int | None:
        """The largest datagram the kernel's route to a connected peer carries."""
        if not self._owns_transport or self._udp is None:
            return None
        sock = self._udp.get_extra_info("socket")
        try:
            family = sock.family
            mtu = int(sock.getsockopt(socket.IPPROTO_IP, _IP_MTU))
        except (OSError, AttributeError):
            return None
        return max_datagram_for_mtu(mtu, ipv6=family == socket.AF_INET6)

    def _probe(self) -> None:
        self._probe_handle = None
        prober = self._prober
        if prober is None or self.closed is not None or self._udp is None:
            return
        now = self._clock()
        size = prober.next_probe(now)
        if size is not None:
            probe = self.engine.send_probe(self.quic, size, now, partial(self._probe_result, size))
            if probe is None:
                prober.probe_lost(size, now)
            else:
                data, addr = probe
                try:
                    assert self._transport is not None
                    self._transport.sendto(data, addr)
                except OSError:
                    prober.probe_lost(size, now)
                self._arm_timer()
        when = prober.next_timer()
        if when is None:
            self._probe_handle = self._loop.call_soon(self._probe)
        else:
            self._probe_handle = self._loop.call_later(max(0.0, when - now), self._probe)

    def _probe_result(self, size: int, acked: bool) -> None:
        prober = self._prober
        if prober is None or self.closed is not None:
            return
        now = self._clock()
        if acked:
            prober.probe_acked(size, now)
        else:
            prober.probe_lost(size, now)
        if prober.current_size != self.datagram_size:
            self.engine.set_max_datagram_size(self.quic, prober.current_size)
            self.datagram_size = prober.current_size
            log.debug("datagram size raised to %d for %s", self.datagram_size, self.peer_address)
        if self._probe_handle is not None:
            self._probe_handle.cancel()
        self._probe_handle = self._loop.call_soon(self._probe)

    # -- address changes -------------------------------------------------------------

    def _check_address(self) -> None:
        if not self.handshake_done or self.closed is not None:
            return
        address = self.peer_address
        if address is None or address == self._last_address:
            return
        previous, self._last_address = self._last_address, address
        log.info("peer address changed from %s to %s", previous, address)
        changed = getattr(self.handler, "address_changed", None)
        if changed is not None:
            changed(self, address)

    def _handshake_timed_out(self) -> None:
        if not self.handshake_done and self.closed is None:
            timeout = self._handshake_timeout
            self.close(
                CloseCode.HANDSHAKE_TIMEOUT, f"TLS handshake did not complete within {timeout} s"
            )

    def _keepalive(self) -> None:
        if self.closed is not None:
            return
        uid = next(self._ping_ids)
        self._pings_in_flight.add(uid)
        self.quic.send_ping(uid)
        self.transmit()
        interval = self.options.keepalive_interval
        assert interval is not None
        self._later(interval, self._keepalive)

    def _later(self, delay: float, callback: Any) -> None:
        loop = asyncio.get_running_loop()
        self._timers = [t for t in self._timers if not t.cancelled() and t.when() > loop.time()]
        self._timers.append(loop.call_later(delay, callback))

    def _flush_soon(self) -> None:
        """Transmit soon (``call_soon``): after the callbacks already scheduled have run.

        After datagrams arrive, this is what lets the tasks they woke (a call's
        handler, a caller waiting for its reply) write first: their data and the
        acknowledgement leave together, in one datagram for a small call.
        """
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_soon(self._flush)

    def _check_closing(self) -> None:
        if self.closed is None:
            ending = self.engine.close_event(self.quic)
            if ending is not None:
                event, local = ending
                self._report_closed(
                    _closed(
                        event.error_code,
                        event.reason_phrase,
                        transport_error=event.frame_type is not None,
                        local=local,
                    )
                )

    def _report_closed(self, closed: SessionClosed) -> None:
        if self.closed is not None:
            return
        self.closed = closed
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        if self._probe_handle is not None:
            self._probe_handle.cancel()
            self._probe_handle = None
        self._paused.clear()
        error = ConnectionError(closed.describe())
        for transport in list(self._streams.values()):
            transport.connection_terminated(error)
        self._streams.clear()
        self.handler.session_closed(self, closed)


def _buffered(transport: asyncio.DatagramTransport) -> int:
    """Bytes the transport holds back because the socket was full (0 if it cannot say)."""
    size = getattr(transport, "get_write_buffer_size", None)
    return int(size()) if size is not None else 0


def _normalize_address(addr: Any) -> tuple[str, int] | None:
    """``(host, port)`` with IPv4-mapped IPv6 addresses shown as IPv4."""
    if not addr:
        return None
    return _normalize_known(tuple(addr))


@lru_cache(maxsize=1024)
def _normalize_known(addr: tuple[Any, ...]) -> tuple[str, int]:
    """:func:`_normalize_address` of a non-empty address, remembered: it is asked
    after every datagram a connection receives, and parsing an IP address is slow."""
    host, port = addr[0], addr[1]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return (host, port)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return (str(ip.ipv4_mapped), port)
    return (host, port)

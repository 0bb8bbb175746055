"""The QUIC session: one QUIC connection and the streams on it.

:class:`QuicSession` is the asyncio adapter around an aioquic
:class:`QuicConnection`. It knows streams, not gRPC:

- it opens local bidirectional streams and announces new peer-opened ones to
  its :class:`SessionHandler`, which supplies the protocol that runs on them;
- it routes stream data, FINs, resets and STOP_SENDING to each stream's
  :class:`QuicStreamTransport`, and resumes paused writers when
  acknowledgements drain their send buffers;
- it sends QUIC PINGs every ``keepalive_interval`` (aioquic sends none by
  itself), so that an idle connection outlives the idle timeout and NAT
  bindings stay open;
- it enforces a handshake timeout and checks the negotiated ALPN;
- it reports the end of the connection exactly once, as soon as it is known
  (when the peer's CONNECTION_CLOSE arrives, not three probe timeouts later),
  failing every stream with the reason.
"""

from __future__ import annotations

import asyncio
import contextvars
import ipaddress
import itertools
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast

from aioquic.asyncio.protocol import QuicConnectionProtocol, QuicStreamHandler
from aioquic.asyncio.server import QuicServer
from aioquic.quic import events
from aioquic.quic.connection import QuicConnection, stream_is_client_initiated
from aioquic.quic.packet import QuicErrorCode, QuicFrameType

from . import _aioquic
from ._peercert import PeerCertificate
from ._stream_transport import QuicStreamTransport
from .errors import CloseCode
from .testing.network import ImpairedTransport, NetworkConditions

__all__ = [
    "BatchingQuicServer",
    "DatagramBatch",
    "QuicSession",
    "SessionClosed",
    "SessionHandler",
    "SessionOptions",
]

log = logging.getLogger(__name__)

_CRYPTO_ERROR_BASE = 0x100


@dataclass(frozen=True)
class SessionOptions:
    """Tuning of one QUIC session."""

    #: Seconds between keepalive PINGs; ``None`` disables them.
    keepalive_interval: float | None = 5.0
    #: Seconds the TLS handshake may take before the session is closed.
    handshake_timeout: float | None = 10.0
    #: Unacknowledged bytes per stream above which writers are paused.
    write_high_water: int = 1 << 20
    #: ... and below which they are resumed.
    write_low_water: int = 256 << 10
    #: Required ALPN; the session closes if the handshake negotiated another.
    alpn: str | None = None
    #: Simulated loss and reordering (tests only).
    network_conditions: NetworkConditions | None = None
    #: Datagrams read from the socket per wake-up before one transmit; 1 reads
    #: one at a time. Batching only applies where the session reads its own
    #: socket (the dialing side) or under a :class:`BatchingQuicServer`, and
    #: not with ``network_conditions``.
    read_batch: int = 1


@dataclass(frozen=True)
class SessionClosed:
    """Why a session ended."""

    error_code: int
    reason: str
    #: True for QUIC transport errors (including TLS alerts), False for
    #: application (brpc) close codes.
    transport_error: bool
    #: True when this side initiated the close.
    local: bool

    def describe(self) -> str:
        """A sentence for humans: who closed, with which code, why."""
        who = "closed locally" if self.local else "closed by peer"
        if self.transport_error:
            if self.error_code >= _CRYPTO_ERROR_BASE and self.error_code < 0x200:
                code = f"TLS alert {self.error_code - _CRYPTO_ERROR_BASE}"
            else:
                try:
                    code = QuicErrorCode(self.error_code).name
                except ValueError:
                    code = f"transport error 0x{self.error_code:x}"
        else:
            try:
                code = CloseCode(self.error_code).name
            except ValueError:
                code = f"application error 0x{self.error_code:x}"
        reason = self.reason or "no reason given"
        if self.reason == "Idle timeout":
            return "connection timed out: no packets from peer within the idle timeout"
        return f"connection {who} ({code}): {reason}"


class SessionHandler(Protocol):
    """What a session reports to the brpc layer above it."""

    def handshake_completed(self, session: QuicSession) -> None: ...

    def stream_opened(
        self, session: QuicSession, stream_id: int
    ) -> tuple[asyncio.Protocol, contextvars.Context | None] | None:
        """Return the protocol (and context) for a new peer-opened stream, or
        ``None`` to refuse it (the stream is reset)."""
        ...

    def session_closed(self, session: QuicSession, closed: SessionClosed) -> None: ...


class QuicSession(QuicConnectionProtocol):
    """One QUIC connection, either side, as streams for the layers above."""

    def __init__(
        self,
        quic: QuicConnection,
        stream_handler: QuicStreamHandler | None = None,
        *,
        handler: SessionHandler,
        options: SessionOptions,
        owns_transport: bool = False,
    ) -> None:
        super().__init__(quic, stream_handler)
        self.quic = quic
        self.handler = handler
        self.options = options
        self._owns_transport = owns_transport
        self._is_client = quic.configuration.is_client
        self._udp: asyncio.DatagramTransport | None = None
        self._streams: dict[int, QuicStreamTransport] = {}
        # Streams we finished with but aioquic still tracks; late frames for
        # them must not look like new streams.
        self._retired: set[int] = set()
        self._paused: set[QuicStreamTransport] = set()
        self._flush_handle: asyncio.Handle | None = None
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
        #: When set, the connection is closed with this transport error code and
        #: reason as soon as its first datagram is processed (over a limit, ...).
        self.refuse_with: tuple[int, str] | None = None
        #: Set by a :class:`BatchingQuicServer`: datagrams it hands over while
        #: it drains its socket are transmitted for once the drain ends.
        self.batch: DatagramBatch | None = None
        self._transmit_deferred = False
        self._drain: socket.socket | None = None

    # -- asyncio.DatagramProtocol ----------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._udp = cast(asyncio.DatagramTransport, transport)
        conditions = self.options.network_conditions
        if conditions is not None:
            transport = ImpairedTransport(self._udp, conditions)
        elif self._owns_transport and self.options.read_batch > 1:
            self._drain = _dup_socket(self._udp)
        super().connection_made(transport)
        if self.options.handshake_timeout is not None:
            self._later(self.options.handshake_timeout, self._handshake_timed_out)

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        conditions = self.options.network_conditions
        if conditions is not None:
            conditions.deliver(self._datagram_received, data, addr)
        else:
            self._datagram_received(data, addr)

    def _datagram_received(self, data: bytes | str, addr: Any) -> None:
        if self.closed is not None and self.terminated.is_set():
            return
        batch = self.batch
        if batch is not None and batch.active:
            batch.add(self)
            self._transmit_deferred = True
        elif self._drain is not None:
            self._receive_batch(data, addr, self._drain)
            return
        try:
            super().datagram_received(data, addr)
        except Exception:
            log.exception("failed to process a datagram; closing the connection")
            self.close(CloseCode.INTERNAL_ERROR, "internal error")
            return
        if self._transmit_deferred:
            return  # the batch flushes
        self._after_receive()

    def flush_batch(self) -> None:
        """Transmit what the datagrams of a batch called for."""
        if self._transmit_deferred:
            self._transmit_deferred = False
            self.transmit()
            self._after_receive()

    def _receive_batch(self, data: bytes | str, addr: Any, drain: socket.socket) -> None:
        """Process ``data`` and the datagrams already waiting behind it, then transmit once."""
        self._transmit_deferred = True
        try:
            _drain_socket(
                drain,
                data,
                addr,
                self.options.read_batch,
                receive=self._receive_one,
                on_error=self.error_received,
            )
        except Exception:
            self._transmit_deferred = False
            log.exception("failed to process a datagram; closing the connection")
            self.close(CloseCode.INTERNAL_ERROR, "internal error")
            return
        self.flush_batch()

    def _receive_one(self, data: bytes | str, addr: Any) -> bool:
        """Process one datagram of a drain; whether to go on draining."""
        super().datagram_received(data, addr)
        return self.closed is None

    def _after_receive(self) -> None:
        if self.refuse_with is not None and self.closed is None:
            code, reason = self.refuse_with
            self.close(code, reason, transport_error=True)
            return
        self._check_closing()

    def error_received(self, exc: Exception) -> None:
        # ICMP errors (port unreachable, ...) on connected UDP sockets.
        if not self.handshake_done and isinstance(exc, ConnectionRefusedError):
            self._report_closed(
                SessionClosed(
                    error_code=QuicErrorCode.CONNECTION_REFUSED,
                    reason="nothing is listening on that UDP port (ICMP port unreachable)",
                    transport_error=True,
                    local=True,
                )
            )
            self.quic.close(error_code=QuicErrorCode.CONNECTION_REFUSED)
            self.transmit()
        else:
            log.debug("UDP error on QUIC connection: %r", exc)

    # -- aioquic hooks -------------------------------------------------------------

    def transmit(self) -> None:
        if self._transmit_deferred:
            return
        self._flush_handle = None
        if self._udp is None or self._udp.is_closing():
            return
        super().transmit()
        if self._paused:
            for transport in list(self._paused):
                if transport.check_resume():
                    self._paused.discard(transport)

    def quic_event_received(self, event: events.QuicEvent) -> None:
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
            self.quic.close(
                error_code=error_code,
                frame_type=QuicFrameType.PADDING if transport_error else None,
                reason_phrase=reason_phrase,
            )
            self.transmit()
            self._report_closed(
                SessionClosed(
                    error_code=error_code,
                    reason=reason_phrase,
                    transport_error=transport_error,
                    local=True,
                )
            )

    # -- streams -----------------------------------------------------------------

    def open_stream(
        self, protocol: asyncio.Protocol, context: contextvars.Context | None = None
    ) -> QuicStreamTransport:
        """Open a local bidirectional stream running ``protocol``."""
        if self.closed is not None:
            raise ConnectionError(self.closed.describe())
        stream_id = self.quic.get_next_available_stream_id()
        # Sending nothing creates the stream, so the next call gets a new ID.
        self.quic.send_stream_data(stream_id, b"")
        return self._attach(stream_id, protocol, context)

    def send_stream_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        self.quic.send_stream_data(stream_id, data, end_stream)
        self._flush_soon()

    def reset_stream(self, stream_id: int, error_code: int = 0) -> None:
        if self.closed is None:
            self.quic.reset_stream(stream_id, error_code)
            self._flush_soon()

    def stop_stream(self, stream_id: int, error_code: int = 0) -> None:
        if self.closed is None and _aioquic.is_stream_known(self.quic, stream_id):
            self.quic.stop_stream(stream_id, error_code)
            self._flush_soon()

    def send_buffer_size(self, stream_id: int) -> int:
        return _aioquic.send_buffer_size(self.quic, stream_id)

    def watch_paused(self, transport: QuicStreamTransport) -> None:
        self._paused.add(transport)

    def forget_stream(self, transport: QuicStreamTransport) -> None:
        sid = transport.stream_id
        if self._streams.get(sid) is transport:
            del self._streams[sid]
            self._paused.discard(transport)
            if _aioquic.is_stream_known(self.quic, sid):
                self._retired.add(sid)
            self._retired = {s for s in self._retired if _aioquic.is_stream_known(self.quic, s)}

    def connection_lost(self, exc: Exception | None) -> None:
        if self._drain is not None:
            self._drain.close()
            self._drain = None
        super().connection_lost(exc)

    def abort(self) -> None:
        """Drop the connection without waiting for the closing period."""
        if self.closed is None:
            self.close(CloseCode.NO_ERROR, "")
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
            }
            for t in self._streams.values()
        ]

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return _normalize_address(self.quic.get_peer_address()) or default
        if name == "sockname":
            return self._udp.get_extra_info("sockname") if self._udp is not None else default
        if name in ("peercert", "ssl_object"):
            certificate = _aioquic.peer_certificate(self.quic)
            if certificate is None:
                return default
            return certificate if name == "peercert" else PeerCertificate(certificate)
        if name == "quic_session":
            return self
        return default

    # -- internals ---------------------------------------------------------------

    def _dispatch(self, event: events.QuicEvent) -> None:
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
                SessionClosed(
                    error_code=event.error_code,
                    reason=event.reason_phrase,
                    transport_error=event.frame_type is not None,
                    local=False,
                )
            )
            self.terminated.set()
            if self._owns_transport and self._udp is not None:
                self._udp.close()

    def _incoming(self, stream_id: int) -> QuicStreamTransport | None:
        if (
            stream_id in self._retired
            or stream_is_client_initiated(stream_id) == self._is_client
            or self.closed is not None
        ):
            return None  # late data for a stream we are done with
        if stream_id & 2:
            self.close(CloseCode.PROTOCOL_VIOLATION, "brpc does not use unidirectional streams")
            return None
        accepted = self.handler.stream_opened(self, stream_id)
        if accepted is None:
            self._finish_unknown(stream_id)
            self._retired.add(stream_id)
            return None
        protocol, context = accepted
        return self._attach(stream_id, protocol, context)

    def _attach(
        self, stream_id: int, protocol: asyncio.Protocol, context: contextvars.Context | None
    ) -> QuicStreamTransport:
        transport = QuicStreamTransport(
            self,
            stream_id,
            protocol,
            context=context,
            high_water=self.options.write_high_water,
            low_water=self.options.write_low_water,
        )
        self._streams[stream_id] = transport
        if context is None:
            protocol.connection_made(transport)
        else:
            context.run(protocol.connection_made, transport)
        return transport

    def _finish_unknown(self, stream_id: int) -> None:
        """Make aioquic forget a peer stream nobody will read or write."""
        if self.closed is None and _aioquic.is_stream_known(self.quic, stream_id):
            self.quic.reset_stream(stream_id, 0)
            self.quic.stop_stream(stream_id, 0)
            self._flush_soon()

    def _handshake_completed(self, event: events.HandshakeCompleted) -> None:
        self.handshake_done = True
        self.alpn_protocol = event.alpn_protocol
        self.session_resumed = event.session_resumed
        wanted = self.options.alpn
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
        self.handler.handshake_completed(self)

    def _handshake_timed_out(self) -> None:
        if not self.handshake_done and self.closed is None:
            timeout = self.options.handshake_timeout
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
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_soon(self.transmit)

    def _check_closing(self) -> None:
        if self.closed is None:
            ending = _aioquic.close_event(self.quic)
            if ending is not None:
                event, local = ending
                self._report_closed(
                    SessionClosed(
                        error_code=event.error_code,
                        reason=event.reason_phrase,
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
        self._paused.clear()
        error = ConnectionError(closed.describe())
        for transport in list(self._streams.values()):
            transport.connection_terminated(error)
        self._streams.clear()
        self.handler.session_closed(self, closed)


class DatagramBatch:
    """The sessions that received datagrams during one drain of a shared socket."""

    def __init__(self) -> None:
        self.active = False
        self._sessions: dict[QuicSession, None] = {}

    def add(self, session: QuicSession) -> None:
        self._sessions[session] = None

    def flush(self) -> None:
        sessions, self._sessions = self._sessions, {}
        for session in sessions:
            try:
                session.flush_batch()
            except Exception:
                log.exception("failed to transmit after a batch of datagrams")


class BatchingQuicServer(QuicServer):
    """A :class:`QuicServer` that, with ``read_batch`` > 1, reads up to that many
    waiting datagrams per wake-up and lets each session transmit once for all
    of them, at the end."""

    def __init__(self, *, read_batch: int = 1, create_protocol: Any, **kwargs: Any) -> None:
        self._read_batch = read_batch
        self._batch = DatagramBatch()
        self._drain: socket.socket | None = None

        def create(*args: Any, **kw: Any) -> Any:
            session = create_protocol(*args, **kw)
            session.batch = self._batch
            return session

        super().__init__(create_protocol=create if read_batch > 1 else create_protocol, **kwargs)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self._read_batch > 1:
            self._drain = _dup_socket(cast(asyncio.DatagramTransport, transport))

    def connection_lost(self, exc: Exception | None) -> None:
        if self._drain is not None:
            self._drain.close()
            self._drain = None
        super().connection_lost(exc)

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        batch, drain = self._batch, self._drain
        if drain is None:
            super().datagram_received(data, addr)
            return
        batch.active = True
        try:
            _drain_socket(
                drain,
                data,
                addr,
                self._read_batch,
                receive=self._receive_one,
                on_error=self._udp_error,
            )
        finally:
            batch.active = False
            batch.flush()

    def _receive_one(self, data: bytes | str, addr: Any) -> bool:
        super().datagram_received(data, addr)
        return True

    def _udp_error(self, exc: OSError) -> None:
        log.debug("UDP error on the server socket: %r", exc)


_MAX_DATAGRAM = 65535
#: Early flush: a drain stops once it took this long (seconds). Datagrams of
#: bulk data cost little each and batch well; datagrams carrying calls cost
#: far more (their handlers are started), and holding those back until a long
#: batch ends puts caller and callee into lock-step.
_BATCH_BUDGET = 0.0005


def _drain_socket(
    sock: socket.socket,
    data: bytes | str,
    addr: Any,
    limit: int,
    *,
    receive: Callable[[bytes | str, Any], bool],
    on_error: Callable[[OSError], None],
) -> None:
    """Hand ``data``, then up to ``limit - 1`` datagrams already waiting on
    ``sock``, to ``receive``; stop when it returns False, when nothing waits or
    after :data:`_BATCH_BUDGET` seconds (the early flush)."""
    budget_end = time.perf_counter() + _BATCH_BUDGET
    for read in range(1, limit + 1):
        if not receive(data, addr) or read == limit or time.perf_counter() > budget_end:
            return
        try:
            data, addr = sock.recvfrom(_MAX_DATAGRAM)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            on_error(exc)
            return


def _dup_socket(transport: asyncio.DatagramTransport) -> socket.socket:
    """A second, non-blocking handle on ``transport``'s socket, to read waiting datagrams."""
    sock = cast(socket.socket, transport.get_extra_info("socket").dup())
    sock.setblocking(False)
    return sock


def _normalize_address(addr: Any) -> tuple[str, int] | None:
    """``(host, port)`` with IPv4-mapped IPv6 addresses shown as IPv4."""
    if not addr:
        return None
    host, port = addr[0], addr[1]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return (host, port)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return (str(ip.ipv4_mapped), port)
    return (host, port)

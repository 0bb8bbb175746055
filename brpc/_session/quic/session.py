"""The QUIC session: one QUIC connection and the streams on it.

:class:`QuicSession` is the asyncio adapter around an aioquic
:class:`QuicConnection` and brpc's :class:`~brpc._session.base.Session` on
QUIC. It knows streams, not gRPC:

- it opens local bidirectional streams and announces new peer-opened ones to
  its :class:`SessionHandler`, which supplies the protocol that runs on them;
- it routes stream data, FINs, resets and STOP_SENDING to each stream's
  :class:`StreamTransport`, and resumes paused writers when acknowledgements
  drain their send buffers;
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
from typing import TYPE_CHECKING, Any, cast

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic import events
from aioquic.quic.connection import QuicConnection, stream_is_client_initiated
from aioquic.quic.packet import QuicErrorCode, QuicFrameType

from ..._security.peercert import PeerCertificate
from ...errors import CloseCode
from ...options import Options
from ..base import SessionClosed, SessionHandler
from ..stream_transport import StreamTransport
from . import _aioquic
from .batching import DatagramBatch, drain_socket, dup_socket
from .impair import ImpairedTransport
from .options import QuicOptions

if TYPE_CHECKING:
    from cryptography import x509

__all__ = ["QuicSession", "transport_code_name"]

log = logging.getLogger(__name__)

_CRYPTO_ERROR_BASE = 0x100


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


class QuicSession(QuicConnectionProtocol):
    """One QUIC connection, either side, as streams for the layers above."""

    def __init__(
        self,
        quic: QuicConnection,
        *,
        handler: SessionHandler,
        options: Options,
        quic_options: QuicOptions,
        alpn: str | None = None,
        handshake_timeout: float | None = None,
        owns_transport: bool = False,
        batch: DatagramBatch | None = None,
        refuse: tuple[int, str] | None = None,
    ) -> None:
        """``alpn``: the ALPN the handshake must negotiate; ``handshake_timeout``:
        close if the handshake takes longer; ``owns_transport``: the session has
        its own UDP socket (the dialing side); ``batch``: the server's read batch
        this session defers its transmits to; ``refuse``: a transport error code
        and reason to close with as soon as the first datagram is processed."""
        _aioquic.enable_consumption_credit(quic)
        super().__init__(quic)
        self.quic = quic
        self.handler = handler
        self.options = options
        self.quic_options = quic_options
        self._alpn = alpn
        self._handshake_timeout = handshake_timeout
        self._owns_transport = owns_transport
        self._is_client = quic.configuration.is_client
        self._udp: asyncio.DatagramTransport | None = None
        self._streams: dict[int, StreamTransport] = {}
        # Streams we finished with but aioquic still tracks; late frames for
        # them must not look like new streams.
        self._retired: set[int] = set()
        self._retired_prune_at = 64
        self._paused: set[StreamTransport] = set()
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
        self._refuse = refuse
        self._batch = batch
        self._transmit_deferred = False
        self._drain: socket.socket | None = None
        #: The peer address last reported to the handler (None before the handshake).
        self._reported_address: tuple[str, int] | None = None

    # -- asyncio.DatagramProtocol ----------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._udp = cast(asyncio.DatagramTransport, transport)
        conditions = self.quic_options.network_conditions
        if conditions is not None:
            transport = ImpairedTransport(self._udp, conditions)
        elif self._owns_transport and self.quic_options.read_batch > 1:
            self._drain = dup_socket(self._udp)
        super().connection_made(transport)
        if self._handshake_timeout is not None:
            self._later(self._handshake_timeout, self._handshake_timed_out)

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
            drain_socket(
                drain,
                data,
                addr,
                self.quic_options.read_batch,
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
        if self._refuse is not None and self.closed is None:
            code, reason = self._refuse
            self.close(code, reason, transport_error=True)
            return
        self._check_closing()
        self._check_address()

    def _check_address(self) -> None:
        """Tell the handler when the peer's address changed (aioquic moves the path)."""
        previous = self._reported_address
        if previous is None or self.closed is not None:
            return
        address = self.peer_address
        if address is not None and address != previous:
            self._reported_address = address
            self.handler.address_changed(self, address)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors (port unreachable, ...) on connected UDP sockets.
        if not self.handshake_done and isinstance(exc, ConnectionRefusedError):
            self._report_closed(
                _closed(
                    QuicErrorCode.CONNECTION_REFUSED,
                    "nothing is listening on that UDP port (ICMP port unreachable)",
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
            self.transmit()  # stream data already written leaves before the close
            self.quic.close(
                error_code=error_code,
                frame_type=QuicFrameType.PADDING if transport_error else None,
                reason_phrase=reason_phrase,
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

    def watch_paused(self, transport: StreamTransport) -> None:
        self._paused.add(transport)

    def credit_paused(self, stream_id: int, paused: bool) -> None:
        _aioquic.set_stream_credit_paused(self.quic, stream_id, paused)
        if not paused and self.closed is None:
            self._flush_soon()

    def credit_held(self, delta: int) -> None:
        _aioquic.add_unconsumed(self.quic, delta)
        if delta < 0 and self.closed is None:
            self._flush_soon()

    def forget_stream(self, transport: StreamTransport) -> None:
        sid = transport.stream_id
        if self._streams.get(sid) is transport:
            del self._streams[sid]
            self._paused.discard(transport)
            if _aioquic.is_stream_known(self.quic, sid):
                self._retired.add(sid)
            if len(self._retired) > self._retired_prune_at:
                # aioquic forgets streams once both sides are done; so do we,
                # in batches (a scan per stream closed would cost O(streams)).
                self._retired = {s for s in self._retired if _aioquic.is_stream_known(self.quic, s)}
                self._retired_prune_at = max(64, 2 * len(self._retired))

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
                "read_pauses": t.counters.read_pauses,
                "peak_held": t.counters.peak_held,
            }
            for t in self._streams.values()
        ]

    @property
    def peer_address(self) -> tuple[str, int] | None:
        return _normalize_address(self.quic.get_peer_address())

    def peer_certificate(self) -> x509.Certificate | None:
        return _aioquic.peer_certificate(self.quic)

    def peer_certificate_chain(self) -> list[x509.Certificate]:
        return _aioquic.peer_certificate_chain(self.quic)

    def extra_info(self, name: str, default: Any = None) -> Any:
        """What stream transports answer for ``get_extra_info(name)``."""
        return self.get_extra_info(name, default)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return self.peer_address or default
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
            _aioquic.break_cycles(self.quic)
            _aioquic.break_protocol_cycles(self)

    def _incoming(self, stream_id: int) -> StreamTransport | None:
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
        self._reported_address = self.peer_address
        self.handler.handshake_completed(self)

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
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_soon(self.transmit)

    def _check_closing(self) -> None:
        if self.closed is None:
            ending = _aioquic.close_event(self.quic)
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
        self._paused.clear()
        error = ConnectionError(closed.describe())
        for transport in list(self._streams.values()):
            transport.connection_terminated(error)
        self._streams.clear()
        self.handler.session_closed(self, closed)


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

"""The only module that touches aioquic's private attributes.

aioquic (tested with the 1.7 series, pinned in pyproject.toml) lacks a few
public hooks brpc needs. Each function below reaches into one private detail
and documents which; ``tests/test_aioquic_adapter.py`` exercises every one of
them against real :class:`QuicConnection` objects so that an aioquic upgrade
that moves them fails loudly there rather than subtly elsewhere.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from aioquic import tls
from aioquic.buffer import Buffer  # type: ignore[attr-defined]
from aioquic.quic.connection import (
    CRYPTO_BUFFER_SIZE,
    MAX_STREAM_DATA_FRAME_CAPACITY,
    QuicConnection,
    QuicConnectionState,
    QuicNetworkPath,
    QuicReceiveContext,
    stream_is_client_initiated,
)
from aioquic.quic.events import ConnectionTerminated
from aioquic.quic.packet import QuicFrameType, QuicPacketType
from aioquic.quic.packet_builder import QuicDeliveryState, QuicPacketBuilderStop
from aioquic.quic.stream import QuicStream, QuicStreamReceiver, QuicStreamSender

if TYPE_CHECKING:
    from aioquic.quic.packet_builder import QuicPacketBuilder
    from aioquic.quic.recovery import QuicPacketSpace

if TYPE_CHECKING:
    from cryptography import x509

__all__ = [
    "add_unconsumed",
    "address_validated",
    "break_cycles",
    "close_event",
    "derive_reset_tokens",
    "enable_consumption_credit",
    "is_stream_known",
    "offer_one_key_share",
    "peer_certificate",
    "peer_certificate_chain",
    "peer_reset_tokens",
    "release_handshake_state",
    "request_client_certificate",
    "schedule_pending_streams",
    "send_buffer_size",
    "set_peer_bidi_stream_limit",
    "set_stream_credit_paused",
    "slim_frame_handlers",
]


def send_buffer_size(quic: QuicConnection, stream_id: int) -> int:
    """Bytes written to ``stream_id`` that the peer has not acknowledged yet.

    aioquic buffers stream data without bound until it is acknowledged
    (``QuicStream.sender._buffer``, trimmed as ACKs arrive); this is the number
    write backpressure is based on. Unknown or discarded streams hold nothing.
    """
    stream = quic._streams.get(stream_id)
    if stream is None:
        return 0
    return len(stream.sender._buffer)


def is_stream_known(quic: QuicConnection, stream_id: int) -> bool:
    """Whether aioquic still holds state for ``stream_id`` (not yet discarded)."""
    return stream_id in quic._streams


def set_peer_bidi_stream_limit(quic: QuicConnection, limit: int) -> None:
    """Let the peer open up to ``limit`` concurrent bidirectional streams.

    aioquic hard-codes 128 (``_local_max_streams_bidi``). The value is sent in
    the transport parameters, so this must be called before the handshake
    starts: right after the connection object is made.
    """
    if limit < 1:
        raise ValueError("the bidirectional stream limit must be at least 1")
    quic._local_max_streams_bidi.value = limit


def close_event(quic: QuicConnection) -> tuple[ConnectionTerminated, bool] | None:
    """How the connection is ending, as soon as it starts ending, and whether
    this side started it.

    aioquic reports :class:`ConnectionTerminated` only when the closing or
    draining period is over (three probe timeouts later). The close reason is
    known earlier (``_close_event``), and the state tells who closed: CLOSING
    when this side did (including its own TLS errors), DRAINING when the peer
    did. Reading them lets brpc fail calls promptly and describe them right.
    """
    state = quic._state
    if state not in (QuicConnectionState.CLOSING, QuicConnectionState.DRAINING):
        return None
    event = quic._close_event or ConnectionTerminated(
        error_code=0, frame_type=None, reason_phrase=""
    )
    return event, state == QuicConnectionState.CLOSING


def peer_certificate(quic: QuicConnection) -> x509.Certificate | None:
    """The certificate the peer presented in the TLS handshake, if any."""
    tls = getattr(quic, "tls", None)
    if tls is None:
        return None
    certificate: x509.Certificate | None = tls._peer_certificate
    return certificate


def peer_certificate_chain(quic: QuicConnection) -> list[x509.Certificate]:
    """The intermediate certificates the peer sent after its own."""
    tls = getattr(quic, "tls", None)
    if tls is None:
        return []
    chain: list[x509.Certificate] = list(tls._peer_certificate_chain)
    return chain


def request_client_certificate(quic: QuicConnection) -> None:
    """Make a server connection ask the client for a certificate.

    aioquic only has a private switch for this (``tls.Context.
    _request_client_certificate``, "for test purposes"), and the TLS context
    is created while the first packet is processed (``_initialize``). Wrapping
    that method on this one connection sets the switch before the ClientHello
    is answered. aioquic checks the certificate's signature but not its chain:
    the caller must verify it (see ``brpc._verify``).
    """
    if quic.configuration.is_client:
        raise ValueError("only a server connection can request a client certificate")
    initialize = quic._initialize

    def _initialize(peer_cid: bytes) -> None:
        initialize(peer_cid)
        quic.tls._request_client_certificate = True

    quic._initialize = _initialize  # type: ignore[method-assign]


#: The key exchange group a client offers (RFC 8446 section 9.1: every TLS 1.3
#: implementation supports it).
CLIENT_KEY_SHARE_GROUP = tls.Group.SECP256R1


def offer_one_key_share(quic: QuicConnection) -> None:
    """Make a client connection offer one key share, P-256, instead of four.

    aioquic's client generates a key pair for every group it supports (P-256,
    P-384, X25519, X448: about half a millisecond, on the way to the first
    call) and offers them all in that order; a server takes the first it
    supports. aioquic and qh3 servers both support P-256, so they take P-256
    either way: the connection's key exchange is the same, only the three key
    pairs nobody used are no longer made. The list is private
    (``tls.Context._supported_groups``) and the context is made in the private
    ``_initialize``, wrapped here on this connection as
    :func:`request_client_certificate` does. Call right after making it.
    """
    if not quic.configuration.is_client:
        raise ValueError("only a client connection offers key shares")
    initialize = quic._initialize

    def _initialize(peer_cid: bytes) -> None:
        initialize(peer_cid)
        quic.tls._supported_groups = [CLIENT_KEY_SHARE_GROUP]

    quic._initialize = _initialize  # type: ignore[method-assign]


def address_validated(quic: QuicConnection) -> bool:
    """Whether a server connection has validated the client's current address.

    aioquic keeps this per path (private ``_network_paths[0].is_validated``, set
    by a Handshake packet, a Retry token or a path challenge) and limits what it
    sends before that to three times what it received, except its closes.
    """
    paths = quic._network_paths
    return bool(paths) and paths[0].is_validated


class _ConsumptionCreditConnection(QuicConnection):
    """aioquic's connection whose receive credit follows what the application consumed.

    aioquic doubles a stream's window (``max_stream_data_local``) whenever half
    of it was *received*, and the connection's (``_local_max_data``) likewise,
    whether or not anything was read: a receiver that does not read buffers
    without bound. Here a stream's limit moves to *received + window* (its
    initial window, ``configuration.max_stream_data``) once less than half a
    window is left, except while the application paused it
    (:func:`set_stream_credit_paused`); the connection's limit moves to
    *received - held + window* (``configuration.max_data``), where *held* is
    what paused streams received and did not deliver (:func:`add_unconsumed`).
    Received bytes that are not held were handed to the application, so credit
    follows consumption.

    The two methods replace ``_write_stream_limits`` and
    ``_write_connection_limits`` (called for every packet built), keeping their
    frame writing as is. Same layout as ``QuicConnection``: instances are
    retyped, so no per-connection closure or cycle is added.
    """

    _brpc_paused: set[int]
    _brpc_held: int
    _brpc_half_window: int

    def _write_stream_limits(
        self, builder: QuicPacketBuilder, space: QuicPacketSpace, stream: QuicStream
    ) -> None:
        # Called for every stream in every packet: the common case (more than
        # half a window left, nothing to announce) returns after two comparisons.
        limit = stream.max_stream_data_local
        received = stream.receiver.highest_offset
        if limit - received >= self._brpc_half_window:
            if stream.max_stream_data_local_sent == limit:
                return
        elif limit and stream.stream_id not in self._brpc_paused:
            stream.max_stream_data_local = received + self._configuration.max_stream_data
        if stream.max_stream_data_local_sent != stream.max_stream_data_local:
            # As aioquic writes the frame.
            buf = builder.start_frame(
                QuicFrameType.MAX_STREAM_DATA,
                capacity=MAX_STREAM_DATA_FRAME_CAPACITY,
                handler=self._on_max_stream_data_delivery,
                handler_args=(stream,),
            )
            stream_id = cast(int, stream.stream_id)
            buf.push_uint_var(stream_id)
            buf.push_uint_var(stream.max_stream_data_local)
            stream.max_stream_data_local_sent = stream.max_stream_data_local
            logger = self._quic_logger
            if logger is not None and builder.quic_logger_frames is not None:
                builder.quic_logger_frames.append(
                    logger.encode_max_stream_data_frame(
                        maximum=stream.max_stream_data_local, stream_id=stream_id
                    )
                )

    def _write_connection_limits(self, builder: QuicPacketBuilder, space: QuicPacketSpace) -> None:
        max_data = self._local_max_data
        window = self._configuration.max_data
        consumed = max_data.used - self._brpc_held
        if max_data.value - consumed < window // 2:
            max_data.value = consumed + window
        # aioquic's own method doubles max_data when used * 2 > value; make
        # sure it does not, then let it write the frames (MAX_DATA, MAX_STREAMS).
        value = max_data.value
        used = max_data.used
        max_data.used = min(used, value // 2)
        try:
            QuicConnection._write_connection_limits(self, builder, space)
        finally:
            max_data.used = used


def enable_consumption_credit(quic: QuicConnection) -> None:
    """Make ``quic``'s receive credit follow consumption (see
    :class:`_ConsumptionCreditConnection`). Call once, right after making it.

    Subclasses of ``QuicConnection`` (test doubles) keep aioquic's own credit.
    """
    if type(quic) is not QuicConnection:
        return
    quic.__class__ = _ConsumptionCreditConnection
    credit = quic
    assert isinstance(credit, _ConsumptionCreditConnection)
    credit._brpc_paused = set()
    credit._brpc_held = 0
    credit._brpc_half_window = quic._configuration.max_stream_data // 2


def set_stream_credit_paused(quic: QuicConnection, stream_id: int, paused: bool) -> None:
    """Withhold (or grant again) more receive credit for ``stream_id``."""
    if isinstance(quic, _ConsumptionCreditConnection):
        if paused:
            quic._brpc_paused.add(stream_id)
        else:
            quic._brpc_paused.discard(stream_id)
            if isinstance(quic, _StreamSchedulingConnection):
                # The stream may be owed MAX_STREAM_DATA now.
                quic._brpc_queue.limits_due.add(stream_id)


def add_unconsumed(quic: QuicConnection, delta: int) -> None:
    """Bytes received on paused streams and not delivered changed by ``delta``."""
    if isinstance(quic, _ConsumptionCreditConnection):
        quic._brpc_held = max(0, quic._brpc_held + delta)


# -- stream scheduling: only streams with something to send ----------------------------

#: The smallest STREAM frame aioquic writes: type, a 1-byte stream ID, a 2-byte
#: length (``_write_stream_frame``'s overhead). With less room left in the packet
#: it writes none (``QuicStreamSender.get_frame`` gets a negative size).
_MIN_STREAM_FRAME_SIZE = 4


class _TrackedSender(QuicStreamSender):
    """A stream's send part that marks its stream pending when a delivery
    report may give it something to do: lost data or a lost RESET_STREAM to
    send again, or its sending finished (the stream may be discarded)."""

    _brpc_pending: set[int | None]

    def on_data_delivery(
        self, delivery: QuicDeliveryState, start: int, stop: int, fin: bool
    ) -> None:
        QuicStreamSender.on_data_delivery(self, delivery, start, stop, fin)
        if delivery != QuicDeliveryState.ACKED or self.is_finished:
            self._brpc_pending.add(self._stream_id)

    def on_reset_delivery(self, delivery: QuicDeliveryState) -> None:
        QuicStreamSender.on_reset_delivery(self, delivery)
        self._brpc_pending.add(self._stream_id)


class _TrackedReceiver(QuicStreamReceiver):
    """A stream's receive part that marks its stream pending when a
    STOP_SENDING it sent was lost (aioquic sends it again)."""

    _brpc_pending: set[int | None]

    def on_stop_sending_delivery(self, delivery: QuicDeliveryState) -> None:
        QuicStreamReceiver.on_stop_sending_delivery(self, delivery)
        if delivery != QuicDeliveryState.ACKED:
            self._brpc_pending.add(self._stream_id)


class _StreamQueue:
    """Stands in for aioquic's ``_streams_queue`` (the round-robin order of all
    streams): each stream's turn, and the IDs of the streams that may have
    something to send.

    aioquic appends every stream it creates to the queue (its only other use is
    ``_write_application``, replaced below), so :meth:`append` sees them all: it
    gives the stream the last turn and makes its send and receive parts report
    deliveries (:class:`_TrackedSender`, :class:`_TrackedReceiver`). Turns are
    numbers: aioquic's queue order is the order of their turns.
    """

    __slots__ = ("_next_turn", "limits_due", "pending", "turns")

    def __init__(self) -> None:
        # Keyed by ``QuicStream.stream_id``, typed ``int | None`` (never None here).
        self.turns: dict[int | None, int] = {}
        self.pending: set[int | None] = set()
        #: Streams whose MAX_STREAM_DATA may be due (``_write_stream_limits``).
        self.limits_due: set[int | None] = set()
        self._next_turn = 0

    def append(self, stream: QuicStream) -> None:
        self.turns[stream.stream_id] = self._next_turn
        self._next_turn += 1
        sender = stream.sender
        sender.__class__ = _TrackedSender
        assert isinstance(sender, _TrackedSender)
        sender._brpc_pending = self.pending
        receiver = stream.receiver
        receiver.__class__ = _TrackedReceiver
        assert isinstance(receiver, _TrackedReceiver)
        receiver._brpc_pending = self.pending

    def due(self, streams: dict[int, QuicStream]) -> list[QuicStream]:
        """The pending streams aioquic still holds, in queue order."""
        pending = self.pending
        turns = self.turns
        keyed = [(turns[stream_id], stream_id) for stream_id in pending if stream_id in streams]
        if len(keyed) != len(pending):
            # Delivery reports for streams already discarded.
            pending.intersection_update(streams)
        keyed.sort()
        return [streams[stream_id] for _, stream_id in keyed]

    def served(
        self,
        visited: list[QuicStream],
        sent: list[QuicStream],
        discarded: set[QuicStream],
        filled_by: QuicStream | None,
    ) -> list[QuicStream]:
        """After a packet: the streams that sent new data take the last turns
        (in the order they were served), discarded ones are forgotten, and
        those left with nothing to send are no longer pending. Returns the
        streams to visit for the next packet, in queue order.

        The streams after ``filled_by`` (whose frame left no room for another)
        were not offered the packet: they stay pending unchecked, which is
        always safe (the next packet checks them)."""
        turns = self.turns
        pending = self.pending
        moved: set[QuicStream] | tuple[()] = ()
        if sent:
            for stream in sent:
                turns[stream.stream_id] = self._next_turn
                self._next_turn += 1
            moved = set(sent)
        left: list[QuicStream] = []
        checking = True
        for stream in visited:
            stream_id = stream.stream_id
            if stream in discarded:
                del turns[stream_id]
                pending.discard(stream_id)
                self.limits_due.discard(stream_id)
            elif checking and not _has_output(stream):
                pending.discard(stream_id)
            elif stream not in moved:
                left.append(stream)
            if stream is filled_by:
                checking = False
        if sent:
            left.extend([stream for stream in sent if stream.stream_id in pending])
        return left


def _has_output(stream: QuicStream) -> bool:
    """Whether aioquic's walk over its stream queue may do something for
    ``stream``: data or a FIN to send (``buffer_is_empty`` turns true only when
    the sender finds nothing left), RESET_STREAM, STOP_SENDING, or discarding
    it. A stream without any only gets some through the points
    :class:`_StreamSchedulingConnection` watches."""
    sender = stream.sender
    receiver = stream.receiver
    return (
        not sender.buffer_is_empty
        or sender.reset_pending
        or receiver.stop_pending
        or (sender.is_finished and receiver.is_finished)
    )


class _StreamSchedulingConnection(QuicConnection):
    """aioquic's connection, visiting only the streams that may have something
    to send when it builds a packet.

    aioquic's ``_write_application`` calls ``_write_stream_limits`` for every
    stream and then walks its whole round-robin queue, for every packet it
    builds, including the empty one that ends each ``datagrams_to_send``; and it
    keeps offering data to further streams after the packet is full. With many
    calls in flight, each one an open stream, that walk grows with concurrency.

    Here a stream is *pending* (``_StreamQueue.pending``) from the moment
    something may have given it output until a packet finds it has none
    (:func:`_has_output`), and *due limits* (``_StreamQueue.limits_due``) from
    the moment its MAX_STREAM_DATA may have to be sent until
    ``_write_stream_limits`` ran for it. Only aioquic's own code changes what a
    stream has to send, and it does so at these points, all watched:

    - ``send_stream_data``, ``reset_stream`` and ``stop_stream`` (overridden:
      the stream is pending; aioquic's ``_get_or_create_stream_for_send`` has no
      other caller);
    - every received frame about a stream (STREAM, RESET_STREAM, STOP_SENDING,
      MAX_STREAM_DATA, STREAM_DATA_BLOCKED): through ``_get_or_create_stream``
      (overridden: pending and due limits): STOP_SENDING resets the sending
      part, new data may finish the stream or call for MAX_STREAM_DATA;
    - delivery reports of STREAM, RESET_STREAM and STOP_SENDING frames
      (:class:`_TrackedSender`, :class:`_TrackedReceiver`: pending) and of
      MAX_STREAM_DATA (``_on_max_stream_data_delivery``, overridden: due limits);
    - brpc's receive credit, when a paused stream is resumed
      (:func:`set_stream_credit_paused`: due limits).

    A stream that waits for flow control or for the peer to allow more streams
    (``is_blocked``) keeps unsent data, so it stays pending and is offered the
    packet each time, as aioquic does. ``_write_application`` is aioquic's,
    except that the two loops over all streams go over these streams (the
    stream frames in the queue's order); that a stream frame is no longer
    attempted once the packet has no room for one (aioquic's attempt writes
    nothing then); and that the streams that sent in one packet take their new
    turns in the order they were served (aioquic's order among them is that of
    a set). ``tests/test_aioquic_adapter.py`` holds the source of the method
    this replaces and of the watched points, and fails if an upgrade changes them.
    """

    _brpc_queue: _StreamQueue

    # The watched points call aioquic's methods by name, not through super():
    # the receive credit (the other class in the hierarchy) overrides none of
    # them, and this saves a super object on paths taken for every frame.

    def _get_or_create_stream(self, frame_type: int, stream_id: int) -> QuicStream:
        stream = QuicConnection._get_or_create_stream(self, frame_type, stream_id)
        queue = self._brpc_queue
        queue.pending.add(stream_id)
        queue.limits_due.add(stream_id)
        return stream

    def send_stream_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        # aioquic's two lines (called for every message: no extra call), then the mark.
        stream = self._get_or_create_stream_for_send(stream_id)
        stream.sender.write(data, end_stream=end_stream)
        self._brpc_queue.pending.add(stream_id)

    def reset_stream(self, stream_id: int, error_code: int) -> None:
        QuicConnection.reset_stream(self, stream_id, error_code)
        self._brpc_queue.pending.add(stream_id)

    def stop_stream(self, stream_id: int, error_code: int) -> None:
        QuicConnection.stop_stream(self, stream_id, error_code)
        self._brpc_queue.pending.add(stream_id)

    def _on_max_stream_data_delivery(self, delivery: QuicDeliveryState, stream: QuicStream) -> None:
        QuicConnection._on_max_stream_data_delivery(self, delivery, stream)
        if delivery != QuicDeliveryState.ACKED:
            self._brpc_queue.limits_due.add(stream.stream_id)

    def _brpc_write_stream_limits(self, builder: QuicPacketBuilder, space: QuicPacketSpace) -> None:
        """``_write_stream_limits`` for each stream that may be due a
        MAX_STREAM_DATA: one that received something, whose last one was lost,
        or whose credit was resumed. A stream that got its call is no longer due
        (its limit only moves when one of those happens again)."""
        due = self._brpc_queue.limits_due
        streams = self._streams
        for stream_id in list(due):
            if stream_id in streams:
                self._write_stream_limits(builder=builder, space=space, stream=streams[stream_id])
            due.discard(stream_id)

    def _write_application(
        self, builder: QuicPacketBuilder, network_path: QuicNetworkPath, now: float
    ) -> None:
        # aioquic 1.7.2's method, but for the loops over streams (marked "brpc").
        crypto_stream: QuicStream | None = None
        if self._cryptos[tls.Epoch.ONE_RTT].send.is_valid():
            crypto = self._cryptos[tls.Epoch.ONE_RTT]
            crypto_stream = self._crypto_streams[tls.Epoch.ONE_RTT]
            packet_type = QuicPacketType.ONE_RTT
        elif self._cryptos[tls.Epoch.ZERO_RTT].send.is_valid():
            crypto = self._cryptos[tls.Epoch.ZERO_RTT]
            packet_type = QuicPacketType.ZERO_RTT
        else:
            return
        space = self._spaces[tls.Epoch.ONE_RTT]
        # brpc: the streams to visit, in queue order.
        queue = self._brpc_queue
        visit = queue.due(self._streams) if queue.pending else []

        while True:
            # apply pacing, except if we have ACKs to send
            if space.ack_at is None or space.ack_at >= now:
                self._pacing_at = self._loss._pacer.next_send_time(now=now)
                if self._pacing_at is not None:
                    break
            builder.start_packet(packet_type, crypto)

            # ACK, which a server sends for 0-RTT packets before the handshake
            # completes (RFC 9000 section 13.2.1), but not in 0-RTT packets.
            if (
                packet_type == QuicPacketType.ONE_RTT
                and space.ack_at is not None
                and space.ack_at <= now
            ):
                self._write_ack_frame(builder=builder, space=space, now=now)

            if self._handshake_complete:
                # PATH_CHALLENGE, while the active path is not validated, which only
                # happens on a server whose client migrated (RFC 9000 section 9.3).
                if not (network_path.is_validated or network_path.local_challenge_sent):
                    self._write_path_challenge_frame(builder=builder, network_path=network_path)

                    # RFC 9000 section 8.2.4 recommends abandoning path validation
                    # after three times the larger of the current PTO and the PTO
                    # of a new path, which uses the initial RTT.
                    if network_path.validation_deadline is None:
                        network_path.validation_deadline = now + 3 * max(
                            self._loss.get_probe_timeout(),
                            2 * self._configuration.initial_rtt,
                        )

                # HANDSHAKE_DONE
                if self._handshake_done_pending:
                    self._write_handshake_done_frame(builder=builder)
                    self._handshake_done_pending = False

                # PATH RESPONSE
                while len(network_path.remote_challenges) > 0:
                    self._write_path_response_frame(
                        builder=builder, challenge=network_path.remote_challenges[0]
                    )
                    network_path.remote_challenges.popleft()

                # NEW_CONNECTION_ID
                for connection_id in self._host_cids:
                    if not connection_id.was_sent:
                        self._write_new_connection_id_frame(
                            builder=builder, connection_id=connection_id
                        )

                # RETIRE_CONNECTION_ID
                for sequence_number in self._retire_connection_ids[:]:
                    self._write_retire_connection_id_frame(
                        builder=builder, sequence_number=sequence_number
                    )
                    self._retire_connection_ids.pop(0)

                # STREAMS_BLOCKED
                if self._streams_blocked_pending:
                    if self._streams_blocked_bidi:
                        self._write_streams_blocked_frame(
                            builder=builder,
                            frame_type=QuicFrameType.STREAMS_BLOCKED_BIDI,
                            limit=self._remote_max_streams_bidi,
                        )
                    if self._streams_blocked_uni:
                        self._write_streams_blocked_frame(
                            builder=builder,
                            frame_type=QuicFrameType.STREAMS_BLOCKED_UNI,
                            limit=self._remote_max_streams_uni,
                        )
                    self._streams_blocked_pending = False

                # MAX_DATA and MAX_STREAMS
                self._write_connection_limits(builder=builder, space=space)

            # stream-level limits (brpc: of the streams that may be due one)
            if queue.limits_due:
                self._brpc_write_stream_limits(builder, space)

            # PING (user-request)
            if self._ping_pending:
                self._write_ping_frame(builder, self._ping_pending)
                self._ping_pending.clear()

            # PING (probe)
            if self._probe_pending:
                self._write_ping_frame(builder, comment="probe")
                self._probe_pending = False

            # CRYPTO
            if crypto_stream is not None and not crypto_stream.sender.buffer_is_empty:
                self._write_crypto_frame(builder=builder, space=space, stream=crypto_stream)

            # DATAGRAM
            while self._datagrams_pending:
                try:
                    self._write_datagram_frame(
                        builder=builder,
                        data=self._datagrams_pending[0],
                        frame_type=QuicFrameType.DATAGRAM_WITH_LENGTH,
                    )
                    self._datagrams_pending.popleft()
                except QuicPacketBuilderStop:
                    break

            # brpc: a list, in the order served.
            sent: list[QuicStream] = []
            discarded: set[QuicStream] = set()
            # brpc: whether the packet has no room left for a stream frame,
            # and the stream whose frame filled it.
            full = False
            filled_by: QuicStream | None = None
            try:
                for stream in visit:
                    # if the stream is finished, discard it
                    if stream.is_finished:
                        self._logger.debug("Stream %d discarded", stream.stream_id)
                        stream_id: int = stream.stream_id  # type: ignore[assignment]
                        self._streams.pop(stream_id)
                        if stream_is_client_initiated(stream_id) != self._is_client:
                            # Let the peer open a new stream for each one that
                            # closes (RFC 9000 section 4.6).
                            self._stream_limit(stream_id).value += 1
                        discarded.add(stream)
                        continue

                    if stream.receiver.stop_pending:
                        # STOP_SENDING
                        self._write_stop_sending_frame(builder=builder, stream=stream)

                    if stream.sender.reset_pending:
                        # RESET_STREAM
                        self._write_reset_stream_frame(builder=builder, stream=stream)
                    elif not full and not stream.is_blocked and not stream.sender.buffer_is_empty:
                        # STREAM
                        used = self._write_stream_frame(
                            builder=builder,
                            space=space,
                            stream=stream,
                            max_offset=min(
                                stream.sender.highest_offset
                                + self._remote_max_data
                                - self._remote_max_data_used,
                                stream.max_stream_data_remote,
                            ),
                        )
                        self._remote_max_data_used += used
                        if used > 0:
                            sent.append(stream)
                        if builder.remaining_flight_space < _MIN_STREAM_FRAME_SIZE:
                            full = True
                            filled_by = stream

            finally:
                # brpc: the served streams take the last turns, and the next
                # packet visits the streams still pending.
                if visit:
                    visit = queue.served(visit, sent, discarded, filled_by)

            if builder.packet_is_empty:
                # Discarded streams may let the peer open new ones, which the next
                # packet announces with MAX_STREAMS.
                if not discarded:
                    break
            else:
                self._loss._pacer.update_after_send(now=now)


class _CreditStreamSchedulingConnection(_StreamSchedulingConnection, _ConsumptionCreditConnection):
    """Both: receive credit that follows consumption, and stream scheduling."""


def schedule_pending_streams(quic: QuicConnection) -> None:
    """Make ``quic`` build packets visiting only the streams that may have
    something to send (see :class:`_StreamSchedulingConnection`). Call right
    after making it, after :func:`enable_consumption_credit` if that is used.

    Subclasses of ``QuicConnection`` (test doubles) keep aioquic's own scheduling.
    """
    kind = type(quic)
    if kind is QuicConnection:
        quic.__class__ = _StreamSchedulingConnection
    elif kind is _ConsumptionCreditConnection:
        quic.__class__ = _CreditStreamSchedulingConnection
    else:
        return
    if quic._streams or quic._streams_queue:
        raise ValueError("streams must be scheduled before any stream is opened")
    scheduling = quic
    assert isinstance(scheduling, _StreamSchedulingConnection)
    queue = _StreamQueue()
    scheduling._brpc_queue = queue
    quic._streams_queue = queue  # type: ignore[assignment]


def _no_probe() -> None:
    """Stands in for a terminated connection's probe sender."""


def _no_traffic_key_update(*args: object) -> None:
    """Stands in for a terminated connection's traffic key callback."""


def break_cycles(quic: QuicConnection) -> None:
    """Drop the references from a terminated connection's parts back to it.

    aioquic keeps several: its frame-handler table (bound methods,
    ``_QuicConnection__frame_handlers``), the loss recovery's probe sender
    (``_loss._send_probe``), the TLS context's callbacks (``tls.alpn_cb``,
    ``tls.update_traffic_key_cb``) and each crypto context's key setup
    and teardown callbacks (``_cryptos[epoch].recv/send._setup_cb`` and
    ``_teardown_cb``, partials of methods). Each makes the connection a
    reference cycle, freed only by a full garbage collection. Once the
    connection is terminated none of them is used again; without them the
    connection goes with its last reference. brpc's own per-connection wrappers
    (of ``_initialize`` and ``_replenish_connection_ids``, closures over the
    connection) go too. Call only after ``ConnectionTerminated``.
    """
    for wrapped in ("_initialize", "_replenish_connection_ids"):
        quic.__dict__.pop(wrapped, None)
    quic._QuicConnection__frame_handlers = {}  # type: ignore[attr-defined]
    loss = getattr(quic, "_loss", None)
    if loss is not None:
        loss._send_probe = _no_probe
    tls = getattr(quic, "tls", None)
    if tls is not None:
        tls.alpn_cb = None
        tls.update_traffic_key_cb = _no_traffic_key_update
    for crypto_pair in getattr(quic, "_cryptos", {}).values():
        for context in (crypto_pair.recv, crypto_pair.send):
            context._setup_cb = _no_traffic_key_update
            context._teardown_cb = _no_traffic_key_update


def peer_reset_tokens(quic: QuicConnection) -> frozenset[bytes]:
    """The stateless reset tokens the peer gave for its connection IDs.

    aioquic records them (private ``_peer_cid`` and ``_peer_cid_available``)
    but never checks a received datagram against them: RFC 9000 section 10.3
    detection is brpc's (see ``QuicSession``).
    """
    tokens = {quic._peer_cid.stateless_reset_token}
    tokens.update(c.stateless_reset_token for c in quic._peer_cid_available)
    return frozenset(t for t in tokens if t)


def derive_reset_tokens(quic: QuicConnection, token_for: Callable[[bytes], bytes]) -> None:
    """Make a server connection issue ``token_for(cid)`` as the stateless reset
    token of each connection ID it issues, instead of random bytes.

    aioquic draws them with ``os.urandom`` in ``__init__`` (the first host CID,
    whose token goes in the transport parameters when the TLS context is made)
    and in the private ``_replenish_connection_ids`` (NEW_CONNECTION_ID frames
    written later from ``_host_cids``). This rewrites the first at once and wraps
    the replenishing so new ones are rewritten before they are sent. Call right
    after the connection object is made.
    """
    if quic.configuration.is_client:
        raise ValueError("only a server connection issues stateless reset tokens")
    for connection_id in quic._host_cids:
        connection_id.stateless_reset_token = token_for(connection_id.cid)
    replenish = quic._replenish_connection_ids

    def _replenish_connection_ids() -> None:
        replenish()
        for connection_id in quic._host_cids:
            if not connection_id.was_sent:
                connection_id.stateless_reset_token = token_for(connection_id.cid)

    quic._replenish_connection_ids = _replenish_connection_ids  # type: ignore[method-assign]


# -- what an idle connection keeps ------------------------------------------------------

_FrameHandler = tuple[Callable[[QuicReceiveContext, int, Buffer], None], frozenset[tls.Epoch]]
#: aioquic's frame handler table, by method name: frame type -> (name, epochs).
_FRAME_TABLE: dict[int, tuple[str, frozenset[tls.Epoch]]] = {}


def _skip_padding(
    quic: QuicConnection, context: QuicReceiveContext, frame_type: int, buf: Buffer
) -> None:
    """aioquic's ``_handle_padding_frame``, without its loop over every byte: PADDING
    runs to the first non-zero byte. A path MTU probe carries up to 16 KiB of it,
    which aioquic's loop takes about a millisecond to walk."""
    start = buf.tell()
    rest = buf.data_slice(start, buf.capacity)
    buf.seek(start + len(rest) - len(rest.lstrip(b"\x00")))
    logger = quic._quic_logger
    frames = context.quic_logger_frames
    if logger is not None and frames is not None:
        frames.append(logger.encode_padding_frame())


class _FrameHandlers(dict[int, _FrameHandler]):
    """One connection's frame handlers, bound when a frame type first arrives.

    aioquic builds a table of all 33 handlers per connection (a bound method and
    a new frozenset of epochs each, about 11 KiB); an idle connection has seen a
    handful of frame types. Unknown types raise KeyError, as aioquic expects.
    """

    __slots__ = ("_connection",)

    def __init__(self, connection: QuicConnection) -> None:
        super().__init__()
        self._connection = connection

    def __missing__(self, frame_type: int) -> _FrameHandler:
        name, epochs = _FRAME_TABLE[frame_type]
        connection = self._connection
        handler: Any
        if frame_type == QuicFrameType.PADDING:
            handler = types.MethodType(_skip_padding, connection)
        else:
            handler = getattr(connection, name)
        entry = self[frame_type] = (handler, epochs)
        return entry


def slim_frame_handlers(quic: QuicConnection) -> None:
    """Replace ``quic``'s frame handler table (private ``_QuicConnection__frame_handlers``,
    made in ``__init__``) by one that binds handlers as frame types arrive, with a
    PADDING handler that does not loop over each byte. Call right after making it."""
    table: dict[int, _FrameHandler] = quic._QuicConnection__frame_handlers  # type: ignore[attr-defined]
    if isinstance(table, _FrameHandlers):
        return  # already
    if not _FRAME_TABLE:
        for frame_type, (handler, epochs) in table.items():
            _FRAME_TABLE[frame_type] = (handler.__name__, epochs)
    quic._QuicConnection__frame_handlers = _FrameHandlers(quic)  # type: ignore[attr-defined]


class _HandshakeOutput(dict[tls.Epoch, Buffer]):
    """Where TLS writes handshake messages once the handshake is over: a buffer is
    made only if it writes one (aioquic's TLS writes none after the handshake)."""

    __slots__ = ()

    def __missing__(self, epoch: tls.Epoch) -> Buffer:
        buffer = self[epoch] = Buffer(capacity=CRYPTO_BUFFER_SIZE)
        return buffer


def release_handshake_state(quic: QuicConnection) -> None:
    """Drop what only the handshake needed, once ``HandshakeCompleted`` was reported.

    aioquic keeps three 16 KiB buffers for outgoing TLS messages
    (``_crypto_buffers``, one per epoch; empty between messages, their contents
    moved to the crypto streams at once) for the whole connection: half of an
    idle connection's memory. They are replaced by an empty :class:`_HandshakeOutput`.
    The TLS context's ephemeral key-exchange private keys (``_ec_private_keys``,
    ``_x25519_private_key``, ``_x448_private_key``), used only to derive the
    handshake secret, go too. Without a QUIC logger, the crypto contexts' key
    setup and teardown callbacks (``_setup_cb``, ``_teardown_cb``: partials of
    methods that only log) become one shared no-op: twelve partials less, and
    reference cycles less.
    """
    buffers = quic._crypto_buffers
    if type(buffers) is dict and not any(buffer.tell() for buffer in buffers.values()):
        quic._crypto_buffers = _HandshakeOutput()
    if quic._quic_logger is None:
        for crypto_pair in quic._cryptos.values():
            for crypto in (crypto_pair.recv, crypto_pair.send):
                crypto._setup_cb = _no_traffic_key_update
                crypto._teardown_cb = _no_traffic_key_update
    context = getattr(quic, "tls", None)
    if context is not None:
        context._ec_private_keys = []
        context._x25519_private_key = None
        context._x448_private_key = None

"""Path-MTU probes and datagram size changes on a running aioquic connection.

aioquic (1.7 series) fixes the datagram size from its configuration and never
probes. Both hooks here reach into private details, named below, and are
checked by ``tests/test_aioquic_probe.py`` against real connections:

- :func:`set_max_datagram_size` sets ``QuicConnection._max_datagram_size``
  (read each time ``datagrams_to_send`` builds packets) and the pacer's copy
  (``_loss._pacer._max_datagram_size``). The congestion window keeps counting
  bytes, so it is not changed.
- :func:`send_probe` builds one 1-RTT packet holding a PING frame, padded to
  exactly the probed size, with aioquic's own ``QuicPacketBuilder`` and
  registers it with loss recovery (``_loss.on_packet_sent``) as ack-eliciting
  but not in flight: RFC 9000 section 14.4 says a lost probe is not a sign of
  congestion, and not counting it lets a probe exceed the congestion window.
  Its delivery handler reports the acknowledgement, or a loss aioquic detects.
  A lost probe PING is not retransmitted (unlike ``send_ping``'s).

The sizes must stay at or below :data:`~brpc._session.quic.pmtu.AIOQUIC_MAX_DATAGRAM_SIZE`.
"""

from __future__ import annotations

from collections.abc import Callable

from aioquic import tls
from aioquic.quic.connection import NetworkAddress, QuicConnection, QuicConnectionState
from aioquic.quic.packet import QuicFrameType, QuicPacketType
from aioquic.quic.packet_builder import QuicDeliveryState, QuicPacketBuilder

from brpc._session.quic.pmtu import AIOQUIC_MAX_DATAGRAM_SIZE, BASE_DATAGRAM_SIZE

__all__ = ["ProbeResult", "send_probe", "set_max_datagram_size"]

ProbeResult = Callable[[bool], None]
"""Called with True when the probe is acknowledged, False when aioquic declares it lost."""


def _check_size(size: int) -> None:
    if not BASE_DATAGRAM_SIZE <= size <= AIOQUIC_MAX_DATAGRAM_SIZE:
        raise ValueError(
            f"datagram size {size} outside {BASE_DATAGRAM_SIZE}..{AIOQUIC_MAX_DATAGRAM_SIZE}: "
            "aioquic writes frame lengths as 2-byte varints"
        )


def set_max_datagram_size(quic: QuicConnection, size: int) -> None:
    """Send datagrams of up to ``size`` bytes from the next packet on."""
    _check_size(size)
    quic._max_datagram_size = size
    quic._loss._pacer._max_datagram_size = size


def send_probe(
    quic: QuicConnection, size: int, now: float, on_result: ProbeResult
) -> tuple[bytes, NetworkAddress] | None:
    """One PING+PADDING datagram of exactly ``size`` bytes, for the caller to send.

    None when no probe can be sent (handshake not complete, or the connection
    is ending). ``on_result`` is called from ``receive_datagram`` (the ACK) or
    ``handle_timer`` (a loss aioquic detects); a probe that is simply never
    acknowledged is reported by neither, so the prober needs its own timeout.
    """
    _check_size(size)
    if not quic._handshake_complete or quic._state != QuicConnectionState.CONNECTED:
        return None
    crypto = quic._cryptos[tls.Epoch.ONE_RTT]
    if not crypto.send.is_valid():
        return None
    network_path = quic._network_paths[0]
    version = quic._version
    assert version is not None  # set once the handshake has started
    builder = QuicPacketBuilder(
        host_cid=quic.host_cid,
        is_client=quic._is_client,
        max_datagram_size=size,
        packet_number=quic._packet_number,
        peer_cid=quic._peer_cid.cid,
        peer_token=quic._peer_token,
        quic_logger=quic._quic_logger,
        spin_bit=quic._spin_bit,
        version=version,
    )

    def delivered(delivery: QuicDeliveryState) -> None:
        on_result(delivery == QuicDeliveryState.ACKED)

    builder.start_packet(QuicPacketType.ONE_RTT, crypto)
    builder.start_frame(QuicFrameType.PING, capacity=1, handler=delivered)
    builder._datagram_needs_padding = True  # pad inside the packet to the full size
    datagrams, packets = builder.flush()
    if len(datagrams) != 1 or len(datagrams[0]) != size:
        raise RuntimeError(
            "aioquic's packet builder changed: a probe did not come out as one "
            f"{size}-byte datagram; update brpc's aioquic probe hook"
        )
    quic._packet_number = builder.packet_number
    space = quic._spaces[tls.Epoch.ONE_RTT]
    for packet in packets:
        packet.sent_time = now
        packet.in_flight = False
        quic._loss.on_packet_sent(packet=packet, space=space)
    network_path.bytes_sent += size
    return datagrams[0], network_path.addr

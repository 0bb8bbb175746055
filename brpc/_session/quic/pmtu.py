"""Path MTU discovery by padded probes (DPLPMTUD, RFC 8899, as RFC 9000 section
14.3 applies it to QUIC), as a sans-IO state machine.

The prober decides which datagram sizes to try and what the path has shown it
carries; the session sends the probes (one PING+PADDING packet of exactly the
probed size, see the engine adapters) and reports back. Time is passed in.

- It starts at the base size (1,200 bytes, what every QUIC path must carry).
- It searches between the confirmed size and a ceiling: the first probe of a
  search tries the ceiling itself (loopback and jumbo-frame networks confirm it
  at once), then it bisects.
- An acknowledged probe raises the confirmed size. A probe lost (reported by
  the engine's loss detection, or not acknowledged within ``probe_timeout``)
  is retried until ``max_probes`` of that size are lost; then that size becomes
  the ceiling's upper bound and the search goes on below it.
- When the search is complete it starts again after ``raise_interval``
  (PMTU_RAISE_TIMER, 600 s), in case the path grew.
- :meth:`black_hole` (packets of the confirmed size keep getting lost) drops
  back to the base size and searches again below the size that failed.

Ceilings: aioquic writes some frame lengths (STREAM, CRYPTO) as 2-byte
variable-length integers, which hold at most 16,383, so a datagram above
:data:`AIOQUIC_MAX_DATAGRAM_SIZE` can carry a frame whose length does not fit
and the packet breaks. A UDP payload can be at most 65,507 bytes over IPv4 and
65,527 over IPv6; an interface's MTU lowers that (:func:`max_datagram_for_mtu`).
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass

__all__ = [
    "AIOQUIC_MAX_DATAGRAM_SIZE",
    "BASE_DATAGRAM_SIZE",
    "MAX_PROBES",
    "PMTU_RAISE_TIMER",
    "UDP_MAX_PAYLOAD_IPV4",
    "UDP_MAX_PAYLOAD_IPV6",
    "PathMtuProber",
    "ProberState",
    "is_loopback",
    "loopback_datagram_size",
    "max_datagram_for_mtu",
]

BASE_DATAGRAM_SIZE = 1200  # RFC 9000 section 14: every QUIC path carries this
AIOQUIC_MAX_DATAGRAM_SIZE = 16_383  # largest 2-byte QUIC varint: aioquic's frame lengths
UDP_MAX_PAYLOAD_IPV4 = 65_507  # 65,535 - 20 (IPv4 header) - 8 (UDP header)
UDP_MAX_PAYLOAD_IPV6 = 65_527  # 65,535 - 8 (UDP header; the IPv6 header is not counted)
MAX_PROBES = 3  # RFC 8899 MAX_PROBES
PMTU_RAISE_TIMER = 600.0  # RFC 8899 PMTU_RAISE_TIMER, seconds
SEARCH_GRANULARITY = 16  # stop bisecting when the ceiling is this close


def max_datagram_for_mtu(mtu: int, *, ipv6: bool) -> int:
    """The largest UDP payload in one packet on an interface with this MTU."""
    return mtu - (40 if ipv6 else 20) - 8


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (IPv4-mapped IPv6 included)."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def loopback_datagram_size(host: str, route_mtu: int | None, *, size: int, ceiling: int) -> int:
    """The datagram size to start at towards ``host`` without probing the path.

    Bigger than ``size`` only when ``host`` is a loopback address (IPv4-mapped
    included): the path is then this host and the route's MTU (``route_mtu``, as
    the kernel reports it; None when unknown) is the whole story. The result is
    at most ``ceiling`` (the frame-encoding limit, or what the options allow)
    and never below ``size``. Any other address keeps ``size``: nothing shows
    that the path carries more. The peer's ``max_udp_payload_size`` transport
    parameter is applied by the engine once the handshake brings it.
    """
    if route_mtu is None or not is_loopback(host):
        return size
    ipv6 = ":" in host  # an IPv4-mapped address travels as IPv4: counting IPv6 is the safe side
    return max(size, min(ceiling, max_datagram_for_mtu(route_mtu, ipv6=ipv6)))


class ProberState(enum.Enum):
    SEARCHING = "searching"
    COMPLETE = "complete"


@dataclass
class _Probe:
    size: int
    sent_at: float


class PathMtuProber:
    """Which datagram size the path carries, learned from padded probes.

    Call :meth:`next_probe` whenever the session may send (after the handshake,
    and when its timer fires); send a probe of the size it returns, and report
    :meth:`probe_acked` or :meth:`probe_lost`. :attr:`current_size` is the size
    to send ordinary datagrams at; :meth:`next_timer` says when to call again.
    """

    def __init__(
        self,
        *,
        max_size: int,
        base_size: int = BASE_DATAGRAM_SIZE,
        max_probes: int = MAX_PROBES,
        probe_timeout: float = 1.0,
        raise_interval: float = PMTU_RAISE_TIMER,
    ) -> None:
        if max_size < base_size:
            raise ValueError(f"max_size {max_size} is below the base size {base_size}")
        if max_probes < 1 or probe_timeout <= 0 or raise_interval <= 0:
            raise ValueError("max_probes, probe_timeout and raise_interval must be positive")
        self.base_size = base_size
        self.max_size = max_size
        self.max_probes = max_probes
        self.probe_timeout = probe_timeout
        self.raise_interval = raise_interval
        self.current_size = base_size
        self.state = ProberState.SEARCHING
        self._ceiling = max_size
        self._first_of_search = True
        self._losses = 0  # lost probes of the size being tried
        self._trying: int | None = None
        self._in_flight: _Probe | None = None
        self._complete_at = 0.0
        self._finish_if_narrow(0.0)

    @property
    def ceiling(self) -> int:
        """The largest size the current search may still confirm."""
        return self._ceiling

    def next_probe(self, now: float) -> int | None:
        """The size of a probe to send now, or None (one is outstanding, or the
        search is complete and not due again)."""
        if self._in_flight is not None:
            if now < self._in_flight.sent_at + self.probe_timeout:
                return None
            self.probe_lost(self._in_flight.size, now)
        if self.state is ProberState.COMPLETE:
            if now < self._complete_at + self.raise_interval:
                return None
            self._start_search(self.max_size)
            self._finish_if_narrow(now)
            if self.state is ProberState.COMPLETE:
                return None
        size = self._candidate()
        self._in_flight = _Probe(size, now)
        return size

    def next_timer(self) -> float | None:
        """When :meth:`next_probe` may have something new to say."""
        if self._in_flight is not None:
            return self._in_flight.sent_at + self.probe_timeout
        if self.state is ProberState.COMPLETE:
            return self._complete_at + self.raise_interval
        return None  # a probe can be sent right away

    def probe_acked(self, size: int, now: float) -> None:
        """A probe of ``size`` bytes was acknowledged: the path carries it."""
        if self._in_flight is not None and self._in_flight.size == size:
            self._in_flight = None
        if size > self.current_size:
            self.current_size = min(size, self.max_size)
            self._ceiling = max(self._ceiling, self.current_size)
        if size == self._trying:
            self._trying = None
            self._losses = 0
        self._first_of_search = False
        self._finish_if_narrow(now)

    def probe_lost(self, size: int, now: float) -> None:
        """A probe of ``size`` bytes was lost (or not acknowledged in time)."""
        if self._in_flight is None or self._in_flight.size != size:
            return  # already counted (by timeout) or not ours
        self._in_flight = None
        if size <= self.current_size:
            return  # an acknowledgement overtook it
        self._losses += 1
        if self._losses >= self.max_probes:
            self._ceiling = min(self._ceiling, size - 1)
            self._trying = None
            self._losses = 0
            self._first_of_search = False
            self._finish_if_narrow(now)

    def black_hole(self, now: float) -> None:
        """Datagrams of the current size are being lost: fall back to the base size
        and search again below the size that stopped working."""
        failed = self.current_size
        self.current_size = self.base_size
        self._in_flight = None
        self._start_search(max(self.base_size, failed - 1))
        self._finish_if_narrow(now)

    def _start_search(self, ceiling: int) -> None:
        self.state = ProberState.SEARCHING
        self._ceiling = ceiling
        self._first_of_search = True
        self._trying = None
        self._losses = 0

    def _candidate(self) -> int:
        if self._trying is None:
            if self._first_of_search:
                self._trying = self._ceiling
            else:
                self._trying = (self.current_size + self._ceiling + 1) // 2
        return self._trying

    def _finish_if_narrow(self, now: float) -> None:
        if self.state is ProberState.SEARCHING and (
            self._ceiling - self.current_size < SEARCH_GRANULARITY
        ):
            self.state = ProberState.COMPLETE
            self._complete_at = now
            self._trying = None

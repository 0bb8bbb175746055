"""The path-MTU prober (brpc/_session/quic/pmtu.py) against simulated paths."""

from __future__ import annotations

import pytest

from brpc._session.quic.pmtu import (
    AIOQUIC_MAX_DATAGRAM_SIZE,
    BASE_DATAGRAM_SIZE,
    SEARCH_GRANULARITY,
    PathMtuProber,
    ProberState,
    is_loopback,
    loopback_datagram_size,
    max_datagram_for_mtu,
)


class Path:
    """A path that carries datagrams up to ``mtu`` bytes, with a round trip of 10 ms;
    a lost probe is noticed by the prober's own timeout."""

    def __init__(self, prober: PathMtuProber, mtu: int) -> None:
        self.prober = prober
        self.mtu = mtu
        self.now = 0.0
        self.probes: list[int] = []

    def run(self, steps: int = 200) -> None:
        """Run until the search completes (bounded by ``steps``)."""
        for _ in range(steps):
            if self.prober.state is ProberState.COMPLETE:
                return
            self.step()
        raise AssertionError("the search did not complete")

    def step(self) -> None:
        size = self.prober.next_probe(self.now)
        if size is None:
            if self.prober.state is ProberState.COMPLETE:
                return
            timer = self.prober.next_timer()
            assert timer is not None and timer > self.now
            self.now = timer
            return
        self.probes.append(size)
        if size <= self.mtu:
            self.now += 0.010
            self.prober.probe_acked(size, self.now)


@pytest.mark.parametrize("mtu", [1200, 1252, 1472, 4000, 8972, 16_000, 16_383, 30_000])
def test_search_finds_the_path_mtu(mtu: int) -> None:
    prober = PathMtuProber(max_size=AIOQUIC_MAX_DATAGRAM_SIZE)
    path = Path(prober, mtu)
    path.run()
    expected = min(mtu, AIOQUIC_MAX_DATAGRAM_SIZE)
    assert expected - SEARCH_GRANULARITY < prober.current_size <= expected
    assert max([BASE_DATAGRAM_SIZE, *(p for p in path.probes if p <= mtu)]) == (prober.current_size)


def test_loopback_is_confirmed_by_the_first_probe() -> None:
    prober = PathMtuProber(max_size=16_383)
    path = Path(prober, 65_535)
    path.run()
    assert path.probes == [16_383]
    assert prober.current_size == 16_383


def test_each_size_is_tried_max_probes_times_before_it_is_given_up() -> None:
    prober = PathMtuProber(max_size=9000, probe_timeout=0.5)
    assert prober.next_probe(0.0) == 9000
    assert prober.next_probe(0.1) is None  # one probe at a time
    assert prober.next_probe(0.5) == 9000  # the first timed out: second try
    prober.probe_lost(9000, 0.6)  # loss detection reports the second
    assert prober.ceiling == 9000
    assert prober.next_probe(0.6) == 9000
    prober.probe_lost(9000, 0.7)
    assert prober.ceiling == 8999
    assert prober.next_probe(0.7) == (1200 + 8999 + 1) // 2
    assert prober.current_size == BASE_DATAGRAM_SIZE


def test_a_late_acknowledgement_still_counts() -> None:
    prober = PathMtuProber(max_size=9000, probe_timeout=0.5)
    assert prober.next_probe(0.0) == 9000
    assert prober.next_probe(0.6) == 9000  # first counted lost by timeout
    prober.probe_acked(9000, 0.7)
    assert prober.current_size == 9000
    assert prober.state is ProberState.COMPLETE
    prober.probe_lost(9000, 0.8)  # a stale loss report changes nothing
    assert prober.current_size == 9000


def test_raise_timer_searches_again_and_finds_a_bigger_path() -> None:
    prober = PathMtuProber(max_size=16_383)
    path = Path(prober, 1500)
    path.run()
    assert prober.current_size <= 1500
    done_at = path.now
    assert done_at < 60  # 29 probes, 24 of them lost after a 1 s timeout
    assert prober.next_probe(done_at + 599) is None
    assert prober.next_timer() == pytest.approx(done_at + 600)
    path.mtu = 9000
    path.now = done_at + 600
    path.step()
    assert prober.state is ProberState.SEARCHING
    path.run()
    assert 9000 - SEARCH_GRANULARITY < prober.current_size <= 9000


def test_nothing_to_raise_at_the_maximum() -> None:
    prober = PathMtuProber(max_size=16_383)
    Path(prober, 20_000).run()
    assert prober.next_probe(10_000.0) is None
    assert prober.state is ProberState.COMPLETE


def test_black_hole_drops_to_base_and_searches_below_the_failed_size() -> None:
    prober = PathMtuProber(max_size=16_383)
    path = Path(prober, 20_000)
    path.run()
    assert prober.current_size == 16_383
    path.mtu = 1400  # the route changed
    prober.black_hole(path.now)
    assert prober.current_size == BASE_DATAGRAM_SIZE
    assert prober.state is ProberState.SEARCHING
    assert prober.ceiling == 16_382
    path.run()
    assert 1400 - SEARCH_GRANULARITY < prober.current_size <= 1400


def test_max_size_at_base_needs_no_search() -> None:
    prober = PathMtuProber(max_size=1200)
    assert prober.state is ProberState.COMPLETE
    assert prober.next_probe(0.0) is None
    with pytest.raises(ValueError, match="below the base"):
        PathMtuProber(max_size=1000)


def test_max_datagram_for_mtu() -> None:
    assert max_datagram_for_mtu(1500, ipv6=False) == 1472
    assert max_datagram_for_mtu(1500, ipv6=True) == 1452
    assert max_datagram_for_mtu(65_536, ipv6=False) == 65_508


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("10.0.0.1", False),
        ("192.168.1.20", False),
        ("::ffff:10.0.0.1", False),
        ("fe80::1%eth0", False),
        ("2001:db8::1", False),
        ("localhost", False),  # a name, not an address: nothing is resolved here
    ],
)
def test_is_loopback(host: str, expected: bool) -> None:
    assert is_loopback(host) is expected


def test_loopback_datagram_size_follows_the_route_up_to_the_ceiling() -> None:
    size = loopback_datagram_size
    assert size("127.0.0.1", 65_536, size=1200, ceiling=16_383) == 16_383
    assert size("::1", 65_536, size=1200, ceiling=16_383) == 16_383
    assert size("127.0.0.1", 9000, size=1200, ceiling=16_383) == 9000 - 28
    assert size("::1", 9000, size=1200, ceiling=16_383) == 9000 - 48
    assert size("::ffff:127.0.0.1", 9000, size=1200, ceiling=16_383) == 9000 - 48
    assert size("127.0.0.1", 1500, size=1400, ceiling=16_383) == 1472
    # Never below the configured size, never above the ceiling.
    assert size("127.0.0.1", 1280, size=1400, ceiling=16_383) == 1400
    assert size("127.0.0.1", 65_536, size=1200, ceiling=1200) == 1200


@pytest.mark.parametrize("host", ["10.0.0.1", "192.0.2.7", "2001:db8::1", "::ffff:10.0.0.1"])
def test_other_addresses_keep_the_configured_size_whatever_the_route_says(host: str) -> None:
    assert loopback_datagram_size(host, 65_536, size=1200, ceiling=16_383) == 1200
    assert loopback_datagram_size(host, 9000, size=1350, ceiling=16_383) == 1350


def test_an_unknown_route_mtu_keeps_the_configured_size() -> None:
    assert loopback_datagram_size("127.0.0.1", None, size=1200, ceiling=16_383) == 1200

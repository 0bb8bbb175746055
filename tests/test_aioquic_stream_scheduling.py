"""Stream scheduling on aioquic connections (``_aioquic.schedule_pending_streams``):
only streams with something to send are visited when packets are built, and
what reaches the peer is what aioquic's own scheduling sends: all data and FINs,
resets and STOP_SENDING, MAX_STREAM_DATA, also when packets are lost, and the
streams take turns. Each test runs on two in-memory connections (tests/quicpair.py)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import (
    HandshakeCompleted,
    StopSendingReceived,
    StreamDataReceived,
    StreamReset,
)
from quicpair import QuicPair

from brpc._session.quic import _aioquic

IDLE = 64


def _credit_and_schedule(quic: QuicConnection) -> None:
    _aioquic.enable_consumption_credit(quic)
    _aioquic.schedule_pending_streams(quic)


#: How each side is set up: aioquic's own scheduling, brpc's, brpc's with receive credit.
SETUPS: dict[str, Callable[[QuicConnection], None] | None] = {
    "aioquic": None,
    "scheduled": _aioquic.schedule_pending_streams,
    "credit": _credit_and_schedule,
}


def make_pair(certs: Any, setup: str, **settings: Any) -> QuicPair:
    hook = SETUPS[setup]
    p = QuicPair(
        certs.ca,
        certs.server_cert,
        certs.server_key,
        peer_limit=1000,
        client_hook=hook,
        server_hook=hook,
        settings=settings,
    )
    assert any(isinstance(e, HandshakeCompleted) for e in p.client_events)
    return p


def received(p: QuicPair, side: str) -> tuple[dict[int, bytes], set[int]]:
    """Bytes each stream delivered on ``side``, and the streams that ended."""
    events = p.server_events if side == "server" else p.client_events
    data: dict[int, bytes] = {}
    ended: set[int] = set()
    for e in events:
        if isinstance(e, StreamDataReceived):
            data[e.stream_id] = data.get(e.stream_id, b"") + e.data
            if e.end_stream:
                ended.add(e.stream_id)
    return data, ended


def open_idle_streams(p: QuicPair, count: int = IDLE) -> list[int]:
    """``count`` streams opened both ways, one byte each, left open."""
    assert p.server is not None
    sids = [p.client.get_next_available_stream_id() + 4 * i for i in range(count)]
    for sid in sids:
        p.client.send_stream_data(sid, b"c")
    p.pump_until(lambda: len(received(p, "server")[0]) == count)
    for sid in sids:
        p.server.send_stream_data(sid, b"s")
    p.pump_until(lambda: len(received(p, "client")[0]) == count)
    p.settle()  # everything acknowledged: nothing left to send on them
    return sids


def every(n: int) -> Callable[[int], bool]:
    return lambda k: k % n == 0


@pytest.mark.parametrize("setup", SETUPS)
def test_data_and_fins_arrive_among_idle_streams_over_a_lossy_path(certs: Any, setup: str) -> None:
    p = make_pair(certs, setup)
    assert p.server is not None
    idle = open_idle_streams(p)
    busy = [p.client.get_next_available_stream_id() + 4 * i for i in range(5)]
    payloads = {sid: os.urandom(1000 + 7000 * i) for i, sid in enumerate(busy)}
    for sid, payload in payloads.items():
        p.client.send_stream_data(sid, payload, end_stream=True)

    def echoed() -> bool:
        return all(sid in received(p, "server")[1] for sid in busy)

    p.pump_until(echoed, drop_to_server=every(4), drop_to_client=every(5))
    data, ended = received(p, "server")
    assert {sid: data[sid] for sid in busy} == payloads
    for sid in busy:
        p.server.send_stream_data(sid, payloads[sid][::-1], end_stream=True)
    # Both directions ended and acknowledged: both sides discard the streams.
    p.pump_until(
        lambda: (
            not any(
                _aioquic.is_stream_known(side, sid) for side in (p.client, p.server) for sid in busy
            )
        ),
        drop_to_server=every(4),
        drop_to_client=every(5),
    )
    data, ended = received(p, "client")
    assert {sid: data[sid] for sid in busy} == {s: b[::-1] for s, b in payloads.items()}
    assert ended == set(busy)
    assert all(_aioquic.is_stream_known(p.client, sid) for sid in idle)


@pytest.mark.parametrize("setup", SETUPS)
def test_resets_and_stop_sending_arrive_over_a_lossy_path(certs: Any, setup: str) -> None:
    p = make_pair(certs, setup)
    assert p.server is not None
    idle = open_idle_streams(p)
    resets, stops = idle[:20], idle[20:40]
    for sid in resets:
        p.client.reset_stream(sid, 0x10)
    for sid in stops:
        p.client.stop_stream(sid, 0x20)

    def arrived() -> bool:
        reset = {e.stream_id for e in p.server_events if isinstance(e, StreamReset)}
        stopped = {e.stream_id for e in p.server_events if isinstance(e, StopSendingReceived)}
        # The server answers STOP_SENDING with RESET_STREAM (aioquic does itself).
        answered = {e.stream_id for e in p.client_events if isinstance(e, StreamReset)}
        return reset == set(resets) and stopped == set(stops) and answered == set(stops)

    # The first datagram each way is lost (it holds the first STOP_SENDING and
    # RESET_STREAM frames), then one in three: frames go again.
    def lost(k: int) -> bool:
        return k == 1 or k % 3 == 0

    p.pump_until(arrived, drop_to_server=lost, drop_to_client=lost)
    codes = {e.stream_id: e.error_code for e in p.server_events if isinstance(e, StreamReset)}
    assert codes == dict.fromkeys(resets, 0x10)


@pytest.mark.parametrize("setup", SETUPS)
def test_lost_max_stream_data_is_sent_again(certs: Any, setup: str) -> None:
    """With small windows, the transfer stalls for good unless every lost
    MAX_STREAM_DATA is sent again (nothing else makes the server announce more)."""
    p = make_pair(certs, setup, max_stream_data=4096, max_data=1 << 20)
    assert p.server is not None
    open_idle_streams(p, 16)
    sid = p.client.get_next_available_stream_id()
    payload = os.urandom(200_000)
    p.client.send_stream_data(sid, payload, end_stream=True)
    p.pump_until(
        lambda: sid in received(p, "server")[1],
        drop_to_client=every(2),
        rounds=200_000,
    )
    assert received(p, "server")[0][sid] == payload


def test_resumed_credit_is_announced(certs: Any) -> None:
    """A stream whose credit was paused gets MAX_STREAM_DATA once resumed,
    though nothing arrived on it in between."""
    p = make_pair(certs, "credit", max_stream_data=65536)
    assert p.server is not None
    window = p.server_cfg.max_stream_data
    sid = p.client.get_next_available_stream_id()
    p.client.send_stream_data(sid, b"x" * (4 * window))
    p.pump(rounds=5)
    _aioquic.set_stream_credit_paused(p.server, sid, True)
    p.pump(rounds=2000)
    assert len(received(p, "server")[0][sid]) < 2 * window
    _aioquic.set_stream_credit_paused(p.server, sid, False)
    p.pump_until(lambda: len(received(p, "server")[0][sid]) == 4 * window)


def _progress_gap(p: QuicPair, sids: list[int], size: int) -> int:
    """The largest lead, in bytes, one stream had over another still sending."""
    got = dict.fromkeys(sids, 0)
    gap = 0
    for e in p.server_events:
        if isinstance(e, StreamDataReceived) and e.stream_id in got:
            got[e.stream_id] += len(e.data)
            unfinished = [n for n in got.values() if n < size]
            if unfinished:
                gap = max(gap, max(got.values()) - min(unfinished))
    return gap


@pytest.mark.parametrize("setup", SETUPS)
def test_streams_take_turns(certs: Any, setup: str) -> None:
    p = make_pair(certs, setup)
    assert p.server is not None
    open_idle_streams(p)
    size = 60_000
    sids = [p.client.get_next_available_stream_id() + 4 * i for i in range(4)]
    for sid in sids:
        p.client.send_stream_data(sid, b"x" * size, end_stream=True)
    p.pump_until(lambda: received(p, "server")[1] >= set(sids))
    # Served in turn, packet by packet: none gets more than a few packets ahead.
    assert _progress_gap(p, sids, size) < 4 * 1500


def _count_calls(quic: QuicConnection, name: str) -> list[int]:
    """Counts calls of the method ``name`` on ``quic`` (one list entry)."""
    count = [0]
    method = getattr(quic, name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        count[0] += 1
        return method(*args, **kwargs)

    setattr(quic, name, counted)
    return count


@pytest.mark.parametrize("setup", SETUPS)
def test_idle_streams_are_not_visited_and_a_full_packet_ends_the_walk(
    certs: Any, setup: str
) -> None:
    p = make_pair(certs, setup)
    assert p.server is not None
    open_idle_streams(p)
    limits = _count_calls(p.client, "_write_stream_limits")
    attempts = _count_calls(p.client, "_write_stream_frame")
    packets = 0
    datagrams_to_send = p.client.datagrams_to_send

    def counting(now: float) -> Any:
        nonlocal packets
        datagrams = datagrams_to_send(now=now)
        packets += len(datagrams)
        return datagrams

    p.client.datagrams_to_send = counting  # type: ignore[method-assign]
    busy = [p.client.get_next_available_stream_id() + 4 * i for i in range(IDLE)]
    for sid in busy:
        p.client.send_stream_data(sid, b"x" * 20_000, end_stream=True)
    p.pump_until(lambda: received(p, "server")[1] >= set(busy))
    assert packets > 1000
    if setup == "aioquic":
        # aioquic offers every stream each packet, full or not, and checks
        # every stream's limits: more than a hundred streams are open.
        assert attempts[0] > 20 * packets
        assert limits[0] > 50 * packets
    else:
        # Filling a packet takes one or two streams; the rest wait their turn.
        assert attempts[0] < 3 * packets
        assert limits[0] < 3 * packets


def test_scheduling_is_set_up_before_any_stream(certs: Any) -> None:
    p = make_pair(certs, "aioquic")
    p.client.send_stream_data(0, b"x")
    with pytest.raises(ValueError, match="before any stream"):
        _aioquic.schedule_pending_streams(p.client)


def test_subclasses_keep_aioquic_scheduling(certs: Any) -> None:
    class Double(QuicConnection):
        pass

    p = make_pair(certs, "aioquic")
    double = Double(configuration=p.client.configuration)
    _aioquic.schedule_pending_streams(double)
    assert type(double) is Double
    assert type(double._streams_queue) is list

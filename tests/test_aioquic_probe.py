"""Path-MTU probe hooks for aioquic (brpc/_session/quic/_aioquic_probe.py) on real
aioquic connections pumped in memory."""

from __future__ import annotations

from typing import Any

import pytest
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import HandshakeCompleted, StreamDataReceived
from quicpair import CLIENT_ADDR, SERVER_ADDR, QuicPair

from brpc._session.quic import _aioquic_probe


def pair(certs: Any) -> QuicPair:
    p = QuicPair(certs.ca, certs.server_cert, certs.server_key)
    assert any(isinstance(e, HandshakeCompleted) for e in p.client_events)
    assert p.server is not None
    return p


def exchange(p: QuicPair, rounds: int = 100) -> list[int]:
    """Move datagrams both ways, firing timers, until quiet; the sizes the client sent."""
    assert p.server is not None
    sizes: list[int] = []
    for _ in range(rounds):
        p.now += 0.005
        for quic in (p.client, p.server):
            timer = quic.get_timer()
            if timer is not None and timer <= p.now:
                quic.handle_timer(p.now)
        moved = False
        for data, _ in p.client.datagrams_to_send(now=p.now):
            sizes.append(len(data))
            p.server.receive_datagram(data, CLIENT_ADDR, now=p.now)
            moved = True
        for data, _ in p.server.datagrams_to_send(now=p.now):
            p.client.receive_datagram(data, SERVER_ADDR, now=p.now)
            moved = True
        p._drain()
        if not moved and p.client._loss.bytes_in_flight == 0:
            break
    return sizes


@pytest.mark.parametrize("size", [1201, 1500, 9000, 16_383])
def test_probe_leaves_as_one_datagram_and_its_ack_is_observed(certs: Any, size: int) -> None:
    p = pair(certs)
    assert p.server is not None
    results: list[bool] = []
    probe = _aioquic_probe.send_probe(p.client, size, p.now, results.append)
    assert probe is not None
    data, addr = probe
    assert len(data) == size and addr == SERVER_ADDR
    window = p.client._loss.congestion_window
    p.server.receive_datagram(data, CLIENT_ADDR, now=p.now)
    exchange(p)
    assert results == [True]
    assert p.client._loss.congestion_window >= window
    assert p.client._state.name == p.server._state.name == "CONNECTED"


def test_a_dropped_probe_is_reported_lost_without_a_congestion_reaction(certs: Any) -> None:
    p = pair(certs)
    results: list[bool] = []
    assert _aioquic_probe.send_probe(p.client, 9000, p.now, results.append) is not None
    window = p.client._loss.congestion_window
    for i in range(6):  # later packets get acknowledged: packet-threshold loss
        p.client.send_stream_data(i * 4, b"x" * 100, end_stream=True)
        exchange(p)
    assert results == [False]
    assert p.client._loss.congestion_window >= window
    assert p.client._loss.bytes_in_flight == 0


def test_bigger_datagrams_after_set_max_datagram_size(certs: Any) -> None:
    p = pair(certs)
    assert p.server is not None
    _aioquic_probe.set_max_datagram_size(p.client, 9000)
    p.client.send_stream_data(0, b"y" * 100_000, end_stream=True)
    sizes = exchange(p, rounds=400)
    assert max(sizes) == 9000
    received = b"".join(
        e.data for e in p.server_events if isinstance(e, StreamDataReceived) and e.stream_id == 0
    )
    assert received == b"y" * 100_000


def test_sizes_aioquic_cannot_encode_are_refused(certs: Any) -> None:
    p = pair(certs)
    with pytest.raises(ValueError, match="2-byte varints"):
        _aioquic_probe.set_max_datagram_size(p.client, 16_384)
    with pytest.raises(ValueError, match="2-byte varints"):
        _aioquic_probe.send_probe(p.client, 16_384, p.now, lambda ok: None)


def test_no_probe_before_the_handshake(certs: Any) -> None:
    from aioquic.quic.configuration import QuicConfiguration

    quic = QuicConnection(configuration=QuicConfiguration(is_client=True))
    assert _aioquic_probe.send_probe(quic, 1500, 0.0, lambda ok: None) is None

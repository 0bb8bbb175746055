"""Every private aioquic detail brpc relies on (brpc/_aioquic.py), checked against
real QuicConnection objects: an aioquic upgrade that moves one fails here."""

from __future__ import annotations

from typing import Any

from aioquic.quic.events import ConnectionTerminated, HandshakeCompleted, StreamDataReceived
from quicpair import QuicPair

from brpc._session.quic import _aioquic


def pair(certs: Any, **kwargs: Any) -> QuicPair:
    p = QuicPair(certs.ca, certs.server_cert, certs.server_key, **kwargs)
    assert any(isinstance(e, HandshakeCompleted) for e in p.client_events)
    return p


def test_send_buffer_size_counts_unacknowledged_bytes(certs: Any) -> None:
    p = pair(certs)
    sid = p.client.get_next_available_stream_id()
    p.client.send_stream_data(sid, b"x" * 5000)
    assert _aioquic.send_buffer_size(p.client, sid) == 5000
    p.pump()
    assert _aioquic.send_buffer_size(p.client, sid) == 0
    assert _aioquic.send_buffer_size(p.client, 1_000_000) == 0


def test_is_stream_known_until_both_sides_finish(certs: Any) -> None:
    p = pair(certs)
    assert p.server is not None
    sid = p.client.get_next_available_stream_id()
    p.client.send_stream_data(sid, b"ping", end_stream=True)
    p.pump()
    assert _aioquic.is_stream_known(p.client, sid)
    p.server.send_stream_data(sid, b"pong", end_stream=True)
    p.pump()
    assert not _aioquic.is_stream_known(p.client, sid)
    assert not _aioquic.is_stream_known(p.server, sid)


def test_peer_stream_limit_can_be_lifted_above_128(certs: Any) -> None:
    p = pair(certs, peer_limit=300)
    for i in range(300):
        p.client.send_stream_data(i * 4, b"x")
    p.pump()
    opened = {e.stream_id for e in p.server_events if isinstance(e, StreamDataReceived)}
    assert len(opened) == 300


def test_default_limit_is_what_we_lift(certs: Any) -> None:
    p = pair(certs)
    for i in range(200):
        p.client.send_stream_data(i * 4, b"x")
    p.pump()
    opened = {e.stream_id for e in p.server_events if isinstance(e, StreamDataReceived)}
    assert len(opened) == 128


def test_close_event_is_known_before_termination(certs: Any) -> None:
    p = pair(certs)
    assert p.server is not None
    assert _aioquic.close_event(p.client) is None
    p.server.close(error_code=0x6, reason_phrase="replaced")
    for data, _ in p.server.datagrams_to_send(now=p.now):
        p.client.receive_datagram(data, ("2.3.4.5", 4433), now=p.now)
    server_side = _aioquic.close_event(p.server)
    client_side = _aioquic.close_event(p.client)
    assert server_side is not None and client_side is not None
    assert server_side[1] is True and client_side[1] is False  # who started it
    assert (client_side[0].error_code, client_side[0].reason_phrase) == (0x6, "replaced")
    assert not any(isinstance(e, ConnectionTerminated) for e in p.client_events)


def test_peer_certificate(certs: Any) -> None:
    p = pair(certs)
    certificate = _aioquic.peer_certificate(p.client)
    assert certificate is not None
    assert "brpc server" in certificate.subject.rfc4514_string()
    assert p.server is not None and _aioquic.peer_certificate(p.server) is None


def test_derived_reset_tokens_are_the_ones_the_client_gets(certs: Any) -> None:
    import hashlib

    def token_for(cid: bytes) -> bytes:
        return hashlib.sha256(b"key" + cid).digest()[:16]

    p = pair(certs, server_hook=lambda quic: _aioquic.derive_reset_tokens(quic, token_for))
    assert p.server is not None
    p.pump()
    issued = {token_for(c.cid) for c in p.server._host_cids}
    received = _aioquic.peer_reset_tokens(p.client)
    assert len(received) > 1  # the transport parameter and NEW_CONNECTION_ID frames
    assert received <= issued


def test_address_validated_after_the_handshake(certs: Any) -> None:
    p = pair(certs)
    assert p.server is not None
    assert _aioquic.address_validated(p.server)

"""Every private aioquic detail brpc relies on (brpc/_aioquic.py), checked against
real QuicConnection objects: an aioquic upgrade that moves one fails here."""

from __future__ import annotations

import gc
import hashlib
import inspect
import re
import weakref
from typing import Any

import pytest
from aioquic.quic.connection import QuicConnection
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


def _received(events: list[Any], sid: int) -> int:
    return sum(
        len(e.data) for e in events if isinstance(e, StreamDataReceived) and e.stream_id == sid
    )


def test_aioquic_grows_windows_whether_or_not_anything_was_read(certs: Any) -> None:
    """What the consumption credit overrides: plain aioquic takes 8 MiB on a
    stream with 1 MiB windows as fast as it arrives."""
    p = pair(certs)
    sid = p.client.get_next_available_stream_id()
    p.client.send_stream_data(sid, b"x" * (8 << 20))
    p.pump(rounds=2000)
    assert _received(p.server_events, sid) == 8 << 20


def test_stream_credit_is_withheld_while_paused(certs: Any) -> None:
    p = pair(certs)
    assert p.server is not None
    _aioquic.enable_consumption_credit(p.server)
    window = p.server_cfg.max_stream_data
    sid = p.client.get_next_available_stream_id()
    p.client.send_stream_data(sid, b"x" * (8 << 20))
    p.pump(rounds=5)  # the stream exists on the server now
    _aioquic.set_stream_credit_paused(p.server, sid, True)
    p.pump(rounds=2000)
    received = _received(p.server_events, sid)
    assert received <= window + window // 2  # one window past what was delivered at the pause
    # Credit follows what was delivered, not doubling windows: resumed, it all arrives.
    _aioquic.set_stream_credit_paused(p.server, sid, False)
    p.pump(rounds=4000)
    assert _received(p.server_events, sid) == 8 << 20
    stream = p.server._streams[sid]
    assert stream.max_stream_data_local <= (8 << 20) + window


def test_connection_credit_excludes_held_bytes(certs: Any) -> None:
    p = pair(certs)
    assert p.server is not None
    _aioquic.enable_consumption_credit(p.server)
    window = p.server_cfg.max_data
    sids = [p.client.get_next_available_stream_id()]
    p.client.send_stream_data(sids[0], b"x")
    sids.append(p.client.get_next_available_stream_id())
    for sid in sids:
        p.client.send_stream_data(sid, b"y" * (4 << 20))
    p.pump(rounds=5)
    for sid in sids:
        _aioquic.set_stream_credit_paused(p.server, sid, False)  # the streams may take more
    # The application consumes nothing: every byte received is held.
    held = 0
    for _ in range(2000):
        p.pump(rounds=1)
        total = sum(_received(p.server_events, sid) for sid in sids)
        _aioquic.add_unconsumed(p.server, total - held)
        held = total
    assert held <= window + (64 << 10)  # the connection window, give or take one flight
    _aioquic.add_unconsumed(p.server, -held)  # consumed at last
    p.pump(rounds=4000)
    assert sum(_received(p.server_events, sid) for sid in sids) == 8 * (1 << 20) + 1


def test_a_terminated_connection_is_freed_by_reference_counting(certs: Any) -> None:
    p = pair(certs)
    client = p.client
    client.close(error_code=0, reason_phrase="done")
    p.pump()
    client.handle_timer(now=p.now + 60)  # the closing period ends
    while (event := client.next_event()) is not None:
        p.client_events.append(event)
    assert any(isinstance(e, ConnectionTerminated) for e in p.client_events)
    _aioquic.break_cycles(client)
    ref = weakref.ref(client)
    gc.disable()
    try:
        del client
        p.client = None  # type: ignore[assignment]
        assert ref() is None  # no cycle kept it: gone without a collection
    finally:
        gc.enable()


def test_without_breaking_them_aioquic_keeps_cycles(certs: Any) -> None:
    """What break_cycles undoes: a plain connection is only freed by the collector."""
    p = pair(certs)
    ref = weakref.ref(p.client)
    gc.disable()
    try:
        p.client = None  # type: ignore[assignment]
        assert ref() is not None
        gc.collect()
        assert ref() is None
    finally:
        gc.enable()


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


def _slim_pair(certs: Any) -> QuicPair:
    """A pair whose server binds frame handlers lazily, as brpc makes it."""
    return QuicPair(
        certs.ca, certs.server_cert, certs.server_key, server_hook=_aioquic.slim_frame_handlers
    )


def test_frame_handlers_are_bound_as_frame_types_arrive(certs: Any) -> None:
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import QuicConnection

    quic = QuicConnection(configuration=QuicConfiguration(is_client=True))
    everything = dict(quic._QuicConnection__frame_handlers)  # type: ignore[attr-defined]
    _aioquic.slim_frame_handlers(quic)
    handlers = quic._QuicConnection__frame_handlers  # type: ignore[attr-defined]
    assert len(handlers) == 0
    for frame_type, (handler, epochs) in everything.items():
        bound, allowed = handlers[frame_type]
        assert allowed == epochs
        if frame_type != 0x00:  # PADDING has brpc's own handler
            assert bound == handler
    try:
        handlers[0x7FFF]
    except KeyError:
        pass  # aioquic turns this into FRAME_ENCODING_ERROR ("Unknown frame type")
    else:
        raise AssertionError("an unknown frame type must raise KeyError")


def test_slim_connections_handshake_and_carry_data(certs: Any) -> None:
    p = _slim_pair(certs)
    assert p.server is not None
    sid = p.client.get_next_available_stream_id()
    p.client.send_stream_data(sid, b"x" * 50_000, end_stream=True)
    p.pump(rounds=200)
    assert _received(p.server_events, sid) == 50_000
    handlers = p.server._QuicConnection__frame_handlers  # type: ignore[attr-defined]
    assert 0x00 in handlers  # the client's Initial is padded
    assert len(handlers) < 16  # only the frame types that arrived


def test_padding_is_skipped_up_to_the_next_frame(certs: Any) -> None:
    from aioquic.buffer import Buffer
    from aioquic.quic.connection import QuicReceiveContext

    p = _slim_pair(certs)
    assert p.server is not None
    handler, _ = p.server._QuicConnection__frame_handlers[0x00]  # type: ignore[attr-defined]
    context = QuicReceiveContext(
        epoch=None,  # type: ignore[arg-type]
        host_cid=b"",
        network_path=None,  # type: ignore[arg-type]
        quic_logger_frames=None,
        time=0.0,
        version=None,
    )
    for data, expected in [
        (b"\x00" * 16_000, 16_000),
        (b"\x00" * 100 + b"\x01\x00", 100),
        (b"\x02", 0),
        (b"", 0),
    ]:
        buf = Buffer(data=data)
        handler(context, 0x00, buf)
        assert buf.tell() == expected


def test_handshake_buffers_are_released_and_the_connection_goes_on(certs: Any) -> None:
    p = QuicPair(certs.ca, certs.server_cert, certs.server_key)
    assert p.server is not None
    for quic in (p.client, p.server):
        assert len(quic._crypto_buffers) == 3  # aioquic's three 16 KiB buffers
        _aioquic.release_handshake_state(quic)
        assert len(quic._crypto_buffers) == 0
        assert quic.tls._ec_private_keys == []
    sid = p.client.get_next_available_stream_id()
    p.client.send_stream_data(sid, b"ping", end_stream=True)
    p.pump()
    p.server.send_stream_data(sid, b"pong", end_stream=True)
    p.pump()
    assert _received(p.client_events, sid) == 4


def test_a_session_ticket_arrives_after_the_buffers_are_released(certs: Any) -> None:
    """A client handles the server's NewSessionTicket after its handshake; TLS
    writes nothing then, so the released buffers are never asked for."""
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import QuicConnection
    from aioquic.tls import SessionTicket

    store: dict[bytes, SessionTicket] = {}
    received: list[SessionTicket] = []

    def server_hook(quic: QuicConnection) -> None:
        quic._session_ticket_handler = lambda t: store.__setitem__(t.ticket, t)
        quic._session_ticket_fetcher = store.pop

    client_cfg = QuicConfiguration(is_client=True, alpn_protocols=["brpc/1"])
    client_cfg.server_name = "localhost"
    client_cfg.load_verify_locations(cafile=str(certs.ca))
    p = QuicPair(certs.ca, certs.server_cert, certs.server_key, server_hook=server_hook)
    # A client of its own, with a ticket handler, released as soon as its handshake completes.
    client = QuicConnection(configuration=client_cfg, session_ticket_handler=received.append)
    p.client = client
    p.server = None
    p.client_events = []
    client.connect(("2.3.4.5", 4433), now=p.now)
    for _ in range(50):
        p.pump(rounds=1)
        if any(isinstance(e, HandshakeCompleted) for e in p.client_events):
            break
    _aioquic.release_handshake_state(client)
    p.pump()
    assert received and len(client._crypto_buffers) == 0


def test_a_client_offers_one_key_share_and_still_connects(certs: Any) -> None:
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import QuicConnection

    p = pair(certs)  # a plain pair: its server is aioquic's own
    client_cfg = QuicConfiguration(is_client=True, alpn_protocols=["brpc/1"])
    client_cfg.server_name = "localhost"
    client_cfg.load_verify_locations(cafile=str(certs.ca))
    client = QuicConnection(configuration=client_cfg)
    _aioquic.offer_one_key_share(client)
    p.client, p.server, p.client_events = client, None, []
    client.connect(("2.3.4.5", 4433), now=p.now)
    assert len(client.tls._ec_private_keys) == 1  # P-256 only: no P-384, X25519, X448
    assert client.tls._x25519_private_key is None and client.tls._x448_private_key is None
    p.pump()
    assert any(isinstance(e, HandshakeCompleted) for e in p.client_events)
    assert p.server is not None
    with pytest.raises(ValueError):
        _aioquic.offer_one_key_share(p.server)


# -- stream scheduling (schedule_pending_streams) ----------------------------------------

#: What the stream scheduling was checked against (aioquic 1.7.2): the method it
#: replaces (``_write_application``), every ``QuicConnection`` method that reads
#: or changes what a stream has to send, and the stream classes. sha256 of each
#: one's source, first 16 hex digits. When one changes, compare the new aioquic
#: code with ``_StreamSchedulingConnection`` (its copy of ``_write_application``
#: and the list of watched points in its docstring) before updating the digest.
STREAM_SCHEDULING_SOURCES = {
    "QuicConnection._get_or_create_stream": "aee09c84cd0da114",
    "QuicConnection._get_or_create_stream_for_send": "b68479a29862b421",
    "QuicConnection._handle_crypto_frame": "e77f8695d9acaf8e",
    "QuicConnection._handle_max_stream_data_frame": "c94e4873026aaa68",
    "QuicConnection._handle_reset_stream_frame": "0a1801842064e9dd",
    "QuicConnection._handle_stop_sending_frame": "57b0b54a8467ecb5",
    "QuicConnection._handle_stream_data_blocked_frame": "84c6344ea010c0c4",
    "QuicConnection._handle_stream_frame": "8c79348a854e307d",
    "QuicConnection._handshake_data_stranded": "691675aa1708ccaf",
    "QuicConnection._on_max_stream_data_delivery": "76e906ea95ee03fe",
    "QuicConnection._push_crypto_data": "9e47f41010324bf6",
    "QuicConnection._unblock_streams": "cfde0b0287e2a38d",
    "QuicConnection._write_application": "c37bf64378f72b2f",
    "QuicConnection._write_crypto_frame": "54828990b464ca94",
    "QuicConnection._write_handshake": "0e6a413ccb165864",
    "QuicConnection._write_reset_stream_frame": "72c28abb1c9bb5e0",
    "QuicConnection._write_stop_sending_frame": "057f50750f9f51ba",
    "QuicConnection._write_stream_frame": "9bc0be962394a322",
    "QuicConnection._write_stream_limits": "398d4a898f7c580f",
    "QuicConnection.reset_stream": "f5a5e1ff5935b8a1",
    "QuicConnection.send_stream_data": "d10cbdd766b528a6",
    "QuicConnection.stop_stream": "c48810656a6b518a",
    "QuicStream": "e8b366bbfb2316f4",
    "QuicStreamSender": "f14fb859f32d053a",
    "QuicStreamReceiver": "78596a9b1406685c",
}

#: Names a method that reads or changes a stream's send state mentions.
_STREAM_STATE = re.compile(
    r"\.sender\.|\.receiver\.|_streams_queue|max_stream_data_local|is_blocked|_get_or_create_stream"
)


def _source_digest(obj: Any) -> str:
    return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()[:16]


def test_stream_scheduling_canary_sources_are_the_ones_checked() -> None:
    from aioquic.quic import stream

    found = {
        name: _source_digest(getattr(QuicConnection, name.removeprefix("QuicConnection.")))
        for name in STREAM_SCHEDULING_SOURCES
        if name.startswith("QuicConnection.")
    }
    for kind in (stream.QuicStream, stream.QuicStreamSender, stream.QuicStreamReceiver):
        found[kind.__name__] = _source_digest(kind)
    changed = sorted(
        name for name, digest in found.items() if digest != STREAM_SCHEDULING_SOURCES[name]
    )
    assert not changed, f"aioquic changed code the stream scheduling relies on: {changed}"


def test_stream_scheduling_canary_no_other_method_touches_stream_state() -> None:
    touching = {
        f"QuicConnection.{name}"
        for name, function in vars(QuicConnection).items()
        if inspect.isfunction(function) and _STREAM_STATE.search(inspect.getsource(function))
    }
    known = {name for name in STREAM_SCHEDULING_SOURCES if name.startswith("QuicConnection.")}
    # __init__ makes the empty queue (checked below), nothing else.
    assert touching - {"QuicConnection.__init__"} == known


def test_stream_scheduling_canary_overrides_match_aioquic_signatures() -> None:
    from brpc._session.quic._aioquic import (
        _StreamSchedulingConnection,
        _TrackedReceiver,
        _TrackedSender,
    )

    pairs = [
        (QuicConnection, _StreamSchedulingConnection, name)
        for name in (
            "_write_application",
            "_get_or_create_stream",
            "send_stream_data",
            "reset_stream",
            "stop_stream",
            "_on_max_stream_data_delivery",
            "_write_stream_limits",
        )
    ]
    pairs += [(_TrackedSender.__base__, _TrackedSender, "on_data_delivery")]
    pairs += [(_TrackedSender.__base__, _TrackedSender, "on_reset_delivery")]
    pairs += [(_TrackedReceiver.__base__, _TrackedReceiver, "on_stop_sending_delivery")]
    for base, ours, name in pairs:
        theirs = inspect.signature(getattr(base, name)).parameters.values()
        mine = inspect.signature(getattr(ours, name)).parameters.values()
        assert [(p.name, p.kind, p.default) for p in theirs] == [
            (p.name, p.kind, p.default) for p in mine
        ], (base.__name__, name)


def test_stream_scheduling_canary_queue_and_stream_layout(certs: Any) -> None:
    """The queue aioquic appends new streams to, and the stream attributes the
    scheduling reads, are where it expects them; stream parts can be retyped."""
    from aioquic.quic.stream import QuicStream

    from brpc._session.quic._aioquic import _TrackedReceiver, _TrackedSender

    p = pair(certs)
    fresh = QuicConnection(configuration=p.client.configuration)
    assert type(fresh._streams_queue) is list and not fresh._streams_queue
    _aioquic.schedule_pending_streams(fresh)
    assert type(fresh).__name__ == "_StreamSchedulingConnection"
    fresh.send_stream_data(0, b"x")
    created = fresh._streams[0]
    assert type(created) is QuicStream
    assert type(created.sender) is _TrackedSender and type(created.receiver) is _TrackedReceiver
    for name in ("buffer_is_empty", "reset_pending", "is_finished", "_stream_id"):
        assert hasattr(created.sender, name), name
    for name in ("stop_pending", "is_finished", "_stream_id"):
        assert hasattr(created.receiver, name), name
    for name in ("max_stream_data_local", "max_stream_data_local_sent", "is_blocked"):
        assert hasattr(created, name), name


def test_engine_connections_are_scheduled_with_consumption_credit() -> None:
    from aioquic.quic.configuration import QuicConfiguration

    from brpc._session.quic._aioquic import (
        _ConsumptionCreditConnection,
        _StreamSchedulingConnection,
    )
    from brpc._session.quic.engine import resolve_engine

    engine = resolve_engine("aioquic", server=False)
    quic = engine.client_connection(
        QuicConfiguration(is_client=True, alpn_protocols=["brpc/1"]), peer_stream_limit=10
    )
    assert isinstance(quic, _StreamSchedulingConnection)
    assert isinstance(quic, _ConsumptionCreditConnection)

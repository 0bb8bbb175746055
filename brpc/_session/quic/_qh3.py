"""The only module that touches qh3's private attributes.

qh3 (an aioquic fork with its packet core in Rust, tested with the 2.1 series,
pinned by the ``fast`` extra in pyproject.toml) offers the same functions as
``brpc/_session/quic/_aioquic.py``, plus the helpers brpc needs where qh3
differs from aioquic. Each function documents the private detail it reaches;
``tests/test_qh3_adapter.py`` exercises every one against real qh3
:class:`QuicConnection` objects so that a qh3 upgrade that moves them fails there.

What qh3 cannot do raises :class:`EngineLimitation` naming the gap:

- its TLS server never sends a CertificateRequest (``qh3.tls.Context`` has no
  server state that accepts a client Certificate), so there is no mutual TLS with
  a qh3 server; :func:`exporter_secret` gives what a proof of the client key
  bound to the TLS session needs instead;
- its packet core (``qh3._hazmat.QuicConnectionCore``) fixes the datagram size
  when it is created and has no way to send a padded probe, so brpc's own path-MTU
  prober cannot drive it (qh3 probes one step, to 1,472 bytes, by itself).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar
from weakref import WeakKeyDictionary

from cryptography import x509
from qh3 import tls as qh3_tls
from qh3._hazmat import Buffer
from qh3.quic.configuration import QuicConfiguration
from qh3.quic.connection import NetworkAddress, QuicConnection, QuicConnectionError
from qh3.quic.events import ConnectionTerminated

from brpc._session.quic._exporter import EXPORTER_MASTER_LABEL, tls_exporter
from brpc._session.quic._limits import EngineLimitation

__all__ = [
    "QH3_DEFAULT_PEER_BIDI_STREAMS",
    "break_cycles",
    "close_event",
    "configure",
    "datagrams_to_send",
    "exporter_secret",
    "install_exporter",
    "is_stream_known",
    "path_datagram_size",
    "peer_address",
    "peer_bidi_stream_credit",
    "peer_certificate",
    "peer_certificate_chain",
    "release_handshake_state",
    "request_client_certificate",
    "send_buffer_size",
    "send_probe",
    "set_address_validation_token",
    "set_initial_datagram_size",
    "set_max_datagram_size",
    "set_max_udp_payload_size",
    "set_peer_bidi_stream_limit",
]

QH3_DEFAULT_PEER_BIDI_STREAMS = 100
"""The limit qh3 hard-codes for peer-initiated bidirectional streams."""

# Position of ``local_max_streams_bidi`` among QuicConnectionCore's arguments
# (see qh3/_hazmat.pyi and QuicConnection._create_core).
_CORE_LOCAL_MAX_STREAMS_BIDI = 21
_CORE_PEER_ADDRESS_VALIDATED = 6
_CORE_MAX_DATAGRAM_SIZE = 8
_ARGUMENTS_MOVED = "qh3's QuicConnectionCore arguments moved: update brpc's qh3 adapter"

# QuicConnection._create_core looks QuicConnectionCore up in its module when it runs.
_connection_module: Any = __import__("qh3.quic.connection", fromlist=["QuicConnectionCore"])
# QuicTlsBridge looks push_quic_transport_parameters up in its module when it serializes.
_bridge_module: Any = __import__("qh3.quic.tls_bridge", fromlist=["QuicTlsBridge"])
if not callable(getattr(_bridge_module, "push_quic_transport_parameters", None)):
    raise ImportError("qh3's TLS bridge moved its transport parameter encoder: update brpc")

_T = TypeVar("_T")


_masters: WeakKeyDictionary[QuicConnection, bytes] = WeakKeyDictionary()


_BUDGET_EXHAUSTED = "packet builder capacity exhausted"


def datagrams_to_send(quic: QuicConnection, now: float) -> list[tuple[bytes, NetworkAddress]]:
    """``quic.datagrams_to_send(now)``, with qh3's anti-amplification failure as "nothing now".

    A qh3 server whose anti-amplification allowance cannot fit a packet raises
    ``QuicConnectionError("packet builder capacity exhausted")`` from its Rust
    packet builder instead of waiting for more bytes from the client (this is
    what an aioquic client's padded Initial runs into). The connection is fine:
    the client's next datagram (its retransmission after a probe timeout) raises
    the allowance and the handshake goes on, about one probe timeout later.
    """
    try:
        return quic.datagrams_to_send(now=now)
    except QuicConnectionError as exc:
        if _BUDGET_EXHAUSTED not in str(exc.reason_phrase):
            raise
        return []


def send_buffer_size(quic: QuicConnection, stream_id: int) -> int:
    """Bytes written to ``stream_id`` that have not been sent for the first time.

    qh3 keeps stream buffers in its Rust core and exposes only this count
    (public ``get_send_buffer_size``), not the bytes sent but unacknowledged
    that aioquic's figure includes. Those are bounded by the congestion window,
    so the unsent count is the part that grows when a writer outpaces the path
    and is what write backpressure should watch. Unknown streams hold nothing.
    """
    if not 0 <= stream_id < (1 << 62):
        return 0
    return quic.get_send_buffer_size(stream_id)


def is_stream_known(quic: QuicConnection, stream_id: int) -> bool:
    """Whether qh3 still holds state for ``stream_id``.

    For a stream this side opened, qh3 tracks it in the private
    ``QuicConnection._created_local_stream_ids`` until the core reports it
    finished in both directions. For a peer's stream qh3 exposes only whether
    this side can still send on it (``_core.can_send_stream``): once this side
    has finished sending, the stream reads as unknown although the peer may still
    send; calls that need the receive side (``stop_stream``) then raise
    ``ValueError``, which callers guarding with this function should tolerate.
    """
    if quic._core is None:
        return False
    local = stream_id & 1 == (0 if quic.configuration.is_client else 1)
    if local:
        return stream_id in quic._created_local_stream_ids
    return quic._core.can_send_stream(stream_id)


def set_peer_bidi_stream_limit(
    quic: QuicConnection, limit: int, *, amplification_limited_by_caller: bool = False
) -> None:
    """Let the peer open up to ``limit`` concurrent bidirectional streams.

    qh3 hard-codes 100 twice: in the transport parameters its TLS bridge
    serializes (``QuicTlsBridge.serialize_transport_parameters``) and in the
    argument its Rust core is built with (``QuicConnection._create_core``). Both
    are created lazily (``connect`` on a client, the first datagram on a server),
    so this wraps the two private factories on this connection; call it right
    after the connection object is made.

    ``amplification_limited_by_caller`` (a server whose caller sends no more
    than three times what it received until the handshake is done, as brpc's
    session does) builds the core with ``peer_address_validated`` set: qh3
    2.1's own limit fails the first flight ("packet builder capacity
    exhausted") when the client's Initial is a 1,200-byte datagram, as
    aioquic's is, and the handshake then waits for the client's probe timeouts.
    """
    if limit < 1:
        raise ValueError("the bidirectional stream limit must be at least 1")

    def edit(values: list[Any]) -> None:
        if values[_CORE_LOCAL_MAX_STREAMS_BIDI] != QH3_DEFAULT_PEER_BIDI_STREAMS:
            raise RuntimeError(_ARGUMENTS_MOVED)
        values[_CORE_LOCAL_MAX_STREAMS_BIDI] = limit
        if amplification_limited_by_caller:
            if not isinstance(values[_CORE_PEER_ADDRESS_VALIDATED], bool):
                raise RuntimeError(_ARGUMENTS_MOVED)
            values[_CORE_PEER_ADDRESS_VALIDATED] = True

    _edit_core_arguments(quic, edit)
    _edit_transport_parameters(quic, "initial_max_streams_bidi", limit)


def set_initial_datagram_size(quic: QuicConnection, size: int) -> None:
    """Create ``quic``'s packet core with datagrams of up to ``size`` bytes instead
    of ``QuicConfiguration.max_datagram_size``, for this connection only (a
    server's configuration is shared by all its connections).

    The size is an argument of the Rust core (``QuicConnection._create_core``,
    position 8) and fixed once it exists. The core still sends no datagram bigger
    than the peer's ``max_udp_payload_size`` transport parameter once the
    handshake brings it, and keeps handshake datagrams small by itself. Call
    right after the connection object is made.
    """
    if not 1200 <= size <= 65_527:
        raise ValueError("the datagram size must be within 1200..65527")
    if quic._core is not None:
        raise RuntimeError("set the datagram size before the connection starts")
    configured = quic.configuration.max_datagram_size

    def edit(values: list[Any]) -> None:
        if values[_CORE_MAX_DATAGRAM_SIZE] != configured:
            raise RuntimeError(_ARGUMENTS_MOVED)
        values[_CORE_MAX_DATAGRAM_SIZE] = size

    _edit_core_arguments(quic, edit)


def _edit_core_arguments(quic: QuicConnection, edit: Callable[[list[Any]], None]) -> None:
    """Make the Rust core of ``quic`` be created with arguments ``edit`` changes.

    The core is made lazily by the private ``QuicConnection._create_core``
    (``connect`` on a client, the first datagram on a server), which looks
    ``QuicConnectionCore`` up in its module: this wraps the factory on this
    connection and swaps the class for the duration of that one synchronous
    call. Wrappers compose (each edits the arguments the next one passes on).
    """
    if quic._core is not None:
        raise RuntimeError("change the core's arguments before the connection starts")
    create_core = quic._create_core

    def _create_core(remote_addr: NetworkAddress, initial_dcid: bytes, now: float) -> None:
        core_class = _connection_module.QuicConnectionCore

        def edited_core(*args: Any) -> Any:
            values = list(args)
            edit(values)
            return core_class(*values)

        _connection_module.QuicConnectionCore = edited_core
        try:
            create_core(remote_addr, initial_dcid, now)
        finally:
            _connection_module.QuicConnectionCore = core_class

    quic._create_core = _create_core  # type: ignore[method-assign]


def set_max_udp_payload_size(quic: QuicConnection, size: int) -> None:
    """Tell the peer it may send datagrams of up to ``size`` bytes to this client.

    A qh3 client hard-codes ``max_udp_payload_size = 1472`` in its transport
    parameters (``QuicTlsBridge.serialize_transport_parameters``) and servers
    honour it: without this, everything a server sends to a qh3 client is cut to
    1,472-byte datagrams whatever either side's ``max_datagram_size``. Call
    right after the connection object is made.
    """
    if not 1200 <= size <= 65_527:
        raise ValueError("max_udp_payload_size must be within 1200..65527")
    _edit_transport_parameters(quic, "max_udp_payload_size", size)


def _edit_transport_parameters(quic: QuicConnection, name: str, value: int) -> None:
    """Make the transport parameters ``quic`` sends carry ``name = value``.

    The TLS bridge is made lazily by the private ``QuicConnection._create_tls``;
    it serializes its parameters in its constructor (into the TLS context's
    ``handshake_extensions``) and again after a version change (its
    ``serialize_transport_parameters``). Both build a ``QuicTransportParameters``
    and encode it with ``push_quic_transport_parameters``, looked up in the
    bridge's module when they run: this swaps in an encoder that edits the
    parameters first, for the duration of those calls only, so they are encoded
    once. Edits compose (each one's encoder hands on to the one before).
    """
    if quic._tls is not None:
        raise RuntimeError("change transport parameters before the connection starts")
    create_tls = quic._create_tls

    def edited(serialize: Callable[[], _T]) -> _T:
        push = _bridge_module.push_quic_transport_parameters

        def push_edited(buf: Buffer, parameters: Any) -> None:
            setattr(parameters, name, value)
            push(buf, parameters)

        _bridge_module.push_quic_transport_parameters = push_edited
        try:
            return serialize()
        finally:
            _bridge_module.push_quic_transport_parameters = push

    def _create_tls(remote_source_cid: bytes | None) -> Any:
        bridge = edited(lambda: create_tls(remote_source_cid))
        serialize = bridge.serialize_transport_parameters

        def serialize_transport_parameters() -> bytes:
            return edited(serialize)

        bridge.serialize_transport_parameters = serialize_transport_parameters  # type: ignore[method-assign]
        return bridge

    quic._create_tls = _create_tls  # type: ignore[method-assign]


def peer_bidi_stream_credit(quic: QuicConnection) -> int:
    """How many more bidirectional streams this side may open now.

    qh3 raises ``ValueError`` when a send would open a stream past the peer's
    limit instead of queuing it as aioquic does; callers open a stream only
    while this is positive and queue otherwise. Read from the core's
    ``stream_limits`` (peer's cumulative bidi limit, uni limit, bidi opened, uni
    opened). Zero before the handshake has given the peer's limit.
    """
    core = quic._core
    if core is None:
        return 0
    peer_limit, _, opened, _ = core.stream_limits
    return max(0, peer_limit - opened)


def close_event(quic: QuicConnection) -> tuple[ConnectionTerminated, bool] | None:
    """How the connection is ending, as soon as it starts ending, and whether
    this side started it.

    qh3 reports :class:`ConnectionTerminated` only when the closing or draining
    period is over. The reason is known at once (private ``_close_event``) and
    the Rust core's ``state`` reads ``"closing"`` when this side closed
    (including its TLS errors) and ``"draining"`` when the peer did.
    """
    core = quic._core
    if core is None:
        return None
    state = core.state
    if state not in ("closing", "draining"):
        return None
    event = quic._close_event or ConnectionTerminated(
        error_code=0, frame_type=None, reason_phrase=""
    )
    return event, state == "closing"


def peer_certificate(quic: QuicConnection) -> x509.Certificate | None:
    """The certificate the peer presented in the TLS handshake, if any.

    qh3 returns its own certificate type (``qh3._hazmat.Certificate``, public
    ``get_peercert``); this converts it through DER.
    """
    certificate = quic.get_peercert()
    if certificate is None:
        return None
    return x509.load_der_x509_certificate(certificate.public_bytes())


def peer_certificate_chain(quic: QuicConnection) -> list[x509.Certificate]:
    """The intermediate certificates the peer sent after its own."""
    return [x509.load_der_x509_certificate(c.public_bytes()) for c in quic.get_issuercerts()]


def request_client_certificate(quic: QuicConnection) -> None:
    """Always raises: a qh3 server cannot ask for a client certificate.

    qh3's TLS server (``qh3.tls.Context._server_handle_hello``) never sends a
    CertificateRequest and has no state that accepts a client Certificate or
    CertificateVerify; there is no private switch as in aioquic. Authenticate
    clients above TLS with a signature over :func:`exporter_secret` instead.
    """
    raise EngineLimitation(
        "qh3 cannot request a client certificate in the TLS handshake (its TLS server "
        "has no CertificateRequest); use engine='aioquic' for TLS client certificates, "
        "or authenticate the client with a key proof bound to the TLS exporter secret"
    )


def install_exporter(quic: QuicConnection) -> None:
    """Capture the exporter master secret of ``quic``'s handshake when it happens.

    qh3's TLS is Python (``qh3.tls.Context``, reached as ``bridge.tls`` of the
    private ``QuicTlsBridge`` made by ``QuicConnection._create_tls``). Its key
    schedule (``Context.key_schedule``) holds the master secret and the
    transcript; the transcript moves past the server's Finished right after the
    application traffic secrets are derived, so this wraps the context's
    ``update_traffic_key_cb`` and derives ``exporter_master_secret`` on the
    first 1-RTT key. Call right after the connection object is made.
    """
    create_tls = quic._create_tls

    def _create_tls(remote_source_cid: bytes | None) -> Any:
        bridge = create_tls(remote_source_cid)
        context = bridge.tls
        forward: Callable[..., None] = context.update_traffic_key_cb

        def update_traffic_key(
            direction: Any, epoch: qh3_tls.Epoch, cipher_suite: Any, secret: bytes
        ) -> None:
            if epoch == qh3_tls.Epoch.ONE_RTT and quic not in _masters:
                schedule = context.key_schedule
                assert schedule is not None
                _masters[quic] = schedule.derive_secret(EXPORTER_MASTER_LABEL)
            forward(direction, epoch, cipher_suite, secret)

        context.update_traffic_key_cb = update_traffic_key
        return bridge

    quic._create_tls = _create_tls  # type: ignore[method-assign]


def exporter_secret(quic: QuicConnection, label: bytes, length: int, context: bytes = b"") -> bytes:
    """TLS-Exporter(label, context, length) (RFC 8446 section 7.5) of this connection.

    Both ends get the same bytes, and the same as an aioquic peer computes with
    ``_aioquic_exporter.exporter_secret``; any other TLS session gets different
    ones. Needs :func:`install_exporter` before the handshake.
    """
    master = _masters.get(quic)
    if master is None:
        raise RuntimeError(
            "no exporter secret: call install_exporter() on the connection before its "
            "handshake, and export only after the handshake completes"
        )
    return tls_exporter(master, label, context, length)


def peer_address(quic: QuicConnection) -> NetworkAddress | None:
    """The peer's current address (aioquic's ``get_peer_address``, which qh3 lacks).

    Read from the Rust core's ``active_path`` (path id, local address, remote
    address, bytes received, bytes sent, datagram size), so it follows a
    migrated peer. None before the connection has started.
    """
    core = quic._core
    if core is None:
        return None
    remote: NetworkAddress = core.active_path[2]
    return remote


def path_datagram_size(quic: QuicConnection) -> int | None:
    """The largest datagram the connection sends on its current path: its own
    size, lowered to the peer's ``max_udp_payload_size`` once known. Read from
    the Rust core's ``active_path`` (its sixth item). None before the connection
    has started."""
    core = quic._core
    if core is None:
        return None
    size: int = core.active_path[5]
    return size


def configure(
    configuration: QuicConfiguration, *, congestion_control_algorithm: str | None = None
) -> QuicConfiguration:
    """Check options aioquic has and qh3 does not, and return ``configuration``.

    qh3's configuration has no ``congestion_control_algorithm`` (its Rust core
    has one built-in controller): asking for one raises instead of being ignored.
    For aioquic's ``token`` use :func:`set_address_validation_token`.
    """
    if congestion_control_algorithm is not None:
        raise EngineLimitation(
            f"qh3 has no choice of congestion control ({congestion_control_algorithm!r} "
            "asked); leave it unset or use engine='aioquic'"
        )
    return configuration


def set_address_validation_token(quic: QuicConnection, token: bytes) -> None:
    """Send ``token`` (from a NEW_TOKEN or Retry) in this client's Initial packets.

    aioquic takes it as ``QuicConfiguration.token``; qh3 has no such option but
    its core has ``set_initial_token``. Call after ``connect`` and before the
    first ``datagrams_to_send``.
    """
    if quic._core is None:
        raise RuntimeError("set the token after connect() and before sending")
    quic._core.set_initial_token(token)


def set_max_datagram_size(quic: QuicConnection, size: int) -> None:
    """Always raises: qh3 fixes the datagram size when its core is created.

    ``QuicConfiguration.max_datagram_size`` is passed to the Rust core once
    (``QuicConnection._create_core``) and the core has no setter. Choose the
    size in the configuration before connecting; qh3 also probes one step to
    1,472 bytes by itself (``probe_datagram_size``, client only).
    """
    raise EngineLimitation(
        f"qh3 cannot change the datagram size of a running connection (asked {size}); "
        "set QuicConfiguration.max_datagram_size before connecting"
    )


def send_probe(quic: QuicConnection, size: int, uid: int) -> None:
    """Always raises: qh3 cannot send a padded probe of a chosen size.

    Its core sends PING frames (``send_ping``) only inside ordinary packets of the
    current datagram size and decides padding itself.
    """
    raise EngineLimitation(
        f"qh3 cannot send a {size}-byte path MTU probe; its own probing "
        "(QuicConfiguration.probe_datagram_size) is the only one it supports"
    )


# What a qh3 server's TLS context (``qh3.tls.Context``) holds only for the
# handshake: the key schedule, key shares, randoms and verify data, the
# ClientHello's extensions and its own per-connection lists of what it offers.
_SERVER_HANDSHAKE_ONLY = (
    "key_schedule",
    "client_random",
    "server_random",
    "legacy_session_id",
    "_expected_verify_data",
    "_enc_key",
    "_dec_key",
    "_next_dec_key",
    "_x25519_private_key",
    "_x25519_kyber_768_private_key",
    "_ec_p256_private_key",
    "_ec_p384_private_key",
    "_ec_p521_private_key",
)
_SERVER_HANDSHAKE_ONLY_LISTS = (
    "received_extensions",
    "handshake_extensions",
    "_cipher_suites",
    "_signature_algorithms",
    "_supported_groups",
    "_supported_versions",
    "_psk_key_exchange_modes",
    "_legacy_compression_methods",
)


class _ShortQueue(list[Any]):
    """A first-in first-out queue of a few items as a list (56 bytes empty,
    against a deque's 760): what the TLS bridge calls on its queues (``append``,
    ``popleft``, truth) and nothing more."""

    __slots__ = ()

    def popleft(self) -> Any:
        return self.pop(0)


def release_handshake_state(quic: QuicConnection) -> None:
    """Drop what a server connection's TLS kept for its finished handshake.

    The TLS context (``bridge.tls`` of the private ``QuicConnection._tls``) in
    state ``SERVER_POST_HANDSHAKE`` answers any further handshake message with
    an alert (``Context.handle_message``) and reads none of the attributes in
    ``_SERVER_HANDSHAKE_ONLY*``; the session ticket, if any, was issued when the
    client's Finished arrived, and the exporter secret was taken at the first
    1-RTT key (:func:`install_exporter`). The peer's transport parameters were
    applied to the core: the bridge's ``remote_transport_parameters`` and the
    connection's ``_applied_transport_parameters`` (compared by identity in
    ``QuicConnection._drain_tls``) are dropped together. The bridge's private
    queues (``_events``, ``_outbound``, ``_traffic_secrets``: deques it only
    appends to and pops from the left, empty once the handshake is done) become
    short lists, and so does the connection's event queue (``_events``, also
    only appended to and popped from the left, and drained by brpc after every
    datagram or batch). brpc's per-connection overrides and the TLS callbacks go
    too, as :func:`break_cycles` drops them: a server makes its core and TLS
    once, before the handshake, and changes version only during it. Clients keep
    all of it (a session ticket after the handshake needs the key schedule; a
    Retry makes a new core).
    """
    bridge = quic._tls
    if bridge is None or quic.configuration.is_client:
        return
    context = bridge.tls
    if context.state is not qh3_tls.State.SERVER_POST_HANDSHAKE:
        return
    for name in _SERVER_HANDSHAKE_ONLY:
        if name in context.__dict__:
            setattr(context, name, None)
    for name in _SERVER_HANDSHAKE_ONLY_LISTS:
        if name in context.__dict__:
            setattr(context, name, [])
    if quic._applied_transport_parameters is bridge.remote_transport_parameters:
        bridge.remote_transport_parameters = None
        quic._applied_transport_parameters = None
    break_cycles(quic)
    # Its queues stay, but as short lists: an empty deque holds a 760-byte block.
    for queue in ("_events", "_outbound", "_traffic_secrets"):
        setattr(bridge, queue, _ShortQueue(getattr(bridge, queue)))
    setattr(quic, "_events", _ShortQueue(quic._events))  # noqa: B010 (typed as a deque)


def break_cycles(quic: QuicConnection) -> None:
    """Drop the references from a terminated connection's parts back to it.

    brpc's per-connection overrides (``_create_tls`` and ``_create_core``
    instance attributes, closures over the connection), the TLS bridge's
    ``_version_change_handler`` (a bound method of the connection) and its
    ``serialize_transport_parameters`` (brpc's closure over the connection) and
    the TLS context's callbacks each make the connection a reference cycle,
    freed only by a full garbage collection. None is used once the connection
    is terminated. Call only after ``ConnectionTerminated`` (or, on a server,
    once its handshake is complete: see :func:`release_handshake_state`).
    """
    for override in ("_create_tls", "_create_core"):
        quic.__dict__.pop(override, None)
    bridge = getattr(quic, "_tls", None)
    if bridge is None:
        return
    bridge._version_change_handler = None
    bridge.__dict__.pop("serialize_transport_parameters", None)
    context = getattr(bridge, "tls", None)
    if context is not None:
        for callback in ("alpn_cb", "update_traffic_key_cb"):
            if hasattr(context, callback):
                setattr(context, callback, None)

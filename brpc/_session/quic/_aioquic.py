"""The only module that touches aioquic's private attributes.

aioquic (tested with the 1.7 series, pinned in pyproject.toml) lacks a few
public hooks brpc needs. Each function below reaches into one private detail
and documents which; ``tests/test_aioquic_adapter.py`` exercises every one of
them against real :class:`QuicConnection` objects so that an aioquic upgrade
that moves them fails loudly there rather than subtly elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from aioquic.quic.connection import QuicConnection, QuicConnectionState
from aioquic.quic.events import ConnectionTerminated

if TYPE_CHECKING:
    from cryptography import x509

__all__ = [
    "address_validated",
    "close_event",
    "derive_reset_tokens",
    "is_stream_known",
    "peer_certificate",
    "peer_certificate_chain",
    "peer_reset_tokens",
    "request_client_certificate",
    "send_buffer_size",
    "set_peer_bidi_stream_limit",
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


def address_validated(quic: QuicConnection) -> bool:
    """Whether a server connection has validated the client's current address.

    aioquic keeps this per path (private ``_network_paths[0].is_validated``, set
    by a Handshake packet, a Retry token or a path challenge) and limits what it
    sends before that to three times what it received, except its closes.
    """
    paths = quic._network_paths
    return bool(paths) and paths[0].is_validated


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

"""The only module that touches aioquic's private attributes.

aioquic (tested with the 1.7 series, pinned in pyproject.toml) lacks a few
public hooks brpc needs. Each function below reaches into one private detail
and documents which; ``tests/test_aioquic_adapter.py`` exercises every one of
them against real :class:`QuicConnection` objects so that an aioquic upgrade
that moves them fails loudly there rather than subtly elsewhere.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aioquic.asyncio.server import QuicServer
from aioquic.quic.connection import QuicConnection, QuicConnectionState
from aioquic.quic.events import ConnectionTerminated

if TYPE_CHECKING:
    from cryptography import x509

__all__ = [
    "close_event",
    "endpoint_connection_count",
    "is_stream_known",
    "peer_certificate",
    "peer_certificate_chain",
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


def endpoint_connection_count(endpoint: QuicServer) -> int:
    """Connections a server endpoint still routes datagrams to, closing ones included.

    aioquic keeps each connection in ``QuicServer._protocols`` (one entry per
    connection ID) until its closing period ends; this counts the distinct ones.
    """
    return len({id(protocol) for protocol in endpoint._protocols.values()})

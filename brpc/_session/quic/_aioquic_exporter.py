"""The TLS exporter (RFC 8446 section 7.5) for aioquic connections.

aioquic (1.7 series) has no exporter API. Its TLS stack is Python
(``aioquic.tls.Context``); the key schedule object (``Context.key_schedule``,
private in spirit though not by name) holds the master secret and the running
transcript hash. The transcript moves past the server's Finished right after the
application traffic secrets are derived, so :func:`install_exporter` wraps the
context's ``update_traffic_key_cb`` and derives ``exporter_master_secret`` on the
first 1-RTT key, when the transcript is exactly ClientHello...server Finished.
``tests/test_exporter.py`` checks that both sides, and aioquic against qh3, agree.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from weakref import WeakKeyDictionary

from aioquic.quic.connection import QuicConnection
from aioquic.tls import Epoch

from brpc._session.quic._exporter import EXPORTER_MASTER_LABEL, tls_exporter

__all__ = ["exporter_secret", "install_exporter"]

_masters: WeakKeyDictionary[QuicConnection, bytes] = WeakKeyDictionary()


def install_exporter(quic: QuicConnection) -> None:
    """Capture the exporter master secret of ``quic``'s handshake when it happens.

    Call right after the connection object is made, before ``connect`` (client) or
    the first datagram (server). aioquic creates its TLS context in the private
    ``QuicConnection._initialize``; the wrapper installed here wraps the context's
    traffic-key callback as soon as the context exists.
    """
    initialize = quic._initialize

    def _initialize(peer_cid: bytes) -> None:
        initialize(peer_cid)
        context = quic.tls
        forward: Callable[..., None] = context.update_traffic_key_cb

        def update_traffic_key(
            direction: Any, epoch: Epoch, cipher_suite: Any, secret: bytes
        ) -> None:
            if epoch == Epoch.ONE_RTT and quic not in _masters:
                schedule = context.key_schedule
                assert schedule is not None
                _masters[quic] = schedule.derive_secret(EXPORTER_MASTER_LABEL)
            forward(direction, epoch, cipher_suite, secret)

        context.update_traffic_key_cb = update_traffic_key

    quic._initialize = _initialize  # type: ignore[method-assign]


def exporter_secret(quic: QuicConnection, label: bytes, length: int, context: bytes = b"") -> bytes:
    """TLS-Exporter(label, context, length) of this connection's TLS session.

    Both ends of a connection get the same bytes; any other TLS session gets
    different ones. Needs :func:`install_exporter` before the handshake and a
    completed handshake.
    """
    master = _masters.get(quic)
    if master is None:
        raise RuntimeError(
            "no exporter secret: call install_exporter() on the connection before its "
            "handshake, and export only after the handshake completes"
        )
    return tls_exporter(master, label, context, length)

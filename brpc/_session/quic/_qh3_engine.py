"""The qh3 engine (the ``fast`` extra), imported only when it is chosen.

See ``engine.py`` for what differs from aioquic; qh3's private details are in ``_qh3.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cryptography import x509
from qh3.quic import events as qh3_events
from qh3.quic.configuration import QuicConfiguration
from qh3.quic.connection import QuicConnection

from . import _qh3
from .engine import Configuration, Connection, Engine

__all__ = ["Qh3Engine"]


class Qh3Engine(Engine):
    """qh3 2.1 (aioquic fork with its packet core in Rust), the ``fast`` extra."""

    name = "qh3"
    tls_client_certificates = False
    probes_datagram_size = False
    derived_reset_tokens = False
    refuses_early_data = False
    holds_unsent = True

    def __init__(self) -> None:
        self.events = qh3_events

    def configuration(self, **settings: Any) -> Configuration:
        configuration = QuicConfiguration(**settings)
        # brpc sizes datagrams itself; qh3's own one-step probe would differ per engine.
        configuration.probe_datagram_size = False
        return configuration

    def client_connection(
        self,
        configuration: Configuration,
        *,
        peer_stream_limit: int,
        session_ticket_handler: Callable[[Any], None] | None = None,
    ) -> Connection:
        quic = QuicConnection(
            configuration=configuration, session_ticket_handler=session_ticket_handler
        )
        _qh3.install_exporter(quic)
        _qh3.set_peer_bidi_stream_limit(quic, peer_stream_limit)
        # qh3 clients announce 1,472 otherwise, which caps what servers send them.
        _qh3.set_max_udp_payload_size(quic, 65_527)
        return quic

    def server_connection(
        self,
        configuration: Configuration,
        *,
        original_destination_connection_id: bytes | None,
        retry_source_connection_id: bytes | None,
        peer_stream_limit: int,
        request_client_certificate: bool = False,
        reset_token: Callable[[bytes], bytes] | None = None,
        session_ticket_fetcher: Callable[[bytes], Any] | None = None,
        session_ticket_handler: Callable[[Any], None] | None = None,
        datagram_size: int | None = None,
    ) -> Connection:
        quic = QuicConnection(
            configuration=configuration,
            original_destination_connection_id=original_destination_connection_id,
            retry_source_connection_id=retry_source_connection_id,
            session_ticket_fetcher=session_ticket_fetcher,
            session_ticket_handler=session_ticket_handler,
        )
        if request_client_certificate:
            _qh3.request_client_certificate(quic)  # raises EngineLimitation
        _qh3.install_exporter(quic)
        # The session limits what leaves before the handshake (3x what arrived).
        _qh3.set_peer_bidi_stream_limit(
            quic, peer_stream_limit, amplification_limited_by_caller=True
        )
        if datagram_size is not None and datagram_size != configuration.max_datagram_size:
            _qh3.set_initial_datagram_size(quic, datagram_size)
        return quic

    def datagrams_to_send(self, quic: Connection, now: float) -> list[tuple[bytes, Any]]:
        return _qh3.datagrams_to_send(quic, now)

    def send_buffer_size(self, quic: Connection, stream_id: int) -> int:
        return _qh3.send_buffer_size(quic, stream_id)

    def unsent_bytes(self, quic: Connection, stream_id: int) -> int:
        return _qh3.send_buffer_size(quic, stream_id)

    def is_stream_known(self, quic: Connection, stream_id: int) -> bool:
        return _qh3.is_stream_known(quic, stream_id)

    def close_event(self, quic: Connection) -> tuple[Any, bool] | None:
        return _qh3.close_event(quic)

    def peer_certificate(self, quic: Connection) -> x509.Certificate | None:
        return _qh3.peer_certificate(quic)

    def peer_certificate_chain(self, quic: Connection) -> list[x509.Certificate]:
        return _qh3.peer_certificate_chain(quic)

    def peer_address(self, quic: Connection) -> Any:
        return _qh3.peer_address(quic)

    def exporter_secret(self, quic: Connection, label: bytes, length: int) -> bytes:
        return _qh3.exporter_secret(quic, label, length)

    def address_validated(self, quic: Connection) -> bool:
        # qh3 keeps path validation in its core; brpc counts the address as
        # validated only once the handshake is confirmed (stricter).
        return False

    def break_cycles(self, quic: Connection) -> None:
        _qh3.break_cycles(quic)

    def handshake_completed(self, quic: Connection) -> None:
        _qh3.release_handshake_state(quic)

    def path_datagram_size(self, quic: Connection) -> int | None:
        return _qh3.path_datagram_size(quic)

    def stream_credit(self, quic: Connection) -> int | None:
        return _qh3.peer_bidi_stream_credit(quic)

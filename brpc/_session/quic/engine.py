"""The QUIC engines brpc runs on, behind one interface.

An :class:`Engine` makes connections and configurations of one QUIC library and
answers every question the session layer has about them. ``session.py``,
``dial.py``, ``listen.py`` and ``endpoint.py`` talk to an engine object only;
each engine's private details stay in its adapter module (``_aioquic.py``,
``_aioquic_exporter.py``, ``_aioquic_probe.py``; ``_qh3.py``).

- ``aioquic`` (always installed): everything brpc needs, including TLS client
  certificates, stateless reset tokens derived from the server's key, and
  path-MTU probes of a running connection.
- ``qh3`` (``pip install 'brpc[fast]'``): the same packet engine with its hot
  paths in Rust. Its TLS server cannot ask for a client certificate (brpc then
  authenticates clients with a signature over the TLS exporter secret, see
  SECURITY.md); it cannot change its datagram size once running (no probing by
  brpc, which starts its connections towards a loopback peer at the route's
  size instead; qh3 probes one step to 1,472 bytes on a client by itself); its server
  cannot issue stateless reset tokens derived from a key (restarts of a qh3
  server are noticed through ICMP or the dead-peer timeout); it grants a sender
  flow-control credit as data arrives rather than as the application reads it,
  so a qh3 receiver ends a call that leaves more than 8 MiB unread
  (RESOURCE_EXHAUSTED) instead of holding its sender back. qh3's own
  anti-amplification limit fails on a 1,200-byte client Initial, so a qh3
  server leaves that limit to brpc's session.

:func:`resolve_engine` turns the user's ``engine=`` into an :class:`Engine`.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from typing import Any, ClassVar, Literal, cast

from aioquic.quic import events as aioquic_events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from cryptography import x509

from . import _aioquic, _aioquic_exporter, _aioquic_probe
from ._limits import EngineLimitation

__all__ = [
    "ENGINE_ENV",
    "ENGINE_NAMES",
    "AioquicEngine",
    "Engine",
    "EngineName",
    "qh3_installed",
    "resolve_engine",
]

EngineName = Literal["auto", "aioquic", "qh3"]
ENGINE_NAMES: tuple[str, ...] = ("auto", "aioquic", "qh3")

Connection = Any  # an engine's QuicConnection
Configuration = Any  # an engine's QuicConfiguration


def qh3_installed() -> bool:
    """Whether the optional qh3 engine can be imported."""
    return importlib.util.find_spec("qh3") is not None


class Engine:
    """One QUIC library, as the session layer uses it."""

    name: ClassVar[str]
    #: Whether a server on this engine can ask for a TLS client certificate.
    tls_client_certificates: ClassVar[bool]
    #: Whether brpc can probe and raise the datagram size of a running connection.
    probes_datagram_size: ClassVar[bool]
    #: Whether a server connection can issue stateless reset tokens brpc derives.
    derived_reset_tokens: ClassVar[bool]
    #: Whether a server can tell 0-RTT stream data from data after the handshake
    #: (brpc refuses early data; without this, session tickets are refused).
    refuses_early_data: ClassVar[bool]
    #: Whether written stream data can stay unsent after ``datagrams_to_send``
    #: (qh3's pacing), so that a close must wait for it.
    holds_unsent: ClassVar[bool] = False
    #: Whether receive credit can be withheld while the application reads nothing
    #: (aioquic, through brpc's adapter). Where it cannot (qh3 grants credit as it
    #: delivers data), the session bounds what it holds by failing the stream
    #: that goes over :data:`~brpc._session.quic.session.UNCREDITED_HOLD_LIMIT`.
    withholds_credit: ClassVar[bool] = False
    #: The engine's events module (``StreamDataReceived``, ``HandshakeCompleted``...).
    events: Any

    def configuration(self, **settings: Any) -> Configuration:
        raise NotImplementedError

    def client_connection(
        self,
        configuration: Configuration,
        *,
        peer_stream_limit: int,
        session_ticket_handler: Callable[[Any], None] | None = None,
    ) -> Connection:
        raise NotImplementedError

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
        """A connection for a client's first Initial. ``datagram_size``: the size
        to send this client datagrams at instead of the configuration's, given
        only to engines that cannot probe (``probes_datagram_size`` false)."""
        raise NotImplementedError

    def datagrams_to_send(self, quic: Connection, now: float) -> list[tuple[bytes, Any]]:
        """What the connection has to send now, as (datagram, address) pairs."""
        datagrams: list[tuple[bytes, Any]] = quic.datagrams_to_send(now=now)
        return datagrams

    def send_buffer_size(self, quic: Connection, stream_id: int) -> int:
        raise NotImplementedError

    def unsent_bytes(self, quic: Connection, stream_id: int) -> int:
        """Stream bytes written but not yet sent once that a close would drop
        (0 where the engine sends everything it can at once, as aioquic does)."""
        return 0

    def is_stream_known(self, quic: Connection, stream_id: int) -> bool:
        raise NotImplementedError

    def close_event(self, quic: Connection) -> tuple[Any, bool] | None:
        raise NotImplementedError

    def peer_certificate(self, quic: Connection) -> x509.Certificate | None:
        raise NotImplementedError

    def peer_certificate_chain(self, quic: Connection) -> list[x509.Certificate]:
        raise NotImplementedError

    def peer_address(self, quic: Connection) -> Any:
        raise NotImplementedError

    def exporter_secret(self, quic: Connection, label: bytes, length: int) -> bytes:
        raise NotImplementedError

    def address_validated(self, quic: Connection) -> bool:
        """Whether the server connection has validated the client's address."""
        raise NotImplementedError

    def peer_reset_tokens(self, quic: Connection) -> frozenset[bytes]:
        """Stateless reset tokens the peer gave for its connection IDs (brpc checks
        them itself when the engine does not)."""
        return frozenset()

    def stream_credit(self, quic: Connection) -> int | None:
        """Streams this side may still open, when the engine refuses to queue past
        the peer's limit (None: it queues)."""
        return None

    def set_stream_credit_paused(self, quic: Connection, stream_id: int, paused: bool) -> None:
        """Withhold (or grant again) receive credit for a stream the application
        stopped reading (engines whose credit already follows consumption: no-op)."""

    def add_unconsumed(self, quic: Connection, delta: int) -> None:
        """Bytes received on paused streams and not yet delivered changed by ``delta``."""

    def break_cycles(self, quic: Connection) -> None:
        """Drop a terminated connection's references back to itself (no-op by default)."""

    def handshake_completed(self, quic: Connection) -> None:
        """The handshake completed: drop what only it needed (no-op by default)."""

    def path_datagram_size(self, quic: Connection) -> int | None:
        """The largest datagram the connection sends now, as the engine sees it
        (None: the engine does not say; brpc's prober knows it instead)."""
        return None

    def set_max_datagram_size(self, quic: Connection, size: int) -> None:
        raise EngineLimitation(f"{self.name} cannot change the datagram size of a connection")

    def send_probe(
        self, quic: Connection, size: int, now: float, on_result: Callable[[bool], None]
    ) -> tuple[bytes, Any] | None:
        raise EngineLimitation(f"{self.name} cannot send path MTU probes")


class AioquicEngine(Engine):
    """aioquic 1.7 (pure Python)."""

    name = "aioquic"
    tls_client_certificates = True
    probes_datagram_size = True
    derived_reset_tokens = True
    refuses_early_data = True

    def __init__(self) -> None:
        self.events = aioquic_events

    def configuration(self, **settings: Any) -> Configuration:
        return QuicConfiguration(**settings)

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
        _aioquic.offer_one_key_share(quic)
        _aioquic_exporter.install_exporter(quic)
        _aioquic.set_peer_bidi_stream_limit(quic, peer_stream_limit)
        _aioquic.enable_consumption_credit(quic)
        _aioquic.schedule_pending_streams(quic)
        _aioquic.slim_frame_handlers(quic)
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
        # datagram_size is for engines that cannot probe: aioquic probes the path.
        quic = QuicConnection(
            configuration=configuration,
            original_destination_connection_id=original_destination_connection_id,
            retry_source_connection_id=retry_source_connection_id,
            session_ticket_fetcher=session_ticket_fetcher,
            session_ticket_handler=session_ticket_handler,
        )
        _aioquic_exporter.install_exporter(quic)
        _aioquic.set_peer_bidi_stream_limit(quic, peer_stream_limit)
        if request_client_certificate:
            _aioquic.request_client_certificate(quic)
        if reset_token is not None:
            _aioquic.derive_reset_tokens(quic, reset_token)
        _aioquic.enable_consumption_credit(quic)
        _aioquic.schedule_pending_streams(quic)
        _aioquic.slim_frame_handlers(quic)
        return quic

    def set_stream_credit_paused(self, quic: Connection, stream_id: int, paused: bool) -> None:
        _aioquic.set_stream_credit_paused(cast(QuicConnection, quic), stream_id, paused)

    withholds_credit = True

    def add_unconsumed(self, quic: Connection, delta: int) -> None:
        _aioquic.add_unconsumed(cast(QuicConnection, quic), delta)

    def break_cycles(self, quic: Connection) -> None:
        _aioquic.break_cycles(cast(QuicConnection, quic))

    def handshake_completed(self, quic: Connection) -> None:
        _aioquic.release_handshake_state(cast(QuicConnection, quic))

    def send_buffer_size(self, quic: Connection, stream_id: int) -> int:
        return _aioquic.send_buffer_size(quic, stream_id)

    def is_stream_known(self, quic: Connection, stream_id: int) -> bool:
        return _aioquic.is_stream_known(quic, stream_id)

    def close_event(self, quic: Connection) -> tuple[Any, bool] | None:
        return _aioquic.close_event(quic)

    def peer_certificate(self, quic: Connection) -> x509.Certificate | None:
        return _aioquic.peer_certificate(quic)

    def peer_certificate_chain(self, quic: Connection) -> list[x509.Certificate]:
        return _aioquic.peer_certificate_chain(quic)

    def peer_address(self, quic: Connection) -> Any:
        return quic.get_peer_address()

    def exporter_secret(self, quic: Connection, label: bytes, length: int) -> bytes:
        return _aioquic_exporter.exporter_secret(quic, label, length)

    def address_validated(self, quic: Connection) -> bool:
        return _aioquic.address_validated(quic)

    def peer_reset_tokens(self, quic: Connection) -> frozenset[bytes]:
        return _aioquic.peer_reset_tokens(quic)

    def set_max_datagram_size(self, quic: Connection, size: int) -> None:
        _aioquic_probe.set_max_datagram_size(quic, size)

    def send_probe(
        self, quic: Connection, size: int, now: float, on_result: Callable[[bool], None]
    ) -> tuple[bytes, Any] | None:
        return _aioquic_probe.send_probe(quic, size, now, on_result)


_ENGINES: dict[str, Engine] = {}


#: Environment variable that says what ``engine="auto"`` means in a process
#: ("aioquic" or "qh3"; unset: aioquic). For running a whole program or test
#: suite on one engine without editing it; ``engine=`` given in code wins.
ENGINE_ENV = "BRPC_ENGINE"


def _auto_engine() -> str:
    setting = os.environ.get(ENGINE_ENV, "").strip()
    if not setting:
        return "aioquic"
    if setting not in ("aioquic", "qh3"):
        raise ValueError(f"{ENGINE_ENV}={setting!r}: give 'aioquic' or 'qh3', or unset it")
    return setting


def resolve_engine(name: str, *, server: bool) -> Engine:
    """The engine for ``engine=name`` on a server or a dialing client.

    ``"auto"`` is aioquic, on both sides (or what ``BRPC_ENGINE`` says): qh3 is
    opt-in (``engine="qh3"``).
    aioquic's flow control follows what the application reads (through brpc's
    adapter), so a slow reader holds its sender back; qh3 grants credit as data
    arrives, so a qh3 receiver can only bound what it holds by ending the call
    that leaves more than ``UNCREDITED_HOLD_LIMIT`` unread (RESOURCE_EXHAUSTED)
    — a different behaviour that "auto" must not pick silently.
    Asking for qh3 when it is not installed raises ``ImportError``
    saying which extra to install.
    """
    if name not in ENGINE_NAMES:
        raise ValueError(
            f"engine must be one of {', '.join(map(repr, ENGINE_NAMES))}, not {name!r}"
        )
    if name == "auto":
        name = _auto_engine()
    if name == "qh3" and not qh3_installed():
        raise ImportError(
            "engine='qh3' needs the qh3 package: pip install 'brpc[fast]' (or use engine='aioquic')"
        )
    engine = _ENGINES.get(name)
    if engine is None:
        if name == "aioquic":
            engine = AioquicEngine()
        else:
            # qh3 is optional: imported only when asked for.
            from ._qh3_engine import Qh3Engine  # noqa: PLC0415

            engine = Qh3Engine()
        _ENGINES[name] = engine
    return engine

"""The dialing side: :func:`dial` and :class:`ClientConn`.

A :class:`ClientConn` is one logical connection to a brpc server. It is a
grpclib ``Channel``, so generated stubs take it directly (``GreeterStub(conn)``),
and it serves ``services`` to the server over the same QUIC connection.

Under it, one QUIC connection at a time (a :class:`Link`): dialled with TLS
and the brpc ALPN, then the hello exchange on the control stream. When the
connection is lost or the server says it is going away, the ClientConn
reconnects with exponential backoff and full jitter (unless told not to),
sending a fresh hello and serving its services again.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
import socket
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

from aioquic.quic.connection import QuicConnection
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from . import _aioquic
from ._calls import serving_server
from ._channel import LinkChannel
from ._control import ALPN, PROTOCOL_VERSION
from ._control_stream import ControlProtocol
from ._link import Link, LinkSettings, PeerInfo
from ._session import QuicSession, SessionClosed, SessionOptions
from ._target import format_target, parse_target
from ._tls import client_configuration, describe_handshake_failure, is_tls_failure
from .errors import CloseCode, ConnectError, HandshakeError, ProtocolViolation, RefusedError
from .testing.network import NetworkConditions
from .v1 import control_pb2 as pb

if TYPE_CHECKING:
    import os

    from grpclib._typing import IServable

__all__ = ["ClientConn", "ConnState", "ReconnectPolicy", "dial"]

log = logging.getLogger(__name__)

_CONTROL_MESSAGE_LIMIT = 64 << 10
# Streams the server may have open towards us at once: its lanes and their replacements.
_MAX_SERVER_STREAMS = 64
# Refusals that another attempt cannot fix.
_PERMANENT_REFUSALS = {
    "INVALID_HELLO",
    "UNSUPPORTED_VERSION",
    "UNAUTHENTICATED",
    "PERMISSION_DENIED",
}


class ConnState(enum.Enum):
    """Where a :class:`ClientConn` is in its life."""

    #: The first connection is being made.
    CONNECTING = "connecting"
    #: Connected; calls go out at once.
    READY = "ready"
    #: The connection was lost; a new one is being made.
    RECONNECTING = "reconnecting"
    #: Closed for good, by :meth:`ClientConn.close` or a permanent failure.
    CLOSED = "closed"


@dataclass(frozen=True)
class ReconnectPolicy:
    """Exponential backoff with full jitter between reconnection attempts.

    Attempt ``n`` (from 0) waits a random time between 0 and
    ``min(max_delay, initial_delay * multiplier ** n)`` seconds.
    """

    initial_delay: float = 0.25
    max_delay: float = 30.0
    multiplier: float = 2.0
    #: Give up (state CLOSED) after this many failed attempts; None: never.
    max_attempts: int | None = None

    def __post_init__(self) -> None:
        if self.initial_delay <= 0 or self.max_delay < self.initial_delay:
            raise ValueError("need 0 < initial_delay <= max_delay")
        if self.multiplier < 1:
            raise ValueError("multiplier must be at least 1")

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        ceiling = min(self.max_delay, self.initial_delay * self.multiplier ** min(attempt, 64))
        return (rng or random).uniform(0, ceiling)


@dataclass(frozen=True)
class _DialOptions:
    target: str
    host: str
    port: int
    server_name: str
    services: tuple[Any, ...]
    ca: str | os.PathLike[str] | None
    certfile: str | os.PathLike[str] | None
    keyfile: str | os.PathLike[str] | None
    name: str
    labels: Mapping[str, str]
    token: str
    timeout: float
    reconnect: ReconnectPolicy | None
    wait_for_ready: bool
    lanes: int
    max_message_size: int
    max_concurrent_calls: int
    keepalive_interval: float | None
    dead_peer_timeout: float
    max_datagram_size: int
    network_conditions: NetworkConditions | None


class _Attempt:
    """The session handler of one connection attempt, and later of its link."""

    def __init__(self, conn: ClientConn) -> None:
        loop = asyncio.get_running_loop()
        self.conn = conn
        self.handshake: asyncio.Future[None] = loop.create_future()
        self.reply: asyncio.Future[pb.Envelope] = loop.create_future()
        self.link: Link | None = None
        self.closed: SessionClosed | None = None

    def handshake_completed(self, session: QuicSession) -> None:
        if not self.handshake.done():
            self.handshake.set_result(None)

    def stream_opened(
        self, session: QuicSession, stream_id: int
    ) -> tuple[asyncio.Protocol, Any] | None:
        if self.link is not None:
            return self.link.incoming_lane()
        session.close(CloseCode.PROTOCOL_VIOLATION, "server opened a stream before the hello")
        return None

    def session_closed(self, session: QuicSession, closed: SessionClosed) -> None:
        self.closed = closed
        for future in (self.handshake, self.reply):
            if not future.done():
                future.set_exception(ConnectionError(closed.describe()))
                future.exception()  # whoever awaits it still gets it; no "never retrieved"
        if self.link is not None:
            self.link.session_closed(closed)

    # control stream, until the link takes it over
    def control_message(self, envelope: pb.Envelope) -> None:
        if not self.reply.done():
            self.reply.set_result(envelope)

    def control_violation(self, exc: ProtocolViolation) -> None:
        if not self.reply.done():
            self.reply.set_exception(exc)

    def control_closed(self, exc: Exception | None) -> None:
        if not self.reply.done():
            self.reply.set_exception(ConnectionError("the server closed the control stream"))


class ClientConn(LinkChannel):
    """A connection to a brpc server; pass it to any grpclib stub.

    Made by :func:`dial`. Calls made while the connection is being re-established
    fail at once with ``UNAVAILABLE`` or, with ``wait_for_ready=True``, wait for
    it within their deadline.
    """

    def __init__(self, options: _DialOptions) -> None:
        super().__init__(
            options.target, lanes=options.lanes, max_message_size=options.max_message_size
        )
        self._options = options
        self._conn_state = ConnState.CONNECTING
        self._changed = asyncio.Event()
        self._link: Link | None = None
        self._closed_event = asyncio.Event()
        self._close_reason: str | None = None
        self._last_error: str | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._rng = random.Random()
        self._serving = serving_server(options.services, options.max_message_size)
        #: Successful connections made so far (1 after dial, more after reconnects).
        self.connections_made = 0

    # -- public ------------------------------------------------------------------

    @property
    def target(self) -> str:
        return self._options.target

    @property
    def state(self) -> ConnState:
        return self._conn_state

    @property
    def connection_id(self) -> str:
        """ID the server assigned to the current connection ("" when disconnected)."""
        link = self._link
        return link.connection_id if link is not None else ""

    @property
    def close_reason(self) -> str | None:
        """Why the connection closed for good, once :attr:`state` is CLOSED."""
        return self._close_reason

    @property
    def last_error(self) -> str | None:
        """The most recent connection loss or failed attempt, for diagnostics."""
        return self._last_error

    @property
    def peer_address(self) -> tuple[str, int] | None:
        link = self._link
        return link.peer.address if link is not None else None

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until the connection is READY; raise ConnectError if it closes."""
        async with asyncio.timeout(timeout):
            while self._conn_state is not ConnState.READY:
                if self._conn_state is ConnState.CLOSED:
                    raise ConnectError(f"connection to {self.target} closed: {self._close_reason}")
                self._changed.clear()
                await self._changed.wait()

    async def ping(self) -> float:
        """Round-trip time to the server over the control stream, in seconds."""
        link = self._require_link()
        return await link.ping()

    async def close(self, grace: float | None = None) -> None:  # type: ignore[override]
        """Close the connection and stop reconnecting.

        With ``grace`` (seconds), drain first: no new calls either way, the
        server is told we are going away, and calls in flight may finish within
        ``grace``. Without it, calls in flight fail at once.
        """
        if self._conn_state is ConnState.CLOSED and self._link is None:
            return
        self._set_state(ConnState.CLOSED)
        if self._close_reason is None:
            self._close_reason = "closed by the client"
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
            self._supervisor = None
        link = self._link
        if link is not None and link.closed is None:
            if grace is not None and grace > 0:
                await self._drain(link, grace)
            link.close(CloseCode.NO_ERROR, "client closed the connection")
        self.close_lanes()
        self._closed_event.set()

    async def wait_closed(self) -> None:
        """Wait until :meth:`close` finished or the connection failed for good."""
        await self._closed_event.wait()

    async def __aenter__(self) -> ClientConn:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<ClientConn {self.target} {self._conn_state.value} id={self.connection_id or '-'}>"

    # -- LinkChannel ---------------------------------------------------------------

    async def open_lane(self, protocol: asyncio.Protocol) -> None:
        link = self._link
        while link is None or link.closed is not None or link.draining or link.peer_going_away:
            if self._conn_state is ConnState.CLOSED:
                raise GRPCError(
                    Status.UNAVAILABLE,
                    f"connection to {self.target} is closed: {self._close_reason}",
                )
            if not self._options.wait_for_ready:
                raise GRPCError(
                    Status.UNAVAILABLE,
                    f"not connected to {self.target} ({self._conn_state.value}; last error: "
                    f"{self._last_error})",
                )
            self._changed.clear()
            await self._changed.wait()
            link = self._link
        link.open_lane(protocol)

    def loss_reason(self) -> str:
        link = self._link
        if link is not None and link.closed is not None:
            return link.loss_reason()
        return f"connection to {self.target} lost: {self._last_error}"

    def is_lost(self) -> bool:
        link = self._link
        return link is None or link.closed is not None

    # -- connecting ------------------------------------------------------------------

    async def _start(self) -> ClientConn:
        try:
            link = await self._connect_once()
        except BaseException:
            self._set_state(ConnState.CLOSED)
            self._closed_event.set()
            raise
        self._adopt(link)
        return self

    def _require_link(self) -> Link:
        link = self._link
        if link is None or link.closed is not None:
            raise ConnectError(f"not connected to {self.target} ({self._conn_state.value})")
        return link

    def _closed_for_good(self) -> bool:
        return self._conn_state is ConnState.CLOSED

    def _set_state(self, state: ConnState) -> None:
        if self._conn_state is not state and self._conn_state is not ConnState.CLOSED:
            log.debug("%s: %s -> %s", self.target, self._conn_state.value, state.value)
            self._conn_state = state
        self._changed.set()

    def _adopt(self, link: Link) -> None:
        self._link = link
        self.connections_made += 1
        link.handle = self
        link.on_go_away = lambda go_away: self._on_go_away(link, go_away)
        link.add_close_callback(self._link_closed)
        self._set_state(ConnState.READY)

    def _link_closed(self, link: Link) -> None:
        if link is not self._link:
            return
        assert link.closed is not None
        self._last_error = link.closed.describe()
        if self._conn_state is ConnState.CLOSED:
            return
        if link.closed.error_code == CloseCode.REFUSED and not link.closed.transport_error:
            code = link.closed.reason.partition(":")[0]
            if code in _PERMANENT_REFUSALS:
                self._give_up(f"server refused the connection: {link.closed.reason}")
                return
        self._reconnect_later()

    def _on_go_away(self, link: Link, go_away: pb.GoAway) -> None:
        """The server is draining: finish calls on ``link``, move new ones to a new link."""
        link.peer_going_away = True
        if link is self._link and self._conn_state is not ConnState.CLOSED:
            self._last_error = f"server is going away: {go_away.reason}"
            self._reconnect_later()

    def _reconnect_later(self) -> None:
        if self._options.reconnect is None:
            self._give_up(f"connection lost and reconnect is off: {self._last_error}")
            return
        self._set_state(ConnState.RECONNECTING)
        if self._supervisor is None or self._supervisor.done():
            self._supervisor = asyncio.get_running_loop().create_task(
                self._reconnect(), name=f"brpc reconnect {self.target}"
            )

    def _give_up(self, reason: str) -> None:
        log.warning("%s: %s", self.target, reason)
        self._close_reason = reason
        self._set_state(ConnState.CLOSED)
        self.close_lanes()
        self._closed_event.set()

    async def _reconnect(self) -> None:
        policy = self._options.reconnect
        assert policy is not None
        attempt = 0
        while self._conn_state is not ConnState.CLOSED:
            await asyncio.sleep(policy.delay(attempt, self._rng))
            attempt += 1
            try:
                link = await self._connect_once()
            except RefusedError as exc:
                self._last_error = str(exc)
                if exc.code in _PERMANENT_REFUSALS:
                    self._give_up(str(exc))
                    return
            except (ConnectError, OSError) as exc:
                self._last_error = str(exc)
            else:
                if self._closed_for_good():
                    link.close(CloseCode.NO_ERROR, "client closed the connection")
                    return
                self._adopt(link)
                log.info("%s: reconnected (connection %s)", self.target, link.connection_id)
                return
            if policy.max_attempts is not None and attempt >= policy.max_attempts:
                self._give_up(f"gave up after {attempt} attempts: {self._last_error}")
                return
            log.info("%s: reconnect attempt %d failed: %s", self.target, attempt, self._last_error)

    async def _drain(self, link: Link, grace: float) -> None:
        link.draining = True
        link.send_go_away("client is closing", grace)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await link.wait_idle()
                await self._pool.wait_idle()

    async def _connect_once(self) -> Link:
        options = self._options
        try:
            async with asyncio.timeout(options.timeout):
                return await self._handshake_and_hello()
        except TimeoutError:
            raise ConnectError(
                f"could not connect to {options.target} within {options.timeout} s: no "
                "answer to the QUIC handshake or the hello (is a brpc server listening on "
                "that UDP port?)"
            ) from None

    async def _handshake_and_hello(self) -> Link:
        options = self._options
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(options.host, options.port, type=socket.SOCK_DGRAM)
        except socket.gaierror as exc:
            raise ConnectError(f"could not resolve {options.host!r}: {exc}") from exc
        family, _, proto, _, address = infos[0]
        sock = socket.socket(family, socket.SOCK_DGRAM, proto)
        try:
            sock.setblocking(False)
            sock.connect(address)
        except OSError as exc:
            sock.close()
            raise ConnectError(f"could not reach {options.target}: {exc}") from exc

        configuration = client_configuration(
            server_name=options.server_name,
            ca=options.ca,
            certfile=options.certfile,
            keyfile=options.keyfile,
            idle_timeout=options.dead_peer_timeout,
            max_datagram_size=options.max_datagram_size,
        )
        quic = QuicConnection(configuration=configuration)
        _aioquic.set_peer_bidi_stream_limit(quic, _MAX_SERVER_STREAMS)
        attempt = _Attempt(self)
        session_options = SessionOptions(
            keepalive_interval=options.keepalive_interval,
            handshake_timeout=None,
            alpn=ALPN,
            network_conditions=options.network_conditions,
        )
        _, session = await loop.create_datagram_endpoint(
            lambda: QuicSession(
                quic, handler=attempt, options=session_options, owns_transport=True
            ),
            sock=sock,
        )
        try:
            return await self._hello(session, attempt, address)
        except BaseException:
            session.abort()
            raise

    async def _hello(self, session: QuicSession, attempt: _Attempt, address: Any) -> Link:
        options = self._options
        session.connect(address)
        try:
            await attempt.handshake
        except ConnectionError:
            closed = attempt.closed
            assert closed is not None
            message = describe_handshake_failure(
                closed, target=options.target, server_name=options.server_name
            )
            if is_tls_failure(closed):
                raise HandshakeError(message) from None
            raise ConnectError(message) from None
        control = ControlProtocol(
            max_message_size=_CONTROL_MESSAGE_LIMIT,
            on_message=attempt.control_message,
            on_violation=attempt.control_violation,
            on_closed=attempt.control_closed,
        )
        session.open_stream(control)
        control.send(
            pb.Envelope(
                client_hello=pb.ClientHello(
                    protocol_version=PROTOCOL_VERSION,
                    name=options.name,
                    labels=dict(options.labels),
                    services=self._served_services(),
                    token=options.token,
                )
            )
        )
        try:
            reply = await attempt.reply
        except ProtocolViolation as exc:
            session.close(CloseCode.PROTOCOL_VIOLATION, str(exc))
            raise ConnectError(f"server {options.target} broke the protocol: {exc}") from None
        except ConnectionError:
            assert attempt.closed is not None
            raise self._closed_during_hello(attempt.closed) from None
        kind = reply.WhichOneof("message")
        if kind == "refusal":
            code = pb.Refusal.Code.Name(reply.refusal.code)
            raise RefusedError(
                f"server {options.target} refused the connection ({code}): {reply.refusal.reason}",
                code=code,
                reason=reply.refusal.reason,
            )
        if kind != "server_hello" or not reply.server_hello.connection_id:
            reason = f"expected a ServerHello, got {kind or 'an empty message'}"
            session.close(CloseCode.PROTOCOL_VIOLATION, reason)
            raise ConnectError(f"server {options.target} broke the protocol: {reason}")
        hello = reply.server_hello
        link = Link(
            session,
            control,
            connection_id=hello.connection_id,
            peer=PeerInfo(address=session.get_extra_info("peername")),
            serving=self._serving,
            settings=LinkSettings(
                lanes=options.lanes,
                max_message_size=options.max_message_size,
                max_concurrent_calls=options.max_concurrent_calls,
            ),
            describe=f"server {options.target}",
        )
        attempt.link = link
        if attempt.closed is not None:
            link.session_closed(attempt.closed)
        return link

    def _closed_during_hello(self, closed: SessionClosed) -> ConnectError:
        target = self._options.target
        if closed.error_code == CloseCode.REFUSED and not closed.transport_error:
            code, _, reason = closed.reason.partition(": ")
            return RefusedError(
                f"server {target} refused the connection ({code}): {reason}",
                code=code,
                reason=reason,
            )
        return ConnectError(f"connection to {target} failed during the hello: {closed.describe()}")

    def _served_services(self) -> list[str]:
        names: dict[str, None] = {}
        for servable in self._options.services:
            for method in servable.__mapping__():
                names[method.split("/")[1]] = None
        return list(names)


class _Dial:
    """What :func:`dial` returns: await it, or use it with ``async with``."""

    def __init__(self, make: Callable[[], ClientConn]) -> None:
        self._make = make
        self._conn: ClientConn | None = None

    def __await__(self) -> Generator[Any, None, ClientConn]:
        return self._open().__await__()

    async def _open(self) -> ClientConn:
        return await self._make()._start()

    async def __aenter__(self) -> ClientConn:
        self._conn = await self._open()
        return self._conn

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        if self._conn is not None:
            await self._conn.close()


def dial(
    target: str,
    *,
    services: Iterable[IServable] = (),
    ca: str | os.PathLike[str] | None = None,
    certfile: str | os.PathLike[str] | None = None,
    keyfile: str | os.PathLike[str] | None = None,
    server_name: str | None = None,
    name: str | None = None,
    labels: Mapping[str, str] | None = None,
    token: str | None = None,
    timeout: float = 10.0,
    reconnect: bool | ReconnectPolicy = True,
    wait_for_ready: bool = False,
    lanes: int = 1,
    max_message_size: int = 4 << 20,
    max_concurrent_calls: int = 1000,
    keepalive_interval: float | None = 5.0,
    dead_peer_timeout: float = 15.0,
    max_datagram_size: int = 1200,
    network_conditions: NetworkConditions | None = None,
) -> _Dial:
    """Connect to the brpc server at ``target`` (``host:port``).

    Use as ``conn = await dial(...)`` or ``async with dial(...) as conn:``. The
    server's certificate is verified against ``ca`` (a PEM file; the system's
    trust store when omitted) for ``server_name`` (default: the target's host).
    ``services`` are grpclib service implementations the server may call.
    ``name``, ``labels`` and ``token`` go to the server in the hello.

    Raises :class:`HandshakeError` when TLS fails (with the reason, e.g. which
    host name did not verify), :class:`RefusedError` when the server refuses the
    hello and :class:`ConnectError` for anything else, within ``timeout``.
    """
    host, port = parse_target(target)
    if max_message_size < 1:
        raise ValueError("max_message_size must be positive")
    if dead_peer_timeout <= 0:
        raise ValueError("dead_peer_timeout must be positive")
    if keepalive_interval is not None and not 0 < keepalive_interval < dead_peer_timeout:
        raise ValueError("keepalive_interval must be positive and below dead_peer_timeout")
    policy: ReconnectPolicy | None
    if reconnect is True:
        policy = ReconnectPolicy()
    elif reconnect is False:
        policy = None
    else:
        policy = reconnect
    options = _DialOptions(
        target=format_target(host, port),
        host=host,
        port=port,
        server_name=server_name or host,
        services=tuple(services),
        ca=ca,
        certfile=certfile,
        keyfile=keyfile,
        name=name or "",
        labels=dict(labels or {}),
        token=token or "",
        timeout=timeout,
        reconnect=policy,
        wait_for_ready=wait_for_ready,
        lanes=lanes,
        max_message_size=max_message_size,
        max_concurrent_calls=max_concurrent_calls,
        keepalive_interval=keepalive_interval,
        dead_peer_timeout=dead_peer_timeout,
        max_datagram_size=max_datagram_size,
        network_conditions=network_conditions,
    )
    return _Dial(lambda: ClientConn(options))

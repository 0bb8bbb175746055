"""The dialing side: :func:`dial` and :class:`ClientConn`.

A :class:`ClientConn` is one logical connection to a brpc server. It is a
grpclib ``Channel``, so generated stubs take it directly (``GreeterStub(conn)``),
and it serves ``services`` to the server over the same QUIC connection.

Under it runs one QUIC connection at a time (a :class:`Link`, made by
:func:`brpc._core.connect.connect_link`). When that connection is lost, or the
server says it is going away, the ClientConn reconnects with exponential backoff
and full jitter (unless told not to), with a fresh hello each time, and serves
its services again. Calls in flight on a lost connection fail with UNAVAILABLE;
calls made while reconnecting fail fast with UNAVAILABLE or, with
``wait_for_ready=True``, wait for the new connection within their deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import logging
import os
import random
import weakref
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

from grpclib.exceptions import GRPCError

from ._calls._grpclib import ClientStream, EventDispatch, MetadataLike, opening_deadline
from ._calls.base import CallConnection, Caller, CallLayer
from ._calls.channel import CallChannel
from ._calls.lanes.layer import LanesCallLayer
from ._calls.serving import Serving, served_extras, service_names
from ._calls.streams.layer import StreamsCallLayer
from ._core.connect import HelloSettings, connect_link
from ._core.control_stream import ControlProtocol
from ._core.link import Link, PeerInfo
from ._security.keyproof import ClientKeyProof
from ._security.tickets import TicketBox
from ._session.base import Session, SessionHandler
from ._session.quic.dial import dial_quic
from ._session.quic.engine import resolve_engine
from ._session.quic.options import DEFAULT_QUIC_OPTIONS, QuicOptions
from ._session.quic.tls import client_configuration
from ._wire.calllayer import LANES, CallLayerMismatch, accepted_call_layer, call_layer_list
from ._wire.target import format_target, parse_target
from .errors import (
    CallNotStartedError,
    CloseCode,
    ConnectError,
    ProtocolViolation,
    RefusedError,
)
from .options import DEFAULT_OPTIONS, Options, peer_stream_limit

if TYPE_CHECKING:
    from grpclib.const import Cardinality
    from grpclib.metadata import Deadline

    from ._calls._grpclib import RecvType, SendType
    from ._calls.base import Servable
    from ._session.quic.engine import Engine
    from ._session.quic.impair import NetworkConditions
    from .auth import Authorizer
    from .v1 import control_pb2 as pb

__all__ = ["ClientConn", "ConnState", "ReconnectPolicy", "dial"]

log = logging.getLogger(__name__)

_D = DEFAULT_OPTIONS
_Q = DEFAULT_QUIC_OPTIONS


class ConnState(enum.Enum):
    """Where a :class:`ClientConn` is in its life."""

    #: The first connection is being made.
    CONNECTING = "connecting"
    #: Connected; calls go out at once.
    READY = "ready"
    #: The connection was lost or is going away; a new one is being made.
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
    #: Give up (state CLOSED) after this many failed attempts in a row; None: never.
    max_attempts: int | None = None

    def __post_init__(self) -> None:
        if self.initial_delay <= 0 or self.max_delay < self.initial_delay:
            raise ValueError("need 0 < initial_delay <= max_delay")
        if self.multiplier < 1:
            raise ValueError("multiplier must be at least 1")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1 (or None)")

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        ceiling = min(self.max_delay, self.initial_delay * self.multiplier ** min(attempt, 64))
        return (rng or random).uniform(0, ceiling)


@dataclass(frozen=True)
class _DialOptions:
    target: str
    host: str
    port: int
    server_name: str
    ca: str | os.PathLike[str] | None
    certfile: str | os.PathLike[str] | None
    keyfile: str | os.PathLike[str] | None
    insecure: bool
    hello: HelloSettings
    options: Options
    quic: QuicOptions
    engine: Engine
    services: tuple[Any, ...]
    timeout: float
    reconnect: ReconnectPolicy | None
    wait_for_ready: bool
    session_resumption: bool
    authorize: Authorizer | None


class _ConnTarget:
    """Where a ClientConn's calls of one call layer go: its current connection, or the next.

    It belongs to its ClientConn and refers to it weakly, so that a closed
    ClientConn nobody refers to any more is freed by reference counting (with
    its last connection), not by a garbage collection. A ClientConn that is not
    closed is kept alive by its connection (or its reconnecting task).
    """

    def __init__(self, conn: ClientConn, layer: str, target: str) -> None:
        self._conn = weakref.ref(conn)
        self._target = target
        self._layer = layer

    async def acquire(self) -> CallConnection:
        conn = self._conn()
        if conn is None:
            raise CallNotStartedError(f"connection to {self._target} is closed")
        link = await conn.usable_link()
        if link.layer.name != self._layer:
            raise CallNotStartedError(
                f"the connection to {self._target} now uses the {link.layer.name!r} call "
                f"layer, not {self._layer!r}; retry the call",
            )
        return link

    def loss_reason(self) -> str:
        conn = self._conn()
        if conn is None:
            return f"connection to {self._target} is closed"
        return conn.loss_reason()


class _LinkLayerCaller:
    """One caller per call layer; each call goes through the current connection's.

    A layer's caller is made on its first call (the layer not negotiated makes
    none: a lanes caller is a pool of grpclib channels). Refers to its
    ClientConn weakly, as :class:`_ConnTarget` does (it is only used through
    the ClientConn).
    """

    def __init__(
        self,
        conn: ClientConn,
        layers: Mapping[str, CallLayer],
        *,
        target: str,
        dispatch: EventDispatch,
        preferred: str,
    ) -> None:
        self._conn = weakref.ref(conn)
        self._layers = layers
        self._target = target
        self._dispatch = dispatch
        self._callers: dict[str, Caller] = {}
        self._preferred = preferred

    def request(
        self,
        name: str,
        cardinality: Cardinality,
        request_type: type[SendType],
        reply_type: type[RecvType],
        *,
        deadline: Deadline | None,
        metadata: MetadataLike | None,
    ) -> ClientStream[SendType, RecvType]:
        conn = self._conn()
        layer = (conn.call_layer if conn is not None else "") or self._preferred
        caller = self._callers.get(layer)
        if caller is None:
            if conn is None:
                raise CallNotStartedError(f"connection to {self._target} is closed")
            caller = self._callers[layer] = self._layers[layer].caller(
                _ConnTarget(conn, layer, self._target),
                authority=self._target,
                dispatch=self._dispatch,
            )
        return caller.request(
            name, cardinality, request_type, reply_type, deadline=deadline, metadata=metadata
        )

    def close(self) -> None:
        for caller in self._callers.values():
            caller.close()


class ClientConn(CallChannel):
    """A connection to a brpc server; pass it to any grpclib stub.

    Made by :func:`dial`. See :attr:`state` for where it is and
    :meth:`wait_ready` to wait for a connection.
    """

    def __init__(self, options: _DialOptions) -> None:
        dispatch = EventDispatch()
        name = options.hello.name
        self._serving = Serving(
            options.services,
            max_message_size=options.options.max_message_size,
            dispatch=dispatch,
            side=f"the client {name!r}" if name else "the client",
        )
        self._layers: dict[str, CallLayer] = {}
        for layer_name in options.options.call_layers:
            if layer_name == LANES:
                self._layers[layer_name] = LanesCallLayer(
                    self._serving,
                    lanes=options.options.lanes,
                    max_concurrent_calls=options.options.max_concurrent_calls,
                )
            else:
                self._layers[layer_name] = StreamsCallLayer(self._serving)
        super().__init__(
            options.target,
            dispatch=dispatch,
            caller=_LinkLayerCaller(
                self,
                self._layers,
                target=options.target,
                dispatch=dispatch,
                preferred=options.options.call_layers[0],
            ),
        )
        self._options = options
        self._conn_state = ConnState.CONNECTING
        self._changed = asyncio.Event()
        self._link: Link | None = None
        self._closed_event = asyncio.Event()
        self._close_reason: str | None = None
        self._last_error: str | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._closing: asyncio.Task[None] | None = None
        self._rng = random.Random()
        self._tickets: TicketBox[Any] | None = TicketBox() if options.session_resumption else None
        #: The resume secret the server gave the current link, and the link.
        self._resume_secret = b""
        self._hello_secret: tuple[Link, bytes] | None = None
        #: Successful connections made so far (1 after dial, more after reconnects).
        self.connections_made = 0

    # -- public ------------------------------------------------------------------

    @property
    def target(self) -> str:
        return self._options.target

    @property
    def name(self) -> str:
        """The name this client says in its hello ("" when it gave none)."""
        return self._options.hello.name

    @property
    def state(self) -> ConnState:
        return self._conn_state

    @property
    def connection_id(self) -> str:
        """ID the server gave the current connection ("" while disconnected)."""
        link = self._link
        return link.connection_id if link is not None and link.closed is None else ""

    @property
    def call_layer(self) -> str:
        """The call layer the current connection negotiated ("" while disconnected)."""
        link = self._link
        return link.layer.name if link is not None else ""

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
        return link.address if link is not None else None

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until :attr:`state` is READY; raise ConnectError if it becomes CLOSED."""
        async with asyncio.timeout(timeout):
            while self._conn_state is not ConnState.READY:
                if self._conn_state is ConnState.CLOSED:
                    raise ConnectError(f"connection to {self.target} closed: {self._close_reason}")
                self._changed.clear()
                await self._changed.wait()

    async def ping(self) -> float:
        """Round-trip time to the server over the control stream, in seconds."""
        link = self._link
        if link is None or link.closed is not None:
            raise ConnectError(f"not connected to {self.target} ({self._conn_state.value})")
        return await link.ping()

    def transport_stats(self) -> list[dict[str, int]]:
        """Byte counters of the current connection's streams (see ``Link.transport_stats``)."""
        link = self._link
        return link.session.transport_stats() if link is not None else []

    def close(self, grace: float | None = None) -> asyncio.Task[None]:  # type: ignore[override]
        """Close the connection and stop reconnecting.

        Works called the grpclib way (``conn.close()``, a plain method) and
        awaited (``await conn.close()`` waits until it is closed). With
        ``grace`` (seconds), drain first: no new calls either way, the server
        is told the client is going away, and calls in flight in both
        directions may finish within ``grace``. Without it, calls in flight fail
        at once with UNAVAILABLE.
        """
        if self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(
                self._close(grace), name=f"brpc close {self.target}"
            )
        return self._closing

    async def _close(self, grace: float | None) -> None:
        if self._closed_event.is_set():
            return
        self._close_reason = self._close_reason or "closed by the client"
        self._set_state(ConnState.CLOSED)
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
            self._supervisor = None
        link = self._link
        if link is not None and link.closed is None:
            if grace is not None and grace > 0:
                await link.drain(grace, "client is closing")
            link.close(CloseCode.NO_ERROR, "client closed the connection")
        super().close()
        self._closed_event.set()

    async def wait_closed(self) -> None:
        """Wait until the connection is closed for good."""
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
        state = self._conn_state.value
        return f"<ClientConn {self.target} {state} id={self.connection_id or '-'}>"

    # -- where calls go -----------------------------------------------------------

    async def usable_link(self) -> Link:
        """The link a new call may use now, waiting for one if ``wait_for_ready``."""
        link = self._link
        if link is None or not link.usable:
            link = await self._wait_usable_link()
        return link

    def loss_reason(self) -> str:
        """Why calls failed, for their UNAVAILABLE status."""
        link = self._link
        if link is not None and link.closed is not None:
            return link.loss_reason()
        return f"connection to {self.target} lost: {self._last_error}"

    # -- connection lifecycle -------------------------------------------------------------

    async def _start(self) -> ClientConn:
        try:
            link = await self._connect()
        except BaseException:
            self._set_state(ConnState.CLOSED)
            self._closed_event.set()
            raise
        self._adopt(link)
        return self

    async def _connect(self) -> Link:
        options = self._options
        hello = options.hello
        previous = self._link
        if previous is not None and previous.closed is not None and self._resume_secret:
            # The server may not know yet that our last connection is gone:
            # its secret lets it drop that one now, not at its dead-peer timeout.
            hello = dataclasses.replace(hello, replaces=self._resume_secret)
        return await connect_link(
            self._dial_session, hello, make_link=self._make_link, timeout=options.timeout
        )

    async def _dial_session(self, handler: SessionHandler) -> Session:
        o = self._options
        return await dial_quic(
            host=o.host,
            port=o.port,
            target=o.target,
            server_name=o.server_name,
            configuration=client_configuration(
                engine=o.engine,
                server_name=o.server_name,
                ca=o.ca,
                certfile=o.certfile,
                keyfile=o.keyfile,
                idle_timeout=o.options.dead_peer_timeout,
                max_datagram_size=o.quic.max_datagram_size,
                insecure=o.insecure,
            ),
            handler=handler,
            options=o.options,
            engine=o.engine,
            quic_options=o.quic,
            peer_stream_limit=peer_stream_limit(o.options),
            tickets=self._tickets,
        )

    def _make_link(self, session: Session, control: ControlProtocol, hello: pb.ServerHello) -> Link:
        link = self._new_link(session, control, hello)
        self._hello_secret = (link, hello.resume_secret)
        return link

    def _new_link(self, session: Session, control: ControlProtocol, hello: pb.ServerHello) -> Link:
        try:
            layer = accepted_call_layer(hello.call_layer, self._options.options.call_layers)
        except CallLayerMismatch as exc:
            raise ProtocolViolation(str(exc)) from None
        return Link(
            session,
            control,
            connection_id=hello.connection_id,
            peer=PeerInfo(),
            layer=self._layers[layer],
            options=self._options.options,
            describe=f"server {self.target}",
            make_handle=lambda _: self,
            authorize=self._options.authorize,
            on_go_away=self._on_go_away,
        )

    async def _wait_usable_link(self) -> Link:
        """The link a new call may use, waiting for one if ``wait_for_ready``."""
        if not self._options.wait_for_ready or self._conn_state is ConnState.CLOSED:
            raise self._not_connected()
        deadline = opening_deadline.get()
        # With a deadline, the call's own deadline handling cancels the wait;
        # without one, the dial timeout bounds it so that no call hangs forever.
        limit = None if deadline is not None else self._options.timeout
        try:
            async with asyncio.timeout(limit):
                while (link := self._link) is None or not link.usable:
                    if self._closed_for_good():
                        raise self._not_connected()
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            if deadline is not None:
                raise
            raise self._not_connected(f" within {limit} s") from None
        return link

    def _not_connected(self, waited: str = "") -> GRPCError:
        # The call never left: nothing ran, whatever the method.
        if self._conn_state is ConnState.CLOSED:
            return CallNotStartedError(
                f"connection to {self.target} is closed: {self._close_reason}"
            )
        return CallNotStartedError(
            f"not connected to {self.target}{waited} ({self._conn_state.value}; "
            f"last error: {self._last_error})",
        )

    def _closed_for_good(self) -> bool:
        return self._conn_state is ConnState.CLOSED

    def _set_state(self, state: ConnState) -> None:
        if self._conn_state is not state and self._conn_state is not ConnState.CLOSED:
            log.debug("%s: %s -> %s", self.target, self._conn_state.value, state.value)
            self._conn_state = state
        self._changed.set()

    def _adopt(self, link: Link) -> None:
        self._link = link
        made = self._hello_secret
        self._resume_secret = made[1] if made is not None and made[0] is link else b""
        self._hello_secret = None
        self.connections_made += 1
        link.add_close_callback(self._link_closed)
        self._set_state(ConnState.READY)

    def _link_closed(self, link: Link) -> None:
        if link is not self._link or self._conn_state is ConnState.CLOSED:
            return
        closed = link.closed
        assert closed is not None
        self._last_error = closed.describe()
        if not closed.transport_error:
            refusal = closed.refusal
            if refusal is not None and refusal.permanent:
                self._give_up(f"server refused the connection: {refusal}")
                return
            if closed.error_code == CloseCode.REPLACED and self._conn_state is ConnState.READY:
                # Reconnecting would replace the replacement, and so on forever.
                self._give_up(closed.describe())
                return
        self._reconnect_soon()

    def _on_go_away(self, link: Link, go_away: pb.GoAway) -> None:
        """The server is draining: calls in flight finish, new ones use a new connection."""
        if link is self._link and self._conn_state is not ConnState.CLOSED:
            self._last_error = f"server is going away: {go_away.reason}"
            self._reconnect_soon()

    def _reconnect_soon(self) -> None:
        if self._options.reconnect is None:
            self._give_up(f"connection lost and reconnect is off: {self._last_error}")
            return
        self._set_state(ConnState.RECONNECTING)
        if self._supervisor is None or self._supervisor.done():
            self._supervisor = asyncio.get_running_loop().create_task(
                self._reconnect(self._options.reconnect), name=f"brpc reconnect {self.target}"
            )

    def _give_up(self, reason: str) -> None:
        log.warning("%s: %s", self.target, reason)
        self._close_reason = reason
        self._set_state(ConnState.CLOSED)
        super().close()
        self._closed_event.set()

    async def _reconnect(self, policy: ReconnectPolicy) -> None:
        failures = 0
        while True:
            await asyncio.sleep(policy.delay(failures, self._rng))
            try:
                link = await self._connect()
            except RefusedError as exc:
                self._last_error = str(exc)
                if exc.permanent:
                    self._give_up(str(exc))
                    return
            except (ConnectError, OSError) as exc:
                self._last_error = str(exc)
            else:
                self._adopt(link)
                log.info("%s: reconnected (connection %s)", self.target, link.connection_id)
                return
            failures += 1
            if policy.max_attempts is not None and failures >= policy.max_attempts:
                self._give_up(f"gave up after {failures} attempts: {self._last_error}")
                return
            log.info("%s: reconnect attempt %d failed: %s", self.target, failures, self._last_error)


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


def _key_proof(
    certfile: str | os.PathLike[str] | None, keyfile: str | os.PathLike[str] | None
) -> ClientKeyProof | None:
    """The client certificate and key for servers that verify it above TLS (qh3 servers).
    Missing files are reported when the TLS configuration is made."""
    if certfile is None or not os.path.isfile(certfile):
        return None
    if keyfile is not None and not os.path.isfile(keyfile):
        return None
    try:
        return ClientKeyProof.load(certfile, keyfile)
    except ValueError as exc:
        if keyfile is None:
            raise ValueError(
                f"no private key for the certificate in {os.fspath(certfile)!r}: pass "
                "keyfile=... (the PEM file of the certificate's private key)"
            ) from exc
        raise


def dial(
    target: str,
    *,
    services: Iterable[Servable] = (),
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
    call_layer: str | Sequence[str] = _D.call_layers,
    lanes: int = _D.lanes,
    max_message_size: int = _D.max_message_size,
    max_concurrent_calls: int = _D.max_concurrent_calls,
    keepalive_interval: float | None = _D.keepalive_interval,
    dead_peer_timeout: float = _D.dead_peer_timeout,
    max_datagram_size: int = _Q.max_datagram_size,
    insecure: bool = False,
    authorize: Authorizer | None = None,
    session_resumption: bool = False,
    network_conditions: NetworkConditions | None = None,
    read_batch: int = _Q.read_batch,
    engine: str = _Q.engine,
    reflection: bool = False,
    health: bool = False,
) -> _Dial:
    """Connect to the brpc server at ``target`` (``host:port``).

    Use as ``conn = await dial(...)`` or ``async with dial(...) as conn:``.

    - ``services``: grpclib service implementations the server may call.
    - ``ca``: PEM file of the CA that signed the server's certificate (the
      system's trust store when omitted); the certificate is verified for
      ``server_name`` (default: the target's host). ``certfile``/``keyfile``:
      the client's own certificate, for servers that require mutual TLS.
    - ``name``, ``labels``, ``token``: sent to the server in the hello.
    - ``timeout``: bound on making a connection (handshake and hello).
    - ``reconnect``: reconnect after a loss (default, with
      :class:`ReconnectPolicy` defaults), a policy, or False.
    - ``wait_for_ready``: calls made while reconnecting wait for the new
      connection within their deadline (or ``timeout`` if they have none)
      instead of failing at once with UNAVAILABLE.
    - ``call_layer``: how calls are carried, offered to the server in the hello:
      ``"streams"`` (one QUIC stream per call), ``"lanes"`` (HTTP/2 inside QUIC
      streams, what older servers speak), or several in order of preference
      (default: streams, then lanes).
    - ``lanes``: HTTP/2 lanes (QUIC streams) for this side's calls (lanes layer).
    - ``max_message_size``: largest message sent or received, in bytes.
    - ``max_concurrent_calls``: calls from the server handled at once.
    - ``keepalive_interval``/``dead_peer_timeout``: ping every so many seconds;
      declare the server dead after that long without a packet.
    - ``max_datagram_size``: QUIC datagram payload size (1200 is safe on any path).
    - ``insecure``: do not verify the server's certificate. For experiments
      only: anyone on the path can impersonate the server. Logs a warning.
    - ``authorize``: ``authorize(conn, method) -> bool`` (or a coroutine), asked
      before each call from the server runs; False means PERMISSION_DENIED.
    - ``session_resumption``: resume the TLS session on reconnects when the
      server issues tickets (``Server(session_tickets=True)``). Off by default;
      brpc never sends or accepts 0-RTT data either way.
    - ``network_conditions``: simulated loss/reordering, for tests.
    - ``read_batch``: datagrams read per wake-up before one transmit (1: one
      at a time; with UDP GRO, whole coalesced buffers until at least that
      many); see the README's "Performance" section.
    - ``engine``: the QUIC engine, ``"auto"`` (aioquic, or ``BRPC_ENGINE``), ``"aioquic"``
      or ``"qh3"`` (``pip install 'brpc[fast]'``; see the README's "Engines").
    - ``reflection``: also serve gRPC server reflection of ``services`` (a
      server's relay fetches descriptors from it for its reflection front).
    - ``health``: also serve ``grpc.health.v1.Health``.

    Raises :class:`HandshakeError` when TLS fails (saying which host name did
    not verify, for example), :class:`RefusedError` when the server refuses the
    hello, :class:`ConnectError` for anything else.
    """
    host, port = parse_target(target)
    if timeout <= 0:
        raise ValueError("timeout must be a positive number of seconds")
    options = Options(
        lanes=lanes,
        call_layers=call_layer_list(call_layer),
        max_message_size=max_message_size,
        max_concurrent_calls=max_concurrent_calls,
        keepalive_interval=keepalive_interval,
        dead_peer_timeout=dead_peer_timeout,
    )
    quic_options = QuicOptions(
        max_datagram_size=max_datagram_size,
        read_batch=read_batch,
        network_conditions=network_conditions,
        engine=engine,
    )
    quic_engine = resolve_engine(engine, server=False)
    if insecure:
        log.warning(
            "dialing %s with insecure=True: the server's certificate is NOT verified; "
            "anyone on the path can impersonate the server",
            target,
        )
    policy: ReconnectPolicy | None
    if reconnect is True:
        policy = ReconnectPolicy()
    elif reconnect is False:
        policy = None
    else:
        policy = reconnect
    services = tuple(served_extras(tuple(services), reflection=reflection, health=health))
    formatted = format_target(host, port)
    dial_options = _DialOptions(
        target=formatted,
        host=host,
        port=port,
        server_name=server_name or host,
        ca=ca,
        certfile=certfile,
        keyfile=keyfile,
        insecure=insecure,
        hello=HelloSettings(
            target=formatted,
            name=name or "",
            labels=dict(labels or {}),
            token=token or "",
            services=service_names(services),
            pending_stream_limit=max_message_size + (64 << 10),
            call_layers=options.call_layers,
            key_proof=_key_proof(certfile, keyfile),
        ),
        options=options,
        quic=quic_options,
        engine=quic_engine,
        services=services,
        timeout=timeout,
        reconnect=policy,
        wait_for_ready=wait_for_ready,
        session_resumption=session_resumption,
        authorize=authorize,
    )
    return _Dial(lambda: ClientConn(dial_options))

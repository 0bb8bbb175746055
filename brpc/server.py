"""The accepting side: :class:`Server`.

A :class:`Server` listens on one UDP port. Each QUIC connection gets an
acceptor (:mod:`brpc._core.accept`) that runs the handshake and the hello;
the server admits the client (duplicate names, connection ID, its link and
:class:`~brpc.ClientInfo`) and keeps the table of connected clients. From
then on:

- calls the client makes are served by ``handlers``; inside
  a handler :meth:`Server.client_from_context` returns a stub bound to the
  calling client's own connection, found from the stream the call arrived on;
- the server calls the client's services through ``ClientInfo.stub`` (or
  ``ClientInfo.channel``), over the same connection;
- when the connection ends, calls in flight to that client fail with
  UNAVAILABLE and the client leaves the server's table of clients.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Collection, Iterator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, Literal, Protocol, TypeVar, cast

from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from ._calls._grpclib import EventDispatch
from ._calls.base import CallLayer, connection_of
from ._calls.front import FrontSettings, TcpFront, server_ssl_context
from ._calls.lanes.layer import LanesCallLayer
from ._calls.serving import Fallback, Serving, served_extras
from ._calls.streams.layer import StreamsCallLayer
from ._core.accept import Acceptor, AcceptSettings, Hello, Refused
from ._core.link import Link, PeerInfo
from ._security.tickets import TicketStore
from ._security.verify import ClientCertificateVerifier
from ._session.quic._limits import EngineLimitation
from ._session.quic.engine import resolve_engine
from ._session.quic.listen import DEFAULT_MAX_HALF_OPEN, DEFAULT_RETRY_THRESHOLD, QuicListener
from ._session.quic.options import DEFAULT_QUIC_OPTIONS, QuicOptions
from ._session.quic.tls import private_key_bytes, server_configuration
from ._wire.calllayer import LANES, CallLayerMismatch, call_layer_list, choose_call_layer
from ._wire.control import PROTOCOL_VERSION, RESUME_SECRET_LENGTH, HelloLimits
from ._wire.refusal import RefusalCode
from ._wire.target import format_target
from .auth import Authenticator, Authorizer, Identity
from .errors import CloseCode
from .fanout import CallResult, FanOut
from .membership import ClusterView
from .options import DEFAULT_OPTIONS, Options, peer_stream_limit
from .peer import ClientInfo, Closing
from .presence import Presence, PresenceCallback, Watch
from .registry import Clients, ClientTable, DuplicateNames, Selector
from .v1 import control_pb2 as pb

if TYPE_CHECKING:
    from ._calls.base import Servable
    from ._session.quic.impair import NetworkConditions


__all__ = ["ClientInfo", "ClusterHook", "RelayHook", "Server"]

log = logging.getLogger(__name__)

C = TypeVar("C")
T = TypeVar("T")

_D = DEFAULT_OPTIONS
_Q = DEFAULT_QUIC_OPTIONS


class RelayHook(Protocol):
    """What a server needs of a relay (``brpc.Relay`` is one)."""

    def attach(
        self, server: Server[Any], handlers: Sequence[Servable], *, reflection: bool
    ) -> tuple[Fallback, Sequence[Servable]]:
        """Bind to ``server``: the fallback answering methods ``handlers`` do not
        serve, and services to serve besides them (with ``reflection``, a
        reflection service that also lists the clients' services)."""
        ...


class ClusterHook(ClusterView[C], Protocol[C]):
    """A cluster membership (``brpc.Cluster`` is one): what the server needs of it, and
    what users reach through ``server.cluster`` (:class:`brpc.membership.ClusterView`)."""

    def attach(self, server: Server[C]) -> None:
        """Bind to ``server`` (it follows the clients through ``on_connect``/``on_disconnect``)."""
        ...

    async def start(self) -> None:
        """The server listens: join the cluster."""
        ...

    async def close(self) -> None:
        """The server closes: leave the cluster."""
        ...

    async def admit_name(
        self,
        name: str,
        connection_id: str,
        identity: Identity | None,
        *,
        replacing: str | None = None,
    ) -> str | None:
        """Claim ``name`` cluster-wide for a hello before it is answered.

        None admits the client (also when the directory cannot tell right now:
        the claim is then made once the client is registered); otherwise the
        reason to refuse it with ALREADY_EXISTS. ``replacing``: the connection
        this hello replaces (its resume secret matched), whose claim goes first.
        """
        ...

    async def withdraw_name(self, connection_id: str) -> None:
        """The hello :meth:`admit_name` claimed a name for was refused after all: release it."""
        ...


class Server(Generic[C]):
    """A brpc server: serves ``handlers`` and calls its clients' services.

    ``client_stub`` is the generated stub class of the service the clients
    serve (for example ``NamerStub``); :meth:`client_from_context` and
    :attr:`ClientInfo.stub` return instances of it bound to one client.

    :attr:`clients` lists the connected clients; :meth:`on_connect`,
    :meth:`on_disconnect` and :meth:`watch` report them coming and going;
    :meth:`call_all` calls many of them at once.

    ``duplicate_names`` decides what happens when a client says hello with
    the name of a client already connected (unnamed clients never conflict).
    The default, :attr:`DuplicateNames.REPLACE`, closes the older connection:
    a client with a name is normally one process, and a second hello with its
    name means it restarted or moved (new address after a NAT rebinding)
    while the server still holds the old connection, which would otherwise
    linger until the dead-peer timeout. REJECT would lock that client out for
    as long; ALLOW makes names ambiguous. When clients authenticate, only a
    client with the same identity may replace another (anyone else is refused
    with ALREADY_EXISTS), so a name cannot be used to disconnect someone else.
    Use REJECT when a name must never be taken over, ALLOW when names are not
    unique.

    ``call_layer`` names the call layers this server accepts (``"streams"``:
    one QUIC stream per call; ``"lanes"``: HTTP/2 inside QUIC streams, what
    older clients speak); each connection uses the first of its client's
    offers that is among them (default: both).

    ``relay`` (a :class:`brpc.Relay`) forwards calls to methods the server
    does not serve to connected clients (see :mod:`brpc.relay`).
    ``reflection`` serves gRPC server reflection (``grpc.reflection.v1`` and
    ``v1alpha``) of the server's services, and with a relay those of its
    clients too; ``health`` serves ``grpc.health.v1.Health``.
    :meth:`listen_tcp` adds a standard gRPC/TCP front.

    ``cluster`` (a :class:`brpc.Cluster`) makes the server a member of a
    cluster of servers (see :mod:`brpc.cluster.member`): :attr:`cluster` is that
    Cluster, ``server.cluster.clients`` lists the clients of every server and
    ``call_all(..., scope="cluster")`` calls them wherever they are. Names are
    claimed cluster-wide before the hello is answered, so a duplicate refused
    by the cluster's ``duplicate_names`` is refused like a local one.
    """

    def __init__(
        self,
        handlers: Collection[Servable],
        *,
        client_stub: Callable[[Channel], C] | None = None,
        certfile: str | os.PathLike[str],
        keyfile: str | os.PathLike[str] | None = None,
        call_layer: str | Sequence[str] = _D.call_layers,
        lanes: int = _D.lanes,
        max_message_size: int = _D.max_message_size,
        max_concurrent_calls: int = _D.max_concurrent_calls,
        max_connections: int = 10000,
        keepalive_interval: float | None = _D.keepalive_interval,
        dead_peer_timeout: float = _D.dead_peer_timeout,
        handshake_timeout: float = _D.handshake_timeout,
        hello_timeout: float = _D.hello_timeout,
        max_datagram_size: int = _Q.max_datagram_size,
        hello_limits: HelloLimits | None = None,
        client_ca: str | os.PathLike[str] | None = None,
        authenticate: Authenticator | None = None,
        authorize: Authorizer | None = None,
        session_tickets: bool = False,
        retry: bool | Literal["auto"] = "auto",
        retry_threshold: int = DEFAULT_RETRY_THRESHOLD,
        max_half_open: int = DEFAULT_MAX_HALF_OPEN,
        network_conditions: NetworkConditions | None = None,
        duplicate_names: DuplicateNames = DuplicateNames.REPLACE,
        read_batch: int = _Q.read_batch,
        engine: str = _Q.engine,
        relay: RelayHook | None = None,
        reflection: bool = False,
        health: bool = False,
        cluster: ClusterHook[C] | None = None,
    ) -> None:
        options = Options(
            lanes=lanes,
            call_layers=call_layer_list(call_layer),
            max_message_size=max_message_size,
            max_concurrent_calls=max_concurrent_calls,
            keepalive_interval=keepalive_interval,
            dead_peer_timeout=dead_peer_timeout,
            handshake_timeout=handshake_timeout,
            hello_timeout=hello_timeout,
        )
        quic_options = QuicOptions(
            max_datagram_size=max_datagram_size,
            read_batch=read_batch,
            network_conditions=network_conditions,
            engine=engine,
        )
        quic_engine = resolve_engine(engine, server=True)
        if session_tickets and not quic_engine.refuses_early_data:
            raise EngineLimitation(
                f"session_tickets cannot be used with engine={quic_engine.name!r}: its server "
                "accepts 0-RTT data and delivers it as if it came after the handshake, so a "
                "replayed hello could not be told apart; use engine='aioquic'"
            )
        if max_connections < 1:
            raise ValueError(f"max_connections must be positive, not {max_connections!r}")
        if session_tickets and client_ca is not None:
            raise ValueError(
                "session_tickets cannot be combined with client_ca: a resumed TLS handshake "
                "carries no client certificate to verify"
            )
        self.client_stub = client_stub
        self.options = options
        self.quic_options = quic_options
        self._authorize = authorize
        self._duplicate_names = DuplicateNames(duplicate_names)
        #: grpclib's event dispatcher: ``grpclib.events.listen(server, RecvRequest, cb)`` works.
        self.__dispatch__ = EventDispatch()
        served = served_extras(
            tuple(handlers), reflection=reflection and relay is None, health=health
        )
        fallback: Fallback | None = None
        if relay is not None:
            fallback, extra = relay.attach(self, served, reflection=reflection)
            served.extend(extra)
        self.relay = relay
        serving = Serving(
            served,
            max_message_size=max_message_size,
            dispatch=self.__dispatch__,
            fallback=fallback,
            side="the server",
        )
        self._serving = serving
        self._certfile = os.fspath(certfile)
        self._keyfile = os.fspath(keyfile) if keyfile is not None else None
        self._client_ca = os.fspath(client_ca) if client_ca is not None else None
        self._authenticate = authenticate
        self._front: TcpFront | None = None
        self._tcp_port: int | None = None
        self._layers: dict[str, CallLayer] = {}
        for name in options.call_layers:
            if name == LANES:
                self._layers[name] = LanesCallLayer(
                    serving, lanes=lanes, max_concurrent_calls=max_concurrent_calls
                )
            else:
                self._layers[name] = StreamsCallLayer(serving)
        self._accept_settings = AcceptSettings(
            hello_timeout=hello_timeout,
            hello_limits=hello_limits or HelloLimits(),
            verifier=ClientCertificateVerifier(client_ca) if client_ca is not None else None,
            authenticate=authenticate,
            certificate_proof=not quic_engine.tls_client_certificates,
        )
        tickets: TicketStore[Any] | None = TicketStore() if session_tickets else None
        self._listener = QuicListener(
            engine=quic_engine,
            configuration=server_configuration(
                engine=quic_engine,
                certfile=certfile,
                keyfile=keyfile,
                idle_timeout=dead_peer_timeout,
                max_datagram_size=max_datagram_size,
            ),
            options=options,
            quic_options=quic_options,
            accept=lambda: Acceptor(self._accept_settings, self),
            max_connections=max_connections,
            peer_stream_limit=peer_stream_limit(options),
            private_key=private_key_bytes(certfile, keyfile),
            request_client_certificate=client_ca is not None
            and quic_engine.tls_client_certificates,
            retry=retry,
            retry_threshold=retry_threshold,
            max_half_open=max_half_open,
            tickets=tickets,
        )
        self._started = False
        self._closing = False
        self._closed = asyncio.Event()
        self._links: dict[str, Link] = {}
        #: Live connections by the SHA-256 of their resume secret: (secret, link).
        self._resumable: dict[bytes, tuple[bytes, Link]] = {}
        #: Resume secrets of admitted links whose server hello is going out.
        self._admitted_secrets: dict[str, bytes] = {}
        self._clients: ClientTable[C] = ClientTable()
        self._presence: Presence[C] = Presence(self._clients, self._closed)
        self._drain_task: asyncio.Task[None] | None = None
        self._cluster = cluster
        self._cluster_closing: asyncio.Task[None] | None = None
        if cluster is not None:
            cluster.attach(self)

    # -- lifecycle -------------------------------------------------------------------

    async def start(self, host: str, port: int = 0, *, reuse_port: bool = False) -> None:
        """Listen on UDP ``host:port``; port 0 picks a free one (see :attr:`port`).

        ``reuse_port=True`` (SO_REUSEPORT) lets several worker processes listen
        on the same port; the kernel sends each client's packets to one of them
        by the client's address (see the README's "Many servers").
        """
        if self._started:
            raise RuntimeError("the server is already started")
        self._started = True
        await self._listener.start(host, port, reuse_port=reuse_port)
        log.info("brpc server listening on %s", self.address)
        if self._cluster is not None:
            await self._cluster.start()

    async def listen_tcp(self, host: str, port: int = 0, *, plaintext: bool = False) -> int:
        """Also serve ordinary gRPC over HTTP/2 on TCP ``host:port``; returns the port.

        grpcio, grpclib, grpcurl and other standard callers reach the server's
        own services and, with a relay, the clients' (see :mod:`brpc.relay`).
        TLS with the server's certificate; ``plaintext=True`` serves h2c
        instead, for a trusted network or a TLS-terminating proxy only. Callers
        are identified by their TLS client certificate (required and verified
        when the server has ``client_ca``) or the ``authenticate`` hook (given
        the ``authorization: Bearer`` token of each call), and every call is
        admitted by ``authorize`` like a brpc client's, with a
        :class:`brpc.FrontCaller` as the caller. Closed with the server.
        Port 0 picks a free port (also :attr:`tcp_port`).
        """
        if self._front is not None:
            raise RuntimeError("the server already listens on TCP")
        if self._closing:
            raise RuntimeError("the server is closed")
        context = (
            None
            if plaintext
            else server_ssl_context(self._certfile, self._keyfile, self._client_ca)
        )
        if plaintext:
            log.warning("gRPC/TCP front on %s:%s is plaintext (h2c): no TLS", host, port)
        front = TcpFront(
            self._serving,
            FrontSettings(
                max_message_size=self.options.max_message_size,
                max_concurrent_calls=self.options.max_concurrent_calls,
                authorize=self._authorize,
                authenticate=self._authenticate,
                verifier=self._accept_settings.verifier,
            ),
            ssl_context=context,
        )
        self._front = front
        self._tcp_port = await front.start(host, port)
        log.info("gRPC/TCP front listening on %s", format_target(host, self._tcp_port))
        return self._tcp_port

    @property
    def tcp_port(self) -> int | None:
        """The TCP port of the gRPC front (after :meth:`listen_tcp`), else None."""
        return self._tcp_port

    @property
    def port(self) -> int:
        """The UDP port the server listens on (after :meth:`start`)."""
        return self._listener.port

    @property
    def host(self) -> str:
        return self._listener.host

    @property
    def connection_count(self) -> int:
        """Connections being served, including those still in their handshake."""
        return len(self._listener.sessions)

    @property
    def half_open_count(self) -> int:
        """Connections whose QUIC handshake has not completed yet."""
        return len(self._listener.half_open)

    @property
    def address(self) -> str:
        """``host:port`` the server listens on, suitable for :func:`brpc.dial`."""
        return format_target(self.host, self.port)

    @property
    def closing(self) -> bool:
        """Whether :meth:`close` was called: new clients are refused."""
        return self._closing

    @property
    def cluster(self) -> ClusterHook[C]:
        """The :class:`brpc.Cluster` given as ``Server(cluster=...)``: ``server.cluster.clients``,
        ``server.cluster.watch()``, ... Raises RuntimeError on a server made without one
        (:attr:`in_cluster` tells)."""
        if self._cluster is None:
            raise RuntimeError(
                "this server is not a member of a cluster: make it with "
                "Server(cluster=brpc.Cluster(...))"
            )
        return self._cluster

    @property
    def in_cluster(self) -> bool:
        """Whether the server was made with ``Server(cluster=...)``."""
        return self._cluster is not None

    async def serve_forever(self) -> None:
        """Wait until the server is closed."""
        if not self._started:
            raise RuntimeError("call start() before serve_forever()")
        await self._closed.wait()

    def close(self, grace: float | None = None) -> Closing:
        """Stop accepting connections and close every connection.

        Works called as a plain method (then :meth:`wait_closed`) and awaited:
        ``await server.close()`` returns once the server has closed.

        Without ``grace``, connections close at once and calls in flight fail.
        With ``grace`` (seconds) the server drains: it refuses new connections
        and new calls (UNAVAILABLE), tells every client through the control
        stream that it is going away (clients reconnect elsewhere or later), lets
        calls in flight in both directions finish within ``grace``, then closes.
        :meth:`wait_closed` returns when that is done.
        """
        closing = Closing(self.wait_closed)
        if self._closing:
            return closing
        self._closing = True
        if self._cluster is not None and self._started:
            self._cluster_closing = asyncio.get_running_loop().create_task(
                self._cluster.close(), name="brpc server leaves its cluster"
            )
        self._listener.stop_accepting()
        if self._front is not None:
            self._front.closing = True  # new calls on the TCP front: UNAVAILABLE
        linked = {id(link.session) for link in self._links.values()}
        for session in list(self._listener.sessions):
            if id(session) not in linked:
                session.close(CloseCode.GOING_AWAY, "server is shutting down")
        if grace is None or grace <= 0:
            self._finish_close()
            return closing
        self._drain_task = asyncio.get_running_loop().create_task(
            self._drain(grace), name="brpc server drain"
        )
        return closing

    async def _drain(self, grace: float) -> None:
        links = list(self._links.values())
        try:
            idle = await asyncio.gather(
                *(link.drain(grace, "server is shutting down") for link in links)
            )
            busy = idle.count(False)
            if busy:
                log.warning("drain: %d clients still had calls in flight after %s s", busy, grace)
        finally:
            self._finish_close()

    def _finish_close(self) -> None:
        if self._front is not None:
            self._front.close()
        for session in list(self._listener.sessions):
            session.close(CloseCode.GOING_AWAY, "server is shutting down")
        self._listener.close()
        self._closed.set()

    async def wait_closed(self) -> None:
        """Wait until :meth:`close` finished and the UDP port is free again."""
        await self._closed.wait()
        if self._cluster_closing is not None:
            await self._cluster_closing
        await self._listener.wait_closed()
        if self._front is not None:
            await self._front.wait_closed()

    async def __aenter__(self) -> Server[C]:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        self.close()
        await self.wait_closed()

    # -- clients ---------------------------------------------------------------------

    def client_from_context(self, stream: Any) -> C:
        """The stub bound to the client whose call ``stream`` is.

        Identity comes from the connection the call arrived on, never from
        anything the client sent. Raises ``GRPCError`` (FAILED_PRECONDITION)
        outside a call a brpc client made to this server, and
        ``GRPCError(UNAVAILABLE)`` once that client is gone.
        """
        info = self._client_of(stream)
        if self.client_stub is None:
            log.error("client_from_context() called on a Server made without client_stub=...")
            raise GRPCError(
                Status.FAILED_PRECONDITION,
                "the server cannot call its clients: it was made without client_stub=... "
                "(pass the clients' generated stub class, for example client_stub=AgentStub)",
            )
        if info.closed:
            raise GRPCError(
                Status.UNAVAILABLE,
                f"the calling client ({info.connection_id}) has disconnected: {info.close_reason}",
            )
        return info.stub

    def client_info_from_context(self, stream: Any) -> ClientInfo[C]:
        """The :class:`ClientInfo` of the client whose call ``stream`` is (its
        identity, name, labels, ...), found from the connection the call
        arrived on. Raises like :meth:`client_from_context`, except that it
        still answers after the client left (``info.closed`` tells)."""
        return self._client_of(stream)

    def _client_of(self, stream: Any) -> ClientInfo[C]:
        connection = connection_of(stream)
        info = connection.handle if connection is not None else None
        if not isinstance(info, ClientInfo) or info.server is not self:
            raise GRPCError(
                Status.FAILED_PRECONDITION,
                "client_from_context() needs the stream of a call that a brpc client made "
                "to this server",
            )
        return cast(ClientInfo[C], info)

    @property
    def clients(self) -> Clients[C]:
        """Live, read-only view of the connected clients: ``len()``, iteration,
        ``get(connection_id)``, ``named(name)``, ``find(labels=..., service=...)``."""
        return self._clients

    def clients_snapshot(self) -> list[ClientInfo[C]]:
        """The clients connected right now."""
        return list(self._clients)

    def __iter__(self) -> Iterator[ClientInfo[C]]:
        return iter(self._clients)

    def on_connect(self, callback: PresenceCallback[C]) -> Callable[[], None]:
        """Call ``callback(client)`` when a client connects; returns an unsubscriber.

        Sync or async (see :mod:`brpc.presence` for ordering and errors). A
        client's ``on_connect`` callbacks are called before its ``on_disconnect``
        ones, and async ``on_disconnect`` callbacks start only once its async
        ``on_connect`` callbacks have finished.
        """
        return self._presence.on_connect(callback)

    def on_disconnect(self, callback: PresenceCallback[C]) -> Callable[[], None]:
        """Call ``callback(client)`` when a client leaves; returns an unsubscriber.

        ``client.close_reason`` says why it left.
        """
        return self._presence.on_disconnect(callback)

    def watch(self, *, existing: bool = True, max_pending: int = 1024) -> Watch[C]:
        """Presence changes as an async iterator: ``async for event in server.watch()``.

        Starts with the clients already connected (``existing=True``, as replayed
        CONNECTED events), ends once the server has closed and every client has
        left. Holds at most ``max_pending`` unread events; a reader further
        behind is resynchronised (see :class:`brpc.Watch`).
        """
        return self._presence.watch(existing=existing, max_pending=max_pending)

    def call_all(
        self,
        fn: Callable[[C, ClientInfo[C]], Awaitable[T]],
        *,
        select: Selector[C] | None = None,
        timeout: float | None = None,
        concurrency: int | None = None,
        scope: str = "server",
    ) -> FanOut[C, T]:
        """Call ``fn(stub, client)`` for every selected client; results as they complete.

        ``select`` picks the clients connected now: a predicate on
        :class:`ClientInfo`, a mapping of labels, a service name, or the
        clients themselves (default: all). ``timeout`` (seconds) bounds the
        whole fan-out; ``concurrency`` caps the calls running at once.

        Returns a :class:`brpc.FanOut`: ``async for result in ...`` yields one
        :class:`brpc.CallResult` per client in completion order, holding the
        value or the exception (``GRPCError``: UNAVAILABLE if the client left,
        DEADLINE_EXCEEDED past ``timeout``). A slow client delays nobody else's
        result. Stopping early cancels the calls still running.

        ``scope="cluster"`` calls the selected clients of every server of the
        cluster (``Server(cluster=...)``); ``select`` then applies to
        :class:`brpc.ClusterClient` entries (see ``Cluster.call_all``).
        """
        if scope == "cluster":
            if self._cluster is None:
                raise RuntimeError('call_all(scope="cluster") needs Server(cluster=...)')
            return self._cluster.call_all(
                fn, select=cast(Any, select), timeout=timeout, concurrency=concurrency
            )
        if scope != "server":
            raise ValueError(f'scope must be "server" or "cluster", not {scope!r}')
        if self.client_stub is None:
            raise RuntimeError(
                "call_all() needs the clients' stub class: make the Server with "
                "client_stub=... (for example client_stub=AgentStub)"
            )
        return FanOut(fn, self._clients.select(select), timeout=timeout, concurrency=concurrency)

    async def gather_all(
        self,
        fn: Callable[[C, ClientInfo[C]], Awaitable[T]],
        *,
        select: Selector[C] | None = None,
        timeout: float | None = None,
        concurrency: int | None = None,
    ) -> list[CallResult[C, T]]:
        """:meth:`call_all`, gathered: every selected client's result, in completion order."""
        async with self.call_all(
            fn, select=select, timeout=timeout, concurrency=concurrency
        ) as results:
            return await results.gather()

    # -- Admitter (the acceptors' view of the server) -----------------------------------

    async def admit(self, hello: Hello) -> tuple[Link, pb.ServerHello]:
        """Make the link of a client whose hello passed every check, and the
        server hello that answers it. Raise :class:`Refused` to refuse it instead.

        In a cluster, a named client's name is claimed cluster-wide first (the
        only wait): a name the cluster's policy refuses is refused here, like a
        local duplicate. Everything after that wait happens at once.
        """
        message = hello.message
        connection_id = secrets.token_hex(16)
        try:
            # Before the name check: a refusal must not replace another client.
            layer = choose_call_layer(message.call_layers, tuple(self._layers))
        except CallLayerMismatch as exc:
            raise Refused(RefusalCode.INVALID_HELLO, str(exc)) from None
        replaced = None
        if message.replaces:
            replaced = self._close_replaced(message.replaces, connection_id, hello.identity)
        holders = self._check_name(message.name, hello.identity)
        cluster = self._cluster
        if cluster is None or not message.name:
            self._replace_holders(message.name, holders, connection_id)
            return self._make_link(hello, connection_id, layer)
        refusal = await cluster.admit_name(
            message.name, connection_id, hello.identity, replacing=replaced
        )
        if refusal is not None:
            raise Refused(RefusalCode.ALREADY_EXISTS, refusal)
        try:
            if hello.session.closed is not None or self._closing:
                raise Refused(RefusalCode.UNAVAILABLE, "the connection ended during its hello")
            # Other hellos may have been admitted meanwhile.
            holders = self._check_name(message.name, hello.identity)
            self._replace_holders(message.name, holders, connection_id)
            return self._make_link(hello, connection_id, layer)
        except BaseException:
            await cluster.withdraw_name(connection_id)
            raise

    def _make_link(
        self, hello: Hello, connection_id: str, layer: str
    ) -> tuple[Link, pb.ServerHello]:
        message = hello.message
        label = (
            f"client {message.name!r} ({connection_id})"
            if message.name
            else f"client {connection_id}"
        )
        link = Link(
            hello.session,
            hello.control,
            connection_id=connection_id,
            peer=PeerInfo(
                name=message.name,
                labels=dict(message.labels),
                services=tuple(message.services),
                connected_at=time.time(),
                identity=hello.identity,
            ),
            layer=self._layers[layer],
            options=self.options,
            describe=label,
            make_handle=self._client_info,
            authorize=self._authorize,
        )
        resume_secret = secrets.token_bytes(RESUME_SECRET_LENGTH)
        self._admitted_secrets[connection_id] = resume_secret
        server_hello = pb.ServerHello(
            protocol_version=PROTOCOL_VERSION,
            connection_id=connection_id,
            limits=self._limits_message(),
            call_layer=layer,
            resume_secret=resume_secret,
        )
        return link, server_hello

    def connected(self, link: Link) -> None:
        """The server hello of ``link`` went out: the client is in the table."""
        info = cast(ClientInfo[C], link.handle)
        log.info("%r connected from %s", link, link.address)
        self._links[link.connection_id] = link
        self._clients.add(info)
        secret = self._admitted_secrets.pop(link.connection_id, None)
        if secret is not None:
            key = hashlib.sha256(secret).digest()
            self._resumable[key] = (secret, link)
            link.add_close_callback(lambda _: self._forget_secret(key))
        link.add_close_callback(lambda _: self._unregister(info))
        self._presence.connected(info)

    def moved(self, link: Link, address: tuple[str, int]) -> None:
        """The client of ``link`` sends from a new address: tell presence watchers."""
        info = cast(ClientInfo[C], link.handle)
        if self._clients.get(info.connection_id) is not info:
            return
        log.info("%r now sends from %s", link, address)
        self._presence.moved(info, address)

    # -- internals -------------------------------------------------------------------

    def _client_info(self, link: Link) -> ClientInfo[C]:
        return ClientInfo(
            link,
            server=self,
            layer=link.layer,
            client_stub=self.client_stub,
        )

    def _check_name(self, name: str, identity: Identity | None) -> list[ClientInfo[C]]:
        """Apply ``duplicate_names`` to a hello: raise :class:`Refused` to refuse it,
        else return the clients it replaces (:meth:`_replace_holders` closes them).

        Refusals name nothing that belongs to the other client; the log does.
        """
        holders = self._clients.find(name=name) if name else []
        if not holders or self._duplicate_names is DuplicateNames.ALLOW:
            return []
        if self._duplicate_names is DuplicateNames.REJECT:
            log.info("refused name %r: held by %s", name, holders[0].connection_id)
            raise Refused(
                RefusalCode.ALREADY_EXISTS, f"a client named {name!r} is already connected"
            )
        for old in holders:
            if not _same_identity(old.identity, identity):
                log.info(
                    "refused name %r: held by %s with another identity", name, old.connection_id
                )
                raise Refused(
                    RefusalCode.ALREADY_EXISTS,
                    f"a client named {name!r} with another identity is already connected; "
                    "only the same identity may replace it",
                )
        return holders

    def _replace_holders(self, name: str, holders: list[ClientInfo[C]], connection_id: str) -> None:
        for old in holders:
            log.info("client %r (%s) replaced by %s", name, old.connection_id, connection_id)
            link = self._links.get(old.connection_id)
            if link is not None:
                link.close(
                    CloseCode.REPLACED,
                    f"replaced by a newer connection with the same name {name!r}",
                )

    def _forget_secret(self, key: bytes) -> None:
        self._resumable.pop(key, None)

    def _close_replaced(
        self, secret: bytes, connection_id: str, identity: Identity | None
    ) -> str | None:
        """Close the connection whose resume secret a reconnecting client sent;
        its connection ID, or None when there is none to close.

        Only the client that held that connection knows its secret; its old
        connection is dead to it, so it goes at once instead of after the
        dead-peer timeout (the bare connection ID would not do: others may know it).
        """
        entry = self._resumable.get(hashlib.sha256(secret).digest())
        if entry is None or not hmac.compare_digest(entry[0], secret):
            log.debug("%s: the connection it replaces is gone already", connection_id)
            return None
        old = entry[1]
        if not _same_identity(old.peer.identity, identity):
            log.warning(
                "%s sent the resume secret of %s with another identity; ignored",
                connection_id,
                old.connection_id,
            )
            return None
        log.info("%r replaced by its own reconnection %s", old, connection_id)
        old.close(CloseCode.REPLACED, "replaced by its own reconnection")
        return old.connection_id

    def _unregister(self, info: ClientInfo[C]) -> None:
        self._links.pop(info.connection_id, None)
        if self._clients.remove(info):
            log.info("client %s disconnected: %s", info.connection_id, info.close_reason)
            self._presence.disconnected(info)

    def _limits_message(self) -> pb.Limits:
        options = self.options
        return pb.Limits(
            max_message_size=options.max_message_size,
            max_concurrent_calls=options.max_concurrent_calls,
            keepalive_interval_ms=int((options.keepalive_interval or 0) * 1000),
            dead_peer_timeout_ms=int(options.dead_peer_timeout * 1000),
        )


def _same_identity(a: Identity | None, b: Identity | None) -> bool:
    if a is None or b is None:
        return a is b
    return (a.name, a.source) == (b.name, b.source)

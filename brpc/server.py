"""The accepting side: :class:`Server` and its view of each client, :class:`ClientInfo`.

A :class:`Server` listens on one UDP port. For every QUIC connection it runs
the handshake, waits for the client's hello on the control stream, checks it
and answers with a connection ID (or a refusal). From then on:

- calls the client makes on lanes it opens are served by ``handlers``; inside
  a handler :meth:`Server.client_from_context` returns a stub bound to the
  calling client's own connection, found from the stream the call arrived on;
- the server calls the client's services through ``ClientInfo.stub`` (or
  ``ClientInfo.channel``), on lanes the server opens;
- when the connection ends, calls in flight to that client fail with
  UNAVAILABLE and the client leaves the server's table of clients.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from aioquic.asyncio.server import QuicServer
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import QuicErrorCode
from aioquic.tls import SessionTicket
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.server import Stream

from . import _aioquic
from ._acceptor import IncomingConnection, Refused
from ._calls import current_link, serving_server
from ._channel import LinkChannel
from ._control import PROTOCOL_VERSION, HelloLimits
from ._grpclib import server_h2_stream
from ._link import Link, LinkSettings, PeerInfo
from ._session import BatchingQuicServer, QuicSession, SessionOptions
from ._target import format_target
from ._tls import server_configuration
from ._verify import ClientCertificateVerifier
from .auth import Authenticator, Authorizer, Identity
from .errors import CloseCode
from .fanout import CallResult, FanOut
from .presence import Presence, PresenceCallback, Watch
from .registry import Clients, DuplicateNames, Selector
from .testing.network import NetworkConditions
from .v1 import control_pb2 as pb

if TYPE_CHECKING:
    import os

    from ._calls import Servable


__all__ = ["ClientInfo", "Server"]

log = logging.getLogger(__name__)

C = TypeVar("C")
T = TypeVar("T")

# Streams a client may have open towards the server at once: control + lanes.
_MAX_CLIENT_STREAMS = 64


class _ClientChannel(LinkChannel):
    """The server's channel to one client: lanes on that client's link."""

    def __init__(self, link: Link, *, lanes: int, max_message_size: int) -> None:
        super().__init__(
            link.peer.name or link.connection_id, lanes=lanes, max_message_size=max_message_size
        )
        self._link = link
        link.add_close_callback(lambda _: self.close_lanes())

    async def open_lane(self, protocol: asyncio.Protocol) -> None:
        self._link.open_lane(protocol)

    def loss_reason(self) -> str:
        return self._link.loss_reason()

    def is_lost(self) -> bool:
        return self._link.closed is not None


class ClientInfo(Generic[C]):
    """A connected client as the server sees it.

    ``stub`` calls the client's services over this client's own connection;
    everything else describes the client. The object stays valid after the
    client leaves (``closed`` becomes true and calls fail with UNAVAILABLE).
    """

    def __init__(self, link: Link, server: Server[C], *, lanes: int) -> None:
        self._link = link
        self._server = server
        self._channel = _ClientChannel(link, lanes=lanes, max_message_size=link.max_message_size)
        #: A grpclib ``Channel`` to this client: ``SomeStub(info.channel)``.
        self.channel: Channel = self._channel
        self._stub: C | None = None

    @property
    def connection_id(self) -> str:
        return self._link.connection_id

    @property
    def name(self) -> str:
        return self._link.peer.name

    @property
    def labels(self) -> Mapping[str, str]:
        return self._link.peer.labels

    @property
    def services(self) -> tuple[str, ...]:
        return self._link.peer.services

    @property
    def address(self) -> tuple[str, int] | None:
        return self._link.peer.address

    @property
    def identity(self) -> Identity | None:
        """The client's verified identity (mutual TLS and/or the authentication
        hook), or None when the server checks neither."""
        return self._link.peer.identity

    @property
    def connected_at(self) -> float:
        """Wall-clock time (``time.time()``) the client's hello was accepted."""
        return self._link.peer.connected_at

    @property
    def stub(self) -> C:
        """The server's ``client_stub`` bound to this client's connection."""
        if self._stub is None:
            factory = self._server.client_stub
            if factory is None:
                raise RuntimeError(
                    "this Server was made without client_stub=...; pass the generated stub "
                    "class (for example client_stub=NamerStub) to call clients"
                )
            self._stub = factory(self.channel)
        return self._stub

    @property
    def closed(self) -> bool:
        return self._link.closed is not None

    @property
    def close_reason(self) -> str | None:
        closed = self._link.closed
        return closed.describe() if closed is not None else None

    @property
    def calls_in_flight(self) -> int:
        """Calls from this client being handled right now."""
        return self._link.calls_in

    async def ping(self) -> float:
        """Round-trip time to the client over the control stream, in seconds."""
        return await self._link.ping()

    def transport_stats(self) -> list[dict[str, int]]:
        """Byte counters of this client's streams (see ``Link.transport_stats``)."""
        return self._link.transport_stats()

    def _begin_drain(self, reason: str, grace: float) -> None:
        """No new calls either way; tell the client we are going away."""
        link = self._link
        if link.closed is None:
            link.draining = True
            link.send_go_away(reason, grace)
            self._channel.detach_lanes()

    def _peer_going_away(self) -> None:
        """The client is draining: no new calls to it."""
        self._link.peer_going_away = True
        self._channel.detach_lanes()

    def _busy(self) -> bool:
        return self._link.calls_in > 0 or self._channel.calls_in_flight > 0

    async def _wait_idle(self) -> None:
        await self._link.wait_idle()
        await self._channel.wait_lanes_idle()

    def close(self, reason: str = "closed by the server") -> None:
        """Disconnect this client; its calls in flight fail."""
        self._link.close(CloseCode.NO_ERROR, reason)

    async def wait_closed(self) -> None:
        await self._link.closed_event.wait()

    def __repr__(self) -> str:
        name = f" {self.name!r}" if self.name else ""
        state = " closed" if self.closed else ""
        return f"<ClientInfo{name} id={self.connection_id} {self.address}{state}>"


class _Listener(BatchingQuicServer):
    """aioquic's server protocol, telling when its socket is really closed."""

    def __init__(self, socket_closed: asyncio.Event, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._socket_closed = socket_closed

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._socket_closed.set()


class _TicketStore:
    """TLS session tickets for resumption: bounded, and each usable once."""

    def __init__(self, limit: int = 10000) -> None:
        self._limit = limit
        self._tickets: dict[bytes, SessionTicket] = {}

    def add(self, ticket: SessionTicket) -> None:
        if len(self._tickets) >= self._limit:
            del self._tickets[next(iter(self._tickets))]
        self._tickets[ticket.ticket] = ticket

    def pop(self, label: bytes) -> SessionTicket | None:
        return self._tickets.pop(label, None)


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
    """

    def __init__(
        self,
        handlers: Collection[Servable],
        *,
        client_stub: Callable[[Channel], C] | None = None,
        certfile: str | os.PathLike[str],
        keyfile: str | os.PathLike[str] | None = None,
        lanes: int = 1,
        max_message_size: int = 4 << 20,
        max_concurrent_calls: int = 1000,
        max_connections: int = 10000,
        keepalive_interval: float | None = 5.0,
        dead_peer_timeout: float = 15.0,
        handshake_timeout: float = 10.0,
        hello_timeout: float = 10.0,
        max_datagram_size: int = 1200,
        hello_limits: HelloLimits | None = None,
        client_ca: str | os.PathLike[str] | None = None,
        authenticate: Authenticator | None = None,
        authorize: Authorizer | None = None,
        session_tickets: bool = False,
        retry: bool = False,
        network_conditions: NetworkConditions | None = None,
        duplicate_names: DuplicateNames = DuplicateNames.REPLACE,
        read_batch: int = 8,
    ) -> None:
        if max_message_size < 1:
            raise ValueError("max_message_size must be positive")
        if max_connections < 1 or max_concurrent_calls < 1 or read_batch < 1:
            raise ValueError(
                "max_connections, max_concurrent_calls and read_batch must be positive"
            )
        if keepalive_interval is not None and not 0 < keepalive_interval < dead_peer_timeout:
            raise ValueError("keepalive_interval must be positive and below dead_peer_timeout")
        if session_tickets and client_ca is not None:
            raise ValueError(
                "session_tickets cannot be combined with client_ca: a resumed TLS handshake "
                "carries no client certificate to verify"
            )
        self.client_stub = client_stub
        self._client_verifier = (
            ClientCertificateVerifier(client_ca) if client_ca is not None else None
        )
        self._authenticate = authenticate
        self._authorize = authorize
        self._tickets = _TicketStore() if session_tickets else None
        self._retry = retry
        self._configuration = server_configuration(
            certfile=certfile,
            keyfile=keyfile,
            idle_timeout=dead_peer_timeout,
            max_datagram_size=max_datagram_size,
        )
        self._session_options = SessionOptions(
            keepalive_interval=keepalive_interval,
            handshake_timeout=handshake_timeout,
            network_conditions=network_conditions,
            read_batch=read_batch,
        )
        self._link_settings = LinkSettings(
            lanes=lanes,
            max_message_size=max_message_size,
            max_concurrent_calls=max_concurrent_calls,
        )
        self._keepalive_interval = keepalive_interval
        self._dead_peer_timeout = dead_peer_timeout
        self._max_connections = max_connections
        self._hello_timeout = hello_timeout
        self._hello_limits = hello_limits or HelloLimits()
        self._grpc = serving_server(handlers, max_message_size)
        #: grpclib's event dispatcher: ``grpclib.events.listen(server, RecvRequest, cb)`` works.
        self.__dispatch__ = self._grpc.__dispatch__
        self._connections: set[IncomingConnection] = set()
        self._quic: QuicServer | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._closing = False
        self._closed = asyncio.Event()
        self._duplicate_names = DuplicateNames(duplicate_names)
        self._clients: Clients[C] = Clients()
        self._presence: Presence[C] = Presence(self._clients, self._closed)
        self._drain_task: asyncio.Task[None] | None = None
        self._socket_closed = asyncio.Event()
        self._host = ""
        self._port = 0

    # -- lifecycle -------------------------------------------------------------------

    async def start(self, host: str, port: int = 0) -> None:
        """Listen on UDP ``host:port``; port 0 picks a free one (see :attr:`port`)."""
        if self._quic is not None:
            raise RuntimeError("the server is already started")
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: _Listener(
                self._socket_closed,
                configuration=self._configuration,
                create_protocol=self._new_session,
                read_batch=self._session_options.read_batch,
                retry=self._retry,
                session_ticket_fetcher=self._tickets.pop if self._tickets else None,
                session_ticket_handler=self._tickets.add if self._tickets else None,
            ),
            local_addr=(host, port),
        )
        self._udp = transport
        self._quic = protocol
        self._host, self._port = transport.get_extra_info("sockname")[:2]
        log.info("brpc server listening on %s", self.address)

    @property
    def port(self) -> int:
        """The UDP port the server listens on (after :meth:`start`)."""
        return self._port

    @property
    def host(self) -> str:
        return self._host

    @property
    def connection_count(self) -> int:
        """QUIC connections being served, including those still in their handshake."""
        return len(self._connections)

    @property
    def address(self) -> str:
        """``host:port`` the server listens on, suitable for :func:`brpc.dial`."""
        return format_target(self._host, self._port)

    async def serve_forever(self) -> None:
        """Wait until the server is closed."""
        if self._quic is None:
            raise RuntimeError("call start() before serve_forever()")
        await self._closed.wait()

    def close(self, grace: float | None = None) -> None:
        """Stop accepting connections and close every connection.

        Without ``grace``, connections close at once and calls in flight fail.
        With ``grace`` (seconds) the server drains: it refuses new connections
        and new calls (UNAVAILABLE), tells every client through the control
        stream that it is going away (clients reconnect elsewhere or later), lets
        calls in flight in both directions finish within ``grace``, then closes.
        :meth:`wait_closed` returns when that is done.
        """
        if self._closing:
            return
        self._closing = True
        for connection in list(self._connections):
            if connection.link is None and connection.session is not None:
                connection.session.close(CloseCode.GOING_AWAY, "server is shutting down")
        if grace is None or grace <= 0:
            self._finish_close()
            return
        for info in self._clients:
            info._begin_drain("server is shutting down", grace)
        self._drain_task = asyncio.get_running_loop().create_task(
            self._drain(grace), name="brpc server drain"
        )

    async def _drain(self, grace: float) -> None:
        try:
            async with asyncio.timeout(grace):
                for info in self._clients:
                    await info._wait_idle()
        except TimeoutError:
            busy = sum(1 for info in self._clients if info._busy())
            log.warning("drain: %d clients still had calls in flight after %s s", busy, grace)
        finally:
            self._finish_close()

    def _finish_close(self) -> None:
        for connection in list(self._connections):
            if connection.session is not None:
                connection.session.close(CloseCode.GOING_AWAY, "server is shutting down")
        if self._udp is not None:
            self._udp.close()
        self._closed.set()

    async def wait_closed(self) -> None:
        """Wait until :meth:`close` finished and the UDP port is free again."""
        await self._closed.wait()
        if self._udp is not None:
            await self._socket_closed.wait()

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

    def client_from_context(self, stream: Stream[Any, Any]) -> C:
        """The stub bound to the client whose call ``stream`` is.

        Identity comes from the connection the call arrived on, never from
        anything the client sent. Raises ``GRPCError`` (FAILED_PRECONDITION)
        outside a call a brpc client made to this server, and
        ``GRPCError(UNAVAILABLE)`` once that client is gone.
        """
        info = self._client_of(stream)
        if info.closed:
            raise GRPCError(
                Status.UNAVAILABLE,
                f"the calling client ({info.connection_id}) has disconnected: {info.close_reason}",
            )
        return info.stub

    def client_info_from_context(self, stream: Stream[Any, Any]) -> ClientInfo[C]:
        """The :class:`ClientInfo` of the client whose call ``stream`` is (its
        identity, name, labels, ...), found from the connection the call
        arrived on. Raises like :meth:`client_from_context`, except that it
        still answers after the client left (``info.closed`` tells)."""
        return self._client_of(stream)

    def _client_of(self, stream: Stream[Any, Any]) -> ClientInfo[C]:
        if not isinstance(stream, Stream):
            raise TypeError(f"expected the handler's grpclib.server.Stream, got {stream!r}")
        transport = server_h2_stream(stream)._transport
        context = transport.get_extra_info("context")
        link = context.get(current_link) if context is not None else None
        info = link.handle if link is not None else None
        if not isinstance(info, ClientInfo) or info._server is not self:
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
        """
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

    # -- internals -------------------------------------------------------------------

    def _new_session(self, quic: QuicConnection, stream_handler: Any = None) -> QuicSession:
        connection = IncomingConnection(self)
        _aioquic.set_peer_bidi_stream_limit(quic, _MAX_CLIENT_STREAMS)
        if self._client_verifier is not None:
            _aioquic.request_client_certificate(quic)
        session = QuicSession(quic, handler=connection, options=self._session_options)
        connection.session = session
        if self._closing:
            session.refuse_with = (QuicErrorCode.CONNECTION_REFUSED, "server is shutting down")
        elif len(self._connections) >= self._max_connections:
            session.refuse_with = (
                QuicErrorCode.CONNECTION_REFUSED,
                f"server is at its limit of {self._max_connections} connections",
            )
        else:
            self._connections.add(connection)
        return session

    def _admit(
        self, connection: IncomingConnection, hello: pb.ClientHello, identity: Identity | None
    ) -> Link:
        """Make the link of a client whose hello passed every check, register it
        and answer the hello. Raise :class:`Refused` to refuse it instead."""
        session, control = connection.session, connection.control
        assert session is not None and control is not None
        connection_id = secrets.token_hex(16)
        name_conflict = self._admit_name(hello.name, connection_id, identity)
        if name_conflict is not None:
            raise Refused(pb.Refusal.ALREADY_EXISTS, name_conflict)
        peer = PeerInfo(
            name=hello.name,
            labels=dict(hello.labels),
            services=tuple(hello.services),
            address=session.get_extra_info("peername"),
            connected_at=time.time(),
            identity=identity,
        )
        label = (
            f"client {hello.name!r} ({connection_id})" if hello.name else f"client {connection_id}"
        )
        link = Link(
            session,
            control,
            connection_id=connection_id,
            peer=peer,
            serving=self._grpc,
            settings=self._link_settings,
            describe=label,
        )
        info: ClientInfo[C] = ClientInfo(link, self, lanes=self._link_settings.lanes)
        link.handle = info
        link.authorizer = self._authorize
        link.on_go_away = lambda _: info._peer_going_away()
        connection.link = link
        control.send(
            pb.Envelope(
                server_hello=pb.ServerHello(
                    protocol_version=PROTOCOL_VERSION,
                    connection_id=connection_id,
                    limits=self._limits_message(),
                )
            )
        )
        log.info("%s connected from %s", label, peer.address)
        # Last: connect callbacks may call the client (its hello is answered)
        # or close it (the connection already knows its link).
        self._register(info)
        return link

    def _admit_name(self, name: str, connection_id: str, identity: Identity | None) -> str | None:
        """Apply ``duplicate_names`` to a hello: the reason to refuse it, or None."""
        holders = self._clients.find(name=name) if name else []
        if not holders or self._duplicate_names is DuplicateNames.ALLOW:
            return None
        if self._duplicate_names is DuplicateNames.REJECT:
            return f"a client named {name!r} is already connected ({holders[0].connection_id})"
        for old in holders:
            if not _same_identity(old.identity, identity):
                return (
                    f"a client named {name!r} with another identity is already connected "
                    f"({old.connection_id}); only the same identity may replace it"
                )
        for old in holders:
            log.info("client %r (%s) replaced by %s", name, old.connection_id, connection_id)
            old._link.close(
                CloseCode.REPLACED,
                f"replaced by a newer connection ({connection_id}) with the same name {name!r}",
            )
        return None

    def _register(self, info: ClientInfo[C]) -> None:
        link = info._link
        self._clients._add(info)
        link.add_close_callback(lambda _: self._unregister(info))
        self._presence.connected(info)

    def _unregister(self, info: ClientInfo[C]) -> None:
        if self._clients._remove(info):
            log.info("client %s disconnected: %s", info.connection_id, info.close_reason)
            self._presence.disconnected(info)

    def _limits_message(self) -> pb.Limits:
        settings = self._link_settings
        return pb.Limits(
            max_message_size=settings.max_message_size,
            max_concurrent_calls=settings.max_concurrent_calls,
            keepalive_interval_ms=int((self._keepalive_interval or 0) * 1000),
            dead_peer_timeout_ms=int(self._dead_peer_timeout * 1000),
        )


def _same_identity(a: Identity | None, b: Identity | None) -> bool:
    if a is None or b is None:
        return a is b
    return (a.name, a.source) == (b.name, b.source)

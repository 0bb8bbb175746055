"""A server's membership of a cluster: :class:`Cluster`, its clients view and peer connections.

``brpc.Server(cluster=brpc.Cluster(directory=..., server_id=..., peer_address=...))``
makes the server a member:

- it registers itself in the directory when it starts and keeps its liveness
  record renewed (:func:`~brpc.cluster.keep_alive`); on a clean close it
  unregisters, else its records lapse after the directory's TTL;
- a named client's hello claims its name cluster-wide (``duplicate_names``)
  before the server answers it, so a refused name is refused in the hello
  (:meth:`Cluster.admit_name`); every client that connects is registered under
  the server; under REPLACE, a client of this server whose name was claimed on
  another server is closed when the change feed says so;
- a :class:`~brpc.cluster.DirectoryReplica` answers :attr:`Cluster.clients`
  (get / named / find / len / iterate) with :class:`ClusterClient` entries that
  say which server holds them, and whose ``stub``/``channel`` work wherever the
  client is;
- a call for a client held by another server goes over a brpc connection to that
  server's ``peer_address`` (its brpc port, served with a :class:`brpc.Relay`),
  with the metadata ``brpc-target-id`` naming the client: the other server's
  relay forwards it, bytes untouched, in any cardinality.

Peers authenticate with a shared ``peer_token`` (sent as the hello token; a
server accepts it through :meth:`Cluster.authenticator` and lets such callers
relay through :meth:`Cluster.relay_authorizer`) and verify each other's
certificates with ``peer_ca`` (and present ``peer_certfile`` for mutual TLS).
Peer connections are not clients of the fleet: they are never registered (nor is
any client whose name starts with ``brpc-peer.``, the prefix reserved for peers).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import inspect
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from grpclib.const import Status
from grpclib.exceptions import GRPCError
from multidict import MultiDict

from ..auth import Authenticator, AuthRequest, Identity
from ..client import ClientConn, dial
from ..fanout import FanOut
from ..membership import ClusterEntry
from ..peer import ClientInfo
from ..registry import DuplicateNames
from ..relay import Relay, default_director
from ..server import ClusterHook, Server
from .directory import (
    ChangeKind,
    ClientRecord,
    Directory,
    DirectoryUnavailable,
    ServerNotRegistered,
    ServerRecord,
    keep_alive,
)
from .replica import DirectoryReplica, ReplicaWatch

if TYPE_CHECKING:
    from grpclib.client import Channel

__all__ = ["PEER_IDENTITY_SOURCE", "Cluster", "ClusterClient", "ClusterClients"]

log = logging.getLogger(__name__)

C = TypeVar("C")
T = TypeVar("T")

#: ``Identity.source`` of a peer server authenticated by the cluster's token.
PEER_IDENTITY_SOURCE = "cluster-peer"
_PEER_NAME_PREFIX = "brpc-peer."
_TARGET_ID_KEY = "brpc-target-id"


def _unavailable(detail: str) -> GRPCError:
    return GRPCError(Status.UNAVAILABLE, detail)


def _is_peer(info: ClientInfo[Any]) -> bool:
    """A peer server's connection, authenticated as such."""
    identity = info.identity
    return identity is not None and identity.source == PEER_IDENTITY_SOURCE


def _not_listed(info: ClientInfo[Any]) -> bool:
    """Connections the cluster does not list: peers, and any client using the peers'
    reserved name prefix (a peer whose token this server does not check)."""
    return _is_peer(info) or info.name.startswith(_PEER_NAME_PREFIX)


def _identity_key(identity: Identity | None) -> str | None:
    """The directory's key of a verified identity (see ``Directory.claim_name``)."""
    return f"{identity.source}:{identity.name}" if identity is not None else None


def _refusal_text(name: str, policy: DuplicateNames) -> str:
    if policy is DuplicateNames.REJECT:
        return f"a client named {name!r} is already connected to the cluster"
    return (
        f"a client named {name!r} with another identity is already connected to the "
        "cluster; only the same identity may replace it"
    )


def _address_text(address: tuple[str, int] | None) -> str:
    if address is None:
        return ""
    return f"{address[0]}:{address[1]}"


class _RemoteChannel:
    """A channel to a client held by another server: calls go through that server's relay.

    Only ``request`` is offered, which is all generated stubs use. Each call
    re-reads the client's record from the replica first, so a client known to
    be gone fails at once with UNAVAILABLE; a call is never retried once sent.
    """

    def __init__(self, cluster: Cluster[Any], record: ClientRecord) -> None:
        self._cluster = cluster
        self._record = record

    def request(
        self,
        name: str,
        cardinality: Any,
        request_type: Any,
        reply_type: Any,
        *,
        timeout: float | None = None,
        deadline: Any = None,
        metadata: Any = None,
    ) -> Any:
        conn = self._cluster._peer_for(self._record)
        merged: MultiDict[Any] = MultiDict(metadata or ())
        merged[_TARGET_ID_KEY] = self._record.connection_id
        return conn.request(
            name,
            cardinality,
            request_type,
            reply_type,
            timeout=timeout,
            deadline=deadline,
            metadata=merged,
        )

    def close(self) -> None:
        """The peer connection is shared and owned by the cluster: nothing to close."""


class ClusterClient(Generic[C]):
    """A client connected to some server of the cluster.

    ``server_id`` says which server holds it; ``local`` is True when that is
    this server (then ``info`` is its :class:`~brpc.ClientInfo`). ``stub`` and
    ``channel`` call it wherever it is.
    """

    def __init__(
        self, cluster: Cluster[C], record: ClientRecord, info: ClientInfo[C] | None
    ) -> None:
        self._cluster = cluster
        self.record = record
        self.info = info
        self._stub: C | None = None
        self._channel: Any = None

    @property
    def connection_id(self) -> str:
        return self.record.connection_id

    @property
    def server_id(self) -> str:
        return self.record.server_id

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def labels(self) -> Mapping[str, str]:
        return self.record.labels

    @property
    def services(self) -> tuple[str, ...]:
        return self.record.services

    @property
    def connected_at(self) -> float:
        return self.record.connected_at

    @property
    def local(self) -> bool:
        return self.info is not None

    @property
    def closed(self) -> bool:
        """True once the client is known to be gone (locally, or from the replica)."""
        if self.info is not None:
            return self.info.closed
        return self._cluster.replica.get(self.connection_id) is None

    @property
    def close_reason(self) -> str | None:
        if self.info is not None:
            return self.info.close_reason
        return "left the cluster" if self.closed else None

    @property
    def channel(self) -> Channel:
        if self.info is not None:
            return self.info.channel
        if self._channel is None:
            self._channel = _RemoteChannel(self._cluster, self.record)
        return cast("Channel", self._channel)

    @property
    def stub(self) -> C:
        if self.info is not None:
            return self.info.stub
        if self._stub is None:
            factory = self._cluster._client_stub()
            self._stub = factory(self.channel)
        return self._stub

    def __repr__(self) -> str:
        where = "local" if self.local else f"on {self.server_id}"
        return f"<ClusterClient {self.connection_id} name={self.name!r} {where}>"


class ClusterClients(Generic[C]):
    """The cluster's clients, answered from the replica (as ``server.clients`` is locally).

    While the directory is unavailable, ``get`` and ``named`` still answer for
    this server's own clients; anything needing the rest of the cluster raises
    ``GRPCError(UNAVAILABLE, "directory unavailable: ...")``.
    """

    def __init__(self, cluster: Cluster[C]) -> None:
        self._cluster = cluster

    def _entry(self, record: ClientRecord) -> ClusterClient[C]:
        return self._cluster._entry(record)

    def _require(self) -> DirectoryReplica:
        replica = self._cluster.replica
        if not replica.available:
            raise _unavailable(
                "directory unavailable: the cluster's clients cannot be listed right now"
            )
        return replica

    def __len__(self) -> int:
        return len(self._require())

    def __iter__(self) -> Iterator[ClusterClient[C]]:
        return iter([self._entry(record) for record in self._require()])

    def __contains__(self, item: object) -> bool:
        return item in self._require()

    def get(self, connection_id: str) -> ClusterClient[C] | None:
        local = self._cluster._local(connection_id)
        if local is not None:
            return local
        record = self._require().get(connection_id)
        return None if record is None else self._entry(record)

    def named(self, name: str) -> ClusterClient[C] | None:
        replica = self._cluster.replica
        if not replica.available:
            server = self._cluster.server
            info = server.clients.named(name)
            if info is not None and not _not_listed(info):
                return self._cluster._local(info.connection_id)
            self._require()
        record = replica.named(name)
        return None if record is None else self._entry(record)

    def find(
        self,
        *,
        name: str | None = None,
        labels: Mapping[str, str] | None = None,
        service: str | None = None,
        server_id: str | None = None,
        where: Callable[[ClientRecord], bool] | None = None,
    ) -> list[ClusterClient[C]]:
        records = self._require().find(
            name=name, labels=labels, service=service, server_id=server_id, where=where
        )
        return [self._entry(record) for record in records]


class Cluster(Generic[C]):
    """Membership of one server in a cluster (give it to ``brpc.Server(cluster=...)``).

    - ``directory``: where the cluster's servers and clients are recorded
      (:class:`~brpc.cluster.MemoryDirectory` in one process,
      :class:`~brpc.cluster.RedisDirectory` across processes and machines).
    - ``server_id``: unique per server process (default: random).
    - ``peer_address``: ``host:port`` where other servers reach this one's brpc
      port (default: the server's own address once started).
    - ``peer_token``: shared secret peers send as their hello token; accept it
      with ``Server(authenticate=cluster.authenticator(), relay=brpc.Relay(
      authorize=cluster.relay_authorizer()))``.
    - ``peer_identities``: for mutual TLS instead of (or besides) the token, the
      certificate identity names of the other servers (each presents
      ``peer_certfile``/``peer_keyfile``; servers need ``client_ca``).
    - ``peer_ca``, ``peer_server_name``, ``peer_certfile``/``peer_keyfile``:
      how this server verifies the other servers' certificates and, for mutual
      TLS, its own client certificate.
    - ``duplicate_names``: the cluster-wide duplicate-name policy.
    - ``dead_peer_timeout``: calls through a lost peer server fail with
      UNAVAILABLE within this many seconds.
    """

    def __init__(
        self,
        directory: Directory,
        *,
        server_id: str | None = None,
        peer_address: str | None = None,
        peer_token: str | None = None,
        peer_identities: Collection[str] = (),
        peer_ca: str | None = None,
        peer_server_name: str | None = None,
        peer_certfile: str | None = None,
        peer_keyfile: str | None = None,
        duplicate_names: DuplicateNames = DuplicateNames.REPLACE,
        dead_peer_timeout: float = 5.0,
        resync_interval: float = 30.0,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        if dead_peer_timeout <= 0:
            raise ValueError("dead_peer_timeout must be positive")
        self.directory = directory
        self.server_id = server_id or secrets.token_hex(8)
        self._peer_address = peer_address
        self._peer_token = peer_token
        self._peer_identities = frozenset(peer_identities)
        self._peer_ca = peer_ca
        self._peer_server_name = peer_server_name
        self._peer_certfile = peer_certfile
        self._peer_keyfile = peer_keyfile
        self.duplicate_names = DuplicateNames(duplicate_names)
        self.dead_peer_timeout = dead_peer_timeout
        self._metadata = dict(metadata or {})
        self.replica = DirectoryReplica(directory, resync_interval=resync_interval)
        self.clients: ClusterClients[C] = ClusterClients(self)
        self._server: Server[C] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._peers: dict[str, tuple[str, ClientConn]] = {}
        self._dialing: dict[str, asyncio.Task[None]] = {}
        self._started_at = time.time()
        self._peers_changed = asyncio.Event()
        self._peer_server: Server[Any] | None = None
        #: Server ID -> when (time.monotonic()) to dial it again after a failed dial.
        self._dial_after: dict[str, float] = {}
        #: Names claimed for hellos (connection ID -> name, epoch) until the client
        #: is registered; a client that leaves unregistered releases its name here.
        self._claims: dict[str, tuple[str, int]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._closed = False

    def __repr__(self) -> str:
        return f"<Cluster server_id={self.server_id!r} replica={self.replica!r}>"

    # -- the server's hook ----------------------------------------------------------------

    @property
    def server(self) -> Server[C]:
        if self._server is None:
            raise RuntimeError("this Cluster is not attached: pass it to brpc.Server(cluster=...)")
        return self._server

    def attach(self, server: Server[C]) -> None:
        """Bind to ``server`` (called by ``Server``; once)."""
        if self._server is not None:
            raise RuntimeError("this Cluster already serves another Server: make one per server")
        self._server = server
        server.on_connect(self._client_connected)
        server.on_disconnect(self._client_left)

    @property
    def peer_address(self) -> str:
        return self._peer_address or self.server.address

    async def serve_peers(
        self,
        host: str,
        port: int = 0,
        *,
        certfile: str,
        keyfile: str | None = None,
        client_ca: str | None = None,
    ) -> str:
        """Serve the other servers on a port of their own; returns its ``host:port``.

        For servers whose brpc port is shared (worker processes on one port with
        SO_REUSEPORT): peers must reach this very process. Starts a brpc server
        whose relay forwards to this server's clients, accepting peers by
        ``peer_token`` (and by certificate with ``client_ca``), and makes its
        address this member's ``peer_address``. Call it before ``server.start()``.
        """
        if self._peer_server is not None:
            raise RuntimeError("this cluster member already serves its peers")
        clients = self.server.clients
        peer_server: Server[Any] = Server(
            [],
            certfile=certfile,
            keyfile=keyfile,
            client_ca=client_ca,
            authenticate=self.authenticator(),
            relay=Relay(director=default_director(clients), authorize=self.relay_authorizer()),
            dead_peer_timeout=self.dead_peer_timeout,
            keepalive_interval=self.dead_peer_timeout / 4,
        )
        await peer_server.start(host, port)
        self._peer_server = peer_server
        self._peer_address = peer_server.address
        return peer_server.address

    async def start(self) -> None:
        """Register the server, start renewing it and following the directory.

        An unavailable directory does not stop the server: it serves its own
        clients and registers (with them) once the directory answers.
        """
        try:
            await self._register_server()
        except DirectoryUnavailable as exc:
            log.warning("server %s starts outside its cluster for now: %s", self.server_id, exc)
        await self.replica.start()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(
                keep_alive(self.directory, self.server_id, on_lapse=self._register_again),
                name="brpc-cluster-keep-alive",
            ),
            loop.create_task(self._follow_names(), name="brpc-cluster-names"),
            loop.create_task(self._dial_peers(), name="brpc-cluster-peers"),
        ]

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until the replica has read the directory once."""
        await self.replica.wait_ready(timeout)

    async def close(self) -> None:
        """Leave the cluster: unregister, stop following, close peer connections."""
        if self._closed:
            return
        self._closed = True
        tasks = [*self._tasks, *self._dialing.values(), *self._background]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        with contextlib.suppress(DirectoryUnavailable):
            await self.directory.unregister_server(self.server_id)
        await self.replica.close()
        peers, self._peers = self._peers, {}
        for _, conn in peers.values():
            with contextlib.suppress(Exception):
                await conn.close()
        if self._peer_server is not None:
            self._peer_server.close()
            await self._peer_server.wait_closed()

    # -- peers: authentication ------------------------------------------------------------

    def authenticator(self, inner: Authenticator | None = None) -> Authenticator:
        """An authentication hook accepting peer servers by ``peer_token``, or by a client
        certificate whose identity name is one of ``peer_identities`` (mutual TLS:
        give the server ``client_ca``).

        Other clients go to ``inner`` (without it they connect unauthenticated).
        """
        token = self._peer_token
        certified = self._peer_identities

        async def authenticate(request: AuthRequest) -> Identity | None:
            if request.name.startswith(_PEER_NAME_PREFIX):
                if token and hmac.compare_digest(request.token.encode(), token.encode()):
                    return Identity(name=request.name, source=PEER_IDENTITY_SOURCE)
                certificate = request.certificate
                if certificate is not None and certificate.name in certified:
                    return Identity(
                        name=request.name,
                        source=PEER_IDENTITY_SOURCE,
                        subject=certificate.subject,
                        sans=certificate.sans,
                        attributes={"certificate": certificate.name},
                        certificate=certificate.certificate,
                    )
            if inner is None:
                return None
            found = inner(request)
            if inspect.isawaitable(found):
                return await found
            return found

        return authenticate

    def relay_authorizer(
        self, inner: Callable[[Any, str, Sequence[ClientInfo[Any]]], Any] | None = None
    ) -> Callable[[Any, str, Sequence[ClientInfo[Any]]], Awaitable[bool]]:
        """A ``Relay(authorize=...)`` letting peer servers relay; other callers go to ``inner``.

        Without ``inner``, other brpc clients may not relay and TCP-front callers may.
        """

        async def authorize(caller: Any, method: str, targets: Sequence[ClientInfo[Any]]) -> bool:
            if isinstance(caller, ClientInfo) and _is_peer(caller):
                return True
            if inner is None:
                return not isinstance(caller, ClientInfo)
            allowed = inner(caller, method, targets)
            if inspect.isawaitable(allowed):
                allowed = await allowed
            return allowed is True

        return authorize

    # -- registration ---------------------------------------------------------------------

    def _server_record(self) -> ServerRecord:
        return ServerRecord(
            server_id=self.server_id,
            peer_address=self.peer_address,
            started_at=self._started_at,
            metadata=self._metadata,
        )

    async def _register_server(self) -> None:
        await self.directory.register_server(self._server_record())

    async def _register_again(self) -> None:
        await self._register_server()
        for info in list(self.server.clients):
            if not _not_listed(info) and not info.closed:
                await self._register_client(info, reclaim=True)

    def _record_of(self, info: ClientInfo[Any]) -> ClientRecord:
        identity = info.identity
        return ClientRecord(
            connection_id=info.connection_id,
            server_id=self.server_id,
            name=info.name,
            labels=info.labels,
            services=info.services,
            address=_address_text(info.address),
            connected_at=info.connected_at,
            identity_name=identity.name if identity is not None else None,
        )

    async def _register_client(self, info: ClientInfo[Any], *, reclaim: bool = False) -> None:
        """Record the client and, unless its hello claimed it already, claim its name.

        ``reclaim``: claim even so (the server registers again after a lapse,
        which dropped every name its clients held).
        """
        await self.directory.register_client(self._record_of(info))
        claimed = self._claims.pop(info.connection_id, None)
        if not info.name or (claimed is not None and not reclaim):
            return
        claim = await self.directory.claim_name(
            info.name,
            info.connection_id,
            self.server_id,
            policy=self.duplicate_names,
            identity=_identity_key(info.identity),
        )
        if claim.claimed:
            return
        # Claimed after admission: the directory could not be asked during the hello.
        log.info(
            "client %r (%s) refused: the name is held on server %s",
            info.name,
            info.connection_id,
            claim.holder.server_id if claim.holder is not None else "?",
        )
        await self.directory.unregister_client(self.server_id, info.connection_id)
        info.close(_refusal_text(info.name, self.duplicate_names))

    async def admit_name(
        self,
        name: str,
        connection_id: str,
        identity: Identity | None,
        *,
        replacing: str | None = None,
    ) -> str | None:
        """Claim ``name`` cluster-wide for a hello (called by ``Server``): None admits it,
        else the reason to refuse it. See :meth:`brpc.server.ClusterHook.admit_name`."""
        if (
            self._closed
            or self.duplicate_names is DuplicateNames.ALLOW
            or name.startswith(_PEER_NAME_PREFIX)
        ):
            return None  # ALLOW: claimed at registration, which never refuses
        claiming = asyncio.ensure_future(
            self._claim_for_hello(name, connection_id, identity, replacing)
        )
        try:
            return await asyncio.shield(claiming)
        except asyncio.CancelledError:
            # The hello was abandoned (its connection ended): give back what it took.
            claiming.add_done_callback(lambda _: self._spawn(self.withdraw_name(connection_id)))
            raise

    async def _claim_for_hello(
        self, name: str, connection_id: str, identity: Identity | None, replacing: str | None
    ) -> str | None:
        try:
            if replacing is not None:
                # The client's own earlier connection: its name goes before the claim.
                await self.directory.unregister_client(self.server_id, replacing)
            claim = await self.directory.claim_name(
                name,
                connection_id,
                self.server_id,
                policy=self.duplicate_names,
                identity=_identity_key(identity),
            )
        except (DirectoryUnavailable, ServerNotRegistered) as exc:
            log.warning(
                "claiming name %r for %s: %s; claiming it once the client is registered",
                name,
                connection_id,
                exc,
            )
            return None
        if claim.claimed:
            self._claims[connection_id] = (name, claim.epoch)
            return None
        log.info(
            "refused name %r for %s: held on server %s",
            name,
            connection_id,
            claim.holder.server_id if claim.holder is not None else "?",
        )
        return _refusal_text(name, self.duplicate_names)

    async def withdraw_name(self, connection_id: str) -> None:
        """Release the name claimed for a hello refused after all (called by ``Server``)."""
        held = self._claims.pop(connection_id, None)
        if held is None:
            return
        name, epoch = held
        try:
            await self.directory.release_name(name, connection_id, epoch)
        except DirectoryUnavailable as exc:
            log.warning("releasing name %r of %s: %s", name, connection_id, exc)

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _client_connected(self, info: ClientInfo[Any]) -> None:
        if _not_listed(info) or self._closed:
            return
        try:
            await self._register_client(info)
        except (DirectoryUnavailable, ServerNotRegistered) as exc:
            # keep_alive registers every client again once the directory is back.
            log.warning("registering client %s: %s", info.connection_id, exc)

    async def _client_left(self, info: ClientInfo[Any]) -> None:
        if _not_listed(info) or self._closed:
            return
        try:
            await self.directory.unregister_client(self.server_id, info.connection_id)
            # A name claimed by the hello of a client that was never registered.
            await self.withdraw_name(info.connection_id)
        except DirectoryUnavailable as exc:
            log.warning("unregistering client %s: %s", info.connection_id, exc)

    async def _follow_names(self) -> None:
        """Close this server's clients whose name was claimed on another server (REPLACE)."""
        while not self._closed:
            try:
                async with self.directory.changes() as feed:
                    async for change in feed:
                        displaced = change.displaced
                        if (
                            change.kind is ChangeKind.NAME_CLAIMED
                            and displaced is not None
                            and displaced.server_id == self.server_id
                            and change.holder is not None
                            and change.holder.server_id != self.server_id
                        ):
                            self._close_displaced(change.name, displaced.connection_id)
                return
            except DirectoryUnavailable:
                return  # the directory is closed
            except Exception:
                log.exception("following name claims failed; starting over")
            await asyncio.sleep(0.5)

    def _close_displaced(self, name: str, connection_id: str) -> None:
        info = self.server.clients.get(connection_id)
        if info is None:
            return
        log.info("client %r (%s) replaced on another server", name, connection_id)
        info.close(f"replaced by a newer connection with the same name {name!r} on another server")

    # -- peers: connections ---------------------------------------------------------------

    async def _dial_peers(self) -> None:
        """Keep a connection to every other live server the replica knows."""
        while not self._closed:
            for server_id, record in list(self.replica.servers.items()):
                if server_id != self.server_id:
                    self._ensure_peer(record)
            for server_id in list(self._peers):
                if server_id not in self.replica.servers and self.replica.available:
                    _, conn = self._peers.pop(server_id)
                    conn.close()
            # Wake up for a new or departed server, else retry failed dials each second.
            with contextlib.suppress(TimeoutError):
                await self.replica.wait_until(self._peers_to_change, timeout=1.0)

    def _peers_to_change(self) -> bool:
        servers = self.replica.servers
        now = time.monotonic()
        for server_id in servers:
            if server_id == self.server_id or server_id in self._dialing:
                continue
            if server_id not in self._peers and now >= self._dial_after.get(server_id, 0.0):
                return True
        return self.replica.available and any(sid not in servers for sid in self._peers)

    def _ensure_peer(self, record: ServerRecord) -> None:
        known = self._peers.get(record.server_id)
        if known is not None and known[0] == record.peer_address:
            return
        if record.server_id in self._dialing:
            return
        if time.monotonic() < self._dial_after.get(record.server_id, 0.0):
            return
        task = asyncio.get_running_loop().create_task(
            self._dial_peer(record), name=f"brpc-cluster-dial {record.server_id}"
        )
        self._dialing[record.server_id] = task

    async def _dial_peer(self, record: ServerRecord) -> None:
        try:
            conn = await dial(
                record.peer_address,
                ca=self._peer_ca,
                server_name=self._peer_server_name,
                certfile=self._peer_certfile,
                keyfile=self._peer_keyfile,
                name=f"{_PEER_NAME_PREFIX}{self.server_id}",
                token=self._peer_token,
                dead_peer_timeout=self.dead_peer_timeout,
                keepalive_interval=self.dead_peer_timeout / 4,
                timeout=self.dead_peer_timeout,
            )
        except Exception as exc:
            log.warning(
                "dialing peer server %s at %s: %s", record.server_id, record.peer_address, exc
            )
            self._dial_after[record.server_id] = time.monotonic() + 1.0
            return
        finally:
            self._dialing.pop(record.server_id, None)
        old = self._peers.get(record.server_id)
        self._peers[record.server_id] = (record.peer_address, conn)
        self._peers_changed.set()
        if old is not None:
            await old[1].close()

    async def wait_peers(self, timeout: float | None = None) -> None:
        """Wait until this server has a connection to every other server the replica knows."""
        async with asyncio.timeout(timeout):
            while not all(
                server_id in self._peers
                for server_id in self.replica.servers
                if server_id != self.server_id
            ):
                self._peers_changed.clear()
                await self._peers_changed.wait()

    def _peer_for(self, record: ClientRecord) -> ClientConn:
        if not self.replica.available:
            raise _unavailable(
                "directory unavailable: cannot tell where client "
                f"{record.name or record.connection_id} is"
            )
        current = self.replica.get(record.connection_id)
        if current is None or current.server_id != record.server_id:
            raise _unavailable(
                f"client {record.name or record.connection_id} is no longer connected to "
                f"server {record.server_id}"
            )
        peer = self._peers.get(record.server_id)
        if peer is None:
            server = self.replica.servers.get(record.server_id)
            if server is not None:
                self._ensure_peer(server)
            raise _unavailable(
                f"no connection to server {record.server_id} holding client "
                f"{record.name or record.connection_id} yet; try again"
            )
        return peer[1]

    # -- lookups --------------------------------------------------------------------------

    def _client_stub(self) -> Callable[[Channel], C]:
        factory = self.server.client_stub
        if factory is None:
            raise RuntimeError(
                "calling clients needs the clients' stub class: make the Server with "
                "client_stub=... (for example client_stub=AgentStub)"
            )
        return factory

    def _local(self, connection_id: str) -> ClusterClient[C] | None:
        info = self.server.clients.get(connection_id)
        if info is None or _not_listed(info):
            return None
        record = self.replica.get(connection_id) or self._record_of(info)
        return ClusterClient(self, record, info)

    def _entry(self, record: ClientRecord) -> ClusterClient[C]:
        info = None
        if record.server_id == self.server_id:
            info = self.server.clients.get(record.connection_id)
        return ClusterClient(self, record, info)

    def watch(self, *, existing: bool = True, max_pending: int = 1024) -> ReplicaWatch:
        """Presence of the whole cluster's clients (see :class:`~brpc.cluster.ReplicaWatch`)."""
        return self.replica.watch(existing=existing, max_pending=max_pending)

    def call_all(
        self,
        fn: Callable[[C, ClientInfo[C]], Awaitable[T]],
        *,
        select: Callable[[ClusterClient[C]], bool]
        | Mapping[str, str]
        | str
        | Iterable[ClusterEntry[C]]
        | None = None,
        timeout: float | None = None,
        concurrency: int | None = None,
    ) -> FanOut[C, T]:
        """``fn(stub, entry)`` for every selected client of the cluster, results as they complete.

        ``select`` as for ``server.call_all``: a predicate on
        :class:`ClusterClient`, a mapping of labels, a service name, or the
        entries themselves. Each result's ``client`` is the :class:`ClusterClient`.
        """
        self._client_stub()
        entries: Sequence[ClusterEntry[C]]
        if select is None:
            entries = list(self.clients)
        elif isinstance(select, str):
            entries = self.clients.find(service=select)
        elif isinstance(select, Mapping):
            entries = self.clients.find(labels=select)
        elif callable(select):
            entries = [entry for entry in self.clients if select(entry)]
        else:
            entries = list(select)
        return FanOut(
            fn,
            cast("list[ClientInfo[C]]", entries),
            timeout=timeout,
            concurrency=concurrency,
        )


if TYPE_CHECKING:

    def _is_cluster_hook(cluster: Cluster[C]) -> ClusterHook[C]:
        """What ``Server(cluster=...)`` takes and ``server.cluster`` gives (checked by mypy)."""
        return cluster

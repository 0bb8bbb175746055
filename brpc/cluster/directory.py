"""The cluster directory: which servers are alive and which clients each one holds.

This module owns the :class:`Directory` interface, the records it stores
(:class:`ServerRecord`, :class:`ClientRecord`, :class:`NameHolder`), the answers
it gives (:class:`NameClaim`, :class:`DirectorySnapshot`), its change feed
vocabulary (:class:`Change`, :class:`ChangeKind`), its errors and
:func:`keep_alive`, the renewal loop a server runs. Implementations live beside
it (:mod:`brpc.cluster.memory`, :mod:`brpc.cluster.redis`); the local copy that
answers lookups is :mod:`brpc.cluster.replica`.

The model:

- Each server registers a liveness record with a TTL and renews it every
  ``ttl / 3``. Client records hang off their server: renewing a server keeps
  all its clients, so renewals cost O(servers), not O(clients). When a server's
  liveness lapses, it and its clients are gone together (one ``SERVER_DOWN``
  change); registering a server starts a new incarnation with no clients.
- The name index maps a client name to its current holder with an epoch that
  only ever grows per name, so the duplicate-name policy holds across servers:
  under REPLACE the newer claim with the same identity wins and the claim (and
  its NAME_CLAIMED change) says which holder it displaced: the server holding
  that connection closes it; under REJECT a
  claim on a name held by a live holder is refused. A release only takes effect
  when the epoch still matches, so a late release never drops a newer claim.
  Unregistering a client releases the name it holds.
- Every change gets a sequence number, increasing by one per change. The change
  feed yields them in order; :meth:`Directory.snapshot` gives the full state
  with the sequence number it reflects, so a replica can apply later changes
  on top of it and detect a gap (a missed change) as a jump in the sequence.
"""

from __future__ import annotations

import abc
import asyncio
import enum
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType, TracebackType
from typing import Any

from ..errors import BrpcError
from ..registry import DuplicateNames

__all__ = [
    "DEFAULT_TTL",
    "Change",
    "ChangeFeed",
    "ChangeKind",
    "ClientRecord",
    "Directory",
    "DirectorySnapshot",
    "DirectoryUnavailable",
    "NameClaim",
    "NameHolder",
    "ServerNotRegistered",
    "ServerRecord",
    "keep_alive",
]

log = logging.getLogger(__name__)

#: Seconds a server's liveness record lasts without renewal.
DEFAULT_TTL = 15.0


class DirectoryUnavailable(BrpcError, ConnectionError):
    """The directory's backend cannot be reached right now.

    Both a :class:`brpc.BrpcError` and a :class:`ConnectionError`. Operations
    raise it quickly instead of waiting; the change feed reports the outage as
    a ``ChangeKind.UNAVAILABLE`` change and keeps reconnecting by itself.
    """

    def __init__(self, detail: str) -> None:
        super().__init__(f"directory unavailable: {detail}")


class ServerNotRegistered(BrpcError, LookupError):
    """The server is not (or no longer) registered: its liveness lapsed or it never registered.

    Register the server again, then its clients.
    """

    def __init__(self, server_id: str) -> None:
        super().__init__(
            f"server {server_id!r} is not registered in the directory (its liveness may have "
            "lapsed): register the server again, then its clients"
        )
        self.server_id = server_id


def _frozen_labels(labels: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(labels))


@dataclass(frozen=True)
class ServerRecord:
    """A server process in the cluster."""

    server_id: str
    #: Where other servers reach this one (``host:port``).
    peer_address: str
    #: Wall-clock time (``time.time()``) the server started.
    started_at: float
    #: Free-form facts about the server (version, region, ...).
    metadata: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "metadata", _frozen_labels(self.metadata))

    def to_json(self) -> str:
        return json.dumps(
            {
                "server_id": self.server_id,
                "peer_address": self.peer_address,
                "started_at": self.started_at,
                "metadata": dict(self.metadata),
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> ServerRecord:
        data = json.loads(text)
        return cls(
            server_id=str(data["server_id"]),
            peer_address=str(data["peer_address"]),
            started_at=float(data["started_at"]),
            metadata=_str_mapping(data.get("metadata")),
        )


@dataclass(frozen=True)
class ClientRecord:
    """A client connection held by one server."""

    connection_id: str
    #: The server holding the connection.
    server_id: str
    #: The name the client said hello with (``""`` for none).
    name: str
    labels: Mapping[str, str]
    #: Full names of the services the client serves, e.g. ``"fleet.v1.Agent"``.
    services: tuple[str, ...]
    #: The client's network address as the holding server sees it (``host:port``).
    address: str
    #: Wall-clock time (``time.time()``) the client connected.
    connected_at: float
    #: The authenticated identity's name, or None when clients do not authenticate.
    identity_name: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", _frozen_labels(self.labels))
        object.__setattr__(self, "services", tuple(self.services))

    def to_json(self) -> str:
        return json.dumps(
            {
                "connection_id": self.connection_id,
                "server_id": self.server_id,
                "name": self.name,
                "labels": dict(self.labels),
                "services": list(self.services),
                "address": self.address,
                "connected_at": self.connected_at,
                "identity_name": self.identity_name,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> ClientRecord:
        data = json.loads(text)
        identity = data.get("identity_name")
        services = data.get("services") or []
        return cls(
            connection_id=str(data["connection_id"]),
            server_id=str(data["server_id"]),
            name=str(data.get("name") or ""),
            labels=_str_mapping(data.get("labels")),
            services=tuple(str(service) for service in services),
            address=str(data.get("address") or ""),
            connected_at=float(data.get("connected_at") or 0.0),
            identity_name=None if identity is None else str(identity),
        )


def _str_mapping(value: Any) -> dict[str, str]:
    # An empty Lua table round-trips through cjson as [] rather than {}.
    if not value:
        return {}
    return {str(key): str(item) for key, item in dict(value).items()}


@dataclass(frozen=True)
class NameHolder:
    """Who holds a client name, since which claim."""

    server_id: str
    connection_id: str
    #: The claim's epoch: grows by one with every successful claim of the name.
    epoch: int
    #: The claimant's identity key (see :meth:`Directory.claim_name`), or None.
    identity: str | None = None


@dataclass(frozen=True)
class NameClaim:
    """The answer to :meth:`Directory.claim_name`."""

    name: str
    #: True when the caller now holds the name.
    claimed: bool
    #: The caller's epoch when claimed; the live holder's epoch when refused.
    epoch: int
    #: When claimed under REPLACE: the live holder that lost the name. Its server
    #: must close that connection. None when nobody live held it.
    displaced: NameHolder | None = None
    #: When refused under REJECT: the live holder that keeps the name.
    holder: NameHolder | None = None


@dataclass(frozen=True)
class DirectorySnapshot:
    """The directory's full state at change sequence number ``sequence``."""

    sequence: int
    servers: Mapping[str, ServerRecord]
    #: Clients of live servers, by connection ID.
    clients: Mapping[str, ClientRecord]
    #: Current holders of names, by name (only holders on live servers).
    names: Mapping[str, NameHolder]


class ChangeKind(enum.Enum):
    #: A server registered (a new incarnation: it holds no clients yet).
    SERVER_UP = "server_up"
    #: A server unregistered or its liveness lapsed; its clients are gone with it.
    SERVER_DOWN = "server_down"
    CLIENT_ADDED = "client_added"
    CLIENT_REMOVED = "client_removed"
    #: A name got a new holder (``holder``); ``displaced`` lost it, if anyone live did.
    NAME_CLAIMED = "name_claimed"
    #: A name's holder released it (or left).
    NAME_RELEASED = "name_released"
    #: Not a change: the feed lost the directory. Lookups are stale until ``RESYNC``.
    UNAVAILABLE = "unavailable"
    #: Not a change: the feed may have missed changes (it reconnected, or fell
    #: behind). Re-read :meth:`Directory.snapshot`.
    RESYNC = "resync"


@dataclass(frozen=True)
class Change:
    """One entry of the change feed. Which fields are set depends on ``kind``."""

    kind: ChangeKind
    #: The change's sequence number (0 for the UNAVAILABLE and RESYNC markers).
    sequence: int = 0
    server_id: str = ""
    #: SERVER_UP: the server's record.
    server: ServerRecord | None = None
    #: CLIENT_REMOVED: the connection that left (its server is ``server_id``).
    connection_id: str = ""
    #: CLIENT_ADDED: the client's record.
    client: ClientRecord | None = None
    #: NAME_CLAIMED and NAME_RELEASED: the name.
    name: str = ""
    #: NAME_CLAIMED: the new holder; NAME_RELEASED: the holder that released it.
    holder: NameHolder | None = None
    #: NAME_CLAIMED: the live holder that lost the name, if any.
    displaced: NameHolder | None = None
    #: UNAVAILABLE: what went wrong.
    detail: str = ""

    @property
    def is_marker(self) -> bool:
        """True for UNAVAILABLE and RESYNC, which describe the feed rather than the directory."""
        return self.kind in (ChangeKind.UNAVAILABLE, ChangeKind.RESYNC)


class ChangeFeed(abc.ABC):
    """An async iterator of :class:`Change`\\ s; close it with :meth:`aclose` or ``async with``.

    Implementations never end the iteration on their own while the directory is
    open: an outage is reported as an UNAVAILABLE marker, followed by a RESYNC
    marker once the backend is reachable again.
    """

    def __aiter__(self) -> ChangeFeed:
        return self

    @abc.abstractmethod
    async def __anext__(self) -> Change: ...

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Stop receiving changes; iteration ends."""

    async def __aenter__(self) -> ChangeFeed:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class Directory(abc.ABC):
    """Where the servers of a cluster record themselves and their clients.

    Every operation either completes or raises :class:`DirectoryUnavailable`
    quickly; none waits for an outage to end.
    """

    @property
    @abc.abstractmethod
    def ttl(self) -> float:
        """Seconds a server's liveness lasts without renewal."""

    @property
    def renew_interval(self) -> float:
        """How often a server renews its liveness: a third of the TTL."""
        return self.ttl / 3

    # -- servers -------------------------------------------------------------------------

    @abc.abstractmethod
    async def register_server(self, record: ServerRecord) -> None:
        """Register (or re-register) a server, as a new incarnation holding no clients."""

    @abc.abstractmethod
    async def renew_server(self, server_id: str) -> bool:
        """Extend the server's liveness by a TTL from now.

        False when its liveness had already lapsed (or it never registered): the
        cluster dropped it and its clients, so register it again, then its
        clients. Renewing is also when implementations drop other lapsed servers.
        """

    @abc.abstractmethod
    async def unregister_server(self, server_id: str) -> None:
        """Remove a server and all its clients now (a clean shutdown)."""

    # -- clients -------------------------------------------------------------------------

    @abc.abstractmethod
    async def register_client(self, record: ClientRecord) -> None:
        """Record a client under its server (``record.server_id``).

        Raises :class:`ServerNotRegistered` when that server is not live.
        """

    @abc.abstractmethod
    async def unregister_client(self, server_id: str, connection_id: str) -> None:
        """Remove a client (no-op when absent), releasing the name it holds."""

    # -- names ---------------------------------------------------------------------------

    @abc.abstractmethod
    async def claim_name(
        self,
        name: str,
        connection_id: str,
        server_id: str,
        *,
        policy: DuplicateNames = DuplicateNames.REPLACE,
        identity: str | None = None,
    ) -> NameClaim:
        """Claim ``name`` for a connection on ``server_id`` under the duplicate-name policy.

        A holder counts as live while its server is live. REPLACE: the claim
        succeeds and reports the live holder it displaced, but only when both
        have the same ``identity`` (a key of the verified identity, such as
        ``"certificate:agent-7"``; None for unauthenticated clients): a claim
        with another identity is refused as under REJECT. REJECT: refused while
        a live holder exists. ALLOW: always succeeds and displaces nobody
        (several clients may share the name; the index points to the newest).
        Claiming a name the same connection already holds returns its epoch.
        """

    @abc.abstractmethod
    async def release_name(self, name: str, connection_id: str, epoch: int) -> bool:
        """Release ``name`` if ``connection_id`` still holds it at ``epoch``; True if released."""

    # -- reading -------------------------------------------------------------------------

    @abc.abstractmethod
    async def snapshot(self) -> DirectorySnapshot:
        """The full state of live servers, their clients and the names they hold."""

    @abc.abstractmethod
    def changes(self) -> ChangeFeed:
        """A new subscription to the change feed.

        Its first item is a RESYNC marker, yielded once the feed receives every
        later change: read :meth:`snapshot` then, and apply the changes whose
        sequence number is above the snapshot's. Must be called in a running
        event loop.
        """

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the directory's resources; its change feeds end.

        Does not unregister anything: servers that should leave cleanly call
        :meth:`unregister_server` first; the others lapse after the TTL.
        """

    async def __aenter__(self) -> Directory:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


async def keep_alive(
    directory: Directory,
    server_id: str,
    *,
    on_lapse: Callable[[], Awaitable[None]] | None = None,
    interval: float | None = None,
) -> None:
    """Renew ``server_id``'s liveness every ``interval`` (default ``directory.renew_interval``).

    Runs until cancelled. When a renewal finds the liveness lapsed, awaits
    ``on_lapse()``, which should register the server and its clients again (it
    is retried at the next interval if it fails). An unavailable directory is
    logged and retried at the next interval.
    """
    period = directory.renew_interval if interval is None else interval
    if period <= 0:
        raise ValueError("interval must be positive")
    lapsed = False
    while True:
        try:
            if lapsed or not await directory.renew_server(server_id):
                lapsed = True
                log.warning("liveness of server %s lapsed; registering again", server_id)
                if on_lapse is not None:
                    await on_lapse()
                lapsed = False
        except DirectoryUnavailable as exc:
            log.warning("renewing server %s: %s", server_id, exc)
        except Exception:
            log.exception("keeping server %s registered failed; retrying", server_id)
        await asyncio.sleep(period)

"""An in-process directory: :class:`MemoryDirectory`.

This module owns the directory kept in one process's memory, shared by every
server in that process (tests, single-process deployments). Time comes from an
injectable clock, so TTL expiry can be tested by moving the clock rather than
by sleeping. Lapsed servers are dropped at the start of every operation.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

from ..registry import DuplicateNames
from .directory import (
    DEFAULT_TTL,
    Change,
    ChangeFeed,
    ChangeKind,
    ClientRecord,
    Directory,
    DirectorySnapshot,
    DirectoryUnavailable,
    NameClaim,
    NameHolder,
    ServerNotRegistered,
    ServerRecord,
)

__all__ = ["MemoryDirectory"]

_DEFAULT_MAX_PENDING = 10_000


class MemoryDirectory(Directory):
    """A :class:`~brpc.cluster.Directory` in this process's memory.

    ``clock`` gives the time in seconds (default :func:`time.monotonic`); a
    server lapses when ``clock()`` passes its last renewal plus ``ttl``. A
    change feed that falls more than ``max_pending`` changes behind drops them
    and yields a RESYNC marker instead.
    """

    def __init__(
        self,
        *,
        ttl: float = DEFAULT_TTL,
        clock: Callable[[], float] = time.monotonic,
        max_pending: int = _DEFAULT_MAX_PENDING,
    ) -> None:
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        if max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        self._ttl = ttl
        self._clock = clock
        self._max_pending = max_pending
        self._servers: dict[str, ServerRecord] = {}
        self._deadlines: dict[str, float] = {}
        self._clients: dict[str, dict[str, ClientRecord]] = {}
        self._names: dict[str, NameHolder] = {}
        self._epochs: dict[str, int] = {}
        self._sequence = 0
        self._feeds: set[_MemoryFeed] = set()
        self._closed = False

    def __repr__(self) -> str:
        clients = sum(len(held) for held in self._clients.values())
        return f"<MemoryDirectory servers={len(self._servers)} clients={clients}>"

    @property
    def ttl(self) -> float:
        return self._ttl

    # -- servers -------------------------------------------------------------------------

    async def register_server(self, record: ServerRecord) -> None:
        self._begin()
        server_id = record.server_id
        if server_id in self._servers:
            self._drop_server_names(server_id)
        self._servers[server_id] = record
        self._deadlines[server_id] = self._clock() + self._ttl
        self._clients[server_id] = {}
        self._publish(ChangeKind.SERVER_UP, server_id=server_id, server=record)

    async def renew_server(self, server_id: str) -> bool:
        self._begin()
        if server_id not in self._servers:
            return False
        self._deadlines[server_id] = self._clock() + self._ttl
        return True

    async def unregister_server(self, server_id: str) -> None:
        self._begin()
        if server_id in self._servers:
            self._drop_server(server_id)

    # -- clients -------------------------------------------------------------------------

    async def register_client(self, record: ClientRecord) -> None:
        self._begin()
        held = self._clients.get(record.server_id)
        if held is None:
            raise ServerNotRegistered(record.server_id)
        held[record.connection_id] = record
        self._publish(ChangeKind.CLIENT_ADDED, server_id=record.server_id, client=record)

    async def unregister_client(self, server_id: str, connection_id: str) -> None:
        self._begin()
        held = self._clients.get(server_id)
        if held is None:
            return
        record = held.pop(connection_id, None)
        if record is None:
            return
        holder = self._names.get(record.name)
        if record.name and holder is not None and holder.connection_id == connection_id:
            del self._names[record.name]
            self._publish(ChangeKind.NAME_RELEASED, name=record.name, holder=holder)
        self._publish(ChangeKind.CLIENT_REMOVED, server_id=server_id, connection_id=connection_id)

    # -- names ---------------------------------------------------------------------------

    async def claim_name(
        self,
        name: str,
        connection_id: str,
        server_id: str,
        *,
        policy: DuplicateNames = DuplicateNames.REPLACE,
        identity: str | None = None,
    ) -> NameClaim:
        self._begin()
        if not name:
            raise ValueError("an empty name cannot be claimed")
        if identity == "":
            raise ValueError("identity must be None or a non-empty string")
        if server_id not in self._servers:
            raise ServerNotRegistered(server_id)
        current = self._names.get(name)
        if current is not None and current.server_id not in self._servers:
            current = None
        if current is not None and (current.server_id, current.connection_id) == (
            server_id,
            connection_id,
        ):
            return NameClaim(name=name, claimed=True, epoch=current.epoch)
        if current is not None and (
            policy is DuplicateNames.REJECT
            or (policy is DuplicateNames.REPLACE and current.identity != identity)
        ):
            return NameClaim(name=name, claimed=False, epoch=current.epoch, holder=current)
        displaced = current if policy is DuplicateNames.REPLACE else None
        epoch = self._epochs.get(name, 0) + 1
        self._epochs[name] = epoch
        holder = NameHolder(
            server_id=server_id, connection_id=connection_id, epoch=epoch, identity=identity
        )
        self._names[name] = holder
        self._publish(ChangeKind.NAME_CLAIMED, name=name, holder=holder, displaced=displaced)
        return NameClaim(name=name, claimed=True, epoch=epoch, displaced=displaced)

    async def release_name(self, name: str, connection_id: str, epoch: int) -> bool:
        self._begin()
        holder = self._names.get(name)
        if holder is None or holder.connection_id != connection_id or holder.epoch != epoch:
            return False
        del self._names[name]
        self._publish(ChangeKind.NAME_RELEASED, name=name, holder=holder)
        return True

    # -- reading -------------------------------------------------------------------------

    async def snapshot(self) -> DirectorySnapshot:
        self._begin()
        return DirectorySnapshot(
            sequence=self._sequence,
            servers=dict(self._servers),
            clients={
                connection_id: record
                for held in self._clients.values()
                for connection_id, record in held.items()
            },
            names={
                name: holder
                for name, holder in self._names.items()
                if holder.server_id in self._servers
            },
        )

    def changes(self) -> ChangeFeed:
        if self._closed:
            raise DirectoryUnavailable("the directory is closed")
        feed = _MemoryFeed(self, self._max_pending)
        self._feeds.add(feed)
        return feed

    async def close(self) -> None:
        self._closed = True
        for feed in list(self._feeds):
            feed.end()
        self._feeds.clear()

    # -- internals -----------------------------------------------------------------------

    def _begin(self) -> None:
        """Refuse when closed; drop servers whose liveness lapsed."""
        if self._closed:
            raise DirectoryUnavailable("the directory is closed")
        now = self._clock()
        for server_id, deadline in list(self._deadlines.items()):
            if deadline <= now:
                self._drop_server(server_id)

    def _drop_server(self, server_id: str) -> None:
        self._drop_server_names(server_id)
        del self._servers[server_id]
        del self._deadlines[server_id]
        del self._clients[server_id]
        self._publish(ChangeKind.SERVER_DOWN, server_id=server_id)

    def _drop_server_names(self, server_id: str) -> None:
        # Quietly: SERVER_DOWN / SERVER_UP already tell replicas the holders are gone.
        for name, holder in list(self._names.items()):
            if holder.server_id == server_id:
                del self._names[name]

    def _publish(
        self,
        kind: ChangeKind,
        *,
        server_id: str = "",
        server: ServerRecord | None = None,
        connection_id: str = "",
        client: ClientRecord | None = None,
        name: str = "",
        holder: NameHolder | None = None,
        displaced: NameHolder | None = None,
    ) -> None:
        self._sequence += 1
        change = Change(
            kind=kind,
            sequence=self._sequence,
            server_id=server_id,
            server=server,
            connection_id=connection_id,
            client=client,
            name=name,
            holder=holder,
            displaced=displaced,
        )
        for feed in self._feeds:
            feed.push(change)

    def _forget(self, feed: _MemoryFeed) -> None:
        self._feeds.discard(feed)


class _MemoryFeed(ChangeFeed):
    def __init__(self, directory: MemoryDirectory, max_pending: int) -> None:
        self._directory = directory
        self._max_pending = max_pending
        # Like every feed, it starts by telling its reader to read a snapshot.
        self._pending: deque[Change] = deque([Change(kind=ChangeKind.RESYNC)])
        self._wakeup = asyncio.Event()
        self._ended = False

    def push(self, change: Change) -> None:
        if self._ended:
            return
        if len(self._pending) >= self._max_pending:
            self._pending.clear()
            self._pending.append(Change(kind=ChangeKind.RESYNC))
        else:
            self._pending.append(change)
        self._wakeup.set()

    def end(self) -> None:
        self._ended = True
        self._wakeup.set()

    async def __anext__(self) -> Change:
        while not self._pending:
            if self._ended:
                raise StopAsyncIteration
            self._wakeup.clear()
            await self._wakeup.wait()
        return self._pending.popleft()

    async def aclose(self) -> None:
        self.end()
        self._pending.clear()
        self._directory._forget(self)

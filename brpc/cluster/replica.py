"""A local copy of the directory that answers lookups from memory: :class:`DirectoryReplica`.

This module owns the replica's indexes (clients by connection ID, server,
name, label and service), how changes from the feed and snapshots update them,
and the presence events derived from them (:class:`ClientPresence`,
:class:`ReplicaWatch`).

The replica follows the directory's change feed. It reads a full snapshot when
the feed asks (on start and after every reconnect), when it sees a gap in the
changes' sequence numbers, and every ``resync_interval`` seconds, which
repairs anything missed. While the directory is unreachable it keeps answering
from what it last knew, with :attr:`DirectoryReplica.available` False. When
the directory comes back without its data (a Redis restarted without
persistence), the servers and clients it lost stay for ``rejoin_grace``
seconds (default: the directory's TTL) while the servers register again, so
watchers are told only about the clients that do not return.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType, TracebackType
from typing import TypeVar

from .directory import (
    Change,
    ChangeFeed,
    ChangeKind,
    ClientRecord,
    Directory,
    DirectorySnapshot,
    DirectoryUnavailable,
    NameHolder,
    ServerRecord,
)

__all__ = ["ClientPresence", "DirectoryReplica", "ReplicaWatch"]

log = logging.getLogger(__name__)

_DEFAULT_MAX_PENDING = 1024


@dataclass(frozen=True, eq=False)
class ClientPresence:
    """A client appeared in the replica (``connected``) or left it."""

    connected: bool
    client: ClientRecord
    #: Made up from the replica's state rather than seen as a change: the clients
    #: present when a watch began, or the difference after a watcher fell behind.
    replayed: bool = False

    @property
    def disconnected(self) -> bool:
        return not self.connected

    def __repr__(self) -> str:
        kind = "connected" if self.connected else "disconnected"
        replayed = " replayed" if self.replayed else ""
        return (
            f"<ClientPresence {kind}{replayed} {self.client.connection_id} "
            f"name={self.client.name!r} server={self.client.server_id!r}>"
        )


class DirectoryReplica:
    """Lookups over the whole cluster's clients, answered from a local copy.

    Use as ``async with DirectoryReplica(directory) as replica:`` or call
    :meth:`start` and :meth:`close`. Iteration and lists are snapshots in
    connection order (``connected_at``).
    """

    def __init__(
        self,
        directory: Directory,
        *,
        resync_interval: float = 30.0,
        rejoin_grace: float | None = None,
        retry_initial: float = 0.05,
        retry_max: float = 2.0,
    ) -> None:
        if resync_interval <= 0:
            raise ValueError("resync_interval must be positive")
        if rejoin_grace is not None and rejoin_grace < 0:
            raise ValueError("rejoin_grace must not be negative")
        if not 0 < retry_initial <= retry_max:
            raise ValueError("need 0 < retry_initial <= retry_max")
        self._directory = directory
        self._resync_interval = resync_interval
        self._rejoin_grace = directory.ttl if rejoin_grace is None else rejoin_grace
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self._servers: dict[str, ServerRecord] = {}
        self._names: dict[str, NameHolder] = {}
        self._by_id: dict[str, ClientRecord] = {}
        self._by_server: dict[str, dict[str, ClientRecord]] = {}
        self._by_name: dict[str, dict[str, ClientRecord]] = {}
        self._by_label: dict[tuple[str, str], dict[str, ClientRecord]] = {}
        self._by_service: dict[str, dict[str, ClientRecord]] = {}
        #: Sequence number of the last change applied; None before the first snapshot.
        self._sequence: int | None = None
        self._available = False
        self._synced = asyncio.Event()
        self._changed = asyncio.Event()
        self._sync_lock = asyncio.Lock()
        self._watchers: set[ReplicaWatch] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._resyncs = 0
        #: After the directory lost its data: servers and clients kept from before
        #: until they register again or the rejoin grace ends.
        self._carried_servers: dict[str, ServerRecord] = {}
        self._carried_clients: set[str] = set()
        self._carry_timer: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        state = "available" if self._available else "stale"
        return f"<DirectoryReplica {state} servers={len(self._servers)} clients={len(self._by_id)}>"

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Start following the directory (returns at once; see :meth:`wait_ready`)."""
        if self._tasks:
            return
        if self._closed:
            raise RuntimeError("the replica is closed")
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._follow(), name="brpc-replica-follow"),
            loop.create_task(self._resync_periodically(), name="brpc-replica-resync"),
        ]

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until the replica has read its first snapshot."""
        async with asyncio.timeout(timeout):
            await self._synced.wait()

    async def close(self) -> None:
        """Stop following the directory and end every watch (the directory stays open)."""
        self._closed = True
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
        if self._carry_timer is not None:
            self._carry_timer.cancel()
            self._carry_timer = None
        for watch in list(self._watchers):
            watch._end()
        self._available = False
        self._notify()

    async def __aenter__(self) -> DirectoryReplica:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- state ---------------------------------------------------------------------------

    @property
    def available(self) -> bool:
        """True while the replica follows a reachable directory; False means stale."""
        return self._available

    @property
    def stale(self) -> bool:
        return not self._available

    @property
    def sequence(self) -> int | None:
        """Sequence number of the last change reflected (None before the first snapshot)."""
        return self._sequence

    @property
    def resyncs(self) -> int:
        """How many snapshots the replica has read."""
        return self._resyncs

    def require_available(self) -> None:
        """Raise :class:`DirectoryUnavailable` unless the replica is up to date."""
        if not self._available:
            raise DirectoryUnavailable("the local replica of the cluster directory is stale")

    async def wait_until(self, predicate: Callable[[], bool], timeout: float | None = None) -> None:
        """Wait until ``predicate()`` holds, re-checking after every change to the replica."""
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    async def resync(self) -> None:
        """Read a snapshot now and bring the replica in line with it.

        Raises :class:`DirectoryUnavailable` when the directory cannot be read.
        """
        await self._resync_once(force=True)

    # -- lookups -------------------------------------------------------------------------

    @property
    def servers(self) -> Mapping[str, ServerRecord]:
        """The live servers, by server ID (a read-only view)."""
        return MappingProxyType(self._servers)

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[ClientRecord]:
        return iter(list(self._by_id.values()))

    def __contains__(self, item: object) -> bool:
        if isinstance(item, str):
            return item in self._by_id
        connection_id = getattr(item, "connection_id", None)
        return isinstance(connection_id, str) and connection_id in self._by_id

    def get(self, connection_id: str) -> ClientRecord | None:
        """The client with this connection ID, or None."""
        return self._by_id.get(connection_id)

    def named(self, name: str) -> ClientRecord | None:
        """The client holding ``name`` (else the newest called so), or None; None for ``""``."""
        if not name:
            return None
        holder = self._names.get(name)
        if holder is not None:
            record = self._by_id.get(holder.connection_id)
            if record is not None:
                return record
        bucket = self._by_name.get(name)
        if not bucket:
            return None
        return max(bucket.values(), key=lambda record: record.connected_at)

    def holder(self, name: str) -> NameHolder | None:
        """The name index's current holder of ``name``, or None."""
        return self._names.get(name)

    def find(
        self,
        *,
        name: str | None = None,
        labels: Mapping[str, str] | None = None,
        service: str | None = None,
        server_id: str | None = None,
        where: Callable[[ClientRecord], bool] | None = None,
    ) -> list[ClientRecord]:
        """Clients matching every criterion given, in connection order (everyone for none)."""
        buckets: list[dict[str, ClientRecord]] = []
        if name is not None:
            buckets.append(self._by_name.get(name, {}))
        for pair in (labels or {}).items():
            buckets.append(self._by_label.get(pair, {}))
        if service is not None:
            buckets.append(self._by_service.get(service, {}))
        if server_id is not None:
            buckets.append(self._by_server.get(server_id, {}))
        if not buckets:
            candidates = list(self._by_id.values())
        else:
            smallest = min(buckets, key=len)
            others = [bucket for bucket in buckets if bucket is not smallest]
            candidates = [
                record
                for connection_id, record in smallest.items()
                if all(connection_id in bucket for bucket in others)
            ]
            candidates.sort(key=lambda record: record.connected_at)
        if where is None:
            return candidates
        return [record for record in candidates if where(record)]

    def watch(
        self, *, existing: bool = True, max_pending: int = _DEFAULT_MAX_PENDING
    ) -> ReplicaWatch:
        """Presence of the cluster's clients: ``async for event in replica.watch(): ...``.

        ``existing`` first yields the clients present now (as replayed events).
        """
        if max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        watch = ReplicaWatch(self, existing=existing, max_pending=max_pending)
        if self._closed:
            watch._end()
        else:
            self._watchers.add(watch)
        return watch

    # -- following the directory ---------------------------------------------------------

    async def _follow(self) -> None:
        delay = self._retry_initial
        while not self._closed:
            try:
                feed: ChangeFeed = self._directory.changes()
            except DirectoryUnavailable as exc:
                self._mark_unavailable(str(exc))
                return  # the directory is closed
            try:
                async for change in feed:
                    await self._handle(change)
                    delay = self._retry_initial
                self._mark_unavailable("the directory's change feed ended")
                return
            except Exception:
                log.exception("following the directory failed; starting over")
            finally:
                await feed.aclose()
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, self._retry_max)

    async def _handle(self, change: Change) -> None:
        if change.kind is ChangeKind.UNAVAILABLE:
            self._mark_unavailable(change.detail)
            return
        if change.kind is ChangeKind.RESYNC:
            # The feed (re)connected: the snapshot wins even if its sequence number is
            # lower, as after a Redis restart that lost the data.
            await self._resync_until_done(force=True)
            return
        if self._sequence is None or change.sequence <= self._sequence:
            return  # before the snapshot, or already in it
        if change.sequence != self._sequence + 1:
            log.info(
                "directory changes %d..%d missed; resynchronising",
                self._sequence + 1,
                change.sequence - 1,
            )
            await self._resync_until_done(force=True)
            return
        self._apply(change)
        self._sequence = change.sequence
        self._notify()

    async def _resync_until_done(self, *, force: bool = False) -> None:
        delay = self._retry_initial
        while not self._closed:
            try:
                await self._resync_once(force=force)
                return
            except DirectoryUnavailable as exc:
                self._mark_unavailable(str(exc))
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, self._retry_max)

    async def _resync_periodically(self) -> None:
        while not self._closed:
            await asyncio.sleep(self._resync_interval)
            try:
                await self._resync_once()
            except DirectoryUnavailable as exc:
                self._mark_unavailable(str(exc))
            except Exception:
                log.exception("periodic resync of the directory replica failed")

    async def _resync_once(self, *, force: bool = False) -> None:
        async with self._sync_lock:
            try:
                snapshot = await self._directory.snapshot()
            except DirectoryUnavailable as exc:
                self._mark_unavailable(str(exc))
                raise
            if not force and self._sequence is not None and snapshot.sequence < self._sequence:
                # Older than the changes already applied (read while they arrived), or
                # the directory lost its data and the feed has not reconnected yet:
                # either way the feed's RESYNC marker will bring the state in line.
                return
            lost_data = self._sequence is not None and snapshot.sequence < self._sequence
            if lost_data and self._rejoin_grace > 0:
                self._carry_over(snapshot)
            self._load(snapshot)
            self._resyncs += 1
            self._available = True
            self._synced.set()
            self._notify()

    def _mark_unavailable(self, detail: str) -> None:
        if self._available:
            log.warning("cluster directory unavailable; lookups are stale: %s", detail)
        self._available = False
        self._notify()

    def _notify(self) -> None:
        self._changed.set()

    # -- applying ------------------------------------------------------------------------

    def _carry_over(self, snapshot: DirectorySnapshot) -> None:
        """Keep what the directory lost (a restart without its data) for the rejoin grace.

        Servers register again with their clients at their next renewal; until
        then, or until the grace ends, their old entries stay and watchers are not
        told that the whole cluster left and came back.
        """
        for server_id, record in self._servers.items():
            if server_id not in snapshot.servers:
                self._carried_servers[server_id] = record
        self._carried_clients.update(
            connection_id for connection_id in self._by_id if connection_id not in snapshot.clients
        )
        if self._carry_timer is not None:
            self._carry_timer.cancel()
        self._carry_timer = asyncio.get_running_loop().call_later(
            self._rejoin_grace, self._end_carry_over
        )
        log.warning(
            "the cluster directory lost its data; keeping %d servers and %d clients for "
            "%.1f s while they register again",
            len(self._carried_servers),
            len(self._carried_clients),
            self._rejoin_grace,
        )

    def _end_carry_over(self) -> None:
        self._carry_timer = None
        for connection_id in list(self._carried_clients):
            self._remove(connection_id)
        for server_id in self._carried_servers:
            if not self._by_server.get(server_id):
                self._servers.pop(server_id, None)
        self._carried_clients.clear()
        self._carried_servers.clear()
        self._notify()

    def _load(self, snapshot: DirectorySnapshot) -> None:
        """Replace the state with ``snapshot``, telling watchers the differences."""
        self._servers = {**self._carried_servers, **snapshot.servers}
        self._names = dict(snapshot.names)
        fresh = snapshot.clients
        for connection_id, record in list(self._by_id.items()):
            if connection_id in self._carried_clients and connection_id not in fresh:
                continue
            if fresh.get(connection_id) != record:
                self._remove(connection_id)
        for record in sorted(fresh.values(), key=lambda record: record.connected_at):
            if record.connection_id not in self._by_id:
                self._add(record)
        self._sequence = snapshot.sequence

    def _apply(self, change: Change) -> None:
        kind = change.kind
        if kind is ChangeKind.SERVER_UP and change.server is not None:
            if self._carried_servers.pop(change.server_id, None) is None:
                self._drop_server(change.server_id)
            # Else it rejoins after the directory lost its data: its carried clients
            # stay until they register again or the rejoin grace ends.
            self._servers[change.server_id] = change.server
        elif kind is ChangeKind.SERVER_DOWN:
            self._carried_servers.pop(change.server_id, None)
            self._drop_server(change.server_id)
            self._servers.pop(change.server_id, None)
        elif kind is ChangeKind.CLIENT_ADDED and change.client is not None:
            record = change.client
            self._carried_clients.discard(record.connection_id)
            if self._by_id.get(record.connection_id) != record:
                self._remove(record.connection_id)
                self._add(record)
        elif kind is ChangeKind.CLIENT_REMOVED:
            self._remove(change.connection_id)
        elif kind is ChangeKind.NAME_CLAIMED and change.holder is not None:
            self._names[change.name] = change.holder
        elif kind is ChangeKind.NAME_RELEASED and self._names.get(change.name) == change.holder:
            del self._names[change.name]

    def _drop_server(self, server_id: str) -> None:
        for connection_id in list(self._by_server.get(server_id, {})):
            self._remove(connection_id)
        for name, holder in list(self._names.items()):
            if holder.server_id == server_id:
                del self._names[name]

    def _add(self, record: ClientRecord) -> None:
        connection_id = record.connection_id
        self._by_id[connection_id] = record
        self._by_server.setdefault(record.server_id, {})[connection_id] = record
        self._by_name.setdefault(record.name, {})[connection_id] = record
        for pair in record.labels.items():
            self._by_label.setdefault(pair, {})[connection_id] = record
        for service in record.services:
            self._by_service.setdefault(service, {})[connection_id] = record
        self._tell(ClientPresence(connected=True, client=record))

    def _remove(self, connection_id: str) -> None:
        record = self._by_id.pop(connection_id, None)
        if record is None:
            return
        self._carried_clients.discard(connection_id)
        _discard(self._by_server, record.server_id, connection_id)
        _discard(self._by_name, record.name, connection_id)
        for pair in record.labels.items():
            _discard(self._by_label, pair, connection_id)
        for service in record.services:
            _discard(self._by_service, service, connection_id)
        self._tell(ClientPresence(connected=False, client=record))

    def _tell(self, event: ClientPresence) -> None:
        for watch in self._watchers:
            watch._push(event)

    def _forget(self, watch: ReplicaWatch) -> None:
        self._watchers.discard(watch)


_K = TypeVar("_K")


def _discard(index: dict[_K, dict[str, ClientRecord]], key: _K, connection_id: str) -> None:
    bucket = index.get(key)
    if bucket is not None:
        bucket.pop(connection_id, None)
        if not bucket:
            del index[key]


class ReplicaWatch:
    """Presence events of the replica's clients, in order (``async for``).

    Holds at most ``max_pending`` undelivered events; a reader that falls
    further behind gets, when it reads again, the difference between what it
    was last told and the replica's state, as replayed events.
    """

    def __init__(self, replica: DirectoryReplica, *, existing: bool, max_pending: int) -> None:
        self._replica = replica
        self._max_pending = max_pending
        self._known: dict[str, ClientRecord] = {}
        self._pending: deque[ClientPresence] = deque()
        self._behind = False
        self._wakeup = asyncio.Event()
        self._ended = False
        if existing:
            for record in replica:
                self._pending.append(ClientPresence(connected=True, client=record, replayed=True))
            if len(self._pending) > max_pending:
                self._pending.clear()
                self._behind = True

    def __aiter__(self) -> ReplicaWatch:
        return self

    async def __anext__(self) -> ClientPresence:
        while True:
            if self._behind:
                self._behind = False
                self._pending.extend(self._difference())
            if self._pending:
                event = self._pending.popleft()
                if event.connected:
                    self._known[event.client.connection_id] = event.client
                else:
                    self._known.pop(event.client.connection_id, None)
                return event
            if self._ended:
                raise StopAsyncIteration
            self._wakeup.clear()
            await self._wakeup.wait()

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def aclose(self) -> None:
        self._end()

    async def __aenter__(self) -> ReplicaWatch:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _push(self, event: ClientPresence) -> None:
        if self._ended:
            return
        if self._behind or len(self._pending) >= self._max_pending:
            self._pending.clear()
            self._behind = True
        else:
            self._pending.append(event)
        self._wakeup.set()

    def _difference(self) -> list[ClientPresence]:
        events: list[ClientPresence] = []
        for connection_id, record in list(self._known.items()):
            if self._replica.get(connection_id) != record:
                events.append(ClientPresence(connected=False, client=record, replayed=True))
        for record in self._replica:
            if self._known.get(record.connection_id) != record:
                events.append(ClientPresence(connected=True, client=record, replayed=True))
        return events

    def _end(self) -> None:
        self._ended = True
        self._pending.clear()
        self._wakeup.set()
        self._replica._forget(self)

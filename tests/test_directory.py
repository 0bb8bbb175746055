"""The cluster directory's contract, run on MemoryDirectory and on RedisDirectory.

RedisDirectory runs against a private redis-server (the ``redis_server``
fixture); each test uses its own key prefix. Expiry is driven by an injected
clock on MemoryDirectory and by a real 1 s TTL on Redis, waiting on the change
feed rather than sleeping.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from brpc import BrpcError, DuplicateNames
from brpc.cluster import (
    ChangeFeed,
    ChangeKind,
    ClientRecord,
    Directory,
    DirectoryReplica,
    DirectoryUnavailable,
    MemoryDirectory,
    NameHolder,
    RedisDirectory,
    ServerNotRegistered,
    ServerRecord,
    keep_alive,
)
from brpc.cluster.directory import Change

pytestmark = pytest.mark.timeout(30)

#: The TTL of the Redis tests that let a server lapse (the others use the default).
REDIS_SHORT_TTL = 2.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Backend:
    """Makes directories of one kind for a test and drives their time."""

    name = ""

    async def make(self, *, short_ttl: bool = False) -> Directory:
        """A directory; ``short_ttl`` for tests that wait for a server to lapse."""
        raise NotImplementedError

    @asynccontextmanager
    async def lapsing(self, directory: Directory, keep: str) -> AsyncIterator[None]:
        """Let a TTL pass while only ``keep`` renews; every other server lapses."""
        raise NotImplementedError
        yield

    async def drop_quietly(self, directory: Directory, server_id: str, connection_id: str) -> None:
        """Remove a client record behind the directory's back (a change nobody hears of)."""
        raise NotImplementedError

    async def close(self) -> None:
        pass


class MemoryBackend(Backend):
    name = "memory"

    def __init__(self) -> None:
        self.clock = FakeClock()
        self.directory = MemoryDirectory(ttl=15.0, clock=self.clock)

    async def make(self, *, short_ttl: bool = False) -> Directory:
        # Several servers in one process share one MemoryDirectory; its clock only
        # moves when a test moves it.
        return self.directory

    @asynccontextmanager
    async def lapsing(self, directory: Directory, keep: str) -> AsyncIterator[None]:
        self.clock.now += 10
        assert await directory.renew_server(keep)
        self.clock.now += 6
        assert await directory.renew_server(keep)
        yield

    async def drop_quietly(self, directory: Directory, server_id: str, connection_id: str) -> None:
        assert isinstance(directory, MemoryDirectory)
        del directory._clients[server_id][connection_id]

    async def close(self) -> None:
        await self.directory.close()


class RedisBackend(Backend):
    name = "redis"

    def __init__(self, url: str) -> None:
        self.url = url
        self.prefix = f"test-{uuid.uuid4().hex[:8]}:"
        self.directories: list[RedisDirectory] = []

    async def make(self, *, short_ttl: bool = False) -> Directory:
        # Each server gets its own client, as separate processes would.
        ttl = REDIS_SHORT_TTL if short_ttl else 15.0
        directory = RedisDirectory(self.url, ttl=ttl, key_prefix=self.prefix)
        self.directories.append(directory)
        return directory

    @asynccontextmanager
    async def lapsing(self, directory: Directory, keep: str) -> AsyncIterator[None]:
        task = asyncio.create_task(keep_alive(directory, keep, interval=REDIS_SHORT_TTL / 4))
        try:
            yield
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    async def drop_quietly(self, directory: Directory, server_id: str, connection_id: str) -> None:
        import redis.asyncio

        raw = redis.asyncio.Redis.from_url(self.url)
        try:
            await raw.hdel(f"{self.prefix}clients:{server_id}", connection_id)
        finally:
            await raw.aclose()

    async def close(self) -> None:
        for directory in self.directories:
            await directory.close()


@pytest.fixture(params=["memory", "redis"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    made: Backend
    if request.param == "memory":
        made = MemoryBackend()
    else:
        made = RedisBackend(request.getfixturevalue("redis_url"))
    yield made
    await made.close()


def server(server_id: str) -> ServerRecord:
    return ServerRecord(
        server_id=server_id, peer_address=f"127.0.0.1:{9000 + len(server_id)}", started_at=1.5
    )


def client(
    connection_id: str,
    server_id: str,
    name: str = "",
    labels: dict[str, str] | None = None,
    services: tuple[str, ...] = ("fleet.v1.Agent",),
    connected_at: float = 0.0,
) -> ClientRecord:
    return ClientRecord(
        connection_id=connection_id,
        server_id=server_id,
        name=name,
        labels=labels or {},
        services=services,
        address="127.0.0.1:5555",
        connected_at=connected_at,
        identity_name=None,
    )


async def next_change(
    feed: ChangeFeed, wanted: Callable[[Change], bool], timeout: float = 5.0
) -> Change:
    """The first change on ``feed`` that ``wanted`` accepts, skipping others."""
    async with asyncio.timeout(timeout):
        async for change in feed:
            if wanted(change):
                return change
    raise AssertionError("the change feed ended")


def kind(wanted: ChangeKind) -> Callable[[Change], bool]:
    return lambda change: change.kind is wanted


# -- records and errors --------------------------------------------------------------------


def test_records_round_trip_through_json() -> None:
    record = ClientRecord(
        connection_id="c1",
        server_id="s1",
        name="agent-7",
        labels={"region": "eu", "tier": "edge"},
        services=("fleet.v1.Agent", "grpc.health.v1.Health"),
        address="10.1.2.3:4567",
        connected_at=12.25,
        identity_name="agent-7",
    )
    assert ClientRecord.from_json(record.to_json()) == record
    assert ClientRecord.from_json(client("c2", "s1").to_json()).identity_name is None
    info = ServerRecord("s1", "127.0.0.1:7000", 3.0, metadata={"version": "1"})
    assert ServerRecord.from_json(info.to_json()) == info
    with pytest.raises(TypeError):
        record.labels["region"] = "us"  # type: ignore[index]


def test_directory_unavailable_is_a_brpc_and_connection_error() -> None:
    error = DirectoryUnavailable("Redis at 127.0.0.1:1: refused")
    assert isinstance(error, BrpcError)
    assert isinstance(error, ConnectionError)
    assert str(error) == "directory unavailable: Redis at 127.0.0.1:1: refused"


# -- the contract, on both backends --------------------------------------------------------


async def test_registrations_show_in_snapshot_and_feed(backend: Backend) -> None:
    directory = await backend.make()
    feed = directory.changes()
    first = await next_change(feed, lambda change: True)
    assert first.kind is ChangeKind.RESYNC
    base = (await directory.snapshot()).sequence

    await directory.register_server(server("s1"))
    await directory.register_client(client("c1", "s1", name="alpha", labels={"k": "v"}))
    await directory.register_client(client("c2", "s1"))
    await directory.unregister_client("s1", "c2")
    await directory.unregister_client("s1", "missing")  # no-op, no change

    changes = [await next_change(feed, lambda change: True) for _ in range(4)]
    assert [change.kind for change in changes] == [
        ChangeKind.SERVER_UP,
        ChangeKind.CLIENT_ADDED,
        ChangeKind.CLIENT_ADDED,
        ChangeKind.CLIENT_REMOVED,
    ]
    assert [change.sequence for change in changes] == [base + 1, base + 2, base + 3, base + 4]
    assert changes[0].server == server("s1")
    assert changes[1].client == client("c1", "s1", name="alpha", labels={"k": "v"})
    assert (changes[3].server_id, changes[3].connection_id) == ("s1", "c2")

    snapshot = await directory.snapshot()
    assert snapshot.sequence == base + 4
    assert snapshot.servers == {"s1": server("s1")}
    assert snapshot.clients == {"c1": client("c1", "s1", name="alpha", labels={"k": "v"})}
    await feed.aclose()


async def test_client_of_unknown_server_is_refused(backend: Backend) -> None:
    directory = await backend.make()
    with pytest.raises(ServerNotRegistered, match="register the server again"):
        await directory.register_client(client("c1", "nowhere"))
    with pytest.raises(ServerNotRegistered):
        await directory.claim_name("alpha", "c1", "nowhere")
    assert await directory.renew_server("nowhere") is False


async def test_lapsed_server_takes_its_clients_with_it(backend: Backend) -> None:
    a = await backend.make(short_ttl=True)
    b = await backend.make(short_ttl=True)
    await a.register_server(server("a"))
    await b.register_server(server("b"))
    await a.register_client(client("a1", "a"))
    for index in range(5):
        await b.register_client(client(f"b{index}", "b", name=f"bee-{index}"))
    await b.claim_name("bee-0", "b0", "b")
    feed = a.changes()
    await next_change(feed, kind(ChangeKind.RESYNC))

    async with backend.lapsing(a, keep="a"):
        down = await next_change(
            feed, lambda change: change.kind is ChangeKind.SERVER_DOWN, timeout=10
        )
    assert down.server_id == "b"

    snapshot = await a.snapshot()
    assert set(snapshot.servers) == {"a"}
    assert set(snapshot.clients) == {"a1"}
    assert snapshot.names == {}
    assert await b.renew_server("b") is False
    with pytest.raises(ServerNotRegistered):
        await b.register_client(client("b9", "b"))
    # The name held on the dead server is free again.
    claim = await a.claim_name("bee-0", "a1", "a", policy=DuplicateNames.REJECT)
    assert claim.claimed
    assert claim.displaced is None
    await feed.aclose()


async def test_renewal_keeps_a_server_and_registering_again_starts_empty(
    backend: Backend,
) -> None:
    directory = await backend.make()
    await directory.register_server(server("s1"))
    await directory.register_client(client("c1", "s1"))
    assert await directory.renew_server("s1") is True
    # A new incarnation of the same server ID holds no clients.
    await directory.register_server(server("s1"))
    assert (await directory.snapshot()).clients == {}
    await directory.register_client(client("c2", "s1"))
    await directory.unregister_server("s1")
    snapshot = await directory.snapshot()
    assert snapshot.servers == {}
    assert snapshot.clients == {}


async def test_name_claims_replace_across_servers(backend: Backend) -> None:
    a = await backend.make()
    b = await backend.make()
    await a.register_server(server("a"))
    await b.register_server(server("b"))
    feed = b.changes()
    await next_change(feed, kind(ChangeKind.RESYNC))

    first = await a.claim_name("agent", "a1", "a")
    assert (first.claimed, first.epoch, first.displaced) == (True, 1, None)
    again = await a.claim_name("agent", "a1", "a")
    assert (again.claimed, again.epoch, again.displaced) == (True, 1, None)

    second = await b.claim_name("agent", "b1", "b", policy=DuplicateNames.REPLACE)
    assert second.claimed
    assert second.epoch == 2
    assert second.displaced == NameHolder("a", "a1", 1)

    claimed = await next_change(
        feed, lambda change: change.kind is ChangeKind.NAME_CLAIMED and change.displaced is not None
    )
    assert claimed.holder == NameHolder("b", "b1", 2)
    assert claimed.displaced == NameHolder("a", "a1", 1)

    # The displaced holder's late release does not drop the newer claim.
    assert await a.release_name("agent", "a1", 1) is False
    assert (await a.snapshot()).names == {"agent": NameHolder("b", "b1", 2)}
    assert await b.release_name("agent", "b1", 1) is False
    assert await b.release_name("agent", "b1", 2) is True
    assert (await a.snapshot()).names == {}
    # Epochs only grow, even after a release.
    third = await a.claim_name("agent", "a2", "a")
    assert (third.claimed, third.epoch, third.displaced) == (True, 3, None)
    await feed.aclose()


async def test_replace_needs_the_same_identity(backend: Backend) -> None:
    a = await backend.make()
    b = await backend.make()
    await a.register_server(server("a"))
    await b.register_server(server("b"))
    first = await a.claim_name("agent-7", "a1", "a", identity="certificate:agent-7")
    assert first.holder is None and first.claimed

    stranger = await b.claim_name("agent-7", "b1", "b", identity="token:mallory")
    assert not stranger.claimed
    assert stranger.holder == NameHolder("a", "a1", first.epoch, "certificate:agent-7")
    anonymous = await b.claim_name("agent-7", "b2", "b")
    assert not anonymous.claimed

    same = await b.claim_name("agent-7", "b3", "b", identity="certificate:agent-7")
    assert same.claimed
    assert same.epoch == first.epoch + 1
    assert same.displaced == NameHolder("a", "a1", first.epoch, "certificate:agent-7")
    assert (await a.snapshot()).names["agent-7"].identity == "certificate:agent-7"


async def test_name_claims_reject_while_a_live_holder_exists(backend: Backend) -> None:
    a = await backend.make()
    b = await backend.make()
    await a.register_server(server("a"))
    await b.register_server(server("b"))
    await a.register_client(client("a1", "a", name="agent"))
    held = await a.claim_name("agent", "a1", "a", policy=DuplicateNames.REJECT)
    assert held.claimed

    refused = await b.claim_name("agent", "b1", "b", policy=DuplicateNames.REJECT)
    assert not refused.claimed
    assert refused.holder == NameHolder("a", "a1", held.epoch)
    assert refused.epoch == held.epoch

    # Unregistering the holder releases its name; then the claim succeeds.
    await a.unregister_client("a", "a1")
    taken = await b.claim_name("agent", "b1", "b", policy=DuplicateNames.REJECT)
    assert taken.claimed
    assert taken.epoch == held.epoch + 1

    # A holder whose server is gone does not block.
    await b.unregister_server("b")
    after = await a.claim_name("agent", "a2", "a", policy=DuplicateNames.REJECT)
    assert after.claimed
    assert after.displaced is None


async def test_allow_displaces_nobody(backend: Backend) -> None:
    directory = await backend.make()
    await directory.register_server(server("s"))
    first = await directory.claim_name("shared", "c1", "s", policy=DuplicateNames.ALLOW)
    second = await directory.claim_name("shared", "c2", "s", policy=DuplicateNames.ALLOW)
    assert first.claimed and second.claimed
    assert second.displaced is None
    assert second.epoch == first.epoch + 1


# -- the replica ---------------------------------------------------------------------------


async def test_replica_answers_lookups_and_watches(backend: Backend) -> None:
    a = await backend.make()
    b = await backend.make()
    await a.register_server(server("a"))
    await b.register_server(server("b"))
    await a.register_client(
        client("a1", "a", name="north", labels={"region": "eu"}, connected_at=1.0)
    )

    async with DirectoryReplica(a) as replica:
        await replica.wait_ready(timeout=5)
        assert replica.available
        assert set(replica.servers) == {"a", "b"}
        watch = replica.watch()
        existing = await anext(watch)
        assert existing.connected and existing.replayed
        assert existing.client.connection_id == "a1"

        await b.register_client(
            client(
                "b1", "b", name="south", labels={"region": "eu", "tier": "edge"}, connected_at=2.0
            )
        )
        await b.claim_name("south", "b1", "b")
        await b.register_client(
            client("b2", "b", labels={"region": "us"}, services=("x.v1.Other",), connected_at=3.0)
        )
        event = await anext(watch)
        assert (event.connected, event.replayed, event.client.connection_id) == (True, False, "b1")
        event = await anext(watch)
        assert event.client.connection_id == "b2"

        await replica.wait_until(lambda: replica.holder("south") is not None, timeout=5)
        assert len(replica) == 3
        assert [record.connection_id for record in replica] == ["a1", "b1", "b2"]
        assert replica.get("b1") == client(
            "b1", "b", name="south", labels={"region": "eu", "tier": "edge"}, connected_at=2.0
        )
        assert "b2" in replica
        named = replica.named("south")
        assert named is not None
        assert named.server_id == "b"
        assert replica.named("nobody") is None
        assert [r.connection_id for r in replica.find(labels={"region": "eu"})] == ["a1", "b1"]
        assert [r.connection_id for r in replica.find(service="x.v1.Other")] == ["b2"]
        assert [r.connection_id for r in replica.find(server_id="b")] == ["b1", "b2"]
        assert replica.find(labels={"region": "eu"}, server_id="a")[0].connection_id == "a1"
        assert replica.find(labels={"region": "mars"}) == []

        await b.unregister_client("b", "b1")
        event = await anext(watch)
        assert (event.disconnected, event.client.connection_id) == (True, "b1")
        await replica.wait_until(lambda: replica.holder("south") is None, timeout=5)
        assert replica.named("south") is None

        # A server's departure disconnects all its clients in the replica.
        await b.unregister_server("b")
        event = await anext(watch)
        assert (event.disconnected, event.client.connection_id) == (True, "b2")
        assert set(replica.servers) == {"a"}
        await watch.aclose()


async def test_replica_repairs_a_missed_change_by_resync(backend: Backend) -> None:
    directory = await backend.make()
    await directory.register_server(server("s"))
    await directory.register_client(client("kept", "s"))
    await directory.register_client(client("ghost", "s"))

    async with DirectoryReplica(directory, resync_interval=0.2) as replica:
        await replica.wait_ready(timeout=5)
        assert "ghost" in replica
        watch = replica.watch(existing=False)
        await backend.drop_quietly(directory, "s", "ghost")
        # No change was published; the periodic resync finds the difference.
        event = await anext(watch)
        assert (event.disconnected, event.client.connection_id) == (True, "ghost")
        assert [record.connection_id for record in replica] == ["kept"]
        assert replica.available
        # An explicit resync works too and changes nothing now.
        await replica.resync()
        assert [record.connection_id for record in replica] == ["kept"]
        await watch.aclose()


async def test_replica_resyncs_after_a_gap_in_the_sequence(backend: Backend) -> None:
    directory = await backend.make()
    await directory.register_server(server("s"))
    async with DirectoryReplica(directory, resync_interval=60) as replica:
        await replica.wait_ready(timeout=5)
        before = replica.resyncs
        change = Change(kind=ChangeKind.CLIENT_REMOVED, sequence=(replica.sequence or 0) + 5)
        await replica._handle(change)
        assert replica.resyncs == before + 1


async def test_300_clients_across_3_servers_are_listed_by_every_replica(
    backend: Backend,
) -> None:
    directories = [await backend.make() for _ in range(3)]
    replicas = [DirectoryReplica(directory) for directory in directories]
    for replica in replicas:
        await replica.start()
    try:
        for replica in replicas:
            await replica.wait_ready(timeout=5)
        for index, directory in enumerate(directories):
            await directory.register_server(server(f"s{index}"))

        async def register(index: int, directory: Directory) -> None:
            for number in range(100):
                await directory.register_client(
                    client(
                        f"s{index}-c{number}",
                        f"s{index}",
                        name=f"agent-{index}-{number}",
                        labels={"shard": str(number % 4)},
                        connected_at=float(number),
                    )
                )

        await asyncio.gather(*(register(i, d) for i, d in enumerate(directories)))
        for replica in replicas:
            await replica.wait_until(lambda replica=replica: len(replica) == 300, timeout=10)
            assert {record.server_id for record in replica} == {"s0", "s1", "s2"}
            assert len(replica.find(server_id="s1")) == 100
            assert len(replica.find(labels={"shard": "0"})) == 75
            found = replica.named("agent-2-99")
            assert found is not None
            assert found.server_id == "s2"
        assert len((await directories[0].snapshot()).clients) == 300
    finally:
        for replica in replicas:
            await replica.close()


async def test_keep_alive_registers_again_after_a_lapse(backend: Backend) -> None:
    directory = await backend.make()
    registered = asyncio.Event()

    async def register_again() -> None:
        await directory.register_server(server("s"))
        await directory.register_client(client("c1", "s"))
        registered.set()

    # Never registered: the first renewal finds it lapsed.
    task = asyncio.create_task(keep_alive(directory, "s", on_lapse=register_again, interval=0.05))
    try:
        async with asyncio.timeout(5):
            await registered.wait()
        assert set((await directory.snapshot()).clients) == {"c1"}
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_closed_directory_refuses(backend: Backend) -> None:
    directory = await backend.make()
    await directory.close()
    with pytest.raises(DirectoryUnavailable, match="closed"):
        await directory.snapshot()
    with pytest.raises(DirectoryUnavailable):
        directory.changes()


async def test_storm_tool_runs_on_a_memory_directory() -> None:
    from brpc.cluster._storm import run_storm

    shared = MemoryDirectory()
    result = await run_storm(lambda: shared, clients=60, servers=3, concurrency=4)
    assert result.clients == 60
    assert result.connect_ops_per_second > 0
    assert len(result.lines()) == 6

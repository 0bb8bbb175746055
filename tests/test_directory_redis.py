"""RedisDirectory beyond the shared contract: Redis going away and coming back, the extra.

Uses the private redis-server of the ``redis_server`` fixture, which this file
kills and restarts on the same port.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid

import pytest
from conftest import RedisServer

from brpc.cluster import (
    ChangeKind,
    ClientRecord,
    DirectoryReplica,
    DirectoryUnavailable,
    RedisDirectory,
    ServerRecord,
    keep_alive,
)

pytestmark = pytest.mark.timeout(30)


def _client(connection_id: str) -> ClientRecord:
    return ClientRecord(
        connection_id=connection_id,
        server_id="s1",
        name=connection_id,
        labels={},
        services=(),
        address="127.0.0.1:1",
        connected_at=0.0,
    )


async def test_redis_down_fails_fast_then_the_feed_reconnects_and_the_replica_resyncs(
    redis_server: RedisServer, redis_url: str
) -> None:
    prefix = f"outage-{uuid.uuid4().hex[:8]}:"
    holder, reader = (
        RedisDirectory(redis_url, key_prefix=prefix, ttl=3.0, timeout=0.5, reconnect_max=0.3)
        for _ in range(2)
    )
    registrations = 0

    async def register() -> None:
        nonlocal registrations
        await holder.register_server(ServerRecord("s1", "127.0.0.1:7000", 0.0))
        # c2 leaves while Redis is away: only c1 is registered again.
        for connection_id in ("c1", "c2") if registrations == 0 else ("c1",):
            await holder.register_client(_client(connection_id))
        registrations += 1

    # Never registered, so the first renewal registers the server and its clients.
    renewing = asyncio.create_task(keep_alive(holder, "s1", on_lapse=register, interval=0.1))
    replica = DirectoryReplica(reader, resync_interval=60, rejoin_grace=1.0)
    feed = reader.changes()
    try:
        await replica.start()
        await replica.wait_ready(timeout=5)
        await replica.wait_until(lambda: len(replica) == 2, timeout=5)
        first = await anext(feed)
        assert first.kind is ChangeKind.RESYNC
        resyncs = replica.resyncs
        watch = replica.watch(existing=False)

        redis_server.stop()
        loop = asyncio.get_running_loop()
        for operation in (
            reader.snapshot(),
            holder.register_client(_client("c3")),
            holder.claim_name("c3", "c3", "s1"),
        ):
            started = loop.time()
            with pytest.raises(DirectoryUnavailable, match=r"^directory unavailable: Redis at "):
                await operation
            assert loop.time() - started < 1.0

        async with asyncio.timeout(5):
            change = await anext(feed)
            while change.kind is not ChangeKind.UNAVAILABLE:
                change = await anext(feed)
        assert "directory unavailable" not in change.detail
        await replica.wait_until(lambda: not replica.available, timeout=5)
        with pytest.raises(DirectoryUnavailable, match="stale"):
            replica.require_available()
        # Still answering from what it knew.
        assert {record.connection_id for record in replica} == {"c1", "c2"}

        redis_server.start()  # same port, empty
        async with asyncio.timeout(10):
            change = await anext(feed)
            while change.kind is not ChangeKind.RESYNC:
                change = await anext(feed)
        # The holder's renewal finds the registration gone and registers again; the
        # replica re-reads the snapshot and follows. It keeps what Redis lost for
        # the rejoin grace, so watchers see only the client that did not return.
        async with asyncio.timeout(10):
            event = await anext(watch)
        assert (event.disconnected, event.client.connection_id) == (True, "c2")
        assert watch.pending == 0
        assert registrations == 2
        assert replica.resyncs > resyncs
        replica.require_available()
        assert [record.connection_id for record in replica] == ["c1"]
        assert (await reader.snapshot()).clients.keys() == {"c1"}
        await watch.aclose()
    finally:
        redis_server.start()
        renewing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await renewing
        await feed.aclose()
        await replica.close()
        await holder.close()
        await reader.close()


async def test_unreachable_redis_raises_directory_unavailable_quickly() -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    directory = RedisDirectory(f"redis://:secret@127.0.0.1:{port}/0", timeout=0.5)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(DirectoryUnavailable) as caught:
        await directory.renew_server("s1")
    assert loop.time() - started < 1.0
    assert f"127.0.0.1:{port}" in str(caught.value)
    assert "secret" not in str(caught.value)
    await directory.close()


def test_brpc_cluster_imports_without_redis_and_says_how_to_install_it() -> None:
    program = (
        "import sys\n"
        "sys.modules['redis'] = None\n"
        "import brpc.cluster\n"
        "directory = brpc.cluster.MemoryDirectory()\n"
        "try:\n"
        "    brpc.cluster.RedisDirectory('redis://127.0.0.1:6379')\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert "pip install 'brpc[redis]'" in result.stdout


async def test_a_dead_server_is_dropped_right_after_its_ttl(redis_url: str) -> None:
    ttl = 2.0
    prefix = f"reap-{uuid.uuid4().hex[:8]}:"
    survivor, dead = (RedisDirectory(redis_url, key_prefix=prefix, ttl=ttl) for _ in range(2))
    await survivor.register_server(ServerRecord("alive", "127.0.0.1:7001", 0.0))
    feed = survivor.changes()
    assert (await anext(feed)).kind is ChangeKind.RESYNC
    loop = asyncio.get_running_loop()
    await dead.register_server(ServerRecord("dead", "127.0.0.1:7002", 0.0))
    registered = loop.time()
    await dead.close()  # never renews again, as if killed
    # The survivor renews right away and then only after 0.9 * ttl: reaping at
    # renewals alone would notice the dead server at the second renewal after its
    # TTL, 1.8 * ttl after it registered.
    renewing = asyncio.create_task(keep_alive(survivor, "alive", interval=0.9 * ttl))
    try:
        async with asyncio.timeout(ttl + 3):
            change = await anext(feed)
            while change.kind is not ChangeKind.SERVER_DOWN:
                change = await anext(feed)
        elapsed = loop.time() - registered
        assert change.server_id == "dead"
        assert ttl - 0.1 < elapsed < 1.5 * ttl
    finally:
        renewing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await renewing
        await feed.aclose()
        await survivor.close()


async def test_cancelling_a_caller_mid_operation_cancels_it(redis_url: str) -> None:
    # redis-py with a socket timeout writes through asyncio.wait_for, which on
    # Python 3.11 can swallow a cancellation that arrives as the write completes.
    directory = RedisDirectory(redis_url, key_prefix=f"cancel-{uuid.uuid4().hex[:8]}:")
    await directory.register_server(ServerRecord("s1", "127.0.0.1:7000", 0.0))
    renewals = 0

    async def renew_forever() -> None:
        nonlocal renewals
        while True:
            await directory.renew_server("s1")
            renewals += 1

    try:
        for _ in range(30):
            task = asyncio.create_task(renew_forever())
            target = renewals + 3
            while renewals < target:  # noqa: ASYNC110 - let a few renewals run
                await asyncio.sleep(0)
            task.cancel()
            async with asyncio.timeout(5):
                with pytest.raises(asyncio.CancelledError):
                    await task
    finally:
        await directory.close()

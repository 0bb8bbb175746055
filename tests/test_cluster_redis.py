"""Three cluster servers on a real Redis directory: forwarding, and Redis going down and back.

Uses the private redis-server of the ``redis_server`` fixture (tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from conftest import RedisServer
from grpclib.const import Status
from grpclib.exceptions import GRPCError

import brpc
from brpc.certs import DevCertificates
from brpc.cluster import DirectorySnapshot, DirectoryUnavailable
from brpc.testing.v1.echo_pb2 import EchoRequest
from tests.cluster_kit import start_fleet, start_fleet_unready
from tests.conftest import DialFactory, ServerFactory


async def test_redis_fleet_forwards_and_survives_a_redis_outage(
    make_server: ServerFactory,
    connect: DialFactory,
    certs: DevCertificates,
    redis_server: RedisServer,
) -> None:
    redis_server.start()
    prefix = f"brpc-test-{uuid.uuid4().hex[:8]}:"
    # 2 s to answer: on a loaded machine Redis has taken over 0.5 s, and a
    # registration that times out then waits for the next resync.
    directories = [
        brpc.RedisDirectory(redis_server.url, ttl=3.0, key_prefix=prefix, timeout=2.0)
        for _ in range(3)
    ]
    fleet = None
    try:
        fleet = await _run(make_server, connect, certs, redis_server, directories)
    finally:
        redis_server.start()
        if fleet is not None:
            for server in fleet:
                server.close()
                await server.wait_closed()
        for directory in directories:
            await directory.close()


async def _run(
    make_server: ServerFactory,
    connect: DialFactory,
    certs: DevCertificates,
    redis_server: RedisServer,
    directories: list[brpc.RedisDirectory],
) -> list[brpc.Server[Any]]:
    fleet = await start_fleet(make_server, connect, certs, directories)
    servers: list[brpc.Server[Any]] = list(fleet.servers)
    one = fleet.clusters[0]
    remote = [entry for entry in one.clients if not entry.local]
    assert len(remote) == 2
    for entry in remote:
        reply = await entry.stub.Unary(EchoRequest(text="via redis"))
        assert reply.text == f"{entry.name}:via redis"

    # Redis goes down: local calls keep working, remote lookups fail fast.
    redis_server.stop()
    await one.replica.wait_until(lambda: not one.replica.available, timeout=10)
    local = one.clients.named("far-1")
    assert local is not None and local.local
    assert (await local.stub.Unary(EchoRequest(text="local"))).text == "far-1:local"
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(GRPCError) as caught:
        one.clients.find(name="far-1")
    assert caught.value.status is Status.UNAVAILABLE
    assert "directory unavailable" in str(caught.value.message)
    with pytest.raises(GRPCError) as caught:
        await remote[0].stub.Unary(EchoRequest(text="remote"))
    assert caught.value.status is Status.UNAVAILABLE
    assert "directory unavailable" in str(caught.value.message)
    assert loop.time() - started < 1.0

    # Redis comes back empty: servers register again with their clients.
    redis_server.start()
    async with asyncio.timeout(15):
        while len((await _snapshot(directories[0])).clients) < 3:  # noqa: ASYNC110 - Redis
            await asyncio.sleep(0.1)  # polling the external Redis server's state
    await one.replica.wait_until(
        lambda: one.replica.available and len(one.replica) == 3, timeout=15
    )
    entry = next(entry for entry in one.clients if not entry.local)
    reply = await entry.stub.Unary(EchoRequest(text="again"))
    assert reply.text == f"{entry.name}:again"
    return servers


async def _snapshot(directory: brpc.RedisDirectory) -> DirectorySnapshot:
    try:
        return await directory.snapshot()
    except DirectoryUnavailable:
        return DirectorySnapshot(sequence=0, servers={}, clients={}, names={})


async def test_server_starts_while_redis_is_down_and_joins_when_it_returns(
    make_server: ServerFactory,
    connect: DialFactory,
    certs: DevCertificates,
    redis_server: RedisServer,
) -> None:
    redis_server.stop()
    directory = brpc.RedisDirectory(
        redis_server.url, ttl=1.5, key_prefix=f"brpc-late-{uuid.uuid4().hex[:8]}:", timeout=0.5
    )
    try:
        fleet = await start_fleet_unready(make_server, connect, certs, directory)
        cluster = fleet.clusters[0]
        entry = cluster.clients.named("far-1")  # local, answered while the directory is down
        assert entry is not None and entry.local
        assert (await entry.stub.Unary(EchoRequest(text="alone"))).text == "far-1:alone"
        redis_server.start()
        await cluster.replica.wait_until(
            lambda: cluster.replica.available and len(cluster.replica) == 1, timeout=15
        )
        for server in fleet.servers:
            server.close()
            await server.wait_closed()
    finally:
        redis_server.start()
        await directory.close()

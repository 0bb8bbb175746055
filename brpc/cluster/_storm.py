"""Directory throughput during a connect storm: a measuring tool, not a test.

This module owns one measurement: ``servers`` servers register ``clients``
clients as fast as the directory takes them (a name claim and a client record
per connection, ``concurrency`` at a time per server) while a replica follows
the change feed; then every client leaves again. It prints directory
operations per second for both phases, how long the replica took to list
every client, and what a full snapshot and a renewal cost at that size::

    python -m brpc.cluster._storm --url redis://127.0.0.1:6379/0
    python -m brpc.cluster._storm --memory

Every run uses its own key prefix and unregisters its servers at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .directory import ClientRecord, Directory, ServerRecord
from .memory import MemoryDirectory
from .redis import RedisDirectory
from .replica import DirectoryReplica

__all__ = ["StormResult", "run_round_trips", "run_storm"]


@dataclass(frozen=True)
class StormResult:
    clients: int
    servers: int
    #: Directory operations (claims and registrations) per second while connecting.
    connect_ops_per_second: float
    #: Unregistrations per second while everyone leaves.
    disconnect_ops_per_second: float
    #: From the first registration until the replica listed every client.
    replica_converged_after: float
    #: One full snapshot with every client registered.
    snapshot_seconds: float
    #: One renewal with every client registered.
    renew_seconds: float

    def lines(self) -> list[str]:
        return [
            f"connect storm: {self.clients} clients over {self.servers} servers",
            f"  connect     {self.connect_ops_per_second:10.0f} directory ops/s",
            f"  disconnect  {self.disconnect_ops_per_second:10.0f} directory ops/s",
            f"  replica listed every client after {self.replica_converged_after * 1000:.0f} ms",
            f"  snapshot of {self.clients} clients: {self.snapshot_seconds * 1000:.1f} ms",
            f"  renewal with {self.clients} clients: {self.renew_seconds * 1000:.2f} ms",
        ]


async def run_storm(
    make_directory: Callable[[], Directory],
    *,
    clients: int = 1000,
    servers: int = 3,
    concurrency: int = 32,
) -> StormResult:
    """Run one storm; ``make_directory`` gives one directory per server and one for the replica."""
    if clients < 1 or servers < 1 or concurrency < 1:
        raise ValueError("clients, servers and concurrency must be at least 1")
    members = [make_directory() for _ in range(servers)]
    follower = make_directory()
    replica = DirectoryReplica(follower)
    try:
        await replica.start()
        await replica.wait_ready(timeout=10)
        for index, directory in enumerate(members):
            await directory.register_server(
                ServerRecord(f"storm-{index}", f"127.0.0.1:{7000 + index}", time.time())
            )
        assigned: list[list[int]] = [list(range(i, clients, servers)) for i in range(servers)]

        async def connect(index: int, number: int) -> None:
            directory = members[index]
            server_id = f"storm-{index}"
            connection_id = f"c{number}"
            await directory.claim_name(f"agent-{number}", connection_id, server_id)
            await directory.register_client(
                ClientRecord(
                    connection_id=connection_id,
                    server_id=server_id,
                    name=f"agent-{number}",
                    labels={"shard": str(number % 16)},
                    services=("fleet.v1.Agent",),
                    address=f"127.0.0.1:{20000 + number}",
                    connected_at=time.time(),
                )
            )

        async def disconnect(index: int, number: int) -> None:
            await members[index].unregister_client(f"storm-{index}", f"c{number}")

        started = time.perf_counter()
        await _drive(connect, assigned, concurrency)
        connect_elapsed = time.perf_counter() - started
        await replica.wait_until(lambda: len(replica) == clients, timeout=60)
        converged = time.perf_counter() - started

        timed = time.perf_counter()
        await follower.snapshot()
        snapshot_seconds = time.perf_counter() - timed
        timed = time.perf_counter()
        await members[0].renew_server("storm-0")
        renew_seconds = time.perf_counter() - timed

        started = time.perf_counter()
        await _drive(disconnect, assigned, concurrency)
        disconnect_elapsed = time.perf_counter() - started
        await replica.wait_until(lambda: len(replica) == 0, timeout=60)
        return StormResult(
            clients=clients,
            servers=servers,
            connect_ops_per_second=2 * clients / connect_elapsed,
            disconnect_ops_per_second=clients / disconnect_elapsed,
            replica_converged_after=converged,
            snapshot_seconds=snapshot_seconds,
            renew_seconds=renew_seconds,
        )
    finally:
        await replica.close()
        try:
            for index, directory in enumerate(members):
                await directory.unregister_server(f"storm-{index}")
        finally:
            for distinct in {id(d): d for d in [*members, follower]}.values():
                await distinct.close()


async def run_round_trips(
    url: str, *, operations: int = 2000, connections: int = 3, concurrency: int = 32
) -> float:
    """Plain Redis round trips per second (a SET of a short key), driven as a storm is:
    ``connections`` clients (one per server) with ``concurrency`` lanes each.

    The floor under any directory operation on the same Redis: a storm's
    directory operations per second divided by this is the share of Redis's
    round-trip rate that the directory's scripts keep.
    """
    if operations < 1 or connections < 1 or concurrency < 1:
        raise ValueError("operations, connections and concurrency must be at least 1")
    import redis.asyncio as aioredis  # noqa: PLC0415 (the redis extra, like RedisDirectory)

    clients = [aioredis.Redis.from_url(url, decode_responses=True) for _ in range(connections)]
    prefix = f"brpc-storm-floor-{uuid.uuid4().hex[:8]}:"
    assigned = [list(range(i, operations, connections)) for i in range(connections)]

    async def step(index: int, number: int) -> None:
        await clients[index].set(f"{prefix}{number}", "x", px=60_000)

    try:
        started = time.perf_counter()
        await _drive(step, assigned, concurrency)
        return operations / (time.perf_counter() - started)
    finally:
        for client in clients:
            await client.aclose()


async def _drive(
    step: Callable[[int, int], Awaitable[None]],
    assigned: list[list[int]],
    concurrency: int,
) -> None:
    async def server_worker(index: int, numbers: list[int]) -> None:
        queue = iter(numbers)

        async def lane() -> None:
            for number in queue:
                await step(index, number)

        await asyncio.gather(*(lane() for _ in range(concurrency)))

    await asyncio.gather(*(server_worker(i, numbers) for i, numbers in enumerate(assigned)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    backend = parser.add_mutually_exclusive_group(required=True)
    backend.add_argument("--url", help="a Redis URL, e.g. redis://127.0.0.1:6379/0")
    backend.add_argument("--memory", action="store_true", help="use one MemoryDirectory")
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--servers", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32, help="per server")
    options = parser.parse_args()

    if options.memory:
        shared = MemoryDirectory()

        def make_directory() -> Directory:
            return shared

    else:
        prefix = f"brpc-storm-{uuid.uuid4().hex[:8]}:"
        url: str = options.url

        def make_directory() -> Directory:
            return RedisDirectory(url, key_prefix=prefix)

    result = asyncio.run(
        run_storm(
            make_directory,
            clients=options.clients,
            servers=options.servers,
            concurrency=options.concurrency,
        )
    )
    print("\n".join(result.lines()))


if __name__ == "__main__":
    main()

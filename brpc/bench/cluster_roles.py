"""What each process of the cluster benchmark runs (see :mod:`brpc.bench.cluster`).

Commands for the benchmark's worker processes (:mod:`brpc.bench.worker`):

- a cluster *member* (:class:`StartMember`): a brpc server in a
  :class:`brpc.Cluster` on a Redis directory, with the relay that forwards
  peers' calls; it waits for named clients (:class:`AwaitClients`) and calls
  one of them wherever it is (:class:`CallClient`);
- a *target* (:class:`ServeEcho`): a brpc client serving Echo, connected to
  one member under a name;
- a *load generator*: :class:`DialMany` connections to one UDP port, then
  :class:`Drive` unary calls over all of them in a window shared by every
  load process, then :class:`HangUp`.

:func:`echo_worker` is the ``main(index)`` of ``brpc.cluster.start_workers``
processes serving Echo on one port (SO_REUSEPORT), as ``brpc workers`` runs them.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from grpclib.exceptions import GRPCError

from ..client import ClientConn, dial
from ..cluster import Cluster, RedisDirectory
from ..relay import Relay
from ..server import Server
from ..testing import EchoService
from ..testing.v1.echo_grpc import EchoStub
from .callers import StubCaller
from .load import run_unary, small_request
from .worker import Command, WorkerState

__all__ = [
    "AwaitClients",
    "CallClient",
    "Certs",
    "DialMany",
    "Drive",
    "EchoWorkerConfig",
    "HangUp",
    "ServeEcho",
    "StartMember",
    "echo_worker",
]

#: The peers' shared secret: a throw-away for a private, local run.
PEER_TOKEN = "brpc-bench-peer-token"


@dataclass(frozen=True)
class Certs:
    """Paths of the run's throw-away certificates."""

    ca: str
    certfile: str
    keyfile: str


def _member(
    redis_url: str, key_prefix: str, server_id: str, certs: Certs, handlers: list[Any]
) -> tuple[Server[EchoStub], Cluster[EchoStub], RedisDirectory]:
    directory = RedisDirectory(redis_url, key_prefix=key_prefix)
    cluster: Cluster[EchoStub] = Cluster(
        directory, server_id=server_id, peer_token=PEER_TOKEN, peer_ca=certs.ca
    )
    server: Server[EchoStub] = Server(
        handlers,
        certfile=certs.certfile,
        keyfile=certs.keyfile,
        client_stub=EchoStub,
        cluster=cluster,
        authenticate=cluster.authenticator(),
        relay=Relay(authorize=cluster.relay_authorizer()),
    )
    return server, cluster, directory


# -- members and targets --------------------------------------------------------------


@dataclass(frozen=True)
class StartMember(Command):
    """Start a cluster member on 127.0.0.1; its address."""

    redis_url: str
    key_prefix: str
    server_id: str
    certs: Certs

    async def run(self, state: WorkerState) -> str:
        server, cluster, directory = _member(
            self.redis_url, self.key_prefix, self.server_id, self.certs, []
        )
        await server.start("127.0.0.1", 0)

        async def close() -> None:
            server.close()
            await server.wait_closed()
            await directory.close()

        state.closers.append(close)
        state.held["cluster"] = cluster
        return server.address


def _cluster(state: WorkerState) -> Cluster[EchoStub]:
    cluster: Cluster[EchoStub] | None = state.held.get("cluster")
    if cluster is None:
        raise RuntimeError("this process runs no cluster member (StartMember first)")
    return cluster


@dataclass(frozen=True)
class AwaitClients(Command):
    """Wait until the member lists every named client and reaches every peer server;
    which server holds each client."""

    names: tuple[str, ...]
    timeout: float

    async def run(self, state: WorkerState) -> dict[str, str]:
        cluster = _cluster(state)
        await cluster.wait_ready(self.timeout)
        await cluster.replica.wait_until(
            lambda: all(cluster.replica.named(name) is not None for name in self.names),
            timeout=self.timeout,
        )
        await cluster.wait_peers(self.timeout)
        held: dict[str, str] = {}
        for name in self.names:
            entry = cluster.clients.named(name)
            assert entry is not None
            held[name] = entry.server_id
        return held


@dataclass(frozen=True)
class CallClient(Command):
    """Unary Echo calls from this member to the named client, wherever it is."""

    name: str
    concurrency: int
    warmup: float
    window: float

    async def run(self, state: WorkerState) -> dict[str, float]:
        entry = _cluster(state).clients.named(self.name)
        if entry is None:
            raise RuntimeError(f"no client named {self.name!r} in the cluster")
        return await run_unary(
            StubCaller(entry.stub),
            concurrency=self.concurrency,
            warmup=self.warmup,
            window=self.window,
        )


@dataclass(frozen=True)
class ServeEcho(Command):
    """Connect to ``address`` as client ``name`` serving Echo; its connection ID."""

    address: str
    name: str
    ca: str

    async def run(self, state: WorkerState) -> str:
        conn = await dial(self.address, services=[EchoService()], name=self.name, ca=self.ca)
        state.closers.append(conn.close)
        return conn.connection_id


# -- load over many connections -------------------------------------------------------


@dataclass(frozen=True)
class DialMany(Command):
    """Open ``count`` connections to 127.0.0.1:``port``, one call each; their IDs."""

    port: int
    count: int
    ca: str
    #: The load generator's QUIC engine (the servers use the default).
    engine: str = "auto"

    async def run(self, state: WorkerState) -> list[str]:
        target = f"127.0.0.1:{self.port}"
        conns: list[ClientConn] = []
        state.held["load"] = conns
        for _ in range(self.count):
            conn = await dial(target, ca=self.ca, reconnect=False, engine=self.engine)
            conns.append(conn)
            await EchoStub(conn).Unary(small_request())
        return [conn.connection_id for conn in conns]


@dataclass(frozen=True)
class Drive(Command):
    """Unary calls, ``concurrency`` in flight on each connection of :class:`DialMany`.

    Starts at ``start_at`` and measures from ``start_at + warmup`` for ``window``
    seconds, on ``time.monotonic()``, which every process of the machine shares:
    all load processes measure the same window. Returns the calls completed in
    the window, their latencies (seconds) and the failed calls.
    """

    concurrency: int
    start_at: float
    warmup: float
    window: float

    async def run(self, state: WorkerState) -> dict[str, Any]:
        conns: list[ClientConn] = state.held.get("load", [])
        if not conns:
            raise RuntimeError("no connections to drive (DialMany first)")
        clock = time.monotonic
        begin = self.start_at + self.warmup
        end = begin + self.window
        latencies: list[float] = []
        errors = 0
        request = small_request()

        async def loop(stub: EchoStub) -> None:
            nonlocal errors
            while (started := clock()) < end:
                try:
                    await stub.Unary(request)
                except GRPCError:
                    errors += 1
                    continue
                finished = clock()
                if begin <= finished <= end:
                    latencies.append(finished - started)

        await asyncio.sleep(max(0.0, self.start_at - clock()))  # the shared start
        stubs = [EchoStub(conn) for conn in conns]
        await asyncio.gather(*(loop(stub) for stub in stubs for _ in range(self.concurrency)))
        return {"calls": len(latencies), "latencies": latencies, "errors": errors}


@dataclass(frozen=True)
class HangUp(Command):
    """Close the connections of :class:`DialMany`."""

    async def run(self, state: WorkerState) -> int:
        conns: list[ClientConn] = state.held.pop("load", [])
        await asyncio.gather(*(conn.close() for conn in conns))
        return len(conns)


# -- worker processes on one port -----------------------------------------------------


@dataclass(frozen=True)
class EchoWorkerConfig:
    redis_url: str
    key_prefix: str
    #: The UDP port every worker of the set listens on.
    port: int
    certs: Certs
    #: Server IDs are ``{name}-{index}``.
    name: str


async def echo_worker(config: EchoWorkerConfig, index: int) -> None:
    """One worker: a cluster member serving Echo on the shared port (SO_REUSEPORT)."""
    server, cluster, directory = _member(
        config.redis_url,
        config.key_prefix,
        f"{config.name}-{index}",
        config.certs,
        [EchoService()],
    )
    try:
        await cluster.serve_peers(
            "127.0.0.1", certfile=config.certs.certfile, keyfile=config.certs.keyfile
        )
        await server.start("127.0.0.1", config.port, reuse_port=True)
        await server.serve_forever()
    finally:
        server.close()
        await asyncio.shield(server.wait_closed())
        await directory.close()

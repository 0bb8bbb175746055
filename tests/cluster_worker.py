"""A cluster worker process for tests/test_cluster_workers.py (run by brpc.cluster.workers)."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path

import brpc
from brpc.testing.v1.echo_grpc import EchoStub

PEER_TOKEN = "peer-secret-for-tests"


@dataclass(frozen=True)
class WorkerConfig:
    redis_url: str
    key_prefix: str
    port: int
    ca: str
    certfile: str
    keyfile: str


async def worker_main(config: WorkerConfig, index: int) -> None:
    directory = brpc.RedisDirectory(config.redis_url, ttl=3.0, key_prefix=config.key_prefix)
    cluster: brpc.Cluster[EchoStub] = brpc.Cluster(
        directory, server_id=f"worker-{index}", peer_token=PEER_TOKEN, peer_ca=config.ca
    )
    server: brpc.Server[EchoStub] = brpc.Server(
        [],
        certfile=config.certfile,
        keyfile=config.keyfile,
        client_stub=EchoStub,
        cluster=cluster,
        relay=brpc.Relay(authorize=cluster.relay_authorizer()),
    )
    try:
        await cluster.serve_peers("127.0.0.1", certfile=config.certfile, keyfile=config.keyfile)
        await server.start("127.0.0.1", config.port, reuse_port=True)
        await server.serve_forever()
    finally:
        server.close()
        await asyncio.shield(server.wait_closed())
        await directory.close()


async def touch_main(index: int) -> None:
    """A worker that only says it ran: writes its index into $BRPC_TEST_WORKER_DIR."""
    path = Path(os.environ["BRPC_TEST_WORKER_DIR"]) / f"worker-{index}"
    await asyncio.to_thread(path.write_text, str(os.getpid()))

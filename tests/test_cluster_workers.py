"""Three worker processes on one UDP port (SO_REUSEPORT), one Redis cluster, a fourth calling."""

from __future__ import annotations

import functools
import os
import socket
import uuid
from pathlib import Path

import pytest
from conftest import RedisServer

import brpc
from brpc.certs import DevCertificates
from brpc.cli import main as cli_main
from brpc.cluster.workers import start_workers
from brpc.testing.v1.echo_grpc import EchoStub
from brpc.testing.v1.echo_pb2 import EchoRequest
from tests.cluster_worker import PEER_TOKEN, WorkerConfig, worker_main
from tests.conftest import DialFactory, ServerFactory
from tests.relay_kit import Far

WORKERS = 3
CLIENTS = 9


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def test_worker_processes_share_a_port_and_serve_one_fleet(
    make_server: ServerFactory,
    connect: DialFactory,
    certs: DevCertificates,
    redis_server: RedisServer,
) -> None:
    redis_server.start()
    config = WorkerConfig(
        redis_url=redis_server.url,
        key_prefix=f"brpc-workers-{uuid.uuid4().hex[:8]}:",
        port=_free_udp_port(),
        ca=str(certs.ca),
        certfile=str(certs.server_cert),
        keyfile=str(certs.server_key),
    )
    workers = start_workers(functools.partial(worker_main, config), WORKERS)
    directory = brpc.RedisDirectory(config.redis_url, ttl=3.0, key_prefix=config.key_prefix)
    cluster: brpc.Cluster[EchoStub] = brpc.Cluster(
        directory, server_id="caller", peer_token=PEER_TOKEN, peer_ca=config.ca
    )
    caller = await make_server(
        client_stub=EchoStub, cluster=cluster, authenticate=cluster.authenticator()
    )
    try:
        replica = cluster.replica
        names = {f"worker-{index}" for index in range(WORKERS)}
        await replica.wait_until(lambda: names <= set(replica.servers), timeout=30)
        for index in range(CLIENTS):
            await connect(
                f"127.0.0.1:{config.port}",
                services=[Far(tag=f"c{index}")],
                name=f"c{index}",
                dead_peer_timeout=1.5,
                keepalive_interval=0.3,
            )
        await replica.wait_until(lambda: len(replica) == CLIENTS, timeout=10)
        await cluster.wait_peers(10)
        holders = {entry.server_id for entry in cluster.clients}
        assert holders <= names
        print(f"clients spread over {len(holders)} of {WORKERS} workers")
        for index in range(CLIENTS):
            entry = cluster.clients.named(f"c{index}")
            assert entry is not None and not entry.local
            reply = await entry.stub.Unary(EchoRequest(text="w"))
            assert reply.text == f"c{index}:w"
        async with caller.call_all(
            lambda stub, _: stub.Unary(EchoRequest(text="all")), scope="cluster", timeout=10
        ) as results:
            assert len([r.unwrap() async for r in results]) == CLIENTS

        # A worker is SIGKILLed: its records lapse within the TTL, and its clients,
        # reconnecting through the shared port, reappear on the survivors.
        victim = next(iter(holders))
        workers.processes[int(victim.rsplit("-", 1)[1])].kill()
        await replica.wait_until(
            lambda: (
                victim not in replica.servers
                and len(replica) == CLIENTS
                and all(entry.server_id != victim for entry in replica)
            ),
            timeout=20,
        )
        for index in range(CLIENTS):
            entry = cluster.clients.named(f"c{index}")
            assert entry is not None and entry.server_id != victim
            reply = await entry.stub.Unary(EchoRequest(text="moved"))
            assert reply.text == f"c{index}:moved"
    finally:
        workers.stop()
        caller.close()
        await caller.wait_closed()
        await directory.close()
    assert workers.alive == 0


def test_brpc_workers_command_runs_n_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BRPC_TEST_WORKER_DIR", str(tmp_path))
    assert cli_main(["workers", "-n", "2", "tests.cluster_worker:touch_main"]) == 0
    pids = {(tmp_path / f"worker-{index}").read_text() for index in range(2)}
    assert len(pids) == 2 and str(os.getpid()) not in pids
    assert cli_main(["workers", "no-colon"]) == 2

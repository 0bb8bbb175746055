"""What the cluster tests share: a fleet of servers on one directory, with Far clients."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import brpc
from brpc.certs import DevCertificates
from brpc.cluster import Directory
from brpc.testing import NetworkConditions
from brpc.testing.v1.echo_grpc import EchoStub
from tests.conftest import DialFactory, ServerFactory
from tests.relay_kit import Far

PEER_TOKEN = "peer-secret-for-tests"


@dataclass
class Fleet:
    servers: list[brpc.Server[EchoStub]] = field(default_factory=list)
    clusters: list[brpc.Cluster[EchoStub]] = field(default_factory=list)
    fars: dict[str, Far] = field(default_factory=dict)
    #: Each server's network conditions: ``drop = 1.0`` silences it like a dead process.
    networks: list[NetworkConditions] = field(default_factory=list)


async def start_member(
    make_server: ServerFactory,
    certs: DevCertificates,
    directory: Directory,
    server_id: str,
    network: NetworkConditions | None = None,
    **cluster_options: Any,
) -> tuple[brpc.Server[EchoStub], brpc.Cluster[EchoStub]]:
    cluster: brpc.Cluster[EchoStub] = brpc.Cluster(
        directory,
        server_id=server_id,
        peer_token=PEER_TOKEN,
        peer_ca=str(certs.ca),
        **cluster_options,
    )
    server = await make_server(
        client_stub=EchoStub,
        cluster=cluster,
        authenticate=cluster.authenticator(),
        relay=brpc.Relay(authorize=cluster.relay_authorizer()),
        network_conditions=network,
    )
    return server, cluster


async def start_fleet(
    make_server: ServerFactory,
    connect: DialFactory,
    certs: DevCertificates,
    directory: Directory | Sequence[Directory],
    count: int = 3,
    **cluster_options: Any,
) -> Fleet:
    """``count`` servers ``s1..`` with one Far client ``far-N`` each (tag ``far-N``).

    ``directory``: one shared by all, or one per server (as separate processes have).
    """
    fleet = Fleet()
    for index in range(1, count + 1):
        own = directory if isinstance(directory, Directory) else directory[index - 1]
        network = NetworkConditions()
        server, cluster = await start_member(
            make_server, certs, own, f"s{index}", network, **cluster_options
        )
        fleet.networks.append(network)
        fleet.servers.append(server)
        fleet.clusters.append(cluster)
    for index, server in enumerate(fleet.servers, start=1):
        far = Far(tag=f"far-{index}")
        fleet.fars[f"far-{index}"] = far
        await connect(server, services=[far], name=f"far-{index}", labels={"n": str(index)})
    for cluster in fleet.clusters:
        await cluster.wait_ready(5)
        await cluster.replica.wait_until(lambda c=cluster: len(c.replica) == count, timeout=5)  # type: ignore[misc]
        await cluster.wait_peers(5)
    return fleet


async def start_fleet_unready(
    make_server: ServerFactory,
    connect: DialFactory,
    certs: DevCertificates,
    directory: Directory,
) -> Fleet:
    """One server ``s1`` with its Far client ``far-1``, not waiting for the directory."""
    fleet = Fleet()
    server, cluster = await start_member(make_server, certs, directory, "s1")
    fleet.servers.append(server)
    fleet.clusters.append(cluster)
    far = Far(tag="far-1")
    fleet.fars["far-1"] = far
    await connect(server, services=[far], name="far-1")
    return fleet

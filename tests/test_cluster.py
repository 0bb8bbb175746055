"""Three cluster servers in one process on a MemoryDirectory: lookups, forwarding, names."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError

import brpc
from brpc.certs import DevCertificates
from brpc.cluster import ClientRecord, NameClaim
from brpc.testing import NetworkConditions
from brpc.testing.v1.echo_grpc import EchoStub
from brpc.testing.v1.echo_pb2 import EchoReply, EchoRequest
from tests.cluster_kit import PEER_TOKEN, start_fleet
from tests.conftest import DialFactory, ServerFactory, wait_for
from tests.relay_kit import Far


async def test_clients_of_every_server_are_listed_by_each(
    make_server: ServerFactory, connect: DialFactory, certs: DevCertificates
) -> None:
    fleet = await start_fleet(make_server, connect, certs, brpc.MemoryDirectory())
    one = fleet.clusters[0]
    # server.cluster is the Cluster the server was given.
    assert fleet.servers[0].cluster is one and fleet.servers[0].in_cluster
    assert len(fleet.servers[0].cluster.clients) == 3
    alone = await make_server()
    assert not alone.in_cluster
    with pytest.raises(RuntimeError, match="not a member of a cluster"):
        alone.cluster  # noqa: B018
    assert len(one.clients) == 3
    assert sorted(entry.name for entry in one.clients) == ["far-1", "far-2", "far-3"]
    far2 = one.clients.named("far-2")
    assert far2 is not None and far2.server_id == "s2" and not far2.local
    local = one.clients.named("far-1")
    assert local is not None and local.local and local.server_id == "s1"
    assert [e.name for e in one.clients.find(labels={"n": "3"})] == ["far-3"]
    assert [e.name for e in one.clients.find(server_id="s2")] == ["far-2"]
    assert one.clients.get(far2.connection_id) is not None
    # Peer connections are not clients of the fleet.
    assert all(not e.name.startswith("brpc-peer.") for e in one.clients)


async def test_caller_on_one_server_reaches_clients_on_the_others(
    make_server: ServerFactory, connect: DialFactory, certs: DevCertificates
) -> None:
    fleet = await start_fleet(make_server, connect, certs, brpc.MemoryDirectory())
    one = fleet.clusters[0]
    for name in ("far-2", "far-3"):
        entry = one.clients.named(name)
        assert entry is not None
        stub = entry.stub
        # Unary, with metadata both ways.
        async with stub.Unary.open(metadata={"x-mine": "yes"}) as call:
            await call.send_message(EchoRequest(text="hi"), end=True)
            reply = await call.recv_message()
            await call.recv_trailing_metadata()
        assert reply == EchoReply(text=f"{name}:hi")
        assert call.initial_metadata is not None
        assert call.initial_metadata["x-init"] == f"{name}-Unary"
        assert call.trailing_metadata is not None
        assert call.trailing_metadata["x-trail"] == "ok"
        seen = fleet.fars[name].seen[-1]
        assert seen.metadata["x-mine"] == "yes"
        assert "brpc-target-id" not in seen.metadata
        # Server stream.
        async with stub.ServerStream.open() as call:
            await call.send_message(EchoRequest(text="s", count=3), end=True)
            replies = [r async for r in call]
        assert [r.index for r in replies] == [0, 1, 2]
        # Client stream.
        async with stub.ClientStream.open() as call:
            for text in ("a", "b", "c"):
                await call.send_message(EchoRequest(text=text))
            await call.end()
            reply = await call.recv_message()
        assert reply is not None and reply.text == "a+b+c" and reply.received == 3
        # Bidi, one message at a time both ways.
        async with stub.Bidi.open() as call:
            for index in range(3):
                await call.send_message(EchoRequest(text=str(index)))
                got = await call.recv_message()
                assert got is not None and got.text == f"{name}:{index}"
            await call.end()
        # A failure comes back with its status, message and details.
        with pytest.raises(GRPCError) as caught:
            await stub.Unary(EchoRequest(text="fail"))
        assert caught.value.status is Status.FAILED_PRECONDITION
        assert caught.value.message == "no good"
        assert caught.value.details is not None


async def test_cluster_call_all_and_watch(
    make_server: ServerFactory, connect: DialFactory, certs: DevCertificates
) -> None:
    fleet = await start_fleet(make_server, connect, certs, brpc.MemoryDirectory())
    server1, one = fleet.servers[0], fleet.clusters[0]
    async with server1.call_all(
        lambda stub, _: stub.Unary(EchoRequest(text="all")), scope="cluster", timeout=5
    ) as results:
        texts = sorted([result.unwrap().text async for result in results])
    assert texts == ["far-1:all", "far-2:all", "far-3:all"]
    # Selected by labels across servers.
    async with server1.call_all(
        lambda stub, _: stub.Unary(EchoRequest(text="x")), select={"n": "2"}, scope="cluster"
    ) as results:
        assert [r.unwrap().text async for r in results] == ["far-2:x"]

    watch = one.watch()
    present = [await asyncio.wait_for(anext(watch), 5) for _ in range(3)]
    assert sorted(e.client.name for e in present) == ["far-1", "far-2", "far-3"]
    assert all(e.replayed and e.connected for e in present)
    newcomer = await connect(fleet.servers[2], services=[], name="late")
    event = await asyncio.wait_for(anext(watch), 5)
    assert event.connected and event.client.name == "late" and event.client.server_id == "s3"
    await newcomer.close()
    event = await asyncio.wait_for(anext(watch), 5)
    assert event.disconnected and event.client.name == "late"
    await watch.aclose()


async def test_duplicate_name_on_another_server_replaces_the_older(
    make_server: ServerFactory, connect: DialFactory, certs: DevCertificates
) -> None:
    fleet = await start_fleet(make_server, connect, certs, brpc.MemoryDirectory())
    server1, server2 = fleet.servers[0], fleet.servers[1]
    old = await connect(server1, name="dup", reconnect=False)
    await wait_for(lambda: fleet.clusters[1].replica.named("dup") is not None)
    await connect(server2, name="dup")
    await wait_for(lambda: old.state is brpc.ConnState.CLOSED, timeout=5)
    assert server1.clients.named("dup") is None
    await fleet.clusters[0].replica.wait_until(
        lambda: len(fleet.clusters[0].replica.find(name="dup")) == 1, timeout=5
    )
    holder = fleet.clusters[0].clients.named("dup")
    assert holder is not None and holder.server_id == "s2"


async def test_duplicate_name_under_reject_is_refused_in_the_hello(
    make_server: ServerFactory, connect: DialFactory, certs: DevCertificates
) -> None:
    fleet = await start_fleet(
        make_server,
        connect,
        certs,
        brpc.MemoryDirectory(),
        count=2,
        duplicate_names=brpc.DuplicateNames.REJECT,
    )
    server1, server2 = fleet.servers
    admitted: list[str] = []
    server2.on_connect(lambda info: admitted.append(info.name))
    first = await connect(server1, name="dup", reconnect=False)
    # No waiting for replicas: the directory's claim decides before the hello is answered.
    with pytest.raises(brpc.RefusedError) as refused:
        await connect(server2, name="dup", reconnect=False)
    assert refused.value.code == "ALREADY_EXISTS"
    assert "already connected to the cluster" in refused.value.reason
    assert first.connection_id not in str(refused.value)
    assert admitted == []  # never admitted, so never announced
    assert first.state is brpc.ConnState.READY
    holder = fleet.clusters[1].clients.named("dup")
    assert holder is None or holder.connection_id == first.connection_id
    # Once the holder left, the name is free on any server.
    await first.close()
    await fleet.clusters[1].replica.wait_until(
        lambda: fleet.clusters[1].replica.holder("dup") is None, timeout=5
    )
    again = await connect(server2, name="dup", reconnect=False)
    assert admitted == ["dup"]
    await fleet.clusters[0].replica.wait_until(
        lambda: fleet.clusters[0].clients.named("dup") is not None, timeout=5
    )
    entry = fleet.clusters[0].clients.named("dup")
    assert entry is not None and entry.connection_id == again.connection_id


async def test_a_hello_abandoned_while_its_name_is_claimed_gives_the_name_back(
    make_server: ServerFactory, connect: DialFactory, certs: DevCertificates
) -> None:
    directory = _SlowToClaim()
    fleet = await start_fleet(
        make_server,
        connect,
        certs,
        directory,
        count=2,
        duplicate_names=brpc.DuplicateNames.REJECT,
    )
    server1 = fleet.servers[0]
    # The client gives up while the server still waits for the directory's answer.
    dialing = asyncio.create_task(connect(server1, name="slow", reconnect=False))
    await asyncio.wait_for(directory.asked.wait(), 10)
    dialing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await dialing
    # Left with far-1 and server 2's peer connection.
    await wait_for(lambda: server1.connection_count == 2, timeout=5)
    directory.answer.set()
    await asyncio.wait_for(directory.released.wait(), 5)
    assert not server1.clients.find(name="slow")
    # The claim the abandoned hello made is gone: the name is free on any server.
    again = await connect(fleet.servers[1], name="slow", reconnect=False)
    entry = fleet.clusters[1].clients.get(again.connection_id)
    assert entry is not None and entry.local


class _SlowToClaim(brpc.MemoryDirectory):
    """A directory that answers claims of the name "slow" only once ``answer`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = asyncio.Event()
        self.answer = asyncio.Event()
        self.released = asyncio.Event()

    async def claim_name(self, name: str, *args: Any, **kwargs: Any) -> NameClaim:
        if name == "slow":
            self.asked.set()
            await self.answer.wait()
        return await super().claim_name(name, *args, **kwargs)

    async def release_name(self, name: str, connection_id: str, epoch: int) -> bool:
        released = await super().release_name(name, connection_id, epoch)
        if released and name == "slow":
            self.released.set()
        return released


async def test_reconnecting_client_keeps_its_name_under_reject(
    make_server: ServerFactory,
    connect: DialFactory,
    certs: DevCertificates,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A client whose hello replaces its own stale connection (resume secret) is not
    refused by its own earlier claim."""
    caplog.set_level(logging.INFO, logger="brpc.cluster.member")
    directory = _SlowToForget()
    fleet = await start_fleet(
        make_server,
        connect,
        certs,
        directory,
        count=2,
        duplicate_names=brpc.DuplicateNames.REJECT,
    )
    server1 = fleet.servers[0]
    network = NetworkConditions()
    conn = await connect(
        server1,
        name="roamer",
        network_conditions=network,
        reconnect=brpc.ReconnectPolicy(initial_delay=0.05, max_delay=0.1),
    )
    first_id = conn.connection_id
    replica = fleet.clusters[1].replica
    await replica.wait_until(lambda: replica.named("roamer") is not None, timeout=5)
    # The client gives its connection up while the server still holds it.
    network.drop = 1.0
    session = conn._link.session
    conn._link.close(brpc.CloseCode.NO_ERROR, "gave up on a dead network")
    # Over on the client (an engine may hold its close back while stream data
    # waits) before the network comes back, so the goodbye is surely lost.
    await asyncio.wait_for(session.terminated.wait(), 10)
    network.drop = 0.0
    await conn.wait_ready(timeout=10)
    assert conn.connection_id != first_id
    await replica.wait_until(
        lambda: (
            (found := replica.named("roamer")) is not None
            and found.connection_id == conn.connection_id
        ),
        timeout=5,
    )
    holder = replica.holder("roamer")
    assert holder is not None and holder.connection_id == conn.connection_id
    # Admitted at its first hello, not after retrying until the old claim went.
    assert not [r for r in caplog.records if "refused name" in r.getMessage()]
    directory.forget.set()


class _SlowToForget(brpc.MemoryDirectory):
    """A directory whose first unregistration of each client waits for ``forget``:
    the server's own bookkeeping of a departed client lags behind."""

    def __init__(self) -> None:
        super().__init__()
        self.forget = asyncio.Event()
        self._seen: set[str] = set()

    async def unregister_client(self, server_id: str, connection_id: str) -> None:
        if connection_id not in self._seen:
            self._seen.add(connection_id)
            await self.forget.wait()
        await super().unregister_client(server_id, connection_id)


async def test_stale_record_is_unavailable_and_lost_peer_fails_fast(
    make_server: ServerFactory, connect: DialFactory, certs: DevCertificates
) -> None:
    fleet = await start_fleet(
        make_server, connect, certs, brpc.MemoryDirectory(ttl=3.0), dead_peer_timeout=1.0
    )
    one = fleet.clusters[0]
    entry = one.clients.named("far-3")
    assert entry is not None
    stub: EchoStub = entry.stub
    # The server holding far-3 goes away abruptly (its record stays until the TTL).
    fleet.fars["far-3"].mode = "hang"
    call = asyncio.create_task(stub.Unary(EchoRequest(text="pending")))
    await asyncio.wait_for(fleet.fars["far-3"].hanging.wait(), 5)
    fleet.networks[2].drop = 1.0  # server 3 falls silent, as if its process died
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(GRPCError) as caught:
        await asyncio.wait_for(call, 5)
    assert caught.value.status is Status.UNAVAILABLE
    assert loop.time() - started < 3.0
    # A later call fails at once with UNAVAILABLE, never hangs.
    started = loop.time()
    with pytest.raises(GRPCError) as caught:
        await asyncio.wait_for(stub.Unary(EchoRequest(text="after")), 5)
    assert caught.value.status is Status.UNAVAILABLE
    assert loop.time() - started < 1.5
    fleet.fars["far-3"].release.set()
    fleet.networks[2].drop = 0.0


async def test_two_members_share_one_port_and_serve_peers_on_their_own(
    make_server: ServerFactory, connect: DialFactory, certs: DevCertificates
) -> None:
    directory = brpc.MemoryDirectory()
    members: list[tuple[brpc.Server[EchoStub], brpc.Cluster[EchoStub]]] = []
    port = 0
    for index in (1, 2):
        cluster: brpc.Cluster[EchoStub] = brpc.Cluster(
            directory, server_id=f"w{index}", peer_token=PEER_TOKEN, peer_ca=str(certs.ca)
        )
        server: brpc.Server[EchoStub] = brpc.Server(
            [],
            certfile=certs.server_cert,
            keyfile=certs.server_key,
            client_stub=EchoStub,
            cluster=cluster,
            relay=brpc.Relay(authorize=cluster.relay_authorizer()),
        )
        peer_address = await cluster.serve_peers(
            "127.0.0.1", certfile=str(certs.server_cert), keyfile=str(certs.server_key)
        )
        assert peer_address != f"127.0.0.1:{port}"
        await server.start("127.0.0.1", port, reuse_port=True)
        port = server.port
        members.append((server, cluster))
    try:
        assert members[0][0].port == members[1][0].port
        fars = [Far(tag=f"far-{index}") for index in range(6)]
        for index, far in enumerate(fars):
            await connect(f"127.0.0.1:{port}", services=[far], name=f"far-{index}")
        one = members[0][1]
        for _, cluster in members:
            await cluster.wait_ready(5)
            await cluster.replica.wait_until(lambda c=cluster: len(c.replica) == 6, timeout=5)  # type: ignore[misc]
            await cluster.wait_peers(5)
        held = sum(len(server.clients) for server, _ in members)
        assert held == 6  # peer connections arrive on the peer ports, not here
        for index in range(6):
            entry = one.clients.named(f"far-{index}")
            assert entry is not None
            reply = await entry.stub.Unary(EchoRequest(text="shared"))
            assert reply.text == f"far-{index}:shared"
    finally:
        for server, _ in members:
            server.close()
            await server.wait_closed()


async def test_a_peer_needs_the_token_to_relay_and_is_never_listed(
    make_server: ServerFactory, connect: DialFactory, certs: DevCertificates
) -> None:
    fleet = await start_fleet(make_server, connect, certs, brpc.MemoryDirectory(), count=2)
    two = fleet.clusters[1]
    far1 = fleet.clusters[0].clients.named("far-1")
    assert far1 is not None
    impostor = await connect(
        fleet.clusters[0].server.address, name="brpc-peer.s9", token="not-the-token"
    )
    with pytest.raises(GRPCError) as caught:
        await EchoStub(impostor).Unary(
            EchoRequest(text="x"), metadata={"brpc-target-id": far1.connection_id}
        )
    assert caught.value.status is Status.PERMISSION_DENIED
    assert sorted(entry.name for entry in two.clients) == ["far-1", "far-2"]
    assert not fleet.fars["far-1"].seen


async def test_deadline_and_cancel_cross_servers_and_stale_records_fail(
    make_server: ServerFactory, connect: DialFactory, certs: DevCertificates
) -> None:
    directory = brpc.MemoryDirectory()
    fleet = await start_fleet(make_server, connect, certs, directory, count=2)
    one = fleet.clusters[0]
    entry = one.clients.named("far-2")
    assert entry is not None
    far = fleet.fars["far-2"]
    far.mode = "hang"
    with pytest.raises(GRPCError) as caught:
        await entry.stub.Unary(EchoRequest(text="slow"), timeout=0.5)
    assert caught.value.status is Status.DEADLINE_EXCEEDED
    assert far.seen[-1].deadline is not None
    await asyncio.wait_for(far.cancelled.wait(), 5)
    far.mode = ""

    # A record whose client is not on its server (a stale record): UNAVAILABLE, not a hang.
    ghost = ClientRecord(
        connection_id="ghost",
        server_id="s2",
        name="ghost",
        labels={},
        services=("brpc.testing.v1.Echo",),
        address="",
        connected_at=0.0,
    )
    await directory.register_client(ghost)
    await one.replica.wait_until(lambda: one.replica.get("ghost") is not None, timeout=5)
    stale = one.clients.get("ghost")
    assert stale is not None
    with pytest.raises(GRPCError) as caught:
        await asyncio.wait_for(stale.stub.Unary(EchoRequest(text="boo")), 5)
    assert caught.value.status is Status.UNAVAILABLE
    # Once the directory says it is gone, calls fail before anything is sent.
    await directory.unregister_client("s2", "ghost")
    await one.replica.wait_until(lambda: one.replica.get("ghost") is None, timeout=5)
    assert stale.closed
    with pytest.raises(GRPCError) as caught:
        await stale.stub.Unary(EchoRequest(text="boo"))
    assert caught.value.status is Status.UNAVAILABLE
    assert "no longer connected" in str(caught.value.message)


async def test_peers_authenticated_by_mutual_tls(
    make_server: ServerFactory, connect: DialFactory, certs: DevCertificates
) -> None:
    directory = brpc.MemoryDirectory()

    def any_name(request: brpc.AuthRequest) -> brpc.Identity | None:
        assert request.certificate is not None
        return dataclasses.replace(request.certificate, names=("*",))

    clusters: list[brpc.Cluster[EchoStub]] = []
    for index in (1, 2):
        cluster: brpc.Cluster[EchoStub] = brpc.Cluster(
            directory,
            server_id=f"m{index}",
            peer_identities=("client",),
            peer_ca=str(certs.ca),
            peer_certfile=str(certs.client_cert),
            peer_keyfile=str(certs.client_key),
        )
        server = await make_server(
            client_stub=EchoStub,
            cluster=cluster,
            client_ca=certs.ca,
            authenticate=cluster.authenticator(any_name),
            relay=brpc.Relay(authorize=cluster.relay_authorizer()),
        )
        far = Far(tag=f"far-{index}")
        await connect(
            server,
            services=[far],
            name=f"far-{index}",
            certfile=certs.client_cert,
            keyfile=certs.client_key,
        )
        clusters.append(cluster)
    for cluster in clusters:
        await cluster.replica.wait_until(lambda c=cluster: len(c.replica) == 2, timeout=5)  # type: ignore[misc]
        await cluster.wait_peers(5)
    entry = clusters[0].clients.named("far-2")
    assert entry is not None and not entry.local
    assert (await entry.stub.Unary(EchoRequest(text="tls"))).text == "far-2:tls"


async def test_three_hundred_clients_across_three_servers_are_listed_by_each(
    make_server: ServerFactory, connect: DialFactory, certs: DevCertificates
) -> None:
    fleet = await start_fleet(make_server, connect, certs, brpc.MemoryDirectory())
    total = 300
    for first in range(0, total, 30):
        await asyncio.gather(
            *(
                connect(fleet.servers[index % 3], name=f"agent-{index}", reconnect=False)
                for index in range(first, first + 30)
            )
        )
    for cluster in fleet.clusters:
        await cluster.replica.wait_until(lambda c=cluster: len(c.replica) == total + 3, timeout=10)  # type: ignore[misc]
        names = {entry.name for entry in cluster.clients}
        assert {f"agent-{index}" for index in range(total)} <= names
        held = cluster.clients.find(server_id="s2")
        assert len(held) == total // 3 + 1

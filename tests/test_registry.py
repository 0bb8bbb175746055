"""The server's table of clients: listing, lookups, presence events, duplicate names,
and nothing left behind once clients leave."""

from __future__ import annotations

import asyncio
import gc
import logging
import weakref
from typing import Any

import pytest
from conftest import wait_for
from probes import Probe

import brpc
from brpc.testing.v1.echo_grpc import EchoStub
from brpc.testing.v1.echo_pb2 import EchoRequest

ECHO = "brpc.testing.v1.Echo"


def _labels(i: int) -> dict[str, str]:
    return {"zone": "a" if i % 2 else "b", "tier": str(i % 5)}


async def _connect_many(
    server: brpc.Server[Any], connect: Any, count: int, **options: Any
) -> list[brpc.ClientConn]:
    async def one(i: int) -> brpc.ClientConn:
        services = [Probe()] if i % 3 == 0 else []
        return await connect(
            server,
            name=f"agent-{i:02d}",
            labels=_labels(i),
            services=services,
            reconnect=False,
            **options,
        )

    return list(await asyncio.gather(*(one(i) for i in range(count))))


async def test_fifty_clients_listed_found_and_filtered(make_server: Any, connect: Any) -> None:
    server = await make_server(client_stub=EchoStub)
    conns = await _connect_many(server, connect, 50)
    clients = server.clients

    assert len(clients) == 50
    assert len(server.clients_snapshot()) == 50
    assert sorted(info.name for info in clients) == [f"agent-{i:02d}" for i in range(50)]
    for i, conn in enumerate(conns):
        info = clients.get(conn.connection_id)
        assert info is not None
        assert conn.connection_id in clients and info in clients
        assert (info.name, dict(info.labels)) == (f"agent-{i:02d}", _labels(i))
        assert info.services == ((ECHO,) if i % 3 == 0 else ())
        assert info.address is not None and info.address[0] == "127.0.0.1"
        assert info.connected_at > 0
        assert info.identity is None
        assert isinstance(info.stub, EchoStub)
        assert clients.named(info.name) is info
    assert clients.get("no-such-id") is None and "no-such-id" not in clients
    assert clients.named("agent-99") is None and clients.named("") is None

    zone_a = clients.find(labels={"zone": "a"})
    assert {info.name for info in zone_a} == {f"agent-{i:02d}" for i in range(1, 50, 2)}
    both = clients.find(labels={"zone": "a", "tier": "3"})
    assert {info.name for info in both} == {
        f"agent-{i:02d}" for i in range(50) if i % 2 and i % 5 == 3
    }
    echo = clients.find(service=ECHO)
    assert {info.name for info in echo} == {f"agent-{i:02d}" for i in range(0, 50, 3)}
    echo_b = clients.find(service=ECHO, labels={"zone": "b"})
    assert {info.name for info in echo_b} == {f"agent-{i:02d}" for i in range(0, 50, 6)}
    assert clients.find(labels={"zone": "c"}) == []
    assert clients.find(name="agent-07") == [clients.named("agent-07")]
    assert clients.select(lambda info: info.name.endswith("9")) == clients.find(
        where=lambda info: info.name.endswith("9")
    )
    assert clients.select({"zone": "a"}) == zone_a
    assert clients.select(ECHO) == echo
    assert clients.select([*echo[:2], echo[0]]) == echo[:2]
    assert clients.select() == list(clients)

    # Everyone can be called through the stub the table hands out.
    reply = await echo[0].stub.Unary(EchoRequest(text="via the table"))
    assert reply.text == "via the table"

    gone = [conn.connection_id for conn in conns[:10]]
    for conn in conns[:10]:
        await conn.close()
    await wait_for(lambda: len(clients) == 40)
    assert all(clients.get(connection_id) is None for connection_id in gone)
    assert {info.name for info in clients.find(labels={"zone": "a"})} == {
        f"agent-{i:02d}" for i in range(11, 50, 2)
    }


async def test_presence_events_arrive_in_order(make_server: Any, connect: Any) -> None:
    server = await make_server(client_stub=EchoStub)
    seen: list[tuple[str, str]] = []
    async_seen: list[tuple[str, str]] = []
    server.on_connect(lambda info: seen.append(("connected", info.connection_id)))
    server.on_disconnect(lambda info: seen.append(("disconnected", info.connection_id)))

    async def connected(info: brpc.ClientInfo[Any]) -> None:
        await asyncio.sleep(0)
        async_seen.append(("connected", info.connection_id))

    async def disconnected(info: brpc.ClientInfo[Any]) -> None:
        async_seen.append(("disconnected", info.connection_id))

    server.on_connect(connected)
    server.on_disconnect(disconnected)
    watch = server.watch()

    conns = await _connect_many(server, connect, 50)
    order = [info.connection_id for info in server.clients]
    leaving = [conn.connection_id for conn in conns[::2]]
    for conn in conns[::2]:
        await conn.close()
    await wait_for(lambda: len(server.clients) == 25)

    events = [await anext(watch) for _ in range(75)]
    assert watch.pending == 0
    observed = [(event.kind.value, event.client.connection_id) for event in events]
    # The watcher, the sync callbacks and the table agree on one order.
    assert observed == seen
    assert observed[:50] == [("connected", cid) for cid in order]
    assert sorted(observed[50:]) == sorted(("disconnected", cid) for cid in leaving)
    assert not any(event.replayed for event in events)
    assert all(event.reason and "client closed" in event.reason for event in events[50:])
    await wait_for(lambda: len(async_seen) == 75)
    for cid in leaving:
        assert async_seen.index(("connected", cid)) < async_seen.index(("disconnected", cid))
    assert sorted(async_seen) == sorted(seen)


async def test_watch_replays_existing_clients_and_ends_with_the_server(
    make_server: Any, connect: Any
) -> None:
    server = await make_server()
    first = await connect(server, name="first", reconnect=False)
    watch = server.watch()
    event = await anext(watch)
    assert (event.kind, event.client.name, event.replayed) == (
        brpc.PresenceKind.CONNECTED,
        "first",
        True,
    )
    await connect(server, name="second", reconnect=False)
    event = await anext(watch)
    assert (event.connected, event.client.name, event.replayed) == (True, "second", False)

    changes_only = server.watch(existing=False)
    server.close()
    names = [(e.kind.value, e.client.name) async for e in watch]
    assert sorted(names) == [("disconnected", "first"), ("disconnected", "second")]
    assert len([e async for e in changes_only]) == 2
    await first.wait_closed()


async def test_watch_of_an_idle_server_ends_when_it_closes(make_server: Any) -> None:
    server = await make_server()
    watch = server.watch()
    reader = asyncio.create_task(anext(watch, None))
    await wait_for(lambda: watch._waiter is not None)  # the reader waits for an event
    server.close()
    assert await reader is None


async def test_a_watcher_that_falls_behind_is_resynchronised(
    make_server: Any, connect: Any, caplog: pytest.LogCaptureFixture
) -> None:
    server = await make_server()
    stays = await connect(server, name="stays", reconnect=False)
    leaves = await connect(server, name="leaves", reconnect=False)
    watch = server.watch(max_pending=3)
    assert (await anext(watch)).client.name == "stays"
    assert (await anext(watch)).client.name == "leaves"
    # Nobody reads while five more changes happen: more than max_pending.
    caplog.set_level(logging.WARNING, logger="brpc.presence")
    await leaves.close()
    brief = await connect(server, name="brief", reconnect=False)
    await brief.close()
    await connect(server, name="new-1", reconnect=False)
    await connect(server, name="new-2", reconnect=False)
    await wait_for(lambda: len(server.clients) == 3)
    assert watch.pending <= 3 and watch.dropped > 0
    assert "fell more than 3 events behind" in caplog.text

    # The reader gets the difference between what it knew and what is true now.
    events = [await anext(watch) for _ in range(3)]
    assert all(event.replayed for event in events)
    assert [(e.kind.value, e.client.name) for e in events] == [
        ("disconnected", "leaves"),
        ("connected", "new-1"),
        ("connected", "new-2"),
    ]
    assert watch.pending == 0
    # And live events after that.
    await stays.close()
    event = await anext(watch)
    assert (event.kind.value, event.client.name, event.replayed) == (
        "disconnected",
        "stays",
        False,
    )


async def test_watchers_are_forgotten_when_closed_or_dropped(make_server: Any) -> None:
    server = await make_server()
    presence = server._presence
    async with server.watch() as watch:
        assert len(presence._watchers) == 1
    assert len(presence._watchers) == 0
    assert await anext(watch, None) is None

    closed = server.watch()
    await closed.aclose()
    assert len(presence._watchers) == 0

    dropped = server.watch()
    assert len(presence._watchers) == 1
    del dropped
    gc.collect()
    assert len(presence._watchers) == 0


async def test_failing_callbacks_are_logged_and_harmless(
    make_server: Any, connect: Any, caplog: pytest.LogCaptureFixture
) -> None:
    server = await make_server([Probe()], client_stub=EchoStub)
    calls: list[str] = []

    def broken(info: brpc.ClientInfo[Any]) -> None:
        raise RuntimeError("sync callback bug")

    async def broken_async(info: brpc.ClientInfo[Any]) -> None:
        raise RuntimeError("async callback bug")

    async def works(info: brpc.ClientInfo[Any]) -> None:
        calls.append(info.name)

    server.on_connect(broken)
    server.on_connect(broken_async)
    server.on_connect(works)
    unsubscribe = server.on_disconnect(broken)
    unsubscribe()
    conn = await connect(server, name="survivor")
    assert (await EchoStub(conn).Unary(EchoRequest(text="still fine"))).text == "still fine"
    await wait_for(lambda: calls == ["survivor"])
    await wait_for(lambda: server._presence.pending_callbacks == 0)
    assert "sync callback bug" in caplog.text and "async callback bug" in caplog.text


async def test_a_clients_disconnect_callbacks_wait_for_its_connect_callbacks(
    make_server: Any, connect: Any
) -> None:
    server = await make_server()
    release = asyncio.Event()
    steps: list[str] = []

    async def slow_connect(info: brpc.ClientInfo[Any]) -> None:
        steps.append("connect started")
        await release.wait()
        steps.append("connect finished")

    async def on_disconnect(info: brpc.ClientInfo[Any]) -> None:
        steps.append("disconnect")

    server.on_connect(slow_connect)
    server.on_disconnect(on_disconnect)
    conn = await connect(server, reconnect=False)
    await wait_for(lambda: steps == ["connect started"])
    await conn.close()
    await wait_for(lambda: len(server.clients) == 0)
    assert steps == ["connect started"]  # the disconnect callback is held back...
    release.set()
    await wait_for(lambda: len(steps) == 3)
    assert steps == ["connect started", "connect finished", "disconnect"]  # ...not lost


async def test_closing_a_client_from_on_connect_keeps_events_in_order(
    make_server: Any, connect: Any
) -> None:
    server = await make_server()
    steps: list[str] = []
    server.on_connect(lambda info: (steps.append("first on_connect"), info.close("not today")))
    server.on_connect(lambda info: steps.append("second on_connect"))
    server.on_disconnect(lambda info: steps.append(f"on_disconnect: {info.close_reason}"))
    # The callbacks run once the server hello is sent, so the client sees the
    # close either while dialing (when it arrives with the hello) or right after.
    try:
        conn = await connect(server, reconnect=False)
    except brpc.ConnectError as exc:
        assert "not today" in str(exc)
    else:
        await conn.wait_closed()
        assert "not today" in (conn.close_reason or "")
    await wait_for(lambda: len(steps) == 3)
    assert steps == [
        "first on_connect",
        "second on_connect",
        "on_disconnect: connection closed locally (NO_ERROR): not today",
    ]
    assert len(server.clients) == 0


# -- duplicate names -------------------------------------------------------------------


async def test_replace_closes_the_older_connection(make_server: Any, connect: Any) -> None:
    server = await make_server()  # REPLACE is the default
    events: list[tuple[str, str]] = []
    server.on_connect(lambda info: events.append(("connected", info.connection_id)))
    server.on_disconnect(lambda info: events.append(("disconnected", info.connection_id)))
    old = await connect(server, name="agent", reconnect=False)
    old_id = old.connection_id
    new = await connect(server, name="agent", reconnect=False)
    await old.wait_closed()
    assert old.state is brpc.ConnState.CLOSED
    assert "REPLACED" in (old.close_reason or "")
    assert "replaced by a newer connection with the same name 'agent'" in (old.close_reason or "")
    assert new.connection_id not in (old.close_reason or "")
    assert len(server.clients) == 1
    named = server.clients.named("agent")
    assert named is not None and named.connection_id == new.connection_id
    assert events == [
        ("connected", old_id),
        ("disconnected", old_id),
        ("connected", new.connection_id),
    ]


async def test_reject_refuses_the_newer_connection(make_server: Any, connect: Any) -> None:
    server = await make_server(duplicate_names=brpc.DuplicateNames.REJECT)
    first = await connect(server, name="agent", reconnect=False)
    with pytest.raises(brpc.RefusedError) as refused:
        await connect(server, name="agent", reconnect=False)
    assert refused.value.code == "ALREADY_EXISTS"
    # The refusal names nothing that belongs to the other client (its ID is only logged).
    assert first.connection_id not in str(refused.value)
    assert "already connected" in refused.value.reason
    assert first.state is brpc.ConnState.READY
    assert [info.connection_id for info in server.clients] == [first.connection_id]
    # Unnamed clients never conflict; the name is free again once its holder left.
    await connect(server, reconnect=False)
    await connect(server, reconnect=False)
    await first.close()
    await wait_for(lambda: server.clients.named("agent") is None)
    again = await connect(server, name="agent", reconnect=False)
    named = server.clients.named("agent")
    assert named is not None and named.connection_id == again.connection_id


async def test_allow_keeps_both_connections(make_server: Any, connect: Any) -> None:
    server = await make_server(duplicate_names=brpc.DuplicateNames.ALLOW)
    first = await connect(server, name="agent", reconnect=False)
    second = await connect(server, name="agent", reconnect=False)
    assert first.state is second.state is brpc.ConnState.READY
    ids = [info.connection_id for info in server.clients.find(name="agent")]
    assert ids == [first.connection_id, second.connection_id]
    named = server.clients.named("agent")
    assert named is not None and named.connection_id == second.connection_id
    await second.close()
    await wait_for(lambda: len(server.clients) == 1)
    named = server.clients.named("agent")
    assert named is not None and named.connection_id == first.connection_id


# -- leaks -----------------------------------------------------------------------------


async def test_nothing_left_behind_after_clients_leave(make_server: Any, connect: Any) -> None:
    """Tasks, table entries, callbacks' bookkeeping and the clients themselves are
    all gone once the clients have left, after presence callbacks, a watcher and
    a fan-out with calls cut off by the disconnects."""
    server = await make_server(client_stub=EchoStub)
    tasks_before = len(asyncio.all_tasks())
    probes = [Probe() for _ in range(20)]

    async def on_connect(info: brpc.ClientInfo[Any]) -> None:
        await asyncio.sleep(0)

    async def on_disconnect(info: brpc.ClientInfo[Any]) -> None:
        await asyncio.sleep(0)

    server.on_connect(on_connect)
    server.on_disconnect(on_disconnect)
    watch = server.watch()
    conns = [
        await connect(server, name=f"c{i}", labels={"i": str(i)}, services=[probe])
        for i, probe in enumerate(probes)
    ]
    infos = [weakref.ref(info) for info in server.clients]
    fan = server.call_all(lambda stub, info: stub.Unary(EchoRequest(text="block")))
    for probe in probes:
        await asyncio.wait_for(probe.started.wait(), 10)
    for conn in conns:
        await conn.close()
    results = await fan.gather()
    assert len(results) == 20 and all(r.error is not None for r in results)
    events = [await anext(watch) for _ in range(40)]
    assert [event.connected for event in events] == [True] * 20 + [False] * 20
    assert watch.pending == 0
    await watch.aclose()
    del fan, results, watch, events, conns

    presence = server._presence
    await wait_for(
        lambda: len(asyncio.all_tasks()) == tasks_before and presence.pending_callbacks == 0
    )
    clients = server.clients
    assert len(clients) == 0
    assert (clients._by_name, clients._by_label, clients._by_service) == ({}, {}, {})
    assert presence._latest == {}
    assert len(presence._watchers) == 0

    def all_collected() -> bool:
        gc.collect()
        return all(ref() is None for ref in infos)

    await wait_for(all_collected)


async def test_replace_needs_the_same_identity(make_server: Any, connect: Any) -> None:
    """With authentication, a name cannot be used to push out someone else."""
    users = {"alice-laptop": "alice", "alice-phone": "alice", "mallory": "mallory"}

    def authenticate(request: brpc.AuthRequest) -> brpc.Identity:
        return brpc.Identity(name=users[request.token], source="token", names=("agent",))

    server = await make_server(authenticate=authenticate)
    first = await connect(server, name="agent", token="alice-laptop", reconnect=False)
    with pytest.raises(brpc.RefusedError) as refused:
        await connect(server, name="agent", token="mallory", reconnect=False)
    assert refused.value.code == "ALREADY_EXISTS"
    assert "another identity" in refused.value.reason
    assert first.state is brpc.ConnState.READY
    second = await connect(server, name="agent", token="alice-phone", reconnect=False)
    await first.wait_closed()
    assert "REPLACED" in (first.close_reason or "")
    named = server.clients.named("agent")
    assert named is not None and named.connection_id == second.connection_id
    assert named.identity == brpc.Identity(name="alice", source="token", names=("agent",))


async def test_on_connect_can_call_the_client_at_once(make_server: Any, connect: Any) -> None:
    server = await make_server(client_stub=EchoStub)
    replies: list[str] = []

    async def greet(info: brpc.ClientInfo[EchoStub]) -> None:
        replies.append((await info.stub.Unary(EchoRequest(text=info.name))).text)

    server.on_connect(greet)
    for i in range(5):
        await connect(server, name=f"c{i}", services=[Probe()], reconnect=False)
    await wait_for(lambda: server._presence.pending_callbacks == 0)
    assert sorted(replies) == [f"c{i}" for i in range(5)]


async def test_lanes_that_overtake_the_server_hello_are_kept(
    make_server: Any, connect: Any
) -> None:
    """With reordering, the server's first lane can reach the client before the
    ServerHello that accepted it; the client must keep it, not reject it."""
    from brpc.testing import NetworkConditions

    server = await make_server(client_stub=EchoStub)
    replies: list[str] = []

    async def greet(info: brpc.ClientInfo[EchoStub]) -> None:
        replies.append((await info.stub.Unary(EchoRequest(text=info.name))).text)

    server.on_connect(greet)
    network = NetworkConditions(reorder=0.5, reorder_delay=0.002, seed=3)
    for i in range(20):
        await connect(
            server, name=f"r{i}", services=[Probe()], reconnect=False, network_conditions=network
        )
    await wait_for(lambda: server._presence.pending_callbacks == 0, timeout=30)
    assert sorted(replies) == sorted(f"r{i}" for i in range(20))
    assert network.reordered > 0

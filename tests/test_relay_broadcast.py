"""One-to-many relaying: every target's answer or error, tagged, in completion order."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError

import brpc
from brpc.certs import DevCertificates
from brpc.testing.v1.echo_pb2 import EchoReply, EchoRequest
from tests.conftest import DialFactory, ServerFactory, wait_for
from tests.relay_kit import Far, client_ssl

UNARY = "/brpc.testing.v1.Echo/Unary"
CLIENT_STREAM = "/brpc.testing.v1.Echo/ClientStream"


@pytest.fixture
async def fleet(make_server: ServerFactory, connect: DialFactory, certs: DevCertificates) -> Any:
    server = await make_server(relay=brpc.Relay(max_timeout=10.0, broadcast_queue=2))
    port = await server.listen_tcp("127.0.0.1", 0)
    fars = {
        "fast": Far("fast"),
        "slow": Far("slow", mode="slow"),
        "failing": Far("failing", mode="fail"),
        "vanishing": Far("vanishing", mode="hang"),
    }
    for name, far in fars.items():
        await connect(server, services=[far], name=name, labels={"group": "g", "kind": name})
    await connect(server, name="bystander", labels={"group": "other"})
    await wait_for(lambda: len(server.clients) == 5)
    channel = Channel("127.0.0.1", port, ssl=client_ssl(certs))
    yield server, fars, channel
    channel.close()


async def test_results_in_completion_order_with_their_sources(fleet: Any) -> None:
    server, fars, channel = fleet
    ids = {info.name: info.connection_id for info in server.clients}
    results: list[brpc.RelayResult[EchoReply]] = []
    async for result in brpc.relay_all(
        channel, UNARY, EchoRequest(text="q"), EchoReply, select="group=g", timeout=10
    ):
        results.append(result)
        if len(results) == 2:
            # fast and failing are done; vanishing is stuck, slow is waiting.
            await fars["vanishing"].hanging.wait()
            server.clients.get(ids["vanishing"]).close("test: vanishing")
        elif len(results) == 3:
            fars["slow"].release.set()
    names = [r.source.name for r in results]
    assert sorted(names[:2]) == ["failing", "fast"]
    assert names[2:] == ["vanishing", "slow"]
    by_name = {r.source.name: r for r in results}
    for name, result in by_name.items():
        assert result.source.connection_id == ids[name]
        assert result.source.labels == {"group": "g", "kind": name}

    fast = by_name["fast"]
    assert fast.ok and fast.unwrap() == EchoReply(text="fast:q")
    assert fast.initial_metadata["x-init"] == "fast-Unary"
    assert fast.trailing_metadata["x-trail"] == "ok"
    assert by_name["slow"].value == EchoReply(text="slow:q")

    failing = by_name["failing"]
    assert failing.status is Status.FAILED_PRECONDITION
    assert failing.error is not None and failing.error.message == "no good"
    assert [type(d).__name__ for d in failing.error.details] == ["_Unknown"]
    assert failing.trailing_metadata["x-trail"] == "failed"

    vanishing = by_name["vanishing"]
    assert vanishing.status is Status.UNAVAILABLE
    assert "'vanishing'" in str(vanishing.error) and UNARY in str(vanishing.error)


async def test_a_target_that_falls_behind_ends_alone_with_resource_exhausted(
    make_server: ServerFactory, connect: DialFactory
) -> None:
    # A queue of 8 messages; the caller never runs more than 4 ahead of the
    # quick target, so only the one that never reads can fall behind.
    allow_all = brpc.Relay(broadcast_queue=8, authorize=lambda caller, method, targets: True)
    server = await make_server(relay=allow_all)
    stalled = Far("stalled", mode="stall")
    quick = Far("quick")
    await connect(server, services=[quick], name="quick", labels={"group": "s"})
    await connect(server, services=[stalled], name="stalled", labels={"group": "s"})
    # The caller on the same engine as the server: a qh3 caller uploads faster
    # than an aioquic server relays to "quick", which then falls behind too.
    caller = await connect(server, name="caller", engine="aioquic")
    await wait_for(lambda: len(server.clients) == 3)
    size, count = 256 << 10, 40  # more than the target's window (4 MiB at most) plus its queue

    async def requests() -> AsyncIterator[EchoRequest]:
        for i in range(count):
            await wait_for(lambda: quick.read >= i - 4)  # noqa: B023 - awaited at once
            yield EchoRequest(text=str(i), payload=b"x" * size)

    results = [
        r
        async for r in brpc.relay_all(
            caller, CLIENT_STREAM, requests(), EchoReply, select="group=s"
        )
    ]
    by_name = {r.source.name: r for r in results}
    assert by_name["quick"].unwrap().received == count
    behind = by_name["stalled"]
    assert behind.status is Status.RESOURCE_EXHAUSTED
    assert "stalled" in str(behind.error) and "fell behind" in str(behind.error)
    # Its own call was cancelled; the other target's was not held up.
    await asyncio.wait_for(stalled.cancelled.wait(), 5)


async def test_broadcast_with_no_target_fails_the_call(fleet: Any) -> None:
    _, _, channel = fleet
    with pytest.raises(GRPCError) as caught:
        async for _ in brpc.relay_all(channel, UNARY, EchoRequest(), EchoReply, target="nobody"):
            pass
    assert caught.value.status is Status.UNAVAILABLE
    assert "nobody" in str(caught.value.message)

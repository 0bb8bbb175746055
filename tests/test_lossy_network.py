"""Calls survive a lossy, reordering network (datagrams dropped in-process)."""

from __future__ import annotations

import asyncio
from typing import Any

from probes import Probe

from brpc.testing import NetworkConditions
from brpc.testing.v1.echo_grpc import EchoStub
from brpc.testing.v1.echo_pb2 import EchoRequest


async def _mixed_calls(stub: EchoStub, count: int, tag: str) -> None:
    semaphore = asyncio.Semaphore(50)

    async def one(i: int) -> None:
        async with semaphore:
            text = f"{tag}-{i}"
            kind = i % 4
            if kind == 0:
                reply = await stub.Unary(EchoRequest(text=text, payload=bytes(i % 3000)))
                assert (reply.text, len(reply.payload)) == (text, i % 3000)
            elif kind == 1:
                replies = await stub.ServerStream(EchoRequest(text=text, count=5))
                assert [(r.text, r.index) for r in replies] == [(text, n) for n in range(5)]
            elif kind == 2:
                reply = await stub.ClientStream([EchoRequest(text=f"{text}.{n}") for n in range(4)])
                assert reply.received == 4 and reply.text.startswith(f"{text}.0,")
            else:
                replies = await stub.Bidi([EchoRequest(text=text), EchoRequest(text="x")])
                assert [r.text for r in replies] == [text.upper(), "X"]

    await asyncio.gather(*(one(i) for i in range(count)))


async def test_five_percent_loss_both_ways(make_server: Any, connect: Any) -> None:
    server_net = NetworkConditions(drop=0.05, reorder=0.02, seed=1)
    client_net = NetworkConditions(drop=0.05, reorder=0.02, seed=2)
    server = await make_server([Probe()], client_stub=EchoStub, network_conditions=server_net)
    conn = await connect(server, services=[Probe()], network_conditions=client_net, timeout=30)
    (info,) = server.clients_snapshot()
    await asyncio.wait_for(
        asyncio.gather(
            _mixed_calls(EchoStub(conn), 500, "up"), _mixed_calls(info.stub, 500, "down")
        ),
        timeout=120,
    )
    # the loss really happened, in both directions
    assert server_net.dropped >= 5 and client_net.dropped >= 5
    assert server_net.reordered > 0 and client_net.reordered > 0

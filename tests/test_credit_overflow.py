"""Engines that grant flow-control credit as data arrives (qh3) cannot hold a
sender back: the receiver ends the call that leaves too much unread instead."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from test_backpressure import CHUNK, TOTAL, SlowSink

from brpc._session.quic.session import UNCREDITED_HOLD_LIMIT
from brpc.testing.v1.echo_grpc import EchoStub
from brpc.testing.v1.echo_pb2 import EchoRequest


async def test_an_engine_that_cannot_withhold_credit_ends_an_unread_call(
    make_server: Any, connect: Any
) -> None:
    """qh3 grants the sender credit as data arrives: the receiver bounds what it
    holds by ending the call that goes over the limit, and nothing else."""
    sink = SlowSink()  # never allowed: reads nothing
    big = {"max_datagram_size": 16000, "call_layer": "streams"}
    server = await make_server([], client_stub=EchoStub, engine="aioquic", **big)
    conn = await connect(server, services=[sink], engine="qh3", **big)
    (info,) = server.clients_snapshot()

    async def send() -> None:
        payload = b"\xab" * CHUNK
        async with info.stub.ClientStream.open() as stream:
            for _ in range(TOTAL // CHUNK):
                await stream.send_message(EchoRequest(payload=payload))
            await stream.end()
            await stream.recv_message()

    with pytest.raises(GRPCError) as caught:
        await asyncio.wait_for(send(), 60)
    assert caught.value.status is Status.RESOURCE_EXHAUSTED
    assert "unread" in str(caught.value.message)
    peak = max(s["peak_held"] for s in conn.transport_stats())
    assert peak <= UNCREDITED_HOLD_LIMIT + CHUNK + 16000, peak
    # The connection and its other calls are unharmed.
    sink.allowed.set()
    reply = await info.stub.ClientStream([EchoRequest(payload=b"x")])
    assert reply.received >= 1

"""A call leaves no reference cycle behind: it is freed by reference counting.

Cyclic garbage costs full collections (tens of milliseconds with many
objects), so the per-call path must not make any: with the collector off,
unary calls in both directions on each call layer leave (almost) nothing for
``gc.collect()`` to find.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import pytest
from layers import on_both_call_layers
from probes import Probe

from brpc.testing.v1.echo_grpc import EchoStub
from brpc.testing.v1.echo_pb2 import EchoRequest

pytestmark = on_both_call_layers

CALLS = 100


@pytest.fixture
def collector_off() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


async def test_unary_calls_make_no_cycles(
    make_server: Any, connect: Any, collector_off: None
) -> None:
    server = await make_server([Probe()], client_stub=EchoStub)
    conn = await connect(server, services=[Probe()])
    (info,) = server.clients_snapshot()
    up, down = EchoStub(conn), info.stub
    for stub in (up, down):  # warm up lanes, caches and lazily made objects
        for _ in range(5):
            await stub.Unary(EchoRequest(text="warm"))
    gc.collect()
    for i in range(CALLS):
        await up.Unary(EchoRequest(text=str(i)))
        await down.Unary(EchoRequest(text=str(i)))
    found = gc.collect()
    # A few objects of the connection's own bookkeeping may turn over; a cycle
    # per call would be hundreds.
    assert found < CALLS // 4, found

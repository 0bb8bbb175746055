"""Connection set-up time and server memory per idle client.

Set-up time is measured from the start of dialing until the first call over
the new connection returns: handshake, hello exchange, lane opening and one
small call. Client to server, the dialing process times it alone. Server to
client, the client notes when it started dialing and the server when its
first call to that client returned; both read ``time.monotonic``
(``CLOCK_MONOTONIC``, one clock for every process on the machine).

Memory is the growth of the server process's resident set size while idle
clients are connected, measured by the server process itself after a
garbage collection.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time

import grpclib.client
import psutil

from brpc.relay import relay_all
from brpc.testing.v1.echo_pb2 import EchoReply

from .endpoints import BenchConnection, BenchServer, connect
from .load import Window, small_request
from .spec import HOST, TransportSpec
from .stats import percentile

__all__ = [
    "STOP_NAME",
    "answer_connects",
    "call_clients",
    "connect_many",
    "measure_connects",
    "resident_set_size",
]

#: Name of the last probe connection of a server-to-client set-up run.
STOP_NAME = "connect-stop"
_PROBE_PREFIX = "connect-"
_DIAL_CONCURRENCY = 16


async def measure_connects(
    spec: TransportSpec,
    port: int,
    *,
    warmup: float,
    window: float,
    server_calls_first: bool,
) -> dict[str, float]:
    """Dial, call once, close, over and over; return when each measured dial started.

    With ``server_calls_first`` the connection serves Echo and this side
    only waits for the server to call it and hang up (see
    :func:`answer_connects`); the result maps connection names to dial start
    times. Otherwise the first call goes to the server and the result maps
    names to set-up durations.
    """
    clock = time.monotonic
    measure_from = clock() + warmup
    end = measure_from + window
    results: dict[str, float] = {}
    index = 0
    while (started := clock()) < end:
        name = f"{_PROBE_PREFIX}{index}"
        index += 1
        conn = await connect(spec, port, name=name, serve=server_calls_first)
        try:
            if server_calls_first:
                await conn.wait_closed()
                value = started
            else:
                await conn.caller.unary(small_request())
                value = clock() - started
        finally:
            await conn.close()
        if started >= measure_from:
            results[name] = value
    if server_calls_first:
        last = await connect(spec, port, name=STOP_NAME, serve=True)
        await last.wait_closed()
        await last.close()
    return results


async def answer_connects(server: BenchServer) -> dict[str, float]:
    """Server side of server-to-client set-up: call every new probe client once.

    Calls each probe client as soon as the server reports it connected, notes
    when the call returned and disconnects it. Returns those times by client
    name once the client named :data:`STOP_NAME` connected.
    """
    answered: dict[str, float] = {}
    request = small_request()
    async with contextlib.aclosing(server.connecting_clients()) as names:
        async for name in names:
            caller = server.client_named(name)
            if not name.startswith(_PROBE_PREFIX) or name in answered or caller is None:
                continue
            await caller.unary(request)
            answered[name] = time.monotonic()
            server.disconnect(name)
            if name == STOP_NAME:
                del answered[name]
                break
    return answered


async def connect_many(
    spec: TransportSpec, port: int, *, prefix: str, count: int, call: bool, serve: bool
) -> list[BenchConnection]:
    """Open ``count`` connections named ``prefix-N``, each making one call if ``call``."""
    gate = asyncio.Semaphore(_DIAL_CONCURRENCY)

    async def one(index: int) -> BenchConnection:
        async with gate:
            conn = await connect(
                spec, port, name=f"{prefix}-{index}", serve=serve, labels={"group": prefix}
            )
            if call:
                await conn.caller.unary(small_request())
            return conn

    return list(await asyncio.gather(*(one(i) for i in range(count))))


async def call_clients(server: BenchServer, prefix: str) -> int:
    """Call every connected client whose name starts with ``prefix`` once."""
    gate = asyncio.Semaphore(_DIAL_CONCURRENCY)
    request = small_request()

    async def one(name: str) -> None:
        caller = server.client_named(name)
        if caller is not None:
            async with gate:
                await caller.unary(request)

    names = [name for name in server.client_names() if name.startswith(prefix)]
    await asyncio.gather(*(one(name) for name in names))
    return len(names)


def resident_set_size() -> int:
    """This process's RSS in bytes, after a full garbage collection."""
    gc.collect()
    return int(psutil.Process().memory_info().rss)


async def measure_fanout(
    port: int, *, group: str, clients: int, warmup: float, window: float
) -> dict[str, float]:
    """Broadcasts of one small unary call through the relay's front (a plaintext
    grpclib channel to ``port``) to every client labelled ``group``, one after
    another: time from sending to the last client's result."""
    channel = grpclib.client.Channel(HOST, port)
    span = Window.after(warmup, window)
    clock = time.perf_counter
    durations: list[float] = []
    request = small_request()
    try:
        while (started := clock()) < span.end:
            results = [
                result
                async for result in relay_all(
                    channel,
                    "/brpc.testing.v1.Echo/Unary",
                    request,
                    EchoReply,
                    select=f"group={group}",
                    timeout=30,
                )
            ]
            finished = clock()
            if len(results) != clients or not all(r.ok for r in results):
                failed = [r for r in results if not r.ok]
                raise RuntimeError(
                    f"fan-out reached {len(results)} of {clients} clients; failures: {failed[:3]}"
                )
            if span.holds(finished):
                durations.append(finished - started)
    finally:
        channel.close()
    return {
        "p50_ms": percentile(durations, 0.50) * 1e3,
        "p99_ms": percentile(durations, 0.99) * 1e3,
        "samples": float(len(durations)),
    }

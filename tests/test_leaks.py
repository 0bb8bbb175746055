"""Many connect / call / disconnect cycles leave nothing behind on the server."""

from __future__ import annotations

import asyncio
import gc
import os
import weakref
from typing import Any

import pytest
from conftest import wait_for
from probes import Probe

import brpc
from brpc.testing.v1.echo_grpc import EchoStub
from brpc.testing.v1.echo_pb2 import EchoRequest

CYCLES = 500


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _tasks() -> int:
    return len(asyncio.all_tasks())


async def test_connect_call_disconnect_cycles(make_server: Any, certs: Any) -> None:
    server = await make_server([Probe()], client_stub=EchoStub)
    # warm up imports and caches before taking the baseline
    async with brpc.dial(server.address, ca=certs.ca) as conn:
        await EchoStub(conn).Unary(EchoRequest(text="warm"))
    await wait_for(lambda: server.connection_count == 0)
    gc.collect()
    tasks, fds = _tasks(), _open_fds()

    for i in range(CYCLES):
        conn = await brpc.dial(server.address, ca=certs.ca, services=[Probe()], reconnect=False)
        assert (await EchoStub(conn).Unary(EchoRequest(text=str(i)))).text == str(i)
        if i % 2:  # half the cycles also call back into the client
            (info,) = server.clients_snapshot()
            assert (await info.stub.Unary(EchoRequest(text="back"))).text == "back"
        await conn.close()

    await wait_for(lambda: not server.clients_snapshot(), timeout=30)
    await wait_for(lambda: server.connection_count == 0, timeout=30)
    # Client sockets close once their QUIC closing period ends. At most as many
    # as at the start, not exactly: an earlier test's connections may still be
    # in their closing period at the baseline and close meanwhile.
    await wait_for(lambda: _open_fds() <= fds, timeout=30)
    await wait_for(lambda: _tasks() <= tasks, timeout=30)
    # aioquic keeps each connection for its closing period (three probe timeouts)
    await wait_for(lambda: server._listener.engine_connections == 0, timeout=30)


@pytest.mark.parametrize("engine", ["aioquic", "qh3"])
async def test_a_closed_connection_is_freed_by_reference_counting(
    make_server: Any, connect: Any, engine: str
) -> None:
    """The server's side of a connection that ended (its link, client info,
    QUIC session and connection) goes as soon as nothing refers to it, without
    a garbage collection. (With the lanes call layer, grpclib's HTTP/2 objects
    of each lane still form cycles that hold the session until one.)"""
    # Each engine's adapter breaks the cycles its connection objects make.
    options = {"call_layer": "streams", "engine": engine}
    server = await make_server([Probe()], client_stub=EchoStub, **options)
    conn = await connect(server, services=[Probe()], reconnect=False, **options)
    gc.collect()
    gc.disable()
    try:
        await _closed_connection_is_freed(server, conn)
    finally:
        gc.enable()


async def _closed_connection_is_freed(server: Any, conn: Any) -> None:
    await EchoStub(conn).Unary(EchoRequest(text="up"))
    (info,) = server.clients_snapshot()
    await info.stub.Unary(EchoRequest(text="down"))
    link = info._link
    refs = [weakref.ref(x) for x in (info, link, link.session, link.session.quic)]
    del info, link
    await conn.close()
    # The QUIC connection ends after its closing period (three probe timeouts).
    await wait_for(lambda: all(ref() is None for ref in refs), timeout=20)


async def test_a_closed_client_connection_is_freed_by_reference_counting(
    make_server: Any, certs: Any
) -> None:
    """The dialing side likewise: a closed ClientConn nobody refers to goes, with
    its link, QUIC session and connection, without a garbage collection."""
    options = {"call_layer": "streams", "engine": "aioquic"}
    server = await make_server([Probe()], client_stub=EchoStub, **options)
    conn = await brpc.dial(
        server.address, ca=certs.ca, services=[Probe()], reconnect=False, **options
    )
    gc.collect()
    gc.disable()
    try:
        await EchoStub(conn).Unary(EchoRequest(text="up"))
        (info,) = server.clients_snapshot()
        await info.stub.Unary(EchoRequest(text="down"))
        del info
        link = conn._link
        assert link is not None
        refs = [weakref.ref(x) for x in (conn, link, link.session, link.session.quic)]
        del link
        await conn.close()
        del conn
        # The QUIC connection ends after its closing period (three probe timeouts).
        await wait_for(lambda: all(ref() is None for ref in refs), timeout=20)
    finally:
        gc.enable()

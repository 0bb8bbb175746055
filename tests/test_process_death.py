"""Peers killed with SIGKILL (no goodbye), in separate processes."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for
from grpclib.const import Status
from grpclib.exceptions import GRPCError

import brpc
from brpc.testing.v1.echo_grpc import EchoStub
from brpc.testing.v1.echo_pb2 import EchoRequest
from examples.greeter import greeter_grpc, greeter_pb2

ROOT = Path(__file__).resolve().parent.parent
DEAD_PEER = 1.0


async def _spawn(*args: str) -> tuple[asyncio.subprocess.Process, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, *args, cwd=ROOT, stdout=asyncio.subprocess.PIPE
    )
    assert process.stdout is not None
    line = (await asyncio.wait_for(process.stdout.readline(), 30)).decode()
    return process, line.strip()


async def test_killed_client_is_noticed_within_the_dead_peer_bound(
    make_server: Any, certs: Any
) -> None:
    server = await make_server(
        client_stub=EchoStub, dead_peer_timeout=DEAD_PEER, keepalive_interval=DEAD_PEER / 4
    )
    process, line = await _spawn(
        "tests/peer_process.py", server.address, str(certs.ca), str(DEAD_PEER)
    )
    try:
        assert line.startswith("connected ")
        (info,) = server.clients_snapshot()
        call = asyncio.create_task(info.stub.Unary(EchoRequest(text="block")))
        await wait_for(lambda: info.calls_in_flight == 0 and info.outgoing_calls_in_flight == 1)
        process.send_signal(signal.SIGKILL)
        await process.wait()
        # noticed within the dead-peer bound (with room for a slow machine)
        with pytest.raises(GRPCError) as caught:
            await asyncio.wait_for(call, DEAD_PEER * 5)
        assert caught.value.status is Status.UNAVAILABLE
        assert "timed out" in (caught.value.message or "")
        assert not server.clients_snapshot()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_killed_server_is_noticed_and_clients_reconnect(certs: Any) -> None:
    class Namer(greeter_grpc.NamerBase):
        async def Name(self, stream: Any) -> None:
            await stream.recv_message()
            await stream.send_message(greeter_pb2.NameReply(name="survivor"))

    server_args = ["-m", "examples.greeter.server", "--certs", str(certs.directory)]
    first, line = await _spawn(*server_args, "--port", "0")
    address = line.rsplit(" ", 1)[1]
    port = address.rsplit(":", 1)[1]
    second = None
    conn = await brpc.dial(
        address,
        ca=certs.ca,
        services=[Namer()],
        dead_peer_timeout=DEAD_PEER,
        keepalive_interval=DEAD_PEER / 4,
        reconnect=brpc.ReconnectPolicy(initial_delay=0.05, max_delay=0.2),
    )
    try:
        greeter = greeter_grpc.GreeterStub(conn)
        assert (await greeter.Greet(greeter_pb2.GreetRequest())).message == "Hello survivor"
        first.send_signal(signal.SIGKILL)
        await first.wait()
        await wait_for(lambda: conn.state is brpc.ConnState.RECONNECTING, timeout=DEAD_PEER * 5)

        second, line = await _spawn(*server_args, "--port", port)
        assert line.endswith(address)
        await conn.wait_ready(timeout=20)
        assert conn.connections_made == 2
        # the new server calls back the client's Namer: services are served again
        reply = await greeter.Greet(greeter_pb2.GreetRequest(greeting="Welcome back"))
        assert reply.message == "Welcome back survivor"
    finally:
        await conn.close()
        for process in (first, second):
            if process is not None and process.returncode is None:
                process.terminate()
                await process.wait()

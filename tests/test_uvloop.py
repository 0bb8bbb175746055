"""brpc under uvloop: dialing (connected UDP sockets) and calls both ways, on both engines."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import uvloop

import brpc
from brpc.testing import EchoService
from brpc.testing.v1.echo_grpc import EchoStub
from brpc.testing.v1.echo_pb2 import EchoRequest


async def _calls(certs: Any, client_engine: str) -> None:
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
    server: brpc.Server[EchoStub] = brpc.Server(
        [EchoService()],
        client_stub=EchoStub,
        certfile=certs.server_cert,
        keyfile=certs.server_key,
        max_message_size=4 << 20,
    )
    await server.start("127.0.0.1", 0)
    try:
        async with asyncio.timeout(20):
            conn = await brpc.dial(
                server.address,
                ca=certs.ca,
                services=[EchoService()],
                engine=client_engine,
                max_message_size=4 << 20,
            )
            stub = EchoStub(conn)
            for i in range(5):
                assert (await stub.Unary(EchoRequest(text=f"call {i}"))).text == f"call {i}"
            bulk = "x" * (1 << 20)  # a few hundred datagrams each way, paced
            assert (await stub.Unary(EchoRequest(text=bulk))).text == bulk
            (info,) = server.clients_snapshot()
            assert (await info.stub.Unary(EchoRequest(text="back"))).text == "back"
            await conn.close()
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("client_engine", ["aioquic", "qh3"])
def test_calls_under_uvloop(certs: Any, client_engine: str) -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_calls(certs, client_engine))

"""grpclib's event hooks work on brpc servers and channels, both directions."""

from __future__ import annotations

from typing import Any

from grpclib.events import RecvRequest, SendRequest, listen
from layers import on_both_call_layers
from probes import Probe

from brpc.testing.v1.echo_grpc import EchoStub
from brpc.testing.v1.echo_pb2 import EchoRequest

pytestmark = on_both_call_layers


async def test_events_on_server_and_channels(make_server: Any, connect: Any) -> None:
    server_probe, client_probe = Probe(), Probe()
    server = await make_server([server_probe], client_stub=EchoStub)
    conn = await connect(server, services=[client_probe])
    (info,) = server.clients_snapshot()
    received: list[str] = []

    async def on_recv(event: RecvRequest) -> None:
        received.append(event.method_name)

    async def add_trace(event: SendRequest) -> None:
        event.metadata["x-trace"] = "t-1"

    listen(server, RecvRequest, on_recv)
    listen(conn, SendRequest, add_trace)
    listen(info.channel, SendRequest, add_trace)
    await EchoStub(conn).Unary(EchoRequest(text="up"))
    await info.stub.Unary(EchoRequest(text="down"))
    assert received == ["/brpc.testing.v1.Echo/Unary"]
    assert server_probe.seen_metadata[-1]["x-trace"] == "t-1"
    assert client_probe.seen_metadata[-1]["x-trace"] == "t-1"

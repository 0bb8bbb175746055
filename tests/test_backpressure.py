"""A sender never buffers without bound: 64 MiB to a handler that reads slowly."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from conftest import wait_for

from brpc.testing.v1 import echo_grpc
from brpc.testing.v1.echo_grpc import EchoStub
from brpc.testing.v1.echo_pb2 import EchoReply, EchoRequest

MIB = 1 << 20
CHUNK = 256 << 10
TOTAL = 64 * MIB
# The stream transport pauses writers above 1 MiB unacknowledged; one HTTP/2
# frame (16 KiB plus header) may land on top of that.
BOUND = MIB + (17 << 10)


class SlowSink(echo_grpc.EchoBase):
    """Reads a client stream only when allowed to, a chunk at a time."""

    def __init__(self) -> None:
        self.allowed = asyncio.Event()
        self.received = 0

    async def ClientStream(self, stream: Any) -> None:
        await self.allowed.wait()
        async for request in stream:
            self.received += len(request.payload)
            for _ in range(4):  # read slowly: give the sender every chance to run ahead
                await asyncio.sleep(0)
        await stream.send_message(EchoReply(received=self.received))

    async def Unary(self, stream: Any) -> None: ...
    async def ServerStream(self, stream: Any) -> None: ...
    async def Bidi(self, stream: Any) -> None: ...


@pytest.mark.parametrize("direction", ["client_to_server", "server_to_client"])
async def test_sixty_four_mib_to_a_slow_reader(
    make_server: Any, connect: Any, direction: str
) -> None:
    sink = SlowSink()
    # Large datagrams (valid on loopback) keep the 64 MiB quick to move.
    big = {"max_datagram_size": 16000}
    if direction == "client_to_server":
        server = await make_server([sink], **big)
        conn = await connect(server, **big)
        stub, sender_stats = EchoStub(conn), conn.transport_stats
    else:
        server = await make_server([], client_stub=EchoStub, **big)
        await connect(server, services=[sink], **big)
        (info,) = server.clients_snapshot()
        stub, sender_stats = info.stub, info.transport_stats

    def lane() -> dict[str, int]:
        return max(sender_stats(), key=lambda s: s["bytes_sent"])

    async def send() -> EchoReply:
        payload = b"\xab" * CHUNK
        async with stub.ClientStream.open() as stream:
            for _ in range(TOTAL // CHUNK):
                await stream.send_message(EchoRequest(payload=payload))
            await stream.end()
            reply = await stream.recv_message()
            assert reply is not None
            return reply

    sending = asyncio.create_task(send())
    # The reader reads nothing yet: the sender fills the flow-control window and
    # stops, with its transport buffer under the bound.
    await wait_for(lambda: lane()["bytes_sent"] >= 4 * MIB, timeout=30)
    assert not sending.done()
    assert lane()["send_buffer"] <= BOUND

    sink.allowed.set()
    reply = await asyncio.wait_for(sending, timeout=120)
    assert reply.received == TOTAL
    stats = lane()
    assert stats["bytes_sent"] >= TOTAL
    assert stats["peak_send_buffer"] <= BOUND, stats
    assert stats["pauses"] >= 1, stats  # the bound was reached and enforced

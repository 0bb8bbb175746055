"""A sender never buffers without bound: 64 MiB to a handler that reads slowly.

On both call layers and in both directions. On the streams layer the
receiver's flow-control credit follows what the handler consumed, so a handler
that reads nothing also bounds what its side receives and holds.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from conftest import wait_for
from layers import on_both_call_layers

from brpc.testing.v1 import echo_grpc
from brpc.testing.v1.echo_grpc import EchoStub
from brpc.testing.v1.echo_pb2 import EchoReply, EchoRequest

pytestmark = on_both_call_layers

MIB = 1 << 20
CHUNK = 256 << 10
TOTAL = 64 * MIB
# The stream transport pauses writers above 1 MiB unacknowledged; one HTTP/2
# frame (16 KiB plus header) may land on top of that with lanes, one message
# with streams (a message is written whole).
BOUND = {"lanes": MIB + (17 << 10), "streams": MIB + CHUNK + 5}
# What the receiving side of a streams call takes while its handler reads
# nothing: the read-ahead of complete messages plus one, and the QUIC window.
RECEIVE_BOUND = (256 << 10) + CHUNK + 5 + MIB


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
    make_server: Any, connect: Any, direction: str, call_layer: str
) -> None:
    sink = SlowSink()
    # Large datagrams (valid on loopback) keep the 64 MiB quick to move.
    big = {"max_datagram_size": 16000}
    if direction == "client_to_server":
        server = await make_server([sink], **big)
        conn = await connect(server, **big)
        (info,) = server.clients_snapshot()
        stub, sender_stats, receiver_stats = (
            EchoStub(conn),
            conn.transport_stats,
            info.transport_stats,
        )
    else:
        server = await make_server([], client_stub=EchoStub, **big)
        conn = await connect(server, services=[sink], **big)
        (info,) = server.clients_snapshot()
        stub, sender_stats, receiver_stats = info.stub, info.transport_stats, conn.transport_stats
    bound = BOUND[call_layer]

    def lane() -> dict[str, int]:
        return max(sender_stats(), key=lambda s: s["bytes_sent"])

    def receiving() -> dict[str, int]:
        return max(receiver_stats(), key=lambda s: s["bytes_received"])

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
    await wait_for(lambda: lane()["bytes_sent"] >= 2 * MIB and lane()["pauses"] >= 1, timeout=30)
    assert not sending.done()
    assert lane()["send_buffer"] <= bound
    if call_layer == "streams":
        # The receiver stopped granting credit: it holds a bounded amount.
        await wait_for(lambda: receiving()["read_pauses"] >= 1, timeout=30)
        assert receiving()["bytes_received"] <= RECEIVE_BOUND, receiving()
        assert not sending.done()

    sink.allowed.set()
    # Streams end with their call, so watch the sender's counters as it goes.
    peak = {"bytes_sent": 0, "peak_send_buffer": 0, "pauses": 0}

    def sample() -> bool:
        for stats in sender_stats():
            for key, value in peak.items():
                peak[key] = max(value, stats[key])
        return sending.done()

    await wait_for(sample, timeout=120)
    reply = await sending
    assert reply.received == TOTAL
    assert peak["bytes_sent"] >= TOTAL // 2, peak
    assert peak["peak_send_buffer"] <= bound, peak
    assert peak["pauses"] >= 1, peak  # the bound was reached and enforced

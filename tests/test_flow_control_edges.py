"""Flow control at the edges: pausing and resuming from inside a protocol
callback never re-enter the stream's context (which raised "cannot enter
context ... already entered" and reset the stream), and a lane whose peer
reads nothing while making h2 answer it cannot grow its send buffer without
limit."""

from __future__ import annotations

import asyncio
import contextvars
from types import SimpleNamespace
from typing import Any

from h2.config import H2Configuration
from h2.connection import H2Connection
from probes import Probe

from brpc._calls._grpclib import EventDispatch
from brpc._calls.lanes.layer import LanesCallLayer
from brpc._calls.serving import Serving
from brpc._session.stream_transport import StreamTransport

HIGH_WATER = 1024
_where: contextvars.ContextVar[str] = contextvars.ContextVar("where", default="outside")


class _UnacknowledgingHost:
    """A session whose peer acknowledges nothing until told to (a StreamHost)."""

    def __init__(self) -> None:
        self.unacknowledged: dict[int, int] = {}
        self.resets: list[int] = []
        self.paused: list[StreamTransport] = []

    def send_stream_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        self.unacknowledged[stream_id] = self.unacknowledged.get(stream_id, 0) + len(data)

    def reset_stream(self, stream_id: int, error_code: int = 0) -> None:
        self.resets.append(stream_id)

    def stop_stream(self, stream_id: int, error_code: int = 0) -> None:
        pass

    def send_buffer_size(self, stream_id: int) -> int:
        return self.unacknowledged.get(stream_id, 0)

    def watch_paused(self, transport: StreamTransport) -> None:
        self.paused.append(transport)

    def forget_stream(self, transport: StreamTransport) -> None:
        pass

    def extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def acknowledge_all(self) -> None:
        self.unacknowledged.clear()


class _BigReplier(asyncio.Protocol):
    """Answers every chunk with a reply four times the high-water mark."""

    def __init__(self, host: _UnacknowledgingHost) -> None:
        self.host = host
        self.events: list[str] = []
        self.transport: StreamTransport | None = None
        self.resume_from: StreamTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, StreamTransport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.events.append(f"data in {_where.get()}")
        if data == b"ack":
            # the peer's acknowledgement arrives while another stream's callback runs
            self.host.acknowledge_all()
            assert self.resume_from is not None
            self.resume_from.check_resume()
            return
        self.transport.write(b"r" * (4 * HIGH_WATER))

    def pause_writing(self) -> None:
        self.events.append("paused")

    def resume_writing(self) -> None:
        self.events.append("resumed")

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append(f"lost {exc!r}")


def _transport(
    host: _UnacknowledgingHost, stream_id: int, context: contextvars.Context
) -> tuple[StreamTransport, _BigReplier]:
    protocol = _BigReplier(host)
    transport = StreamTransport(
        host, stream_id, protocol, context=context, high_water=HIGH_WATER, low_water=HIGH_WATER // 4
    )
    context.run(protocol.connection_made, transport)
    return transport, protocol


async def test_a_write_inside_data_received_can_cross_the_high_water_mark() -> None:
    host = _UnacknowledgingHost()
    context = contextvars.copy_context()
    context.run(_where.set, "the connection's context")
    transport, protocol = _transport(host, 0, context)

    transport.data_received(b"request", end_stream=False)

    assert protocol.events == ["data in the connection's context", "paused"]
    assert host.paused == [transport] and host.resets == []
    assert not transport.is_closing()


async def test_resuming_from_another_streams_callback_of_the_same_connection() -> None:
    host = _UnacknowledgingHost()
    context = contextvars.copy_context()
    context.run(_where.set, "the connection's context")
    writer, written = _transport(host, 0, context)
    control, _ = _transport(host, 4, context)
    writer.data_received(b"request", end_stream=False)
    assert written.events[-1] == "paused"
    control.get_protocol().resume_from = writer  # type: ignore[attr-defined]

    control.data_received(b"ack", end_stream=False)

    assert written.events[-1] == "resumed"
    assert host.resets == []
    # and writing again pauses again, still without a reset
    writer.data_received(b"again", end_stream=False)
    assert written.events[-1] == "paused" and host.resets == []


async def test_a_lane_whose_peer_reads_no_ping_acks_is_reset() -> None:
    """h2 acknowledges PINGs by itself, paused or not: with a peer that never
    acknowledges our data, the answers are bounded and the lane is reset."""
    host = _UnacknowledgingHost()
    serving = Serving([Probe()], max_message_size=1 << 20, dispatch=EventDispatch())
    layer = LanesCallLayer(serving, lanes=1, max_concurrent_calls=10)
    connection = SimpleNamespace(max_message_size=1 << 20)
    protocol = layer.accept_stream(connection)  # type: ignore[arg-type]
    transport = StreamTransport(host, 0, protocol, high_water=HIGH_WATER, low_water=HIGH_WATER // 4)
    protocol.connection_made(transport)
    peer = H2Connection(H2Configuration(client_side=True))
    peer.initiate_connection()
    transport.data_received(peer.data_to_send(), end_stream=False)
    for _ in range(100):
        if host.resets:
            break
        for _ in range(100):
            peer.ping(b"01234567")
        transport.data_received(peer.data_to_send(), end_stream=False)
    assert host.resets == [0]
    assert host.send_buffer_size(0) <= 2 * HIGH_WATER + (64 << 10) + 100 * 17

"""brpc.otel: spans on both sides of calls in both directions, context carried
across nested calls, statuses on every outcome, metrics; nothing when not enabled."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from conftest import wait_for
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from probes import Probe

import brpc
from brpc import otel
from brpc.testing.v1.echo_grpc import EchoStub
from brpc.testing.v1.echo_pb2 import EchoRequest

UNARY = "brpc.testing.v1.Echo/Unary"


@dataclass
class Telemetry:
    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader
    tracer_provider: TracerProvider
    meter_provider: MeterProvider

    def instrument(self, target: Any) -> None:
        otel.instrument(
            target, tracer_provider=self.tracer_provider, meter_provider=self.meter_provider
        )

    def finished(self, kind: SpanKind | None = None) -> list[ReadableSpan]:
        return [s for s in self.spans.get_finished_spans() if kind is None or s.kind == kind]

    def points(self, name: str) -> list[Any]:
        data = self.metrics.get_metrics_data()
        assert data is not None
        return [
            point
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
            if metric.name == name
            for point in metric.data.data_points
        ]


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    yield Telemetry(spans, reader, tracer_provider, meter_provider)
    tracer_provider.shutdown()
    meter_provider.shutdown()


async def _pair(
    telemetry: Telemetry, make_server: Any, connect: Any, *, name: str = "agent-1"
) -> tuple[brpc.Server[Any], brpc.ClientConn, Probe, Probe]:
    server_probe, client_probe = Probe(), Probe()
    server = await make_server([server_probe], client_stub=EchoStub)
    telemetry.instrument(server)
    conn = await connect(server, services=[client_probe], name=name)
    telemetry.instrument(conn)
    return server, conn, server_probe, client_probe


def _only(spans: list[ReadableSpan]) -> ReadableSpan:
    assert len(spans) == 1, [s.name for s in spans]
    return spans[0]


def _is_child(child: ReadableSpan, parent: ReadableSpan) -> bool:
    assert child.parent is not None, f"{child.name} has no parent"
    same_trace: bool = child.context.trace_id == parent.context.trace_id
    return same_trace and child.parent.span_id == parent.context.span_id


async def test_client_to_server_call_has_a_span_on_each_side(
    telemetry: Telemetry, make_server: Any, connect: Any
) -> None:
    server, conn, server_probe, _ = await _pair(telemetry, make_server, connect)
    await EchoStub(conn).Unary(EchoRequest(text="hi"))
    await wait_for(lambda: len(telemetry.finished()) == 2)
    client = _only(telemetry.finished(SpanKind.CLIENT))
    handled = _only(telemetry.finished(SpanKind.SERVER))
    assert client.name == handled.name == UNARY
    assert _is_child(handled, client)
    assert handled.parent is not None and handled.parent.is_remote
    for span in (client, handled):
        attributes = dict(span.attributes or {})
        assert attributes["rpc.system"] == "grpc"
        assert attributes["rpc.service"] == "brpc.testing.v1.Echo"
        assert attributes["rpc.method"] == "Unary"
        assert attributes["rpc.grpc.status_code"] == Status.OK.value
        assert attributes["brpc.connection_id"] == conn.connection_id
        assert span.status.status_code is StatusCode.UNSET
    assert client.attributes is not None and handled.attributes is not None
    assert client.attributes["server.address"] == "127.0.0.1"
    assert client.attributes["server.port"] == server.port
    assert handled.attributes["brpc.client_name"] == "agent-1"
    assert handled.attributes["network.peer.address"] == "127.0.0.1"
    traceparent = server_probe.seen_metadata[-1]["traceparent"]
    assert f"{client.context.trace_id:032x}-{client.context.span_id:016x}" in traceparent


async def test_server_to_client_call_carries_the_trace_context(
    telemetry: Telemetry, make_server: Any, connect: Any
) -> None:
    server, _, _, client_probe = await _pair(telemetry, make_server, connect)
    (info,) = server.clients_snapshot()
    await info.stub.Unary(EchoRequest(text="down"))
    span = _only(telemetry.finished(SpanKind.CLIENT))
    attributes = dict(span.attributes or {})
    assert span.name == UNARY
    assert attributes["brpc.connection_id"] == info.connection_id
    assert attributes["brpc.client_name"] == "agent-1"
    assert attributes["rpc.grpc.status_code"] == Status.OK.value
    traceparent = client_probe.seen_metadata[-1]["traceparent"]
    assert f"{span.context.trace_id:032x}-{span.context.span_id:016x}" in traceparent


async def test_call_made_inside_a_handler_is_a_child_of_its_span(
    telemetry: Telemetry, make_server: Any, connect: Any
) -> None:
    """client -> server handler -> client handler: four spans, one trace, each a child of
    the last (the server's handler span, its call to the client, the client's handler)."""
    _, conn, _, client_probe = await _pair(telemetry, make_server, connect)
    reply = await EchoStub(conn).Unary(EchoRequest(text="relay:1"))
    assert reply.text == "bottom"
    outer = next(s for s in telemetry.finished(SpanKind.CLIENT) if s.parent is None)
    inner = next(s for s in telemetry.finished(SpanKind.CLIENT) if s is not outer)
    handled = next(s for s in telemetry.finished(SpanKind.SERVER) if _is_child(s, outer))
    bottom = next(s for s in telemetry.finished(SpanKind.SERVER) if s is not handled)
    assert _is_child(inner, handled)
    assert _is_child(bottom, inner)
    traceparent = client_probe.seen_metadata[-1]["traceparent"]
    assert f"{inner.context.trace_id:032x}-{inner.context.span_id:016x}" in traceparent


async def test_calls_a_client_serves_have_server_spans(
    telemetry: Telemetry, make_server: Any, connect: Any
) -> None:
    server, conn, _, _ = await _pair(telemetry, make_server, connect)
    (info,) = server.clients_snapshot()
    await info.stub.Unary(EchoRequest(text="down"))
    await wait_for(lambda: len(telemetry.finished()) == 2, timeout=2)
    client = _only(telemetry.finished(SpanKind.CLIENT))
    handled = _only(telemetry.finished(SpanKind.SERVER))
    assert _is_child(handled, client)
    assert dict(handled.attributes or {})["brpc.connection_id"] == conn.connection_id


async def test_call_made_inside_a_client_served_handler_is_a_child_of_its_span(
    telemetry: Telemetry, make_server: Any, connect: Any
) -> None:
    """server -> client handler -> server: the client's call continues the server's trace."""
    server, _, _, _ = await _pair(telemetry, make_server, connect)
    (info,) = server.clients_snapshot()
    await info.stub.Unary(EchoRequest(text="relay:1"))
    await wait_for(lambda: len(telemetry.finished()) == 4, timeout=2)
    outer = next(s for s in telemetry.finished(SpanKind.CLIENT) if s.parent is None)
    client_handled = next(s for s in telemetry.finished(SpanKind.SERVER) if _is_child(s, outer))
    inner = next(s for s in telemetry.finished(SpanKind.CLIENT) if s is not outer)
    assert _is_child(inner, client_handled)


async def test_error_status_on_both_sides(
    telemetry: Telemetry, make_server: Any, connect: Any
) -> None:
    _, conn, _, _ = await _pair(telemetry, make_server, connect)
    with pytest.raises(GRPCError) as raised:
        await EchoStub(conn).Unary(EchoRequest(text="fail"))
    assert raised.value.status is Status.NOT_FOUND
    await wait_for(lambda: len(telemetry.finished()) == 2)
    client = _only(telemetry.finished(SpanKind.CLIENT))
    handled = _only(telemetry.finished(SpanKind.SERVER))
    for span in (client, handled):
        assert dict(span.attributes or {})["rpc.grpc.status_code"] == Status.NOT_FOUND.value
    # The conventions: every non-OK status is an error for the caller; NOT_FOUND is
    # not a server error.
    assert client.status.status_code is StatusCode.ERROR
    assert client.status.description == "no such thing"
    assert handled.status.status_code is StatusCode.UNSET


async def test_deadline_ends_both_spans(
    telemetry: Telemetry, make_server: Any, connect: Any
) -> None:
    _, conn, _, _ = await _pair(telemetry, make_server, connect)
    with pytest.raises(brpc.DeadlineExceededError):
        await EchoStub(conn).Unary(EchoRequest(text="block"), timeout=0.3)
    await wait_for(lambda: len(telemetry.finished()) == 2)
    client = _only(telemetry.finished(SpanKind.CLIENT))
    assert dict(client.attributes or {})["rpc.grpc.status_code"] == Status.DEADLINE_EXCEEDED.value
    assert client.status.status_code is StatusCode.ERROR
    # The server's own timer and the caller's reset race: whichever ends the handler
    # first decides between DEADLINE_EXCEEDED (a server error) and CANCELLED (not one).
    handled = _only(telemetry.finished(SpanKind.SERVER))
    status = Status(dict(handled.attributes or {})["rpc.grpc.status_code"])
    assert status in {Status.DEADLINE_EXCEEDED, Status.CANCELLED}
    expected = StatusCode.ERROR if status is Status.DEADLINE_EXCEEDED else StatusCode.UNSET
    assert handled.status.status_code is expected


async def test_connection_loss_ends_both_spans(
    telemetry: Telemetry, make_server: Any, connect: Any
) -> None:
    server, conn, server_probe, _ = await _pair(telemetry, make_server, connect)
    (info,) = server.clients_snapshot()
    call = EchoStub(conn).Unary(EchoRequest(text="block"))

    task = asyncio.ensure_future(call)
    await server_probe.started.wait()
    info.close("test closes the client")
    with pytest.raises(GRPCError) as raised:
        await task
    assert raised.value.status is Status.UNAVAILABLE
    await wait_for(lambda: len(telemetry.finished()) == 2)
    client = _only(telemetry.finished(SpanKind.CLIENT))
    handled = _only(telemetry.finished(SpanKind.SERVER))
    assert dict(client.attributes or {})["rpc.grpc.status_code"] == Status.UNAVAILABLE.value
    assert dict(handled.attributes or {})["rpc.grpc.status_code"] == Status.CANCELLED.value


async def test_server_call_to_a_client_that_leaves_ends_its_span(
    telemetry: Telemetry, make_server: Any, connect: Any
) -> None:
    server, conn, _, client_probe = await _pair(telemetry, make_server, connect)
    (info,) = server.clients_snapshot()
    task = asyncio.ensure_future(info.stub.Unary(EchoRequest(text="block"), timeout=5))
    await client_probe.started.wait()
    await conn.close()
    with pytest.raises(GRPCError) as raised:
        await task
    assert raised.value.status is Status.UNAVAILABLE
    span = _only(telemetry.finished(SpanKind.CLIENT))
    assert dict(span.attributes or {})["rpc.grpc.status_code"] == Status.UNAVAILABLE.value
    assert span.status.status_code is StatusCode.ERROR
    (active,) = telemetry.points("brpc.rpc.client.active_calls")
    assert active.value == 0


async def test_streaming_call_span_ends_after_the_stream(
    telemetry: Telemetry, make_server: Any, connect: Any
) -> None:
    _, conn, _, _ = await _pair(telemetry, make_server, connect)
    replies = await EchoStub(conn).ServerStream(EchoRequest(text="s", count=3))
    assert len(replies) == 3
    async with EchoStub(conn).Bidi.open() as stream:
        await stream.send_message(EchoRequest(text="a"))
        assert (await stream.recv_message()) is not None
        await stream.end()
        assert [reply async for reply in stream] == []
    await wait_for(lambda: len(telemetry.finished()) == 4)
    names = sorted(s.name for s in telemetry.finished(SpanKind.CLIENT))
    assert names == ["brpc.testing.v1.Echo/Bidi", "brpc.testing.v1.Echo/ServerStream"]


async def test_metrics_count_calls_durations_and_clients(
    telemetry: Telemetry, make_server: Any, connect: Any
) -> None:
    server, conn, _, _ = await _pair(telemetry, make_server, connect)
    stub = EchoStub(conn)
    await stub.Unary(EchoRequest(text="one"))
    await stub.Unary(EchoRequest(text="two"))
    with pytest.raises(GRPCError):
        await stub.Unary(EchoRequest(text="fail"))
    await wait_for(lambda: len(telemetry.finished(SpanKind.SERVER)) == 3)

    def calls(name: str) -> dict[int, int]:
        return {
            p.attributes["rpc.grpc.status_code"]: p.value
            for p in telemetry.points(name)
            if p.attributes["rpc.method"] == "Unary"
        }

    ok, not_found = Status.OK.value, Status.NOT_FOUND.value
    assert calls("brpc.rpc.client.calls") == {ok: 2, not_found: 1}
    assert calls("brpc.rpc.server.calls") == {ok: 2, not_found: 1}
    durations = telemetry.points("rpc.client.call.duration")
    assert sum(p.count for p in durations) == 3
    assert all(0 < p.min <= p.max < 10 for p in durations)
    assert sum(p.count for p in telemetry.points("rpc.server.call.duration")) == 3
    for side in ("client", "server"):
        (active,) = telemetry.points(f"brpc.rpc.{side}.active_calls")
        assert active.value == 0
    (clients,) = telemetry.points("brpc.server.clients")
    assert clients.value == 1
    (connects,) = telemetry.points("brpc.server.connects")
    assert connects.value == 1

    (info,) = server.clients_snapshot()
    info.close("test closes the client")
    await wait_for(lambda: telemetry.points("brpc.server.disconnects") != [])
    (clients,) = telemetry.points("brpc.server.clients")
    assert clients.value == 0
    (disconnect,) = telemetry.points("brpc.server.disconnects")
    assert disconnect.value == 1
    assert disconnect.attributes == {"brpc.close_reason": "NO_ERROR", "brpc.close_side": "local"}


async def test_active_calls_counts_a_call_in_flight(
    telemetry: Telemetry, make_server: Any, connect: Any
) -> None:

    _, conn, server_probe, _ = await _pair(telemetry, make_server, connect)
    task = asyncio.ensure_future(EchoStub(conn).Unary(EchoRequest(text="block"), timeout=5))
    await server_probe.started.wait()
    for side in ("client", "server"):
        (active,) = telemetry.points(f"brpc.rpc.{side}.active_calls")
        assert active.value == 1, side
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_for(lambda: len(telemetry.finished()) == 2)
    client = _only(telemetry.finished(SpanKind.CLIENT))
    assert dict(client.attributes or {})["rpc.grpc.status_code"] == Status.CANCELLED.value


def test_instrument_rejects_other_targets() -> None:
    with pytest.raises(TypeError, match=r"brpc\.Server or a brpc\.ClientConn"):
        otel.instrument(object())  # type: ignore[arg-type]


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )


def test_import_brpc_imports_no_opentelemetry() -> None:
    done = _run("import sys, brpc\nprint([m for m in sys.modules if 'opentelemetry' in m])")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_without_the_extra_the_error_says_what_to_install() -> None:
    done = _run("import sys\nsys.modules['opentelemetry'] = None\nimport brpc.otel")
    assert done.returncode == 1
    assert "ImportError: brpc.otel needs the OpenTelemetry API" in done.stderr
    assert "pip install 'brpc[otel]'" in done.stderr

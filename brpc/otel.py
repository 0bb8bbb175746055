"""OpenTelemetry tracing and metrics for brpc calls, in both directions.

This module owns :func:`instrument`. Install the extra (``pip install
'brpc[otel]'``, which brings ``opentelemetry-api``) and configure an SDK as usual;
``import brpc`` never imports this module or OpenTelemetry.

``instrument(server)`` or ``instrument(conn)`` gives every call a span on each
side: a ``CLIENT`` span where the call is made (``conn``'s calls to the server,
the server's calls to its clients) and a ``SERVER`` span where it is handled (the
server's handlers, the services a client serves). The W3C trace context
(``traceparent``, ``tracestate``) travels in the call's metadata, so a call made
inside a handler, in either direction, is a child of that handler's span.

How it hooks in:

- handled calls: grpclib's ``RecvRequest`` event, whose ``method_func`` is
  replaced by a wrapper that runs the handler with its span as the current one
  and ends the span when the handler returns, raises or is cancelled (deadline,
  the caller cancelling, the connection dropping); ``SendTrailingMetadata``
  records a status the handler sends itself;
- made calls: the channel's ``request()`` (grpclib fires no event when a call
  fails without a status, e.g. on a lost connection or an expired deadline), so
  the span ends where the call's stream is left, whatever the outcome;
- clients: the server's public ``on_connect``/``on_disconnect`` callbacks.

Span attributes follow the OpenTelemetry RPC semantic conventions
(``rpc.system``, ``rpc.service``, ``rpc.method``, ``rpc.grpc.status_code``,
``server.address``/``server.port``, ``network.peer.address``/``network.peer.port``)
plus ``brpc.connection_id`` and ``brpc.client_name``. Metrics:

===================================  ==============  =====================================
name                                 kind            attributes
===================================  ==============  =====================================
``rpc.server.call.duration``         histogram, s    rpc.*, rpc.grpc.status_code
``rpc.client.call.duration``         histogram, s    rpc.*, rpc.grpc.status_code
``brpc.rpc.server.calls``            counter         rpc.*, rpc.grpc.status_code
``brpc.rpc.client.calls``            counter         rpc.*, rpc.grpc.status_code
``brpc.rpc.server.active_calls``     up-down         rpc.system, rpc.service, rpc.method
``brpc.rpc.client.active_calls``     up-down         rpc.system, rpc.service, rpc.method
``brpc.server.clients``              up-down         (connected clients)
``brpc.server.connects``             counter
``brpc.server.disconnects``          counter         brpc.close_reason, brpc.close_side
===================================  ==============  =====================================
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import re
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

try:
    from opentelemetry import context as otel_context
    from opentelemetry import metrics, propagate, trace
    from opentelemetry.trace import SpanKind, StatusCode
except ImportError as _missing:  # pragma: no cover - exercised in a subprocess
    raise ImportError(
        "brpc.otel needs the OpenTelemetry API, which brpc does not install by default: "
        "pip install 'brpc[otel]'"
    ) from _missing

from grpclib.const import Status
from grpclib.events import RecvRequest, SendTrailingMetadata, listen
from grpclib.exceptions import GRPCError, StreamTerminatedError
from multidict import MultiDict

from . import ClientConn, ClientInfo, Server, __version__, current_connection

if TYPE_CHECKING:
    from grpclib._typing import IServerMethodFunc

__all__ = ["instrument"]

log = logging.getLogger(__name__)

_SCOPE = "brpc"

# Server-side statuses that mark the span as an error (the RPC conventions: the
# others are the caller's problem, not the server's).
_SERVER_ERRORS = frozenset(
    {
        Status.UNKNOWN,
        Status.DEADLINE_EXCEEDED,
        Status.UNIMPLEMENTED,
        Status.INTERNAL,
        Status.UNAVAILABLE,
        Status.DATA_LOSS,
    }
)

_instrumented: weakref.WeakSet[Any] = weakref.WeakSet()


def instrument(
    target: Server[Any] | ClientConn,
    *,
    tracer_provider: trace.TracerProvider | None = None,
    meter_provider: metrics.MeterProvider | None = None,
) -> None:
    """Trace and measure every call ``target`` makes and handles.

    ``target`` is a :class:`brpc.Server` (its handlers, its calls to connected
    clients, and connect/disconnect counts) or a :class:`brpc.ClientConn` (its
    calls to the server and the services it serves). The global tracer and meter
    providers are used unless others are given. Call it before the first call
    (for a server: before ``start()``); instrumenting a target twice does nothing.
    """
    if target in _instrumented:
        return
    instruments = _Instruments(tracer_provider, meter_provider)
    if isinstance(target, Server):
        _instrument_server(target, instruments)
    elif isinstance(target, ClientConn):
        _instrument_conn(target, instruments)
    else:
        raise TypeError(f"instrument() takes a brpc.Server or a brpc.ClientConn, not {target!r}")
    _instrumented.add(target)


# -- instruments --------------------------------------------------------------------


class _Instruments:
    """The tracer and the metric instruments of one instrumented target."""

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None,
        meter_provider: metrics.MeterProvider | None,
    ) -> None:
        self.tracer = trace.get_tracer(_SCOPE, __version__, tracer_provider)
        meter = metrics.get_meter(_SCOPE, __version__, meter_provider)
        self.duration = {
            SpanKind.SERVER: meter.create_histogram(
                "rpc.server.call.duration", unit="s", description="Duration of handled calls"
            ),
            SpanKind.CLIENT: meter.create_histogram(
                "rpc.client.call.duration", unit="s", description="Duration of calls made"
            ),
        }
        self.calls = {
            SpanKind.SERVER: meter.create_counter(
                "brpc.rpc.server.calls", unit="{call}", description="Calls handled, by status"
            ),
            SpanKind.CLIENT: meter.create_counter(
                "brpc.rpc.client.calls", unit="{call}", description="Calls made, by status"
            ),
        }
        self.active = {
            SpanKind.SERVER: meter.create_up_down_counter(
                "brpc.rpc.server.active_calls", unit="{call}", description="Calls being handled"
            ),
            SpanKind.CLIENT: meter.create_up_down_counter(
                "brpc.rpc.client.active_calls", unit="{call}", description="Calls in flight"
            ),
        }
        self.clients = meter.create_up_down_counter(
            "brpc.server.clients", unit="{client}", description="Connected clients"
        )
        self.connects = meter.create_counter(
            "brpc.server.connects", unit="{connection}", description="Clients that connected"
        )
        self.disconnects = meter.create_counter(
            "brpc.server.disconnects",
            unit="{connection}",
            description="Clients that disconnected, by close reason",
        )


# -- one call -----------------------------------------------------------------------


def _method_attributes(path: str) -> dict[str, str]:
    """``/pkg.Service/Method`` -> the conventions' rpc.* attributes."""
    service, _, method = path.lstrip("/").rpartition("/")
    return {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}


def _status_of(error: BaseException | None, deadline_passed: bool) -> Status:
    if error is None:
        return Status.OK
    if isinstance(error, GRPCError):
        return error.status
    if isinstance(error, asyncio.CancelledError | TimeoutError | StreamTerminatedError):
        return Status.DEADLINE_EXCEEDED if deadline_passed else Status.CANCELLED
    return Status.UNKNOWN


def _message_of(error: BaseException | None) -> str | None:
    if error is None:
        return None
    if isinstance(error, GRPCError):
        return error.message
    return str(error) or type(error).__name__


@dataclass(eq=False)
class _Call:
    """One call on one side: its span, its metrics, and how it ended."""

    instruments: _Instruments
    kind: SpanKind
    span: trace.Span
    method: dict[str, str]
    started: float = field(default_factory=time.monotonic)
    #: A status the handler sent itself with ``send_trailing_metadata``.
    sent_status: Status | None = None
    sent_message: str | None = None
    ended: bool = False

    @classmethod
    def start(
        cls,
        instruments: _Instruments,
        kind: SpanKind,
        path: str,
        parent: otel_context.Context | None,
        attributes: dict[str, Any],
    ) -> _Call:
        method = _method_attributes(path)
        span = instruments.tracer.start_span(
            path.lstrip("/"), context=parent, kind=kind, attributes={**method, **attributes}
        )
        instruments.active[kind].add(1, method)
        return cls(instruments, kind, span, method)

    def end(self, error: BaseException | None, *, deadline_passed: bool = False) -> None:
        if self.ended:
            return
        self.ended = True
        status = _status_of(error, deadline_passed)
        message = _message_of(error)
        if error is None and self.sent_status is not None:
            status, message = self.sent_status, self.sent_message
        span = self.span
        span.set_attribute("rpc.grpc.status_code", status.value)
        if status is not Status.OK and (self.kind is SpanKind.CLIENT or status in _SERVER_ERRORS):
            span.set_status(StatusCode.ERROR, message or status.name)
            if error is not None and not isinstance(error, GRPCError | asyncio.CancelledError):
                span.record_exception(error)
        span.end()
        elapsed = time.monotonic() - self.started
        measured = {**self.method, "rpc.grpc.status_code": status.value}
        self.instruments.active[self.kind].add(-1, self.method)
        self.instruments.calls[self.kind].add(1, measured)
        self.instruments.duration[self.kind].record(elapsed, measured)


# -- handled calls (SERVER spans) ---------------------------------------------------

_handled: contextvars.ContextVar[_Call | None] = contextvars.ContextVar(
    "brpc_otel_handled_call", default=None
)


def _listen_handled(dispatcher: Any, instruments: _Instruments) -> None:
    async def on_request(event: RecvRequest) -> None:
        parent = propagate.extract(event.metadata)
        event.method_func = _traced_handler(event.method_func, instruments, event, parent)

    async def on_trailers(event: SendTrailingMetadata) -> None:
        call = _handled.get()
        if call is not None:
            call.sent_status = event.status
            call.sent_message = event.status_message

    listen(dispatcher, RecvRequest, on_request)
    listen(dispatcher, SendTrailingMetadata, on_trailers)


def _traced_handler(
    handler: IServerMethodFunc,
    instruments: _Instruments,
    event: RecvRequest,
    parent: otel_context.Context,
) -> IServerMethodFunc:
    path, deadline = event.method_name, event.deadline

    async def traced(stream: Any) -> None:
        call = _Call.start(instruments, SpanKind.SERVER, path, parent, _caller_attributes())
        token = otel_context.attach(trace.set_span_in_context(call.span, parent))
        handled = _handled.set(call)
        error: BaseException | None = None
        try:
            await handler(stream)
        except BaseException as exc:
            error = exc
            raise
        finally:
            _handled.reset(handled)
            otel_context.detach(token)
            passed = deadline is not None and deadline.time_remaining() <= 0
            call.end(error, deadline_passed=passed)

    return traced


def _caller_attributes() -> dict[str, Any]:
    """Attributes of the connection the call being handled arrived on."""
    try:
        connection = current_connection()
    except GRPCError:
        return {}
    if isinstance(connection, ClientInfo):
        attributes: dict[str, Any] = {"brpc.connection_id": connection.connection_id}
        if connection.name:
            attributes["brpc.client_name"] = connection.name
        if connection.address is not None:
            attributes["network.peer.address"] = connection.address[0]
            attributes["network.peer.port"] = connection.address[1]
        return attributes
    return {"brpc.connection_id": connection.connection_id, **_conn_name(connection)}


# -- made calls (CLIENT spans) ------------------------------------------------------


def _trace_requests(
    channel: Any, instruments: _Instruments, describe: Callable[[], dict[str, Any]]
) -> None:
    """Wrap ``channel.request`` (what every stub calls) so each call gets a span."""
    original = channel.request

    def request(name: str, *args: Any, metadata: Any = None, **kwargs: Any) -> Any:
        call = _Call.start(instruments, SpanKind.CLIENT, name, None, describe())
        carrier: MultiDict[str] = MultiDict(metadata or ())
        propagate.inject(carrier, context=trace.set_span_in_context(call.span))
        try:
            stream = original(name, *args, metadata=carrier, **kwargs)
        except BaseException as exc:
            call.end(exc)
            raise
        return _TracedStream(stream, call)

    channel.request = request


class _TracedStream:
    """A client call's stream that ends the call's span when the call is left."""

    def __init__(self, stream: Any, call: _Call) -> None:
        self._stream = stream
        self._call = call

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    async def __aenter__(self) -> _TracedStream:
        await self._stream.__aenter__()
        return self

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> Any:
        try:
            result = await self._stream.__aexit__(exc_type, exc, tb)
        except BaseException as raised:
            self._call.end(raised, deadline_passed=self._deadline_passed())
            raise
        self._call.end(exc, deadline_passed=self._deadline_passed())
        return result

    def __aiter__(self) -> _TracedStream:
        return self

    async def __anext__(self) -> Any:
        return await self._stream.__anext__()

    def _deadline_passed(self) -> bool:
        deadline = getattr(self._stream, "_deadline", None)
        return deadline is not None and deadline.time_remaining() <= 0


# -- targets ------------------------------------------------------------------------


def _split_target(target: str) -> dict[str, Any]:
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        return {"server.address": target}
    return {"server.address": host.strip("[]"), "server.port": int(port)}


def _conn_name(conn: ClientConn) -> dict[str, Any]:
    return {"brpc.client_name": conn.name} if conn.name else {}


def _instrument_conn(conn: ClientConn, instruments: _Instruments) -> None:
    server = _split_target(conn.target)

    def describe() -> dict[str, Any]:
        return {**server, "brpc.connection_id": conn.connection_id, **_conn_name(conn)}

    _trace_requests(conn, instruments, describe)
    _listen_handled(conn, instruments)


def _instrument_server(server: Server[Any], instruments: _Instruments) -> None:
    _listen_handled(server, instruments)

    def connected(client: ClientInfo[Any]) -> None:
        _instrument_client(client, instruments)
        instruments.connects.add(1)
        instruments.clients.add(1)

    def disconnected(client: ClientInfo[Any]) -> None:
        instruments.clients.add(-1)
        instruments.disconnects.add(1, _close_attributes(client.close_reason))

    for client in server.clients_snapshot():
        connected(client)
    server.on_connect(connected)
    server.on_disconnect(disconnected)


def _instrument_client(client: ClientInfo[Any], instruments: _Instruments) -> None:
    peer: dict[str, Any] = {"brpc.connection_id": client.connection_id}
    if client.name:
        peer["brpc.client_name"] = client.name
    if client.address is not None:
        peer["server.address"], peer["server.port"] = client.address
    _trace_requests(client.channel, instruments, lambda: peer)


_CLOSE_CODE = re.compile(r"\(([^)]*)\)")


def _close_attributes(reason: str | None) -> dict[str, str]:
    """A bounded description of why a client left (the reason text itself is not)."""
    if not reason:
        return {"brpc.close_reason": "unknown"}
    if reason.startswith("connection timed out"):
        return {"brpc.close_reason": "IDLE_TIMEOUT", "brpc.close_side": "peer"}
    match = _CLOSE_CODE.search(reason)
    side = "local" if "closed locally" in reason else "peer"
    return {"brpc.close_reason": match.group(1) if match else "unknown", "brpc.close_side": side}

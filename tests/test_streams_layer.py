"""The streams call layer over an in-memory session pair: no UDP, no TLS.

A caller (:class:`StreamsCaller`) on one session calls handlers served by the
callee protocol on the other; raw streams check what the callee does with
frames a well-behaved caller never sends.
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

import pytest
from grpclib.const import Cardinality, Status
from grpclib.events import RecvMessage, RecvRequest, SendMessage, SendTrailingMetadata, listen
from grpclib.exceptions import GRPCError

import brpc
from brpc._calls._grpclib import EventDispatch
from brpc._calls.base import CallConnection, RefusedBeforeStart, current_call_connection
from brpc._calls.serving import Serving
from brpc._calls.streams.client import StreamsCaller
from brpc._calls.streams.layer import StreamsCallLayer
from brpc._session.base import Session, SessionClosed
from brpc._session.stream_transport import StreamResetError
from brpc._wire.callframe import (
    StreamError,
    TrailersReceived,
    encode_message,
    encode_request_headers,
)
from brpc.testing import EchoService, session_pair
from brpc.testing.v1.echo_grpc import EchoStub
from brpc.testing.v1.echo_pb2 import EchoReply, EchoRequest

ECHO_UNARY = "/brpc.testing.v1.Echo/Unary"


class _Connection:
    """The connection seam the layer needs, over one memory session."""

    def __init__(self, session: Session, max_message_size: int = 1 << 20) -> None:
        self.session = session
        self.handle = self
        self.max_message_size = max_message_size
        self.accepting = True
        self.calls_in = 0
        self.calls_out = 0
        self.admitted: list[str] = []
        #: Raised by admit() when set: the connection cannot take calls now.
        self.refusal: RefusedBeforeStart | None = None
        self.context = contextvars.copy_context()
        self.context.run(current_call_connection.set, self)

    @property
    def usable(self) -> bool:
        return self.session.closed is None

    @property
    def lost(self) -> bool:
        return self.session.closed is not None

    def loss_reason(self) -> str:
        closed = self.session.closed
        return f"connection lost: {closed.describe()}" if closed else "stream closed"

    def open_stream(self, protocol: asyncio.Protocol) -> None:
        if self.session.closed is not None:
            raise GRPCError(Status.UNAVAILABLE, self.loss_reason())
        self.session.open_stream(protocol)

    def outgoing_started(self) -> None:
        self.calls_out += 1

    def outgoing_finished(self) -> None:
        self.calls_out -= 1

    async def admit(self, method: str) -> None:
        if self.refusal is not None:
            raise self.refusal
        self.admitted.append(method)
        self.calls_in += 1

    def incoming_finished(self) -> None:
        self.calls_in -= 1


class _Handler:
    """A session handler serving every peer-opened stream with the streams layer."""

    def __init__(self, layer: StreamsCallLayer) -> None:
        self.layer = layer
        self.connection: _Connection | None = None

    def handshake_completed(self, session: Session) -> None:
        self.connection = _Connection(session)

    def stream_opened(
        self, session: Session, stream_id: int
    ) -> tuple[asyncio.Protocol, contextvars.Context | None] | None:
        connection = self.connection
        assert connection is not None
        return self.layer.accept_stream(connection), connection.context

    def session_closed(self, session: Session, closed: SessionClosed) -> None:
        pass


class _Target:
    def __init__(self, connection: CallConnection) -> None:
        self.connection = connection

    async def acquire(self) -> CallConnection:
        return self.connection

    def loss_reason(self) -> str:
        return self.connection.loss_reason()


class Blocking(EchoService):
    """Echo whose "block" request waits until cancelled."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.seen_connection: object = None

    async def Unary(self, stream: Any) -> None:
        request = await stream.recv_message()
        self.seen_connection = current_call_connection.get()
        if request.text == "block":
            self.started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        if request.text == "crash":
            raise RuntimeError("boom")
        if request.text == "silent":
            return  # no reply: grpclib answers UNKNOWN
        await stream.send_message(EchoReply(text=request.text, payload=request.payload))


class _Pair:
    def __init__(self, handlers: list[Any]) -> None:
        self.dispatch = EventDispatch()
        serving = Serving(handlers, max_message_size=1 << 20, dispatch=self.dispatch)
        self.layer = StreamsCallLayer(serving)
        self.server_handler = _Handler(self.layer)
        self.client_handler = _Handler(self.layer)
        self.client, self.server = session_pair(self.client_handler, self.server_handler)
        connection = self.client_handler.connection
        assert connection is not None
        self.client_connection = connection
        self.caller = self.layer.caller(
            _Target(connection), authority="test", dispatch=self.dispatch
        )
        self.channel = brpc._calls.channel.CallChannel(
            "test", dispatch=self.dispatch, caller=self.caller
        )

    @property
    def server_connection(self) -> _Connection:
        connection = self.server_handler.connection
        assert connection is not None
        return connection

    def raw_stream(self) -> _Raw:
        raw = _Raw()
        self.client.open_stream(raw)
        return raw


class _Raw(asyncio.Protocol):
    """A stream of the caller's session written by hand."""

    def __init__(self) -> None:
        self.transport: Any = None
        self.received = bytearray()
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.received += data

    def eof_received(self) -> bool:
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


async def test_unary_call_runs_in_the_connections_context() -> None:
    service = Blocking()
    pair = _Pair([service])
    reply = await EchoStub(pair.channel).Unary(EchoRequest(text="hi", payload=b"\x00"))
    assert (reply.text, reply.payload) == ("hi", b"\x00")
    assert service.seen_connection is pair.server_connection
    assert pair.server_connection.admitted == [ECHO_UNARY]
    assert (pair.client_connection.calls_out, pair.server_connection.calls_in) == (0, 0)


async def test_grpclib_events_fire_on_both_sides() -> None:
    pair = _Pair([Blocking()])
    seen: list[str] = []

    async def record(event: Any) -> None:
        seen.append(type(event).__name__)

    for kind in (RecvRequest, SendMessage, RecvMessage, SendTrailingMetadata):
        listen(pair.channel, kind, record)
    await EchoStub(pair.channel).Unary(EchoRequest(text="x"))
    # One dispatcher serves both sides here: the caller's SendMessage, the callee's
    # RecvRequest, RecvMessage and SendMessage, its trailers, the caller's RecvMessage.
    assert seen == [
        "SendMessage",
        "RecvRequest",
        "RecvMessage",
        "SendMessage",
        "SendTrailingMetadata",
        "RecvMessage",
    ]


async def test_unknown_method_is_unimplemented_naming_it() -> None:
    pair = _Pair([Blocking()])
    stream = pair.channel.request(
        "/no.Such/Method", Cardinality.UNARY_UNARY, EchoRequest, EchoReply
    )
    with pytest.raises(GRPCError) as caught:
        async with stream:
            await stream.send_message(EchoRequest(), end=True)
            await stream.recv_message()
    assert caught.value.status is Status.UNIMPLEMENTED
    assert "/no.Such/Method" in (caught.value.message or "")


async def test_handler_exception_is_unknown() -> None:
    pair = _Pair([Blocking()])
    for text in ("crash", "silent"):
        with pytest.raises(GRPCError) as caught:
            await EchoStub(pair.channel).Unary(EchoRequest(text=text))
        assert (caught.value.status, caught.value.message) == (
            Status.UNKNOWN,
            "Internal Server Error",
        )


async def test_cancelling_the_caller_cancels_the_handler() -> None:
    service = Blocking()
    pair = _Pair([service])
    call = asyncio.create_task(EchoStub(pair.channel).Unary(EchoRequest(text="block")))
    async with asyncio.timeout(5):
        await service.started.wait()
    call.cancel()
    async with asyncio.timeout(5):
        await service.cancelled.wait()
    with pytest.raises(asyncio.CancelledError):
        await call


async def test_deadline_fails_the_call_and_cancels_the_handler() -> None:
    service = Blocking()
    pair = _Pair([service])
    with pytest.raises(brpc.DeadlineExceededError):
        await EchoStub(pair.channel).Unary(EchoRequest(text="block"), timeout=0.2)
    async with asyncio.timeout(5):
        await service.cancelled.wait()


async def test_draining_callee_refuses_before_start() -> None:
    pair = _Pair([Blocking()])
    pair.server_connection.accepting = False
    raw = pair.raw_stream()
    raw.transport.write(encode_request_headers(ECHO_UNARY) + encode_message(b""))
    raw.transport.write_eof()
    async with asyncio.timeout(5):
        exc = await raw.lost
    assert isinstance(exc, StreamResetError)
    assert exc.code == StreamError.CONNECTION_CLOSING
    with pytest.raises(brpc.CallNotStartedError) as caught:
        await EchoStub(pair.channel).Unary(EchoRequest(text="x"))
    assert caught.value.status is Status.UNAVAILABLE
    assert "safe to retry" in (caught.value.message or "")
    assert pair.server_connection.admitted == []


@pytest.mark.parametrize(
    ("closing", "code"),
    [(True, StreamError.CONNECTION_CLOSING), (False, StreamError.REFUSED)],
)
async def test_admission_refusing_before_start_resets_with_a_not_started_code(
    closing: bool, code: StreamError
) -> None:
    service = Blocking()
    pair = _Pair([service])
    pair.server_connection.refusal = RefusedBeforeStart("cannot take it now", closing=closing)
    raw = pair.raw_stream()
    raw.transport.write(encode_request_headers(ECHO_UNARY) + encode_message(b""))
    raw.transport.write_eof()
    async with asyncio.timeout(5):
        exc = await raw.lost
    assert isinstance(exc, StreamResetError)
    assert exc.code == code
    assert raw.received == b""  # no status: the code says it all
    with pytest.raises(brpc.CallNotStartedError) as caught:
        await EchoStub(pair.channel).Unary(EchoRequest(text="x"))
    assert caught.value.status is Status.UNAVAILABLE
    assert "refused the call before starting it" in (caught.value.message or "")
    assert service.seen_connection is None  # the handler never ran


async def test_a_reset_after_the_handler_started_is_not_reported_as_not_started() -> None:
    service = Blocking()
    pair = _Pair([service])
    call = asyncio.create_task(EchoStub(pair.channel).Unary(EchoRequest(text="block")))
    async with asyncio.timeout(5):
        await service.started.wait()
    pair.server_connection.session.close(brpc.CloseCode.NO_ERROR, "gone")
    with pytest.raises(GRPCError) as caught:
        await call
    assert caught.value.status is Status.UNAVAILABLE
    assert not isinstance(caught.value, brpc.CallNotStartedError)


@pytest.mark.parametrize(
    "frames",
    [
        encode_message(b"") + encode_request_headers(ECHO_UNARY),  # message first
        b"\x07\x00\x00\x00\x00",  # unknown frame type
        encode_request_headers("no-slash"),
    ],
)
async def test_protocol_errors_reset_with_protocol_error(frames: bytes) -> None:
    pair = _Pair([Blocking()])
    raw = pair.raw_stream()
    raw.transport.write(frames)
    async with asyncio.timeout(5):
        exc = await raw.lost
    assert isinstance(exc, StreamResetError)
    assert exc.code == StreamError.PROTOCOL_ERROR
    assert pair.server_connection.admitted == []


async def test_oversized_request_is_refused_from_its_prefix_with_a_status() -> None:
    pair = _Pair([Blocking()])
    raw = pair.raw_stream()
    raw.transport.write(encode_request_headers(ECHO_UNARY) + b"\x00\x7f\xff\xff\xff")
    async with asyncio.timeout(5):
        exc = await raw.lost
    assert isinstance(exc, StreamResetError)
    assert (exc.code, exc.stop_sending) == (StreamError.MESSAGE_TOO_LARGE, True)
    decoder = brpc._wire.callframe.FrameDecoder(1 << 20, 1 << 16)
    (trailers,) = decoder.feed(bytes(raw.received))
    assert isinstance(trailers, TrailersReceived)
    assert trailers.status == Status.RESOURCE_EXHAUSTED.value
    assert "max_message_size" in trailers.message


async def test_ending_without_trailers_is_internal() -> None:
    class Silent(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def eof_received(self) -> bool:
            self.transport.write_eof()  # type: ignore[attr-defined]
            return True

    pair = _Pair([])
    pair.server_handler.layer = _Layer(Silent)  # type: ignore[assignment]
    with pytest.raises(GRPCError) as caught:
        await EchoStub(pair.channel).Unary(EchoRequest(text="x"))
    assert caught.value.status is Status.INTERNAL
    assert "without sending a status" in (caught.value.message or "")


class _Layer:
    def __init__(self, protocol: type[asyncio.Protocol]) -> None:
        self._protocol = protocol

    def accept_stream(self, connection: Any) -> asyncio.Protocol:
        return self._protocol()


async def test_lost_connection_is_unavailable_with_the_reason() -> None:
    service = Blocking()
    pair = _Pair([service])
    call = asyncio.create_task(EchoStub(pair.channel).Unary(EchoRequest(text="block")))
    async with asyncio.timeout(5):
        await service.started.wait()
    pair.server.close(0, "going down for a test")
    with pytest.raises(GRPCError) as caught:
        await call
    assert caught.value.status is Status.UNAVAILABLE
    assert "going down for a test" in (caught.value.message or "")
    async with asyncio.timeout(5):
        await service.cancelled.wait()


async def test_caller_close_fails_calls_in_flight() -> None:
    service = Blocking()
    pair = _Pair([service])
    call = asyncio.create_task(EchoStub(pair.channel).Unary(EchoRequest(text="block")))
    async with asyncio.timeout(5):
        await service.started.wait()
    caller = pair.caller
    assert isinstance(caller, StreamsCaller)
    caller.close()
    with pytest.raises(GRPCError) as caught:
        await call
    assert caught.value.status is Status.UNAVAILABLE
    async with asyncio.timeout(5):
        await service.cancelled.wait()

"""Calls the callee never started, told apart from calls that may have run.

A call the callee turns away before its handler starts fails with
:class:`brpc.CallNotStartedError` (``UNAVAILABLE``, "safe to retry") where
brpc can prove it (docs/protocol.md §4.6): on the streams layer the callee
resets the call's stream with ``CONNECTION_CLOSING`` or ``REFUSED``, and on
either layer a call whose stream was never opened fails so locally. A call
whose handler started is never reported that way, whatever it raised.

The first tests run the real connection core (accept, connect, link, both
call layers) over in-memory sessions, in both directions; the last ones a
real server on loopback.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from conftest import DialFactory, ServerFactory, wait_for
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from layers import on_both_call_layers

import brpc
from brpc._calls._grpclib import EventDispatch
from brpc._calls.base import CallConnection, CallLayer, current_call_connection
from brpc._calls.channel import CallChannel
from brpc._calls.lanes.layer import LanesCallLayer
from brpc._calls.serving import Serving
from brpc._calls.streams.layer import StreamsCallLayer
from brpc._core.accept import Acceptor, AcceptSettings, Hello
from brpc._core.connect import HelloSettings, connect_link
from brpc._core.link import Link, PeerInfo
from brpc._session.base import Session, SessionHandler
from brpc._session.stream_transport import StreamResetError
from brpc._wire.callframe import (
    FrameDecoder,
    StreamError,
    TrailersReceived,
    encode_message,
    encode_request_headers,
)
from brpc._wire.control import HelloLimits
from brpc.testing import EchoService, MemorySession, session_pair
from brpc.testing.v1.echo_grpc import EchoStub
from brpc.testing.v1.echo_pb2 import EchoReply, EchoRequest
from brpc.v1 import control_pb2 as pb

pytestmark = on_both_call_layers

ECHO_UNARY = "/brpc.testing.v1.Echo/Unary"
OPTIONS = brpc.Options(max_concurrent_calls=16)


class Recording(EchoService):
    """Echo that counts the calls whose handler ran, and fails on request."""

    def __init__(self) -> None:
        self.ran = 0

    async def Unary(self, stream: Any) -> None:
        self.ran += 1
        request = await stream.recv_message()
        if request.text == "unavailable":
            raise GRPCError(Status.UNAVAILABLE, "the handler ran and gave up")
        if request.text == "not-started":
            # What a handler whose own outgoing call was refused would let escape.
            raise brpc.CallNotStartedError("a call this handler made was refused")
        if request.text == "drain":
            connection = current_call_connection.get()
            assert isinstance(connection, Link)
            connection.begin_drain("draining under a running handler", 5.0)
        await stream.send_message(EchoReply(text=request.text))


class Gate:
    """An authorization hook that holds each call of ``method`` until released."""

    def __init__(self, method: str = ECHO_UNARY) -> None:
        self.method = method
        self.arrived = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, handle: object, method: str) -> bool:
        if method != self.method:
            return True
        self.arrived.set()
        await self.release.wait()
        return True


def _layer(name: str, service: EchoService) -> CallLayer:
    serving = Serving([service], max_message_size=1 << 20, dispatch=EventDispatch())
    if name == "streams":
        return StreamsCallLayer(serving)
    return LanesCallLayer(serving, lanes=1, max_concurrent_calls=OPTIONS.max_concurrent_calls)


class _Target:
    """Calls go over one link, whatever its state: the link decides."""

    def __init__(self, link: Link) -> None:
        self.link = link

    async def acquire(self) -> CallConnection:
        return self.link

    def loss_reason(self) -> str:
        return self.link.loss_reason()


def _stub(link: Link) -> EchoStub:
    dispatch = EventDispatch()
    caller = link.layer.caller(_Target(link), authority="memory", dispatch=dispatch)
    return EchoStub(CallChannel("memory", dispatch=dispatch, caller=caller))


class _Admitter:
    """Accepts every hello with a link on the server's layer."""

    def __init__(self, layer: CallLayer, authorize: Gate | None) -> None:
        self.closing = False
        self.layer = layer
        self.authorize = authorize
        self.links: list[Link] = []

    async def admit(self, hello: Hello) -> tuple[Link, pb.ServerHello]:
        link = Link(
            hello.session,
            hello.control,
            connection_id="c0",
            peer=PeerInfo(name=hello.message.name),
            layer=self.layer,
            options=OPTIONS,
            describe="client",
            make_handle=lambda link: link,
            authorize=self.authorize,
        )
        return link, pb.ServerHello(protocol_version=1, connection_id="c0")

    def connected(self, link: Link) -> None:
        self.links.append(link)


class _Pair:
    """A client link and a server link over in-memory sessions, one call layer both ways."""

    client: Link
    server: Link

    def __init__(self, call_layer: str, *, gate_server: Gate | None, gate_client: Gate | None):
        self.server_service = Recording()
        self.client_service = Recording()
        self.admitter = _Admitter(_layer(call_layer, self.server_service), gate_server)
        self.client_layer = _layer(call_layer, self.client_service)
        self.gate_client = gate_client
        self.sessions: tuple[MemorySession, MemorySession] | None = None

    async def connect(self) -> None:
        acceptor = Acceptor(
            AcceptSettings(hello_timeout=5.0, hello_limits=HelloLimits()), self.admitter
        )

        async def dial(handler: SessionHandler) -> Session:
            self.sessions = session_pair(handler, acceptor)
            return self.sessions[0]

        def make_link(session: Session, control: Any, hello: pb.ServerHello) -> Link:
            return Link(
                session,
                control,
                connection_id=hello.connection_id,
                peer=PeerInfo(),
                layer=self.client_layer,
                options=OPTIONS,
                describe="server",
                make_handle=lambda link: link,
                authorize=self.gate_client,
            )

        self.client = await connect_link(
            dial, HelloSettings(target="memory", name="agent"), make_link=make_link, timeout=5
        )
        (self.server,) = self.admitter.links


async def _pair(call_layer: str | None, direction: str, gate: Gate | None = None) -> _Pair:
    """Connected links; ``gate`` holds the calls of ``direction`` at their callee."""
    assert call_layer is not None
    to_server = direction == "to_server"
    pair = _Pair(
        call_layer,
        gate_server=gate if to_server else None,
        gate_client=None if to_server else gate,
    )
    await pair.connect()
    return pair


def _roles(pair: _Pair, direction: str) -> tuple[Link, Link, Recording]:
    """(the caller's link, the callee's link, the callee's service) for ``direction``."""
    if direction == "to_server":
        return pair.client, pair.server, pair.server_service
    return pair.server, pair.client, pair.client_service


DIRECTIONS = pytest.mark.parametrize("direction", ["to_server", "to_client"])


@DIRECTIONS
async def test_a_call_held_at_admission_while_its_callee_begins_draining(
    call_layer: str | None, direction: str
) -> None:
    gate = Gate()
    pair = await _pair(call_layer, direction, gate)
    caller, callee, service = _roles(pair, direction)
    call = asyncio.ensure_future(_stub(caller).Unary(EchoRequest(text="x")))
    async with asyncio.timeout(5):
        await gate.arrived.wait()
    callee.begin_drain("bye", 5.0)
    gate.release.set()
    with pytest.raises(GRPCError) as caught:
        async with asyncio.timeout(5):
            await call
    assert caught.value.status is Status.UNAVAILABLE
    if call_layer == "streams":
        # Reset with CONNECTION_CLOSING: the caller knows the call never ran.
        assert isinstance(caught.value, brpc.CallNotStartedError)
        assert "refused the call before starting it" in (caught.value.message or "")
        assert "safe to retry" in (caught.value.message or "")
    else:
        # Lanes can only send the status (docs/protocol.md §2.3): not provably unstarted.
        assert not isinstance(caught.value, brpc.CallNotStartedError)
        assert "the connection is closing" in (caught.value.message or "")
    assert service.ran == 0
    assert callee.calls_in == 0
    assert not callee.lost and not caller.lost


@DIRECTIONS
@pytest.mark.parametrize("text", ["unavailable", "not-started"])
async def test_a_handler_that_ran_is_never_reported_as_not_started(
    call_layer: str | None, direction: str, text: str
) -> None:
    pair = await _pair(call_layer, direction)
    caller, _, service = _roles(pair, direction)
    with pytest.raises(GRPCError) as caught:
        await _stub(caller).Unary(EchoRequest(text=text))
    assert service.ran == 1
    assert caught.value.status is Status.UNAVAILABLE
    assert not isinstance(caught.value, brpc.CallNotStartedError)


@DIRECTIONS
async def test_a_call_running_when_its_callee_begins_draining_completes(
    call_layer: str | None, direction: str
) -> None:
    pair = await _pair(call_layer, direction)
    caller, callee, service = _roles(pair, direction)
    reply = await _stub(caller).Unary(EchoRequest(text="drain"))
    assert reply.text == "drain"
    assert callee.draining and service.ran == 1


@DIRECTIONS
async def test_calls_on_a_connection_taking_no_new_ones_are_not_started(
    call_layer: str | None, direction: str
) -> None:
    pair = await _pair(call_layer, direction)
    caller, callee, service = _roles(pair, direction)
    stub = _stub(caller)
    callee.begin_drain("bye", 5.0)
    await wait_for(lambda: caller.peer_going_away)
    with pytest.raises(brpc.CallNotStartedError) as caught:
        await stub.Unary(EchoRequest(text="x"))
    assert caught.value.status is Status.UNAVAILABLE
    assert "the call was not sent" in (caught.value.message or "")
    caller.close(brpc.CloseCode.NO_ERROR, "done")
    await caller.closed_event.wait()
    with pytest.raises(brpc.CallNotStartedError):
        await stub.Unary(EchoRequest(text="x"))
    assert service.ran == 0


class _Raw(asyncio.Protocol):
    """One end of a stream: what arrived, and how it ended."""

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


class _EagerAdmitter(_Admitter):
    """Opens calls to the client before it answers the hello: with loss or
    reordering, calls made right after a ServerHello arrive before it."""

    def __init__(self, layer: CallLayer, first: list[bytes]) -> None:
        super().__init__(layer, None)
        self.first = first
        self.raws: list[_Raw] = []

    async def admit(self, hello: Hello) -> tuple[Link, pb.ServerHello]:
        for data in self.first:
            raw = _Raw()
            self.raws.append(raw)
            transport = hello.session.open_stream(raw)
            *chunks, last = data.split(b"|")
            for chunk in chunks:
                transport.write(chunk)
            if last == b"FIN":
                transport.write_eof()
            elif last:
                transport.write(last)
        return await super().admit(hello)


def _unary_request(text: str) -> bytes:
    return encode_request_headers(ECHO_UNARY) + encode_message(
        EchoRequest(text=text).SerializeToString()
    )


async def _connect_eagerly(
    first: list[bytes], pending_limit: int = 1 << 20
) -> tuple[_EagerAdmitter, Link, Recording]:
    service = Recording()
    admitter = _EagerAdmitter(_layer("streams", EchoService()), first)
    acceptor = Acceptor(AcceptSettings(hello_timeout=5.0, hello_limits=HelloLimits()), admitter)

    async def dial(handler: SessionHandler) -> Session:
        return session_pair(handler, acceptor)[0]

    def make_link(session: Session, control: Any, hello: pb.ServerHello) -> Link:
        return Link(
            session,
            control,
            connection_id=hello.connection_id,
            peer=PeerInfo(),
            layer=_layer("streams", service),
            options=OPTIONS,
            describe="server",
            make_handle=lambda link: link,
        )

    link = await connect_link(
        dial,
        HelloSettings(target="memory", pending_stream_limit=pending_limit),
        make_link=make_link,
        timeout=5,
    )
    return admitter, link, service


def _status_of(raw: _Raw) -> int:
    events = FrameDecoder(1 << 20, 1 << 16).feed(bytes(raw.received))
    trailers = events[-1]
    assert isinstance(trailers, TrailersReceived)
    return trailers.status


async def test_streams_beyond_the_buffer_before_the_hello_are_refused() -> None:
    # Raw calls of the streams layer; the client buffers lanes the same way.
    # The client keeps 8 streams the server opened before its ServerHello was
    # read, and refuses the ninth: nothing of it ran, and the connection goes on.
    first = [_unary_request(f"call {i}") + b"|FIN" for i in range(9)]
    admitter, link, service = await _connect_eagerly(first)
    async with asyncio.timeout(5):
        ended = [await raw.lost for raw in admitter.raws]
    refused = ended[8]
    assert isinstance(refused, StreamResetError)
    assert refused.code == StreamError.REFUSED
    assert ended[:8] == [None] * 8
    assert [_status_of(raw) for raw in admitter.raws[:8]] == [Status.OK.value] * 8
    assert service.ran == 8
    assert link.usable
    reply = await _stub(admitter.links[0]).Unary(EchoRequest(text="after"))
    assert reply.text == "after"


async def test_a_stream_over_the_byte_bound_before_the_hello_is_refused_unstarted() -> None:
    # Raw calls of the streams layer; the client buffers lanes the same way.
    # A complete request, then more than the client keeps for a stream it
    # cannot serve yet: refused, and never handed to the call layer.
    oversized = _unary_request("first") + b"|" + encode_message(b"x" * 400)
    admitter, link, service = await _connect_eagerly([oversized], pending_limit=200)
    async with asyncio.timeout(5):
        refused = await admitter.raws[0].lost
    assert isinstance(refused, StreamResetError)
    assert refused.code == StreamError.REFUSED
    reply = await _stub(admitter.links[0]).Unary(EchoRequest(text="after"))
    assert reply.text == "after"
    assert service.ran == 1  # only the call made after the hello
    assert link.usable


# -- a real server on loopback ---------------------------------------------------------


class Greeter(EchoService):
    """Echo for loopback tests: counts unary calls, fails on request; its
    server-streaming calls wait for :attr:`unblock` before they answer."""

    def __init__(self) -> None:
        self.ran = 0
        self.blocked = asyncio.Event()
        self.unblock = asyncio.Event()

    async def ServerStream(self, stream: Any) -> None:
        self.blocked.set()
        await self.unblock.wait()
        await super().ServerStream(stream)

    async def Unary(self, stream: Any) -> None:
        self.ran += 1
        request = await stream.recv_message()
        if request.text == "unavailable":
            raise GRPCError(Status.UNAVAILABLE, "the handler ran and gave up")
        await stream.send_message(EchoReply(text=request.text))


async def test_a_server_draining_during_admission_over_quic(
    make_server: ServerFactory, connect: DialFactory, call_layer: str | None
) -> None:
    gate = Gate()
    service = Greeter()
    server = await make_server([service], authorize=gate)
    conn = await connect(server)
    # A call in flight keeps the draining connection open until it ends.
    held = asyncio.ensure_future(EchoStub(conn).ServerStream(EchoRequest(text="h", count=1)))
    async with asyncio.timeout(5):
        await service.blocked.wait()
    call = asyncio.ensure_future(EchoStub(conn).Unary(EchoRequest(text="x")))
    async with asyncio.timeout(5):
        await gate.arrived.wait()
    server.close(grace=5)
    # The client heard the go-away: the server is draining.
    await wait_for(lambda: conn.state is not brpc.ConnState.READY)
    gate.release.set()
    with pytest.raises(GRPCError) as caught:
        async with asyncio.timeout(10):
            await call
    assert caught.value.status is Status.UNAVAILABLE
    assert isinstance(caught.value, brpc.CallNotStartedError) == (call_layer == "streams")
    assert service.ran == 0
    service.unblock.set()
    assert [reply.text for reply in await held] == ["h"]
    # Told to go away, the client sends no new call to this server.
    with pytest.raises(brpc.CallNotStartedError):
        await EchoStub(conn).Unary(EchoRequest(text="y"))


async def test_handlers_that_ran_are_not_reported_as_not_started_over_quic(
    make_server: ServerFactory, connect: DialFactory, call_layer: str | None
) -> None:
    service, agent = Greeter(), Greeter()
    server = await make_server([service], client_stub=EchoStub)
    conn = await connect(server, services=[agent])
    await wait_for(lambda: len(server.clients) == 1)
    (info,) = server.clients_snapshot()
    for stub, ran in ((EchoStub(conn), service), (info.stub, agent)):
        with pytest.raises(GRPCError) as caught:
            await stub.Unary(EchoRequest(text="unavailable"))
        assert caught.value.status is Status.UNAVAILABLE
        assert not isinstance(caught.value, brpc.CallNotStartedError)
        assert ran.ran == 1


async def test_calls_to_a_draining_client_are_not_started_over_quic(
    make_server: ServerFactory, connect: DialFactory, call_layer: str | None
) -> None:
    agent = Greeter()
    server = await make_server([], client_stub=EchoStub)
    conn = await connect(server, services=[agent])
    await wait_for(lambda: len(server.clients) == 1)
    (info,) = server.clients_snapshot()
    server.close(grace=5)
    await wait_for(lambda: conn.state is not brpc.ConnState.READY)
    with pytest.raises(brpc.CallNotStartedError) as caught:
        await info.stub.Unary(EchoRequest(text="x"))
    assert caught.value.status is Status.UNAVAILABLE
    assert agent.ran == 0
    await conn.close()


def test_not_started_error_is_an_unavailable_grpc_error() -> None:
    error = brpc.CallNotStartedError("refused")
    assert isinstance(error, GRPCError)
    assert (error.status, error.message) == (Status.UNAVAILABLE, "refused")
    assert "CallNotStartedError" in brpc.__all__


async def test_a_stream_the_session_cannot_open_is_a_call_not_started() -> None:
    class NoStreams:
        """A session that can open no stream now (qh3 out of stream credit, say)."""

        def open_stream(self, protocol: asyncio.Protocol) -> None:
            raise ConnectionError("the peer allows no more concurrent streams")

    link = Link(
        cast(Any, NoStreams()),
        cast(Any, None),
        connection_id="c0",
        peer=PeerInfo(),
        layer=_layer("streams", EchoService()),
        options=OPTIONS,
        describe="server",
        make_handle=lambda link: link,
    )
    with pytest.raises(brpc.CallNotStartedError, match="no more concurrent streams"):
        link.open_stream(asyncio.Protocol())

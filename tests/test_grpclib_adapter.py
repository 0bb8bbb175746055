"""Every private grpclib detail brpc relies on (brpc/_calls/_grpclib.py).

The behaviour built on them is covered end to end by test_semantics.py (limits,
status mapping, unknown methods, 200 concurrent calls on a fresh lane); here each
private name is checked directly, so that a grpclib upgrade that moves one fails
with a clear message rather than as a mysterious hang elsewhere.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import grpclib.client
import grpclib.const
import grpclib.events
import grpclib.exceptions
import grpclib.protocol
import grpclib.server
import grpclib.stream
from grpclib.encoding.proto import ProtoCodec
from grpclib.events import RecvRequest, SendRequest, listen
from h2.settings import SettingCodes
from hyperframe.frame import DataFrame, Frame, HeadersFrame, SettingsFrame

from brpc._calls._grpclib import (
    EventDispatch,
    LaneChannel,
    LaneProtocol,
    server_lane_protocol,
    serving_server,
)
from brpc._calls.serving import Serving
from brpc.testing import EchoService
from brpc.testing.v1.echo_grpc import EchoStub
from brpc.testing.v1.echo_pb2 import EchoRequest


def _server() -> grpclib.server.Server:
    serving = Serving([EchoService()], max_message_size=1 << 20, dispatch=EventDispatch())
    return serving_server(
        serving.lookup,
        codec=serving.codec,
        status_details_codec=serving.status_details_codec,
        dispatch=serving.dispatch,
    )


async def test_private_names_exist() -> None:
    channel = grpclib.client.Channel("localhost", 1)
    for name in ("_create_connection", "_protocol_factory", "_protocol", "_codec"):
        assert hasattr(channel, name), name
    for name in ("_status_details_codec", "_scheme", "_authority", "__dispatch__"):
        assert hasattr(channel, name), name
    assert inspect.iscoroutinefunction(channel._create_connection)
    assert hasattr(grpclib.server.Server, "_protocol_factory")
    for name in ("_raise_for_content_type", "_maybe_finish", "_trailers_only"):
        assert hasattr(grpclib.client.Stream, name), name
    assert inspect.iscoroutinefunction(grpclib.protocol.Stream.recv_data)
    assert "connection_lost" in vars(grpclib.client.Handler) or hasattr(
        grpclib.client.Handler(), "connection_lost"
    )
    source = inspect.getsource(grpclib.stream.recv_message)
    assert "recv_data(5)" in source and "recv_data(message_len)" in source
    # LaneProtocol builds grpclib's Connection itself and retypes its streams.
    assert list(inspect.signature(grpclib.protocol.Connection.create_stream).parameters) == [
        "self",
        "stream_id",
        "wrapper",
    ]
    assert not hasattr(grpclib.protocol.Stream, "__slots__")
    source = inspect.getsource(grpclib.protocol.EventsProcessor)
    assert "self.connection.create_stream(" in source
    assert "stream_close_waiter" in inspect.getsource(grpclib.protocol.Connection)
    # A response that arrived whole outlives its lane: headers, the buffer's
    # end-of-stream mark, and the termination hook every lost lane calls.
    buffer = grpclib.protocol.Buffer(lambda size: None)
    assert buffer._eof is False
    buffer.eof()
    assert buffer._eof is True
    assert "headers" in inspect.getsource(grpclib.protocol.Stream.__init__)
    assert "__terminated__(reason)" in inspect.getsource(grpclib.protocol.EventsProcessor.close)


def test_one_dispatcher_takes_channel_and_server_events() -> None:
    dispatch = EventDispatch()

    async def callback(event: Any) -> None:
        pass

    class Target:
        __dispatch__ = dispatch

    listen(Target(), RecvRequest, callback)
    listen(Target(), SendRequest, callback)
    assert issubclass(EventDispatch, grpclib.events._DispatchServerEvents)
    assert issubclass(EventDispatch, grpclib.events._DispatchChannelEvents)


async def test_dispatch_says_which_events_are_listened_to() -> None:
    """The streams layer skips grpclib's dispatch methods nobody listens to: a
    method is listened to exactly once a listener for its event was added."""
    dispatch = EventDispatch()

    async def callback(event: Any) -> None:
        pass

    class Target:
        __dispatch__ = dispatch

    names = dict(EventDispatch.__dispatch_methods__)
    assert set(names.values()) >= {
        "send_request",
        "send_message",
        "recv_message",
        "recv_initial_metadata",
        "recv_trailing_metadata",
        "recv_request",
        "send_initial_metadata",
        "send_trailing_metadata",
    }
    assert not any(dispatch.listened(name) for name in names.values())
    # Unlistened, a method hands back its arguments: skipping it changes nothing.
    assert await dispatch.send_message("m") == ("m",)
    listen(Target(), SendRequest, callback)
    assert [name for name in names.values() if dispatch.listened(name)] == ["send_request"]


class _Capture(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.data = bytearray()

    def write(self, data: Any) -> None:
        self.data += data

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


async def test_server_lane_announces_the_limit_in_the_first_settings() -> None:
    protocol = server_lane_protocol(_server(), max_message_size=1 << 20, max_concurrent_streams=321)
    assert isinstance(protocol, LaneProtocol)
    transport = _Capture()
    protocol.connection_made(transport)
    frame, length = Frame.parse_frame_header(memoryview(bytes(transport.data[:9])))
    frame.parse_body(memoryview(bytes(transport.data[9 : 9 + length])))
    assert isinstance(frame, SettingsFrame)
    assert frame.settings[SettingCodes.MAX_CONCURRENT_STREAMS] == 321
    enforced = protocol.connection._connection.local_settings.max_concurrent_streams
    assert enforced == 642
    protocol.connection_lost(None)


async def test_lane_streams_refuse_oversized_messages_by_their_prefix() -> None:
    protocol = server_lane_protocol(_server(), max_message_size=10, max_concurrent_streams=5)
    protocol.connection_made(_Capture())
    stream = protocol.connection.create_stream(stream_id=1)
    assert type(stream).__name__ == "_LimitedStream"
    try:
        await stream.recv_data(11)
    except grpclib.exceptions.GRPCError as exc:
        assert exc.status is grpclib.const.Status.RESOURCE_EXHAUSTED
        assert "11 bytes exceeds the limit of 10 bytes" in str(exc.message)
    else:
        raise AssertionError("an oversized message was accepted")
    protocol.connection_lost(None)


def test_what_the_streams_layer_takes_from_grpclib() -> None:
    """The streams layer subclasses grpclib's client and server ``Stream`` without
    their HTTP/2 machinery: it relies on their state flags (class attributes it
    sets), ``Peer`` reading a transport, and the event dispatchers' methods."""
    for name in (
        "_send_request_done",
        "_send_message_done",
        "_end_done",
        "_recv_initial_metadata_done",
        "_recv_trailing_metadata_done",
        "_cancel_done",
        "_trailers_only",
        "_messages_sent",
        "_messages_received",
        "initial_metadata",
        "trailing_metadata",
        "peer",
    ):
        assert name in vars(grpclib.client.Stream), name
    for name in (
        "_send_initial_metadata_done",
        "_send_message_done",
        "_send_trailing_metadata_done",
        "_cancel_done",
        "_messages_sent",
        "_messages_received",
    ):
        assert name in vars(grpclib.server.Stream), name

    class Transport:
        def get_extra_info(self, name: str) -> Any:
            return {"peername": ("192.0.2.1", 1), "ssl_object": None}[name]

    peer = grpclib.protocol.Peer(Transport())  # type: ignore[arg-type]
    assert (peer.addr(), peer.cert()) == (("192.0.2.1", 1), None)
    for name, keywords in (
        ("send_request", {"method_name", "deadline", "content_type"}),
        ("recv_initial_metadata", set()),
        ("recv_trailing_metadata", {"status", "status_message", "status_details"}),
        (
            "recv_request",
            {"method_name", "deadline", "content_type", "user_agent", "peer"},
        ),
        ("send_initial_metadata", set()),
        ("send_trailing_metadata", {"status", "status_message", "status_details"}),
        ("send_message", set()),
        ("recv_message", set()),
    ):
        # Without listeners an instance answers with a stand-in taking anything;
        # the class has the real signature.
        parameters = inspect.signature(getattr(EventDispatch, name)).parameters
        kw_only = {n for n, p in parameters.items() if p.kind is p.KEYWORD_ONLY}
        assert kw_only == keywords, (name, kw_only)


class _Held(asyncio.Transport):
    """A transport that keeps what is written until the test delivers it."""

    def __init__(self) -> None:
        super().__init__()
        self.data = bytearray()
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.data += data

    def take(self) -> bytes:
        data, self.data = bytes(self.data), bytearray()
        return data

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (0, 1 << 20)

    def get_write_buffer_size(self) -> int:
        return len(self.data)

    def close(self) -> None:
        self.closing = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class _HeldLane(LaneChannel):
    def __init__(self) -> None:
        super().__init__(
            authority="peer",
            max_message_size=1 << 20,
            codec=ProtoCodec(),
            status_details_codec=None,
        )
        self.transport = _Held()

    async def open_lane(self, protocol: grpclib.protocol.H2Protocol) -> None:
        protocol.connection_made(self.transport)


async def test_a_reply_that_arrived_whole_survives_the_lane_ending_before_it_is_read() -> None:
    # The peer's last reply and its close can arrive in one flight: the lane
    # hears data_received (the whole response) and then connection_lost before
    # the caller runs again. The caller gets its reply, not UNAVAILABLE.
    plain = grpclib.server.Server([EchoService()])  # no brpc connection needed
    server_protocol = server_lane_protocol(
        plain, max_message_size=1 << 20, max_concurrent_streams=5
    )
    to_client = _Held()
    server_protocol.connection_made(to_client)
    lane = _HeldLane()
    call = asyncio.create_task(EchoStub(lane).Unary(EchoRequest(text="whole")))
    # Move bytes both ways but hold the replies back, until the server has no
    # more to say (its handler ran and sent the trailers).
    replies = bytearray()
    for _ in range(200):
        await asyncio.sleep(0)
        requests = lane.transport.take()
        if requests:
            server_protocol.data_received(requests)
        replies += to_client.take()
        if _ends_a_stream(bytes(replies)):
            break
    assert not call.done()
    client_protocol = lane.protocol
    assert client_protocol is not None
    client_protocol.data_received(bytes(replies))
    lane.transport.closing = True
    client_protocol.connection_lost(None)
    reply = await asyncio.wait_for(call, 5)
    assert reply.text == "whole"
    server_protocol.connection_lost(None)


def _ends_a_stream(data: bytes) -> bool:
    """Whether HTTP/2 frames ``data`` (after the client preface) end a stream."""
    view = memoryview(data)
    while len(view) >= 9:
        frame, length = Frame.parse_frame_header(view[:9])
        if len(view) < 9 + length:
            return False
        if isinstance(frame, HeadersFrame | DataFrame):
            frame.parse_flags(view[4])
            if "END_STREAM" in frame.flags:
                return True
        view = view[9 + length :]
    return False

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
from grpclib.events import RecvRequest, SendRequest, listen
from h2.settings import SettingCodes
from hyperframe.frame import Frame, SettingsFrame

from brpc._calls._grpclib import (
    EventDispatch,
    LaneProtocol,
    server_lane_protocol,
    serving_server,
)
from brpc._calls.serving import Serving
from brpc.testing import EchoService


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

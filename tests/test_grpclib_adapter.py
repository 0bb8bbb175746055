"""Every private grpclib detail brpc relies on (brpc/_grpclib.py).

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
import grpclib.protocol
import grpclib.server
from h2.settings import SettingCodes
from hyperframe.frame import Frame, SettingsFrame

from brpc._calls import serving_server
from brpc._grpclib import server_lane_protocol
from brpc.testing import EchoService


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
    protocol = server_lane_protocol(
        serving_server([EchoService()], 1 << 20), max_concurrent_streams=321
    )
    transport = _Capture()
    protocol.connection_made(transport)
    frame, length = Frame.parse_frame_header(memoryview(bytes(transport.data[:9])))
    frame.parse_body(memoryview(bytes(transport.data[9 : 9 + length])))
    assert isinstance(frame, SettingsFrame)
    assert frame.settings[SettingCodes.MAX_CONCURRENT_STREAMS] == 321
    enforced = protocol.connection._connection.local_settings.max_concurrent_streams
    assert enforced == 642
    protocol.connection_lost(None)

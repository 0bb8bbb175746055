"""A bare aioquic client and server for playing a misbehaving peer in tests."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aioquic.asyncio import QuicConnectionProtocol, connect, serve
from aioquic.asyncio.server import QuicServer
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import (
    ConnectionTerminated,
    QuicEvent,
    StreamDataReceived,
    StreamReset,
)


class Recorder(QuicConnectionProtocol):
    """Records what the peer sends and how the connection ends."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ended: asyncio.Future[ConnectionTerminated] = (
            asyncio.get_running_loop().create_future()
        )
        self.received: dict[int, bytes] = {}
        #: Streams the peer reset.
        self.resets: set[int] = set()

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamDataReceived):
            self.received[event.stream_id] = self.received.get(event.stream_id, b"") + event.data
        elif isinstance(event, StreamReset):
            self.resets.add(event.stream_id)
        elif isinstance(event, ConnectionTerminated) and not self.ended.done():
            self.ended.set_result(event)

    def send(self, stream_id: int, data: bytes, end: bool = False) -> None:
        self._quic.send_stream_data(stream_id, data, end)
        self.transmit()

    def next_stream(self, unidirectional: bool = False) -> int:
        return self._quic.get_next_available_stream_id(is_unidirectional=unidirectional)

    def stop_granting_credit(self) -> None:
        """From now on, never raise the peer's flow-control limits (MAX_DATA and
        MAX_STREAM_DATA): what it sends us stays unacknowledged by the application."""
        quic: Any = self._quic
        quic._write_connection_limits = lambda **_: None
        quic._write_stream_limits = lambda **_: None

    async def wait_ended(self, timeout: float = 10.0) -> ConnectionTerminated:
        async with asyncio.timeout(timeout):
            return await asyncio.shield(self.ended)


@contextlib.asynccontextmanager
async def raw_client(
    port: int,
    *,
    ca: Path,
    alpn: str = "brpc/1",
    wait_connected: bool = True,
    max_stream_data: int | None = None,
) -> AsyncIterator[Recorder]:
    configuration = QuicConfiguration(
        is_client=True, alpn_protocols=[alpn], server_name="localhost", idle_timeout=10
    )
    if max_stream_data is not None:
        configuration.max_stream_data = max_stream_data
    configuration.load_verify_locations(cafile=str(ca))
    configuration.verify_mode = ssl.CERT_REQUIRED
    async with connect(
        "127.0.0.1",
        port,
        configuration=configuration,
        create_protocol=Recorder,
        wait_connected=wait_connected,
    ) as protocol:
        yield protocol  # type: ignore[misc]


@contextlib.asynccontextmanager
async def raw_server(
    *, certfile: Path, keyfile: Path, alpn: list[str] | None
) -> AsyncIterator[QuicServer]:
    configuration = QuicConfiguration(is_client=False, alpn_protocols=alpn)
    configuration.load_cert_chain(str(certfile), str(keyfile))
    server = await serve("127.0.0.1", 0, configuration=configuration)
    try:
        yield server
    finally:
        server.close()


def port_of(server: QuicServer) -> int:
    port: int = server._transport.get_extra_info("sockname")[1]
    return port

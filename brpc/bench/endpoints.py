"""Servers and client connections of each transport, behind one small interface.

A worker process starts a :class:`BenchServer` or opens
:class:`BenchConnection`\\ s without knowing which transport it runs: brpc
over QUIC, grpclib over TCP or grpcio over TCP. All of them serve the same
``brpc.testing.v1.Echo`` service. Only brpc servers can call their clients.
"""

from __future__ import annotations

import socket
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import grpclib.client
import grpclib.server

import brpc
from brpc.testing import EchoService
from brpc.testing.v1.echo_grpc import EchoStub
from brpc.testing.v1.echo_pb2 import EchoReply, EchoRequest

from .callers import EchoCaller, StubCaller
from .echo_grpcio import GrpcioCaller, grpcio_channel, start_grpcio_server
from .spec import HOST, Transport, TransportSpec

#: Name of the brpc client a relay server's callers reach (metadata brpc-target).
RELAY_FAR_END = "far"

__all__ = ["BenchConnection", "BenchServer", "connect", "start_server"]

_MESSAGE_LIMIT = 8 << 20


class BenchServer(ABC):
    """A running Echo server on loopback."""

    port: int
    #: The UDP port brpc clients dial (brpc and relay servers).
    brpc_port: int = 0

    @abstractmethod
    async def close(self) -> None: ...

    def client_named(self, name: str) -> EchoCaller | None:
        """A caller of the connected client ``name``, if it is connected (brpc only)."""
        raise NotImplementedError(f"{type(self).__name__} cannot call its clients")

    def client_names(self) -> list[str]:
        """Names of the connected clients (brpc only)."""
        raise NotImplementedError(f"{type(self).__name__} cannot call its clients")

    def connecting_clients(self) -> AsyncGenerator[str, None]:
        """Names of clients as they connect, starting with those already connected
        (brpc only)."""
        raise NotImplementedError(f"{type(self).__name__} cannot call its clients")

    def disconnect(self, name: str) -> None:
        """Close the connection of client ``name`` from the server's side (brpc only)."""
        raise NotImplementedError(f"{type(self).__name__} cannot close its clients")


class BenchConnection(ABC):
    """One client connection and a caller of the server over it."""

    caller: EchoCaller

    @abstractmethod
    async def close(self) -> None: ...

    async def wait_closed(self) -> None:
        """Wait until the server closed this connection (brpc only)."""
        raise NotImplementedError(f"{type(self).__name__} cannot wait for the server")


# -- brpc ------------------------------------------------------------------------------


class _BrpcServer(BenchServer):
    def __init__(self, server: brpc.Server[EchoStub]) -> None:
        self._server = server
        self.port = server.port

    async def close(self) -> None:
        self._server.close()
        await self._server.wait_closed()

    def _info(self, name: str) -> brpc.ClientInfo[EchoStub] | None:
        return self._server.clients.named(name)

    def client_named(self, name: str) -> EchoCaller | None:
        info = self._info(name)
        return StubCaller(info.stub) if info is not None else None

    def client_names(self) -> list[str]:
        return [info.name for info in self._server.clients]

    async def connecting_clients(self) -> AsyncGenerator[str, None]:
        async with self._server.watch(existing=True) as events:
            async for event in events:
                if event.connected:
                    yield event.client.name

    def disconnect(self, name: str) -> None:
        info = self._info(name)
        if info is not None:
            info.close("benchmark is done with this client")


class _RelayServer(BenchServer):
    """A brpc server with a relay and a plaintext gRPC/TCP front (``port``), and the
    brpc client behind it that serves Echo."""

    def __init__(self, server: brpc.Server[EchoStub], far: brpc.ClientConn, port: int) -> None:
        self._server = server
        self._far = far
        self.port = port
        self.brpc_port = server.port

    async def close(self) -> None:
        await self._far.close()
        self._server.close()
        await self._server.wait_closed()


class _RelayedStubCaller(StubCaller):
    """Echo through the relay: every call names its target."""

    def __init__(self, stub: EchoStub, target: str) -> None:
        super().__init__(stub)
        self._metadata = {"brpc-target": target}

    async def unary(self, request: EchoRequest) -> EchoReply:
        return await self._stub.Unary(request, metadata=self._metadata)

    async def server_stream(self, request: EchoRequest) -> AsyncIterator[EchoReply]:
        async with self._stub.ServerStream.open(metadata=self._metadata) as stream:
            await stream.send_message(request, end=True)
            async for reply in stream:
                yield reply


class _BrpcConnection(BenchConnection):
    def __init__(self, conn: brpc.ClientConn) -> None:
        self._conn = conn
        self.caller = StubCaller(EchoStub(conn))

    async def close(self) -> None:
        await self._conn.close()

    async def wait_closed(self) -> None:
        await self._conn.wait_closed()


def _brpc_options(spec: TransportSpec) -> dict[str, Any]:
    tuning = spec.tuning
    return {
        "call_layer": spec.call_layer,
        "engine": spec.engine,
        "lanes": tuning.lanes,
        "max_datagram_size": tuning.max_datagram_size,
        "read_batch": tuning.read_batch,
        "max_message_size": _MESSAGE_LIMIT,
    }


# -- grpclib over TCP ----------------------------------------------------------------


class _GrpclibServer(BenchServer):
    def __init__(self, server: grpclib.server.Server, port: int) -> None:
        self._server = server
        self.port = port

    async def close(self) -> None:
        self._server.close()
        await self._server.wait_closed()


class _GrpclibConnection(BenchConnection):
    def __init__(self, channel: grpclib.client.Channel) -> None:
        self._channel = channel
        self.caller = StubCaller(EchoStub(channel))

    async def close(self) -> None:
        self._channel.close()


# -- grpcio over TCP -------------------------------------------------------------------


class _GrpcioServer(BenchServer):
    def __init__(self, server: Any) -> None:
        self._server = server
        self.port = server.port

    async def close(self) -> None:
        await self._server.close()


class _GrpcioConnection(BenchConnection):
    def __init__(self, channel: Any, caller: EchoCaller) -> None:
        self._channel = channel
        self.caller = caller

    async def close(self) -> None:
        await self._channel.close()


# -- factories -----------------------------------------------------------------------


async def start_server(spec: TransportSpec) -> BenchServer:
    """Start an Echo server of ``spec.transport`` on a free loopback port."""
    if spec.transport is Transport.BRPC:
        server: brpc.Server[EchoStub] = brpc.Server(
            [EchoService()],
            client_stub=EchoStub,
            certfile=spec.certfile,
            keyfile=spec.keyfile,
            **_brpc_options(spec),
        )
        await server.start(HOST, 0)
        return _BrpcServer(server)
    if spec.transport is Transport.RELAY:
        relay_server: brpc.Server[EchoStub] = brpc.Server(
            [],
            certfile=spec.certfile,
            keyfile=spec.keyfile,
            relay=brpc.Relay(),
            **_brpc_options(spec),
        )
        await relay_server.start(HOST, 0)
        port = await relay_server.listen_tcp(HOST, 0, plaintext=True)
        far = await brpc.dial(
            relay_server.address,
            services=[EchoService()],
            ca=spec.ca,
            name=RELAY_FAR_END,
            reconnect=False,
            **_brpc_options(spec),
        )
        return _RelayServer(relay_server, far, port)
    if spec.transport is Transport.GRPCLIB:
        # IPPROTO_TCP explicitly: asyncio turns Nagle's algorithm off only on
        # sockets whose proto says TCP, and accepted sockets inherit it.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((HOST, 0))
        grpclib_server = grpclib.server.Server([EchoService()])
        await grpclib_server.start(sock=sock)
        return _GrpclibServer(grpclib_server, sock.getsockname()[1])
    return _GrpcioServer(await start_grpcio_server(HOST))


async def connect(
    spec: TransportSpec,
    port: int,
    *,
    name: str,
    serve: bool = False,
    labels: dict[str, str] | None = None,
) -> BenchConnection:
    """Open a client connection to the server on ``port``.

    brpc connections are named (the server finds them by name), carry
    ``labels`` and serve the Echo service themselves when ``serve`` is set.
    grpclib and grpcio connect lazily: the connection exists after the first
    call. Relay connections are grpclib channels to the front whose calls go
    to the relay's far-end client.
    """
    if spec.transport is Transport.BRPC:
        conn = await brpc.dial(
            f"{HOST}:{port}",
            services=[EchoService()] if serve else (),
            ca=spec.ca,
            name=name,
            labels=labels,
            reconnect=False,
            **_brpc_options(spec),
        )
        return _BrpcConnection(conn)
    if spec.transport is Transport.GRPCLIB:
        return _GrpclibConnection(grpclib.client.Channel(HOST, port))
    if spec.transport is Transport.RELAY:
        channel = grpclib.client.Channel(HOST, port)
        relayed = _GrpclibConnection(channel)
        relayed.caller = _RelayedStubCaller(EchoStub(channel), RELAY_FAR_END)
        return relayed
    channel = grpcio_channel(HOST, port)
    return _GrpcioConnection(channel, GrpcioCaller(channel))

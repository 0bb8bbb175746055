"""``AdminService``: answers ``brpc.admin.v1.Admin`` from a server's client registry.

Off by default. Whoever serves it must authorise it with the server's
``authorize=`` hook, which sees the method :data:`LIST_CLIENTS_METHOD`; the
service tells its callers who is connected, with names, labels and addresses.

A server takes its handlers when it is made, so make the service first and
bind it to the server once the server exists::

    def authorize(client: brpc.ClientInfo, method: str) -> bool:
        if method.startswith("/brpc.admin.v1.Admin/"):
            return client.identity is not None and client.identity.name == "ops"
        return True

    admin = AdminService()
    server = brpc.Server([Greeter(), admin], authorize=authorize, certfile=..., keyfile=...)
    admin.bind(server)

``AdminService(server)`` binds at once, for code that builds handlers after the
server (a server that makes the service itself).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from google.protobuf.timestamp_pb2 import Timestamp
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.server import Stream

from .v1 import admin_grpc
from .v1.admin_pb2 import Client, ListClientsRequest, ListClientsResponse

if TYPE_CHECKING:
    from ..peer import ClientInfo
    from ..server import Server

__all__ = ["LIST_CLIENTS_METHOD", "AdminService", "client_message"]

log = logging.getLogger(__name__)

#: The gRPC path an ``authorize=`` hook sees for ``Admin.ListClients``.
LIST_CLIENTS_METHOD = "/brpc.admin.v1.Admin/ListClients"


def client_message(info: ClientInfo[Any]) -> Client:
    """``info`` as a ``brpc.admin.v1.Client`` message."""
    connected_at = Timestamp()
    connected_at.FromNanoseconds(round(info.connected_at * 1e9))
    address = info.address
    identity = info.identity
    return Client(
        connection_id=info.connection_id,
        name=info.name,
        labels=dict(info.labels),
        services=list(info.services),
        address=_format_address(address) if address is not None else "",
        connected_at=connected_at,
        identity=identity.name if identity is not None else "",
        calls_in_flight=info.calls_in_flight,
    )


def _format_address(address: tuple[str, int]) -> str:
    host, port = address[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class AdminService(admin_grpc.AdminBase):
    """``brpc.admin.v1.Admin`` answered from ``server.clients``."""

    def __init__(self, server: Server[Any] | None = None) -> None:
        self._server = server

    def bind(self, server: Server[Any]) -> None:
        """Answer from ``server``'s clients (for a service made before its server)."""
        self._server = server

    async def ListClients(self, stream: Stream[ListClientsRequest, ListClientsResponse]) -> None:
        request = await stream.recv_message()
        assert request is not None
        server = self._server
        if server is None:
            raise GRPCError(
                Status.FAILED_PRECONDITION,
                "the admin service is not bound to a server: call AdminService.bind(server)",
            )
        found = server.clients.find(
            name=request.name or None,
            labels=dict(request.labels) or None,
            service=request.service or None,
        )
        await stream.send_message(ListClientsResponse(clients=[client_message(c) for c in found]))

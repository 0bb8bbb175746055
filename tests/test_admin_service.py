"""brpc.admin.AdminService: ListClients answered from the server's registry, filtered,
and authorised through the server's authorize hook."""

from __future__ import annotations

import time
from typing import Any

import pytest
from conftest import DialFactory, ServerFactory
from grpclib.const import Status
from grpclib.exceptions import GRPCError

import brpc
from brpc.admin import LIST_CLIENTS_METHOD, AdminService
from brpc.admin.v1.admin_grpc import AdminStub
from brpc.admin.v1.admin_pb2 import ListClientsRequest
from brpc.testing import EchoService


async def test_list_clients_with_filters(make_server: ServerFactory, connect: DialFactory) -> None:
    admin = AdminService()
    server = await make_server([admin])
    admin.bind(server)
    before = time.time()
    ops = await connect(server, name="ops")
    await connect(server, name="a1", labels={"site": "lab", "rack": "4"}, services=[EchoService()])
    await connect(server, name="a2", labels={"site": "home"})
    stub = AdminStub(ops)

    everyone = (await stub.ListClients(ListClientsRequest())).clients
    assert [client.name for client in everyone] == ["ops", "a1", "a2"]
    assert everyone[0].connection_id == ops.connection_id
    a1 = everyone[1]
    assert dict(a1.labels) == {"site": "lab", "rack": "4"}
    assert list(a1.services) == ["brpc.testing.v1.Echo"]
    assert a1.address.startswith("127.0.0.1:")
    assert before - 1 <= a1.connected_at.ToNanoseconds() / 1e9 <= time.time() + 1
    assert everyone[0].calls_in_flight == 1  # this very call

    async def names(**request: Any) -> list[str]:
        reply = await stub.ListClients(ListClientsRequest(**request))
        return [client.name for client in reply.clients]

    assert await names(labels={"site": "lab"}) == ["a1"]
    assert await names(labels={"site": "lab", "rack": "5"}) == []
    assert await names(service="brpc.testing.v1.Echo") == ["a1"]
    assert await names(name="a2") == ["a2"]


async def test_the_authorize_hook_guards_it(
    make_server: ServerFactory, connect: DialFactory
) -> None:
    asked: list[tuple[str, str]] = []

    def authorize(client: brpc.ClientInfo[Any], method: str) -> bool:
        asked.append((client.name, method))
        return client.name == "ops"

    # AdminService(server) answers from the server it is given: here one nobody dialled.
    server = await make_server([], authorize=authorize)
    server_with_admin = await make_server([AdminService(server)], authorize=authorize)
    ops = await connect(server_with_admin, name="ops")
    intruder = await connect(server_with_admin, name="intruder")
    assert len((await AdminStub(ops).ListClients(ListClientsRequest())).clients) == 0
    with pytest.raises(GRPCError) as denied:
        await AdminStub(intruder).ListClients(ListClientsRequest())
    assert denied.value.status is Status.PERMISSION_DENIED
    assert asked == [("ops", LIST_CLIENTS_METHOD), ("intruder", LIST_CLIENTS_METHOD)]


async def test_unbound_service_says_so(make_server: ServerFactory, connect: DialFactory) -> None:
    server = await make_server([AdminService()])
    with pytest.raises(GRPCError) as raised:
        await AdminStub(await connect(server)).ListClients(ListClientsRequest())
    assert raised.value.status is Status.FAILED_PRECONDITION
    assert "AdminService.bind" in (raised.value.message or "")

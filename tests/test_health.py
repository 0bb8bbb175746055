"""A client's health in one call from the server: ``ClientInfo.health()``."""

from __future__ import annotations

from typing import Any

import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.health.check import ServiceStatus
from grpclib.health.service import Health

from brpc.testing import EchoService


async def test_health_of_a_client_that_serves_it(make_server: Any, connect: Any) -> None:
    echo = EchoService()
    status = ServiceStatus()
    health = Health({echo: [status]})
    server = await make_server()
    await connect(server, services=[echo, health])
    (info,) = server.clients_snapshot()
    assert await info.health("brpc.testing.v1.Echo") == "UNKNOWN"
    status.set(True)
    assert await info.health("brpc.testing.v1.Echo") == "SERVING"
    status.set(False)
    assert await info.health("brpc.testing.v1.Echo") == "NOT_SERVING"
    with pytest.raises(GRPCError) as unknown:
        await info.health("no.such.Service")
    assert unknown.value.status is Status.NOT_FOUND


async def test_health_of_a_client_that_does_not_serve_it(make_server: Any, connect: Any) -> None:
    server = await make_server()
    await connect(server, services=[EchoService()])
    (info,) = server.clients_snapshot()
    with pytest.raises(GRPCError) as caught:
        await info.health()
    assert caught.value.status is Status.UNIMPLEMENTED


async def test_overall_health(make_server: Any, connect: Any) -> None:
    server = await make_server()
    await connect(server, services=[EchoService(), Health()])
    (info,) = server.clients_snapshot()
    assert await info.health() == "SERVING"

"""brpc.testing.connected and its pytest fixture, used as a user's unit tests would."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from conftest import wait_for

if TYPE_CHECKING:
    from brpc.testing.pytest_plugin import ConnectedFactory
from grpclib.const import Status
from grpclib.exceptions import GRPCError

import brpc
import brpc.testing
from brpc.testing import EchoService
from brpc.testing.kit import split_options
from brpc.testing.v1.echo_grpc import EchoStub
from brpc.testing.v1.echo_pb2 import EchoRequest
from examples.greeter import greeter_grpc, greeter_pb2
from examples.greeter.client import Namer
from examples.greeter.server import Greeter

pytest_plugins = ["brpc.testing.pytest_plugin"]


def _entries(directory: Path) -> list[Path]:
    return sorted(directory.iterdir())


async def test_handler_that_calls_the_client_back() -> None:
    greeter = Greeter()
    async with brpc.testing.connected(
        [greeter], [Namer("ada")], greeter_grpc.NamerStub, name="ada"
    ) as (server, conn):
        greeter.server = server
        reply = await greeter_grpc.GreeterStub(conn).Greet(greeter_pb2.GreetRequest(greeting="Hi"))
        assert reply.message == "Hi ada"
        assert [info.name for info in server.clients] == ["ada"]
        assert conn.state is brpc.ConnState.READY


async def test_client_served_service_called_from_the_server() -> None:
    async with brpc.testing.connected([], [EchoService()], EchoStub) as (server, conn):
        await wait_for(lambda: len(server.clients) == 1)
        (client,) = server.clients
        assert client.connection_id == conn.connection_id
        assert client.services == ("brpc.testing.v1.Echo",)
        reply = await client.stub.Unary(EchoRequest(text="from the server"))
        assert reply.text == "from the server"


async def test_options_reach_the_server_and_the_client() -> None:
    denied: list[str] = []

    def authorize(client: brpc.ClientInfo[Any], method: str) -> bool:
        denied.append(method)
        return False

    async with brpc.testing.connected(
        [EchoService()], server_authorize=authorize, max_message_size=1 << 16, labels={"a": "b"}
    ) as (server, conn):
        with pytest.raises(GRPCError) as raised:
            await EchoStub(conn).Unary(EchoRequest(text="x"))
        assert raised.value.status is Status.PERMISSION_DENIED
        assert denied == ["/brpc.testing.v1.Echo/Unary"]
        assert dict(next(iter(server.clients)).labels) == {"a": "b"}


def test_split_options() -> None:
    server, client = split_options(
        {"lanes": 2, "client_ca": "ca.pem", "server_name": "x", "dial_authorize": len}
    )
    assert server == {"lanes": 2, "client_ca": "ca.pem"}
    assert client == {"lanes": 2, "server_name": "x", "authorize": len}
    with pytest.raises(TypeError, match="neither"):
        split_options({"no_such_option": 1})


async def test_everything_is_closed_and_removed_on_exit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    tasks_before = asyncio.all_tasks()
    async with brpc.testing.connected([EchoService()]) as (server, conn):
        (certificates,) = _entries(tmp_path)
        assert [path.name for path in _entries(certificates)][:2] == ["ca.key", "ca.pem"]
        assert (await EchoStub(conn).Unary(EchoRequest(text="x"))).text == "x"
    assert _entries(tmp_path) == []
    assert conn.state is brpc.ConnState.CLOSED
    await asyncio.wait_for(server.wait_closed(), 5)
    await wait_for(lambda: asyncio.all_tasks() <= tasks_before)


async def test_closed_and_removed_when_the_block_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    tasks_before = asyncio.all_tasks()
    with pytest.raises(ZeroDivisionError):
        async with brpc.testing.connected([EchoService()]) as (_server, conn):
            _ = 1 / 0
    assert _entries(tmp_path) == []
    assert conn.state is brpc.ConnState.CLOSED
    await wait_for(lambda: asyncio.all_tasks() <= tasks_before)


async def test_fixture(brpc_connected: ConnectedFactory) -> None:
    greeter = Greeter()
    server, conn = await brpc_connected([greeter], [Namer("bo")], greeter_grpc.NamerStub)
    greeter.server = server
    assert (await greeter_grpc.GreeterStub(conn).Greet(greeter_pb2.GreetRequest())).message == (
        "Hello bo"
    )
    second_server, second_conn = await brpc_connected([EchoService()])
    assert second_server.port != server.port
    assert (await EchoStub(second_conn).Unary(EchoRequest(text="y"))).text == "y"


def test_fixture_in_a_project_of_its_own(tmp_path: Path) -> None:
    """The documented set-up in a fresh project: pytest-asyncio in strict mode."""
    (tmp_path / "pytest.ini").write_text("[pytest]\nasyncio_mode = strict\n")
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["brpc.testing.pytest_plugin"]\n')
    (tmp_path / "test_user.py").write_text(
        textwrap.dedent(
            """
            import pytest
            from brpc.testing import EchoService
            from brpc.testing.v1.echo_grpc import EchoStub
            from brpc.testing.v1.echo_pb2 import EchoRequest

            @pytest.mark.asyncio
            async def test_echo(brpc_connected):
                server, conn = await brpc_connected([EchoService()])
                reply = await EchoStub(conn).Unary(EchoRequest(text="hi"))
                assert reply.text == "hi"
            """
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout

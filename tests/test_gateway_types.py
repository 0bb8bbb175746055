"""JSON through the gateway for types this process does not import: learnt from
the client's reflection service, or from a descriptor-set file; and a Connect
client from PyPI calling through the gateway."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import DialFactory, ServerFactory, wait_for
from connectrpc.client import ConnectClient
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.method import IdempotencyLevel, MethodInfo
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpclib.const import Cardinality, Handler
from grpclib.reflection.service import ServerReflection
from grpclib.server import Stream

import brpc
from brpc.gateway import HttpGateway, _types
from brpc.testing import EchoService
from brpc.testing.v1.echo_pb2 import EchoReply, EchoRequest

assert _types.WELL_KNOWN_TYPES  # google/protobuf/timestamp.proto is in the default pool


def _hidden_files() -> list[descriptor_pb2.FileDescriptorProto]:
    """Two proto files no generated module of this process defines."""
    common = descriptor_pb2.FileDescriptorProto(
        name="hidden/common.proto", package="hidden.v1", syntax="proto3"
    )
    name = common.message_type.add(name="Name")
    name.field.add(name="first", number=1, type=9, label=1, json_name="firstName")
    service_file = descriptor_pb2.FileDescriptorProto(
        name="hidden/greeter.proto",
        package="hidden.v1",
        syntax="proto3",
        dependency=["hidden/common.proto", "google/protobuf/timestamp.proto"],
    )
    request = service_file.message_type.add(name="GreetRequest")
    request.field.add(name="who", number=1, type=11, type_name=".hidden.v1.Name", label=1)
    request.field.add(name="at", number=2, type=11, type_name=".google.protobuf.Timestamp", label=1)
    reply = service_file.message_type.add(name="GreetReply")
    reply.field.add(name="greeting", number=1, type=9, label=1)
    service = service_file.service.add(name="Greeter")
    service.method.add(
        name="Greet", input_type=".hidden.v1.GreetRequest", output_type=".hidden.v1.GreetReply"
    )
    return [common, service_file]


def _hidden_pool() -> descriptor_pool.DescriptorPool:
    pool = descriptor_pool.DescriptorPool()
    timestamp = descriptor_pb2.FileDescriptorProto()
    descriptor_pool.Default().FindFileByName("google/protobuf/timestamp.proto").CopyToProto(
        timestamp
    )
    pool.Add(timestamp)
    for proto in _hidden_files():
        pool.Add(proto)
    return pool


class HiddenGreeter:
    """A grpclib servable of hidden.v1.Greeter, built from descriptors at run time."""

    def __init__(self, pool: descriptor_pool.DescriptorPool) -> None:
        self.request = message_factory.GetMessageClass(
            pool.FindMessageTypeByName("hidden.v1.GreetRequest")
        )
        self.reply = message_factory.GetMessageClass(
            pool.FindMessageTypeByName("hidden.v1.GreetReply")
        )

    async def greet(self, stream: Stream[Any, Any]) -> None:
        request = await stream.recv_message()
        when = request.at.ToDatetime().year
        await stream.send_message(self.reply(greeting=f"hello {request.who.first} in {when}"))

    def __mapping__(self) -> dict[str, Handler]:
        return {
            "/hidden.v1.Greeter/Greet": Handler(
                self.greet, Cardinality.UNARY_UNARY, self.request, self.reply
            )
        }


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def _call_hidden(http: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with http.post(
        f"{url}/hidden.v1.Greeter/Greet",
        json={"who": {"firstName": "ada"}, "at": "2024-05-01T00:00:00Z"},
    ) as response:
        return response.status, await response.json()


async def test_json_types_from_the_clients_reflection(
    make_server: ServerFactory, connect: DialFactory, http: aiohttp.ClientSession
) -> None:
    pool = _hidden_pool()
    server = await make_server()
    await connect(server, services=ServerReflection.extend([HiddenGreeter(pool)], pool=pool))
    await wait_for(lambda: len(server.clients) == 1)
    async with HttpGateway(server) as gateway:
        url = f"http://127.0.0.1:{await gateway.start('127.0.0.1', 0)}"
        for _ in range(2):  # the second call uses the cached descriptors
            assert await _call_hidden(http, url) == (200, {"greeting": "hello ada in 2024"})
        assert len(gateway.types._reflected) == 1


async def test_json_types_from_a_descriptor_set_file(
    make_server: ServerFactory, connect: DialFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    pool = _hidden_pool()
    server = await make_server()
    await connect(server, services=[HiddenGreeter(pool)])  # no reflection
    await wait_for(lambda: len(server.clients) == 1)
    async with HttpGateway(server) as plain:
        url = f"http://127.0.0.1:{await plain.start('127.0.0.1', 0)}"
        status, body = await _call_hidden(http, url)
        assert status == 501 and "descriptors=" in body["message"]
    descriptor_set = tmp_path / "hidden.binpb"
    descriptor_set.write_bytes(
        descriptor_pb2.FileDescriptorSet(file=_hidden_files()).SerializeToString()
    )
    async with HttpGateway(server, descriptors=descriptor_set) as gateway:
        url = f"http://127.0.0.1:{await gateway.start('127.0.0.1', 0)}"
        assert await _call_hidden(http, url) == (200, {"greeting": "hello ada in 2024"})


ECHO_UNARY: MethodInfo[EchoRequest, EchoReply] = MethodInfo(
    name="Unary",
    service_name="brpc.testing.v1.Echo",
    input=EchoRequest,
    output=EchoReply,
    idempotency_level=IdempotencyLevel.UNKNOWN,
)


async def test_a_connect_client_calls_through_the_gateway(
    make_server: ServerFactory, connect: DialFactory
) -> None:
    server = await make_server()
    await connect(server, name="echo", services=[EchoService()])
    await wait_for(lambda: len(server.clients) == 1)
    async with HttpGateway(server) as gateway:
        url = f"http://127.0.0.1:{await gateway.start('127.0.0.1', 0)}"
        for proto_json in (False, True):
            async with ConnectClient(url, proto_json=proto_json) as client:
                reply = await client.execute_unary(
                    request=EchoRequest(text="connect", payload=b"\x01"), method=ECHO_UNARY
                )
                assert (reply.text, reply.payload) == ("connect", b"\x01")
        async with ConnectClient(f"{url}/c/nobody") as client:
            with pytest.raises(ConnectError) as caught:
                await client.execute_unary(request=EchoRequest(), method=ECHO_UNARY)
            assert caught.value.code == Code.UNAVAILABLE
            assert "name 'nobody'" in str(caught.value)


def test_importing_brpc_does_not_import_aiohttp() -> None:
    code = (
        "import sys, brpc, brpc.gateway; "
        "assert 'aiohttp' not in sys.modules, 'aiohttp imported'; "
        "sys.modules['aiohttp'] = None\n"
        "try:\n    brpc.gateway.HttpGateway\nexcept ImportError as e:\n    print(e)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 'brpc[gateway]'" in out.stdout


def test_gateway_module_is_not_in_brpc_namespace() -> None:
    assert not hasattr(brpc, "HttpGateway")

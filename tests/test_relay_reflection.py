"""Server reflection on the TCP front lists and describes services only connected clients serve."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from grpclib.client import Channel
from grpclib.reflection.v1.reflection_grpc import ServerReflectionStub
from grpclib.reflection.v1.reflection_pb2 import ServerReflectionRequest

import brpc
from brpc.certs import DevCertificates
from tests.conftest import DialFactory, ServerFactory, wait_for
from tests.relay_kit import Far, client_ssl

ECHO = "brpc.testing.v1.Echo"


# grpcio-reflection and grpclib register the same v1alpha messages in protobuf's
# default pool, so they cannot share a process: the grpcio client runs apart.
_GRPCIO_DESCRIBE = """
import json, sys
import grpc
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
port, ca, name = sys.argv[1], open(sys.argv[2], "rb").read(), sys.argv[3]
channel = grpc.secure_channel(f"127.0.0.1:{port}", grpc.ssl_channel_credentials(ca))
database = ProtoReflectionDescriptorDatabase(channel)
services = list(database.get_services())
service = DescriptorPool(database).FindServiceByName(name)
methods = [
    [m.name, m.client_streaming, m.server_streaming, m.input_type.full_name]
    for m in service.methods
]
channel.close()
print(json.dumps({"services": services, "methods": methods}))
"""


async def _describe_with_grpcio(port: int, certs: DevCertificates) -> dict[str, Any]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _GRPCIO_DESCRIBE,
        str(port),
        str(certs.ca),
        ECHO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, stderr.decode()
    result: dict[str, Any] = json.loads(stdout)
    return result


async def test_grpcio_reflection_lists_and_describes_a_clients_service(
    make_server: ServerFactory, connect: DialFactory, certs: DevCertificates
) -> None:
    relay = brpc.Relay()
    server = await make_server(relay=relay, reflection=True, health=True)
    port = await server.listen_tcp("127.0.0.1", 0)
    for index in range(3):  # identical clients: one fetch
        await connect(server, services=[Far()], name=f"far-{index}", reflection=True)
    await wait_for(lambda: len(server.clients) == 3)

    described_by_grpcio = await _describe_with_grpcio(port, certs)
    services, methods = described_by_grpcio["services"], described_by_grpcio["methods"]
    assert ECHO in services
    assert "grpc.health.v1.Health" in services  # the server's own
    assert "grpc.reflection.v1.ServerReflection" in services
    assert methods == [
        ["Unary", False, False, "brpc.testing.v1.EchoRequest"],
        ["ServerStream", False, True, "brpc.testing.v1.EchoRequest"],
        ["ClientStream", True, False, "brpc.testing.v1.EchoRequest"],
        ["Bidi", True, True, "brpc.testing.v1.EchoRequest"],
    ]
    assert relay.reflection is not None and relay.reflection.fetches == 1

    # grpc.reflection.v1 answers the same.
    channel = Channel("127.0.0.1", port, ssl=client_ssl(certs))
    try:
        async with ServerReflectionStub(channel).ServerReflectionInfo.open() as call:
            await call.send_message(ServerReflectionRequest(list_services=""))
            listed = await call.recv_message()
            await call.send_message(ServerReflectionRequest(file_containing_symbol=ECHO), end=True)
            described = await call.recv_message()
        assert listed is not None and ECHO in [
            s.name for s in listed.list_services_response.service
        ]
        assert described is not None
        assert len(described.file_descriptor_response.file_descriptor_proto) == 1
    finally:
        channel.close()
    assert relay.reflection.fetches == 1

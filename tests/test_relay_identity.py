"""Who TCP callers are: bearer tokens through the authenticate hook, TLS client certificates."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from grpclib.client import Channel
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError

import brpc
from brpc.certs import DevCertificates
from brpc.testing.v1.echo_grpc import EchoStub
from brpc.testing.v1.echo_pb2 import EchoRequest
from tests.conftest import DialFactory, ServerFactory, wait_for
from tests.relay_kit import Far, client_ssl

TARGET = {"brpc-target": "far"}


def _authenticate(request: brpc.AuthRequest) -> brpc.Identity:
    if request.token not in {"alice", "bob", "far"}:
        raise brpc.Unauthenticated("unknown token")
    return brpc.Identity(name=request.token, source="token")


async def test_tokens_identify_tcp_callers_for_both_authorize_hooks(
    make_server: ServerFactory, connect: DialFactory
) -> None:
    checked: list[tuple[Any, str]] = []

    def authorize(caller: Any, method: str) -> bool:
        checked.append((caller, method))
        return True

    relay = brpc.Relay(authorize=lambda caller, method, targets: caller.name == "alice")
    server = await make_server(relay=relay, authenticate=_authenticate, authorize=authorize)
    port = await server.listen_tcp("127.0.0.1", 0, plaintext=True)
    far = Far()
    await connect(server, services=[far], name="far", token="far")
    await wait_for(lambda: len(server.clients) == 1)
    channel = Channel("127.0.0.1", port)  # h2c
    stub = EchoStub(channel)
    try:
        with pytest.raises(GRPCError) as caught:
            await stub.Unary(EchoRequest(text="hi"), metadata=TARGET)
        assert caught.value.status is Status.UNAUTHENTICATED

        alice = {**TARGET, "authorization": "Bearer alice"}
        reply = await stub.Unary(EchoRequest(text="hi"), metadata=alice)
        assert reply.text == "far:hi"
        caller, method = checked[-1]
        assert isinstance(caller, brpc.FrontCaller)
        assert caller.identity is not None and caller.identity.name == "alice"
        assert caller.transport == "plaintext" and caller.address is not None
        assert method == "/brpc.testing.v1.Echo/Unary"
        # The target learns who called; the caller's credentials stay with the server.
        assert far.seen[-1].metadata["brpc-caller"] == "alice"
        assert "authorization" not in far.seen[-1].metadata

        with pytest.raises(GRPCError) as caught:
            await stub.Unary(EchoRequest(), metadata={**TARGET, "authorization": "Bearer bob"})
        assert caught.value.status is Status.PERMISSION_DENIED
    finally:
        channel.close()


async def test_tls_client_certificates_identify_tcp_callers(
    make_server: ServerFactory, connect: DialFactory, certs: DevCertificates
) -> None:
    callers: list[Any] = []

    def allow(caller: Any, method: str, targets: Any) -> bool:
        callers.append(caller)
        return True

    server = await make_server(relay=brpc.Relay(authorize=allow), client_ca=certs.ca)
    port = await server.listen_tcp("127.0.0.1", 0)
    await connect(
        server,
        services=[Far()],
        name="far",
        certfile=certs.client_cert,
        keyfile=certs.client_key,
    )
    await wait_for(lambda: len(server.clients) == 1)
    context = client_ssl(certs)
    context.load_cert_chain(certs.client_cert, certs.client_key)
    channel = Channel("127.0.0.1", port, ssl=context)
    try:
        reply = await EchoStub(channel).Unary(EchoRequest(text="x"), metadata=TARGET)
    finally:
        channel.close()
    assert reply.text == "far:x"
    (caller,) = callers
    assert caller.transport == "tls"
    assert caller.identity is not None and caller.identity.source == "certificate"


async def test_front_without_relay_serves_own_services_and_answers_unimplemented(
    make_server: ServerFactory,
) -> None:
    from brpc.testing import EchoService

    server = await make_server([EchoService()])
    port = await server.listen_tcp("127.0.0.1", 0, plaintext=True)
    channel = Channel("127.0.0.1", port)
    try:
        reply = await EchoStub(channel).Unary(EchoRequest(text="own"))
        assert reply.text == "own"
        async with channel.request(
            "/other.v1.Thing/Do", Cardinality.UNARY_UNARY, EchoRequest, EchoRequest
        ) as call:
            await call.send_message(EchoRequest(), end=True)
            with pytest.raises(GRPCError) as caught:
                await call.recv_message()
        assert caught.value.status is Status.UNIMPLEMENTED
        assert "/other.v1.Thing/Do" in str(caught.value.message)
    finally:
        channel.close()
    server.close()
    await server.wait_closed()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)

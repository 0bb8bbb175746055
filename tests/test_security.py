"""Authentication, authorization, connection-bound identity, resumption and 0-RTT."""

from __future__ import annotations

import asyncio
import datetime
import logging
import ssl
from pathlib import Path
from typing import Any

import pytest
from aioquic.asyncio import QuicConnectionProtocol, connect
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated, QuicEvent
from aioquic.quic.packet import QuicErrorCode
from conftest import wait_for
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from probes import Probe

import brpc
from brpc.certs import IssuedCertificate, client_identity_name, generate_ca, issue_certificate
from brpc.testing.v1.echo_grpc import EchoStub
from brpc.testing.v1.echo_pb2 import EchoRequest
from examples.greeter import greeter_grpc, greeter_pb2

UNARY = "/brpc.testing.v1.Echo/Unary"


def _ca(certs: Any) -> IssuedCertificate:
    key = serialization.load_pem_private_key(certs.ca_key.read_bytes(), password=None)
    return IssuedCertificate(x509.load_pem_x509_certificate(certs.ca.read_bytes()), key)  # type: ignore[arg-type]


def _write(tmp_path: Path, stem: str, issued: IssuedCertificate) -> tuple[Path, Path]:
    cert, key = tmp_path / f"{stem}.pem", tmp_path / f"{stem}.key"
    cert.write_bytes(issued.certificate_pem())
    key.write_bytes(issued.private_key_pem())
    return cert, key


# -- server verification ---------------------------------------------------------------


async def test_insecure_needs_asking_and_warns(
    make_server: Any, connect: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    other = generate_ca("not the server's CA")
    (tmp_path / "other.pem").write_bytes(other.certificate_pem())
    server = await make_server([Probe()])
    with pytest.raises(brpc.HandshakeError):
        await connect(server, ca=tmp_path / "other.pem", timeout=5)
    with caplog.at_level(logging.WARNING, logger="brpc.client"):
        conn = await connect(server, ca=tmp_path / "other.pem", insecure=True)
    assert "NOT verified" in caplog.text
    assert (await EchoStub(conn).Unary(EchoRequest(text="risky"))).text == "risky"


# -- mutual TLS ------------------------------------------------------------------------------


async def test_mutual_tls_identity_reaches_registry_and_handlers(
    make_server: Any, connect: Any, certs: Any
) -> None:
    seen: list[brpc.Identity | None] = []

    class WhoAmI(Probe):
        async def Unary(self, stream: Any) -> None:
            await stream.recv_message()
            seen.append(server.client_info_from_context(stream).identity)
            connection = brpc.current_connection()
            assert isinstance(connection, brpc.ClientInfo)
            assert connection.identity == seen[-1]
            await stream.send_message(_reply())

    server = await make_server([WhoAmI()], client_ca=certs.ca)
    conn = await connect(server, certfile=certs.client_cert, keyfile=certs.client_key)
    await EchoStub(conn).Unary(EchoRequest())
    (info,) = server.clients_snapshot()
    identity = info.identity
    assert identity is not None and identity == seen[0]
    assert (identity.name, identity.source, identity.sans) == ("client", "certificate", ("client",))
    assert identity.subject is not None and "CN=client" in identity.subject


def _reply() -> Any:
    from brpc.testing.v1.echo_pb2 import EchoReply

    return EchoReply(text="ok")


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("none", "presented no certificate"),
        ("other-ca", "not issued by a CA in client_ca"),
        ("expired", "expired on"),
        ("server-cert", "lacks clientAuth"),
        ("no-san", "no subject alternative name"),
    ],
)
async def test_mutual_tls_refusals_say_why(
    make_server: Any, connect: Any, certs: Any, tmp_path: Path, case: str, reason: str
) -> None:
    ca = _ca(certs)
    files: dict[str, Any] = {}
    if case == "other-ca":
        stranger = generate_ca("stranger")
        issued = issue_certificate(
            stranger,
            "intruder",
            names=[client_identity_name("intruder")],
            server=False,
            client=True,
        )
        files = dict(
            zip(("certfile", "keyfile"), _write(tmp_path, "intruder", issued), strict=True)
        )
    elif case == "expired":
        old = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=10)
        issued = issue_certificate(
            ca,
            "old",
            names=[client_identity_name("old")],
            server=False,
            client=True,
            days=1,
            not_before=old,
        )
        files = dict(zip(("certfile", "keyfile"), _write(tmp_path, "old", issued), strict=True))
    elif case == "server-cert":
        files = {"certfile": certs.server_cert, "keyfile": certs.server_key}
    elif case == "no-san":
        issued = issue_certificate(ca, "anonymous", server=False, client=True)
        files = dict(zip(("certfile", "keyfile"), _write(tmp_path, "nosan", issued), strict=True))
    server = await make_server([Probe()], client_ca=certs.ca)
    with pytest.raises(brpc.RefusedError) as caught:
        await connect(server, timeout=5, **files)
    assert caught.value.code == "UNAUTHENTICATED"
    assert reason in caught.value.reason
    good = await connect(server, certfile=certs.client_cert, keyfile=certs.client_key)
    assert (await EchoStub(good).Unary(EchoRequest(text="still fine"))).text == "still fine"


# -- token authentication -------------------------------------------------------------------


async def test_token_authentication_hook(make_server: Any, connect: Any, certs: Any) -> None:
    requests: list[brpc.AuthRequest] = []

    async def authenticate(request: brpc.AuthRequest) -> brpc.Identity:
        requests.append(request)
        if request.token == "banned":
            raise brpc.PermissionDenied("this token is banned")
        if request.token != "s3cret":
            raise brpc.Unauthenticated("unknown token")
        return brpc.Identity(
            name="ops-bot", source="token", attributes={"role": "admin"}, names=("bot",)
        )

    server = await make_server([Probe()], authenticate=authenticate, client_ca=certs.ca)
    mtls = {"certfile": certs.client_cert, "keyfile": certs.client_key}
    with pytest.raises(brpc.RefusedError) as caught:
        await connect(server, token="guess", timeout=5, **mtls)
    assert (caught.value.code, caught.value.reason) == ("UNAUTHENTICATED", "unknown token")
    with pytest.raises(brpc.RefusedError) as denied:
        await connect(server, token="banned", timeout=5, **mtls)
    assert (denied.value.code, denied.value.reason) == ("PERMISSION_DENIED", "this token is banned")

    await connect(server, token="s3cret", name="bot", labels={"team": "ops"}, **mtls)
    (info,) = server.clients_snapshot()
    assert info.identity == brpc.Identity(
        name="ops-bot", source="token", attributes={"role": "admin"}, names=("bot",)
    )
    last = requests[-1]
    assert (last.name, dict(last.labels), last.token) == ("bot", {"team": "ops"}, "s3cret")
    assert last.certificate is not None and last.certificate.name == "client"


async def test_a_failing_hook_refuses_without_leaking_details(
    make_server: Any, connect: Any, caplog: pytest.LogCaptureFixture
) -> None:
    def authenticate(request: brpc.AuthRequest) -> brpc.Identity:
        raise RuntimeError("database password is hunter2")

    server = await make_server([Probe()], authenticate=authenticate)
    with pytest.raises(brpc.RefusedError) as caught:
        await connect(server, timeout=5)
    assert caught.value.code == "UNAUTHENTICATED"
    assert "hunter2" not in str(caught.value)
    assert "hunter2" in caplog.text  # the operator sees it in the server's log


async def test_revoked_token_stops_reconnecting(make_server: Any, connect: Any) -> None:
    valid = {"t1"}

    def authenticate(request: brpc.AuthRequest) -> brpc.Identity:
        if request.token not in valid:
            raise brpc.Unauthenticated("token revoked")
        return brpc.Identity(name=request.token, source="token")

    server = await make_server([Probe()], authenticate=authenticate)
    conn = await connect(
        server, token="t1", reconnect=brpc.ReconnectPolicy(initial_delay=0.01, max_delay=0.05)
    )
    valid.clear()
    server.clients_snapshot()[0].close("kicked")
    async with asyncio.timeout(10):
        await conn.wait_closed()
    assert "token revoked" in (conn.close_reason or "")


# -- authorization both ways ------------------------------------------------------------------


async def test_server_authorizes_each_call(make_server: Any, connect: Any) -> None:
    probe = Probe()
    asked: list[tuple[str, str]] = []

    async def authorize(client: brpc.ClientInfo[Any], method: str) -> bool:
        asked.append((client.name, method))
        return method == UNARY

    server = await make_server([probe], authorize=authorize)
    conn = await connect(server, name="limited")
    stub = EchoStub(conn)
    assert (await stub.Unary(EchoRequest(text="ok"))).text == "ok"
    with pytest.raises(GRPCError) as caught:
        await stub.ServerStream(EchoRequest(count=3))
    assert caught.value.status is Status.PERMISSION_DENIED
    assert "/brpc.testing.v1.Echo/ServerStream" in (caught.value.message or "")
    assert len(probe.seen_metadata) == 1  # the denied call never reached the handler
    assert asked == [("limited", UNARY), ("limited", "/brpc.testing.v1.Echo/ServerStream")]


async def test_client_authorizes_calls_from_the_server(make_server: Any, connect: Any) -> None:
    probe = Probe()
    server = await make_server(client_stub=EchoStub)
    await connect(
        server, services=[probe], authorize=lambda conn, method: method.endswith("/ServerStream")
    )
    (info,) = server.clients_snapshot()
    assert len(await info.stub.ServerStream(EchoRequest(count=2))) == 2
    with pytest.raises(GRPCError) as caught:
        await info.stub.Unary(EchoRequest(text="not allowed"))
    assert caught.value.status is Status.PERMISSION_DENIED
    assert len(probe.seen_metadata) == 1


# -- identity is the connection ------------------------------------------------------------------


async def test_claiming_another_connection_in_the_hello_changes_nothing(
    make_server: Any, connect: Any
) -> None:
    class Namer(greeter_grpc.NamerBase):
        def __init__(self, name: str) -> None:
            self.name, self.calls = name, 0

        async def Name(self, stream: Any) -> None:
            await stream.recv_message()
            self.calls += 1
            await stream.send_message(greeter_pb2.NameReply(name=self.name))

    class Greeter(greeter_grpc.GreeterBase):
        async def Greet(self, stream: Any) -> None:
            await stream.recv_message()
            name = (await server.client_from_context(stream).Name(greeter_pb2.NameRequest())).name
            await stream.send_message(greeter_pb2.GreetReply(message=name))

    server = await make_server([Greeter()], client_stub=greeter_grpc.NamerStub)
    victim_namer, mallory_namer = Namer("victim"), Namer("mallory")
    victim = await connect(server, services=[victim_namer], name="victim")
    mallory = await connect(
        server,
        services=[mallory_namer],
        name=victim.connection_id,
        labels={"connection-id": victim.connection_id, "brpc-connection-id": victim.connection_id},
        token=victim.connection_id,
    )
    assert mallory.connection_id != victim.connection_id
    reply = await greeter_grpc.GreeterStub(mallory).Greet(
        greeter_pb2.GreetRequest(), metadata={"x-connection-id": victim.connection_id}
    )
    assert reply.message == "mallory"
    assert victim_namer.calls == 0


# -- session resumption and 0-RTT ----------------------------------------------------------------


async def test_no_session_tickets_by_default(make_server: Any, connect: Any) -> None:
    server = await make_server([Probe()])
    conn = await connect(
        server, session_resumption=True, reconnect=brpc.ReconnectPolicy(initial_delay=0.01)
    )
    assert conn._tickets is not None
    await EchoStub(conn).Unary(EchoRequest())
    assert conn._tickets.ticket is None  # the server issued none
    server.clients_snapshot()[0].close("again")
    await wait_for(lambda: conn.connections_made == 2 and conn.state is brpc.ConnState.READY)
    assert conn._link is not None and not conn._link.session.session_resumed


async def test_resumption_when_enabled_on_both_sides(
    make_server: Any, connect: Any, engines: tuple[str, str]
) -> None:
    if engines[1] == "qh3":
        with pytest.raises(NotImplementedError, match="session_tickets"):
            await make_server([Probe()], session_tickets=True)
        return
    server = await make_server([Probe()], session_tickets=True)
    conn = await connect(
        server, session_resumption=True, reconnect=brpc.ReconnectPolicy(initial_delay=0.01)
    )
    await wait_for(lambda: conn._tickets is not None and conn._tickets.ticket is not None)
    server.clients_snapshot()[0].close("again")
    await wait_for(lambda: conn.connections_made == 2 and conn.state is brpc.ConnState.READY)
    assert conn._link is not None and conn._link.session.session_resumed
    assert (await EchoStub(conn).Unary(EchoRequest(text="resumed"))).text == "resumed"


async def test_session_tickets_and_client_ca_do_not_mix(certs: Any) -> None:
    with pytest.raises(ValueError, match="resumed TLS handshake carries no client certificate"):
        brpc.Server(
            [],
            certfile=certs.server_cert,
            keyfile=certs.server_key,
            client_ca=certs.ca,
            session_tickets=True,
            engine="aioquic",  # qh3 refuses session tickets for another reason
        )


class _Recorder(QuicConnectionProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ended: asyncio.Future[ConnectionTerminated] = (
            asyncio.get_running_loop().create_future()
        )

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, ConnectionTerminated) and not self.ended.done():
            self.ended.set_result(event)


async def test_early_data_is_refused_even_with_tickets(
    make_server: Any, certs: Any, engines: tuple[str, str]
) -> None:
    """A replayable 0-RTT hello is refused: brpc only reads streams after the handshake.
    qh3 servers deliver 0-RTT data as if it came later: tickets are refused there."""
    if engines[1] == "qh3":
        with pytest.raises(NotImplementedError, match="0-RTT"):
            await make_server([Probe()], session_tickets=True)
        return
    server = await make_server([Probe()], session_tickets=True)
    tickets: list[Any] = []

    def configuration() -> QuicConfiguration:
        c = QuicConfiguration(is_client=True, alpn_protocols=["brpc/1"], server_name="localhost")
        c.load_verify_locations(cafile=str(certs.ca))
        c.verify_mode = ssl.CERT_REQUIRED
        return c

    async with connect(
        "127.0.0.1",
        server.port,
        configuration=configuration(),
        session_ticket_handler=tickets.append,
    ) as first:
        await wait_for(lambda: bool(tickets))
        first.close()
    resumed = configuration()
    resumed.session_ticket = tickets[-1]
    async with connect(
        "127.0.0.1",
        server.port,
        configuration=resumed,
        create_protocol=_Recorder,
        wait_connected=False,
    ) as protocol:
        recorder: _Recorder = protocol  # type: ignore[assignment]
        recorder._quic.send_stream_data(0, b"\x02\x08\x01", end_stream=False)  # 0-RTT hello
        recorder.transmit()
        async with asyncio.timeout(10):
            ended = await recorder.ended
    assert ended.error_code == QuicErrorCode.PROTOCOL_VIOLATION
    assert "0-RTT" in ended.reason_phrase


# -- address validation ------------------------------------------------------------------


async def test_retry_option(make_server: Any, connect: Any) -> None:
    from aioquic.buffer import Buffer
    from aioquic.quic.connection import QuicConnection
    from aioquic.quic.packet import QuicPacketType, pull_quic_header

    server = await make_server([Probe()], retry=True)
    conn = await connect(server)
    assert (await EchoStub(conn).Unary(EchoRequest(text="validated"))).text == "validated"
    # a first Initial without a token gets a Retry, not a handshake
    quic = QuicConnection(
        configuration=QuicConfiguration(is_client=True, alpn_protocols=["brpc/1"])
    )
    quic.connect(("127.0.0.1", server.port), now=0.0)
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[bytes] = loop.create_future()

    class Catch(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: Any) -> None:
            if not answer.done():
                answer.set_result(data)

    transport, _ = await loop.create_datagram_endpoint(
        Catch, remote_addr=("127.0.0.1", server.port)
    )
    try:
        for data, _ in quic.datagrams_to_send(now=0.0):
            transport.sendto(data)
        async with asyncio.timeout(5):
            data = await answer
    finally:
        transport.close()
    assert (
        pull_quic_header(Buffer(data=data), host_cid_length=8).packet_type == QuicPacketType.RETRY
    )


async def test_grpclib_peer_cert_works_over_quic(
    make_server: Any, connect: Any, certs: Any
) -> None:
    """grpclib's ``stream.peer.cert()`` reads an ssl object QUIC does not have;
    brpc offers the verified certificate in the same shape, both ways."""
    seen: dict[str, Any] = {}

    class Peek(Probe):
        async def Unary(self, stream: Any) -> None:
            await stream.recv_message()
            seen[self.side] = (stream.peer.cert(), stream.peer.addr())
            await stream.send_message(_reply())

        def __init__(self, side: str) -> None:
            super().__init__()
            self.side = side

    server = await make_server([Peek("server")], client_stub=EchoStub, client_ca=certs.ca)
    conn = await connect(
        server, services=[Peek("client")], certfile=certs.client_cert, keyfile=certs.client_key
    )
    await EchoStub(conn).Unary(EchoRequest())
    await server.clients_snapshot()[0].stub.Unary(EchoRequest())
    client_cert, client_addr = seen["server"]
    assert (("commonName", "client"),) in client_cert["subject"]
    assert client_cert["subjectAltName"] == (("DNS", "client"),)
    assert client_addr[0] == "127.0.0.1"
    server_cert, _ = seen["client"]
    assert ("IP Address", "127.0.0.1") in server_cert["subjectAltName"]

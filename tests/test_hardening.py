"""What a hostile or crashed peer could do, each case as a regression test.

Handler tasks and buffers of a connection go when it ends whatever state its
lanes were in; closed connections are released by an idle server; deadlines,
refusals and construction-time checks say what happened and what to do.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from typing import Any

import pytest
from conftest import wait_for
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.server import Stream
from probes import Probe
from rawquic import raw_client

import brpc
from brpc._wire.control import encode_envelope
from brpc.testing import NetworkConditions, session_pair
from brpc.testing.v1.echo_grpc import EchoBase, EchoStub
from brpc.testing.v1.echo_pb2 import EchoReply, EchoRequest
from brpc.v1 import control_pb2 as pb
from examples.greeter import greeter_grpc, greeter_pb2


class _Firehose(Probe):
    """ServerStream sends 64 KiB replies until the call ends."""

    def __init__(self) -> None:
        super().__init__()
        self.streaming = 0

    async def ServerStream(self, stream: Stream[EchoRequest, EchoReply]) -> None:
        await stream.recv_message()
        self.streaming += 1
        payload = b"x" * (64 << 10)
        for index in range(10_000):
            await stream.send_message(EchoReply(payload=payload, index=index))


async def test_handler_tasks_go_when_a_connection_ends_with_paused_lanes(
    make_server: Any, connect: Any
) -> None:
    """40 server-streaming calls the client never reads, cancelled, then the
    connection closed at once: every handler task of that connection ends."""
    service = _Firehose()
    server = await make_server([service])
    warm = await connect(server)
    await EchoStub(warm).Unary(EchoRequest(text="warm"))
    await warm.close()
    await wait_for(lambda: server.connection_count == 0)
    baseline = len(asyncio.all_tasks())

    conn = await connect(server, reconnect=False)
    stub = EchoStub(conn)
    count = 40

    async def never_read() -> None:
        async with stub.ServerStream.open() as call:
            await call.send_message(EchoRequest(text="flood"), end=True)
            await call.recv_initial_metadata()
            await asyncio.Event().wait()

    calls = [asyncio.create_task(never_read()) for _ in range(count)]
    await wait_for(lambda: service.streaming == count, timeout=20)
    # every handler is now blocked on a paused lane or an exhausted window
    for call in calls:
        call.cancel()
    await asyncio.sleep(0)
    conn.close()
    await asyncio.gather(*calls, return_exceptions=True)
    await wait_for(lambda: server.connection_count == 0, timeout=10)
    await wait_for(lambda: len(asyncio.all_tasks()) <= baseline, timeout=10)


async def test_an_idle_server_releases_closed_connections(make_server: Any, connect: Any) -> None:
    """Clients that connect, call and leave are not kept alive by the server
    while no new connection arrives (one gc.collect: links and their handles
    refer to each other, so reference counting alone cannot free them)."""
    server = await make_server([Probe()])
    held: list[weakref.ref[Any]] = []

    def remember(info: brpc.ClientInfo[Any]) -> None:
        held.extend(weakref.ref(obj) for obj in (info, info._link, info._link.session))

    server.on_connect(remember)
    for i in range(12):
        conn = await connect(server, reconnect=False)
        assert (await EchoStub(conn).Unary(EchoRequest(text=str(i)))).text == str(i)
        await conn.close()
    await wait_for(lambda: len(held) == 36 and server.connection_count == 0, timeout=10)
    await wait_for(lambda: server._listener.engine_connections == 0, timeout=10)
    gc.collect()
    alive = [ref() for ref in held if ref() is not None]
    assert alive == []


async def test_a_deadline_passed_before_the_call_starts_is_deadline_exceeded(
    make_server: Any, connect: Any
) -> None:
    server = await make_server([Probe()], client_stub=EchoStub)
    conn = await connect(server, services=[Probe()])
    (info,) = server.clients_snapshot()
    for stub in (EchoStub(conn), info.stub):
        with pytest.raises(brpc.DeadlineExceededError):
            await stub.Unary(EchoRequest(text="late"), timeout=0)
        with pytest.raises(brpc.DeadlineExceededError):
            await stub.ServerStream(EchoRequest(text="late", count=2), timeout=0)
        with pytest.raises(brpc.DeadlineExceededError):
            await stub.Unary(EchoRequest(text="late"), timeout=-1)
        assert (await stub.Unary(EchoRequest(text="still fine"))).text == "still fine"


async def test_a_server_refuses_a_missing_or_mismatched_key_when_built(certs: Any) -> None:
    with pytest.raises(ValueError, match=r"no private key .* pass keyfile=\.\.\."):
        brpc.Server([Probe()], certfile=certs.server_cert)
    with pytest.raises(ValueError, match="does not belong to the certificate"):
        brpc.Server([Probe()], certfile=certs.server_cert, keyfile=certs.client_key)
    with pytest.raises(FileNotFoundError, match=r"python -m brpc\.certs"):
        brpc.Server([Probe()], certfile=certs.server_cert, keyfile=certs.directory / "nope.key")


async def test_a_client_certificate_without_its_key_is_refused_when_dialing(
    make_server: Any, certs: Any
) -> None:
    server = await make_server([Probe()], client_ca=certs.ca)
    with pytest.raises(ValueError, match=r"no private key .* pass keyfile=\.\.\."):
        await brpc.dial(server.address, ca=certs.ca, certfile=certs.client_cert, reconnect=False)
    with pytest.raises(ValueError, match="does not belong to the certificate"):
        await brpc.dial(
            server.address,
            ca=certs.ca,
            certfile=certs.client_cert,
            keyfile=certs.server_key,
            reconnect=False,
        )
    assert server.connection_count == 0


async def test_an_unverified_server_certificate_hints_at_ca(make_server: Any) -> None:
    server = await make_server([Probe()])
    with pytest.raises(brpc.HandshakeError) as caught:
        await brpc.dial(server.address, timeout=5, reconnect=False)
    message = str(caught.value)
    assert "ca=" in message and "system trust store" in message


# -- names are bound to identities ----------------------------------------------------------


async def test_a_client_certificate_cannot_take_another_clients_name(
    make_server: Any, connect: Any, certs: Any
) -> None:
    server = await make_server([Probe()], client_ca=certs.ca)
    squatter = {"certfile": certs.client_cert, "keyfile": certs.client_key}
    owner = {
        "certfile": certs.directory / "other-client.pem",
        "keyfile": certs.directory / "other-client.key",
    }
    with pytest.raises(brpc.RefusedError) as refused:
        await connect(server, name="other-client", timeout=5, **squatter)
    assert refused.value.code == "PERMISSION_DENIED"
    assert refused.value.permanent
    assert "does not belong to this client's identity 'client'" in refused.value.reason
    # the name's owner gets it; a certificate's own name and no name are fine
    real = await connect(server, name="other-client", **owner)
    await connect(server, name="client", **squatter)
    await connect(server, **squatter)
    named = server.clients.named("other-client")
    assert named is not None and named.connection_id == real.connection_id
    assert len(server.clients) == 3


async def test_a_name_the_hook_stops_allowing_ends_the_reconnect_loop(
    make_server: Any, connect: Any
) -> None:
    allowed = {"web-1"}

    def authenticate(request: brpc.AuthRequest) -> brpc.Identity:
        return brpc.Identity(name="agent-7", source="token", names=tuple(allowed))

    server = await make_server([Probe()], authenticate=authenticate)
    conn = await connect(
        server, name="web-1", reconnect=brpc.ReconnectPolicy(initial_delay=0.01, max_delay=0.05)
    )
    allowed.clear()
    server.clients_snapshot()[0].close("kicked")
    async with asyncio.timeout(10):
        await conn.wait_closed()
    assert conn.state is brpc.ConnState.CLOSED
    assert "PERMISSION_DENIED" in (conn.close_reason or "")
    assert "'web-1' does not belong" in (conn.close_reason or "")
    assert conn.connections_made == 1


# -- refusals name nothing of another client ------------------------------------------------


async def test_no_refusal_or_close_reason_names_another_clients_connection(
    make_server: Any, connect: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Every text a client can get because of another client (REJECT, a name held
    by another identity, REPLACED) leaves that client's connection ID out; the
    server's log has it."""
    caplog.set_level("INFO", logger="brpc")
    texts: list[tuple[str, str]] = []

    rejecting = await make_server([Probe()], duplicate_names=brpc.DuplicateNames.REJECT)
    holder = await connect(rejecting, name="web-1", reconnect=False)
    with pytest.raises(brpc.RefusedError) as refused:
        await connect(rejecting, name="web-1", reconnect=False)
    texts.append((holder.connection_id, str(refused.value)))

    def authenticate(request: brpc.AuthRequest) -> brpc.Identity:
        return brpc.Identity(name=request.token, source="token", names=("web-1",))

    replacing = await make_server([Probe()], authenticate=authenticate)
    alice = await connect(replacing, name="web-1", token="alice", reconnect=False)
    with pytest.raises(brpc.RefusedError) as other_identity:
        await connect(replacing, name="web-1", token="mallory", reconnect=False)
    texts.append((alice.connection_id, str(other_identity.value)))
    newer = await connect(replacing, name="web-1", token="alice", reconnect=False)
    await alice.wait_closed()
    texts.append((newer.connection_id, alice.close_reason or ""))
    texts.append((newer.connection_id, alice.last_error or ""))

    for other_id, text in texts:
        assert text and other_id not in text, text
        assert other_id in caplog.text


# -- close() called plainly or awaited -------------------------------------------------------


async def test_close_works_called_plainly_or_awaited(
    make_server: Any, connect: Any, certs: Any
) -> None:
    server = await make_server([Probe()])
    plain = await connect(server, name="plain", reconnect=False)
    awaited = await connect(server, name="awaited", reconnect=False)
    kicked = await connect(server, name="kicked", reconnect=False)
    kicked_too = await connect(server, name="kicked-too", reconnect=False)

    plain.close()  # the grpclib way: a plain method
    async with asyncio.timeout(5):
        await plain.wait_closed()
    await awaited.close()
    assert awaited.state is brpc.ConnState.CLOSED
    await wait_for(lambda: len(server.clients) == 2)

    info = server.clients.named("kicked")
    assert info is not None
    info.close("plainly")
    async with asyncio.timeout(5):
        await info.wait_closed()
    other = server.clients.named("kicked-too")
    assert other is not None
    await other.close("awaited")
    assert other.closed
    async with asyncio.timeout(5):
        await kicked.wait_closed()
        await kicked_too.wait_closed()
    assert "awaited" in (kicked_too.close_reason or "")

    first = brpc.Server([Probe()], certfile=certs.server_cert, keyfile=certs.server_key)
    await first.start("127.0.0.1")
    first.close()
    await first.wait_closed()
    second = brpc.Server([Probe()], certfile=certs.server_cert, keyfile=certs.server_key)
    await second.start("127.0.0.1")
    await second.close()
    # closed, port free: a server can listen on it again at once
    again = brpc.Server([Probe()], certfile=certs.server_cert, keyfile=certs.server_key)
    await again.start("127.0.0.1", second.port)
    await again.close(grace=0.1)
    await server.close()
    assert server.closing


# -- errors that say enough --------------------------------------------------------------------


async def test_a_deadline_running_out_during_a_nested_call_logs_no_traceback(
    make_server: Any, connect: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO")
    server = await make_server([Probe()], client_stub=EchoStub)
    conn = await connect(server, services=[Probe()])
    for _ in range(3):
        for text in ("nested-auto", "nested-block"):
            with pytest.raises(brpc.DeadlineExceededError):
                await EchoStub(conn).Unary(EchoRequest(text=text), timeout=0.1)
    assert (await EchoStub(conn).Unary(EchoRequest(text="after"))).text == "after"
    assert "Failed to handle cancellation" not in caplog.text
    assert not [r for r in caplog.records if r.exc_info and r.name.startswith("grpclib")]


async def test_unimplemented_names_the_method_and_the_side(make_server: Any, connect: Any) -> None:
    server = await make_server([Probe()], client_stub=EchoStub)
    serving = await connect(server, services=[Probe()], name="web-1")
    silent = await connect(server, name="quiet")
    # a client calling what the server does not serve
    with pytest.raises(GRPCError) as caught:
        await greeter_grpc.GreeterStub(serving).Greet(greeter_pb2.GreetRequest())
    assert caught.value.status is Status.UNIMPLEMENTED
    assert caught.value.message == (
        "/greeter.v1.Greeter/Greet is not served by the server (it serves brpc.testing.v1.Echo)"
    )
    # the server calling a service the client's hello did not list: fails before sending
    info = server.clients.named("web-1")
    assert info is not None
    with pytest.raises(GRPCError) as early:
        await greeter_grpc.NamerStub(info.channel).Name(greeter_pb2.NameRequest())
    assert early.value.status is Status.UNIMPLEMENTED
    assert "client 'web-1' does not serve greeter.v1.Namer" in (early.value.message or "")
    assert info.outgoing_calls_in_flight == 0
    # a client that listed no services answers itself, naming itself
    quiet = server.clients.named("quiet")
    assert quiet is not None
    with pytest.raises(GRPCError) as answered:
        await quiet.stub.Unary(EchoRequest(text="hi"))
    assert answered.value.status is Status.UNIMPLEMENTED
    assert answered.value.message == (
        "/brpc.testing.v1.Echo/Unary is not served by the client 'quiet' (it serves no services)"
    )
    assert (await EchoStub(silent).Unary(EchoRequest(text="ok"))).text == "ok"


async def test_client_from_context_without_client_stub_says_how_to_fix_it(
    make_server: Any, connect: Any
) -> None:
    class CallsBack(EchoBase):
        async def Unary(self, stream: Stream[EchoRequest, EchoReply]) -> None:
            await stream.recv_message()
            await server.client_from_context(stream).Unary(EchoRequest(text="back"))

        async def ServerStream(self, stream: Stream[EchoRequest, EchoReply]) -> None:
            raise NotImplementedError

        async def ClientStream(self, stream: Stream[EchoRequest, EchoReply]) -> None:
            raise NotImplementedError

        async def Bidi(self, stream: Stream[EchoRequest, EchoReply]) -> None:
            raise NotImplementedError

    server = await make_server([CallsBack()])
    conn = await connect(server, services=[Probe()])
    with pytest.raises(GRPCError) as caught:
        await EchoStub(conn).Unary(EchoRequest(text="hello"))
    assert caught.value.status is Status.FAILED_PRECONDITION
    assert "client_stub=" in (caught.value.message or "")


# -- a reconnecting client replaces its own stale entry --------------------------------------


async def test_an_unnamed_client_that_reconnects_replaces_its_stale_entry(
    make_server: Any, connect: Any
) -> None:
    server = await make_server([Probe()], dead_peer_timeout=30)
    left: list[tuple[str, str | None]] = []
    server.on_disconnect(lambda info: left.append((info.connection_id, info.close_reason)))
    bystander = await connect(server)
    network = NetworkConditions()
    conn = await connect(
        server,
        network_conditions=network,
        reconnect=brpc.ReconnectPolicy(initial_delay=0.05, max_delay=0.1),
    )
    first_id = conn.connection_id
    # The client's network dies and the client gives its connection up (as
    # when it was suspended past its dead-peer timeout); its goodbye is lost.
    network.drop = 1.0
    session = conn._link.session
    conn._link.close(brpc.CloseCode.NO_ERROR, "gave up on a dead network")
    assert conn.state is brpc.ConnState.RECONNECTING
    assert {info.connection_id for info in server.clients} == {
        bystander.connection_id,
        first_id,
    }
    # The old connection is over on the client (an engine may hold its close
    # back while stream data waits) before the network comes back.
    await asyncio.wait_for(session.terminated.wait(), 10)
    network.drop = 0.0
    await conn.wait_ready(timeout=10)
    # long before the server's 30 s dead-peer timeout: one entry for this client
    await wait_for(lambda: len(server.clients) == 2, timeout=5)
    assert {info.connection_id for info in server.clients} == {
        bystander.connection_id,
        conn.connection_id,
    }
    assert left == [(first_id, left[0][1])]
    assert "REPLACED" in (left[0][1] or "")
    assert "replaced by its own reconnection" in (left[0][1] or "")
    assert conn.state is brpc.ConnState.READY
    assert (await EchoStub(conn).Unary(EchoRequest(text="back"))).text == "back"
    assert (await EchoStub(bystander).Unary(EchoRequest(text="here"))).text == "here"


async def test_only_the_resume_secret_replaces_a_connection(
    make_server: Any, connect: Any, certs: Any
) -> None:
    """A hello that names another connection by its ID, or by a wrong secret,
    closes nothing; an over-long one is refused."""
    server = await make_server([Probe()])
    victim = await connect(server)
    for guess in (victim.connection_id.encode(), bytes(32)):
        await _say_hello(server.port, certs.ca, replaces=guess)
        assert victim.state is brpc.ConnState.READY
    async with raw_client(server.port, ca=certs.ca) as raw:
        control = raw.next_stream()
        raw.send(control, _hello(replaces=bytes(33)))
        ended = await raw.wait_ended()
    assert "replaces is longer than 32 bytes" in ended.reason_phrase
    assert [info.connection_id for info in server.clients] == [victim.connection_id]
    assert (await EchoStub(victim).Unary(EchoRequest(text="fine"))).text == "fine"


async def _say_hello(port: int, ca: Any, **fields: Any) -> None:
    """Say hello as a raw client and wait for the server's answer."""
    async with raw_client(port, ca=ca) as raw:
        control = raw.next_stream()
        raw.send(control, _hello(**fields))
        await wait_for(lambda: bool(raw.received.get(control)), timeout=5)


def _hello(**fields: Any) -> bytes:
    return encode_envelope(pb.Envelope(client_hello=pb.ClientHello(protocol_version=1, **fields)))


# -- addresses stay current ------------------------------------------------------------------


class _Nat:
    """A UDP relay on loopback standing for a NAT: the client sends to
    :attr:`port`; the server sees the relay's outside socket, which
    :meth:`rebind` replaces with one on a new port (a NAT rebinding)."""

    def __init__(self, server: tuple[str, int]) -> None:
        self._server = server
        self._inside: asyncio.DatagramTransport | None = None
        self._outside: asyncio.DatagramTransport | None = None
        self._client: Any = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._inside, _ = await loop.create_datagram_endpoint(
            lambda: _Relay(self._from_client), local_addr=("127.0.0.1", 0)
        )
        await self.rebind()

    @property
    def port(self) -> int:
        assert self._inside is not None
        return int(self._inside.get_extra_info("sockname")[1])

    @property
    def outside(self) -> tuple[str, int]:
        assert self._outside is not None
        host, port = self._outside.get_extra_info("sockname")[:2]
        return host, port

    async def rebind(self) -> None:
        old = self._outside
        self._outside, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: _Relay(self._from_server), remote_addr=self._server
        )
        if old is not None:
            old.close()

    def close(self) -> None:
        for transport in (self._inside, self._outside):
            if transport is not None:
                transport.close()

    def _from_client(self, data: bytes, addr: Any) -> None:
        self._client = addr
        if self._outside is not None:
            self._outside.sendto(data)

    def _from_server(self, data: bytes, addr: Any) -> None:
        if self._inside is not None and self._client is not None:
            self._inside.sendto(data, self._client)


class _Relay(asyncio.DatagramProtocol):
    def __init__(self, forward: Any) -> None:
        self._forward = forward

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self._forward(data, addr)


async def test_a_nat_rebinding_keeps_the_address_current_and_tells_watchers(
    make_server: Any, connect: Any
) -> None:
    server = await make_server([Probe()])
    nat = _Nat(("127.0.0.1", server.port))
    await nat.start()
    try:
        watch = server.watch()
        conn = await connect(f"127.0.0.1:{nat.port}", name="roamer", keepalive_interval=0.1)
        first = await watch.__anext__()
        assert first.kind is brpc.PresenceKind.CONNECTED
        info = first.client
        assert info.address == nat.outside
        await nat.rebind()
        moved = await asyncio.wait_for(watch.__anext__(), timeout=5)
        assert moved.kind is brpc.PresenceKind.MOVED
        assert moved.client is info and moved.address == nat.outside == info.address
        assert moved.reason is None
        # same connection, still calling both ways
        assert conn.connection_id == info.connection_id
        assert (await EchoStub(conn).Unary(EchoRequest(text="moved"))).text == "moved"
        assert [c.connection_id for c in server.clients] == [info.connection_id]
        await watch.aclose()
    finally:
        nat.close()


class _Moves:
    """A session handler that records address changes."""

    def __init__(self) -> None:
        self.moves: list[tuple[str, int]] = []

    def handshake_completed(self, session: Any) -> None:
        pass

    def stream_opened(self, session: Any, stream_id: int) -> None:
        return None

    def session_closed(self, session: Any, closed: Any) -> None:
        pass

    def address_changed(self, session: Any, address: tuple[str, int]) -> None:
        self.moves.append(address)


async def test_a_memory_session_reports_a_rebinding_to_its_peer() -> None:
    client_side, server_side = _Moves(), _Moves()
    client, server = session_pair(client_side, server_side)
    assert server.peer_address == ("192.0.2.1", 50000)
    client.rebind(("192.0.2.1", 50001))
    assert server_side.moves == [("192.0.2.1", 50001)] and client_side.moves == []
    assert server.peer_address == ("192.0.2.1", 50001)
    client.close()

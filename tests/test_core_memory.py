"""The connection core over in-memory sessions: no UDP, no TLS.

The accept and connect phases, the link (calls both ways, admission, drain,
go-away) and the lanes call layer, with :func:`brpc.testing.session_pair` in
place of QUIC, so each behaviour is checked at its seam.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError

import brpc
from brpc._calls._grpclib import EventDispatch
from brpc._calls.lanes.layer import LanesCallLayer
from brpc._calls.serving import Serving
from brpc._core.accept import Acceptor, AcceptPhase, AcceptSettings, Hello, Refused
from brpc._core.connect import ConnectPhase, HelloSettings, connect_link
from brpc._core.link import Link, PeerInfo
from brpc._session.base import Session, SessionHandler
from brpc._wire.control import HelloLimits
from brpc._wire.refusal import RefusalCode
from brpc.testing import EchoService, MemorySession, session_pair
from brpc.testing.v1.echo_grpc import EchoStub
from brpc.testing.v1.echo_pb2 import EchoRequest
from brpc.v1 import control_pb2 as pb

OPTIONS = brpc.Options(max_concurrent_calls=4)


class _Target:
    """Calls go over one link."""

    def __init__(self, link: Link) -> None:
        self.link = link

    async def acquire(self) -> Link:
        if not self.link.usable:
            raise GRPCError(Status.UNAVAILABLE, self.link.loss_reason())
        return self.link

    def loss_reason(self) -> str:
        return self.link.loss_reason()


def _layer() -> LanesCallLayer:
    serving = Serving([EchoService()], max_message_size=1 << 20, dispatch=EventDispatch())
    return LanesCallLayer(serving, lanes=1, max_concurrent_calls=OPTIONS.max_concurrent_calls)


class _Server:
    """A minimal Admitter: admits everyone except names starting with "bad"."""

    def __init__(self, prefix: str = "c") -> None:
        self.prefix = prefix
        self.closing = False
        self.links: list[Link] = []
        self.layer = _layer()

    async def admit(self, hello: Hello) -> tuple[Link, pb.ServerHello]:
        if hello.message.name.startswith("bad"):
            raise Refused(RefusalCode.PERMISSION_DENIED, "not you")
        link = Link(
            hello.session,
            hello.control,
            connection_id=f"{self.prefix}{len(self.links)}",
            peer=PeerInfo(name=hello.message.name),
            layer=self.layer,
            options=OPTIONS,
            describe="client",
            make_handle=lambda link: link,
        )
        return link, pb.ServerHello(protocol_version=1, connection_id=link.connection_id)

    def connected(self, link: Link) -> None:
        self.links.append(link)


class _Pair:
    def __init__(self, hello_timeout: float = 5.0, prefix: str = "c") -> None:
        self.server = _Server(prefix)
        self.acceptor = Acceptor(
            AcceptSettings(hello_timeout=hello_timeout, hello_limits=HelloLimits()), self.server
        )
        self.client_layer = _layer()
        self.sessions: tuple[MemorySession, MemorySession] | None = None

    async def dial(self, handler: SessionHandler) -> Session:
        self.sessions = session_pair(handler, self.acceptor)
        return self.sessions[0]

    def make_link(self, session: Session, control: Any, hello: pb.ServerHello) -> Link:
        return Link(
            session,
            control,
            connection_id=hello.connection_id,
            peer=PeerInfo(),
            layer=self.client_layer,
            options=OPTIONS,
            describe="server",
            make_handle=lambda link: link,
        )

    async def connect(self, name: str = "agent") -> Link:
        return await connect_link(
            self.dial,
            HelloSettings(target="memory", name=name),
            make_link=self.make_link,
            timeout=5,
        )


def _stub(link: Link, layer: LanesCallLayer) -> EchoStub:
    from brpc._calls.channel import CallChannel

    dispatch = EventDispatch()
    caller = layer.caller(_Target(link), authority="memory", dispatch=dispatch)
    channel = CallChannel("memory", dispatch=dispatch, caller=caller)
    return EchoStub(channel)


async def test_hello_accepted_and_calls_flow_both_ways() -> None:
    pair = _Pair()
    client_link = await pair.connect()
    assert pair.acceptor.phase is AcceptPhase.ACCEPTED
    (server_link,) = pair.server.links
    assert server_link.peer.name == "agent"
    assert server_link.address == ("192.0.2.1", 50000)
    to_server = _stub(client_link, pair.client_layer)
    to_client = _stub(server_link, pair.server.layer)
    assert (await to_server.Unary(EchoRequest(text="up"))).text == "up"
    assert (await to_client.Unary(EchoRequest(text="down"))).text == "down"
    replies = await to_client.ServerStream(EchoRequest(text="s", count=3))
    assert [r.index for r in replies] == [0, 1, 2]
    assert client_link.calls_out == 0 and server_link.calls_in == 0
    client_link.close()
    await server_link.closed_event.wait()


async def test_refusal_is_data_and_permanent() -> None:
    pair = _Pair()
    with pytest.raises(brpc.RefusedError) as caught:
        await pair.connect(name="bad-actor")
    assert caught.value.code == "PERMISSION_DENIED"
    assert caught.value.permanent
    assert caught.value.reason == "not you"
    assert pair.acceptor.phase is AcceptPhase.CLOSED


async def test_hello_timeout_closes_the_connection() -> None:
    pair = _Pair(hello_timeout=0.05)
    closed = asyncio.Event()

    class Silent:
        def handshake_completed(self, session: Session) -> None:
            pass

        def stream_opened(self, session: Session, stream_id: int) -> None:
            return None

        def session_closed(self, session: Session, reason: Any) -> None:
            closed.set()

    client, _ = session_pair(Silent(), pair.acceptor)
    assert pair.acceptor.phase is AcceptPhase.HELLO
    await closed.wait()
    assert client.closed is not None and client.closed.error_code == brpc.CloseCode.HELLO_TIMEOUT
    assert pair.acceptor.phase is AcceptPhase.CLOSED


async def test_a_stream_before_the_hello_is_a_violation() -> None:
    pair = _Pair()
    closed = asyncio.Event()

    class Eager:
        def handshake_completed(self, session: Session) -> None:
            pass

        def stream_opened(self, session: Session, stream_id: int) -> None:
            return None

        def session_closed(self, session: Session, reason: Any) -> None:
            closed.set()

    client, _ = session_pair(Eager(), pair.acceptor)
    client.open_stream(asyncio.Protocol())  # the control stream: id 0
    transport = client.open_stream(asyncio.Protocol())  # a second stream before any hello
    transport.write(b"x")
    await closed.wait()
    assert client.closed is not None
    assert client.closed.error_code == brpc.CloseCode.PROTOCOL_VIOLATION


async def test_admission_limit_and_drain_both_ways() -> None:
    pair = _Pair()
    client_link = await pair.connect()
    (server_link,) = pair.server.links
    to_server = _stub(client_link, pair.client_layer)
    # Four calls are admitted (max_concurrent_calls), the fifth is refused at once.
    streams = [to_server.Bidi.open() for _ in range(5)]
    for stream in streams[:4]:
        await stream.__aenter__()
        await stream.send_message(EchoRequest(text="hold"))
        await stream.recv_message()
    assert server_link.calls_in == 4 and client_link.calls_out == 4
    with pytest.raises(GRPCError) as refused:
        await to_server.Unary(EchoRequest())
    assert refused.value.status is Status.RESOURCE_EXHAUSTED
    # Draining: the peer hears go-away; no new calls either way; calls in flight finish.
    drained = asyncio.ensure_future(client_link.drain(5.0, "bye"))
    await asyncio.sleep(0)
    assert not client_link.usable
    with pytest.raises(GRPCError) as closing:
        await to_server.Unary(EchoRequest())
    assert closing.value.status is Status.UNAVAILABLE
    for stream in streams[:4]:
        await stream.end()
        await stream.recv_trailing_metadata()
        await stream.__aexit__(None, None, None)
    assert await drained is True
    assert server_link.peer_going_away


async def test_connect_phases_end_in_failed_when_the_session_dies() -> None:
    pair = _Pair()

    async def dead_dial(handler: SessionHandler) -> Session:
        client, server = session_pair(handler, pair.acceptor)
        server.close(brpc.CloseCode.GOING_AWAY, "no")
        return client

    with pytest.raises(brpc.ConnectError, match="no"):
        await connect_link(
            dead_dial, HelloSettings(target="memory"), make_link=pair.make_link, timeout=5
        )


def test_connect_phase_names() -> None:
    assert [p.value for p in ConnectPhase] == ["handshake", "hello", "ready", "failed"]


async def test_client_table_and_presence_over_memory_links() -> None:
    from brpc.peer import ClientInfo
    from brpc.presence import Presence
    from brpc.registry import ClientTable

    table: ClientTable[EchoStub] = ClientTable()
    server_closed = asyncio.Event()
    presence: Presence[EchoStub] = Presence(table, server_closed)
    seen: list[tuple[str, str]] = []
    presence.on_connect(lambda info: seen.append(("+", info.name)))
    presence.on_disconnect(lambda info: seen.append(("-", info.name)))
    watch = presence.watch(existing=True, max_pending=16)

    pairs = [_Pair(prefix=f"p{n}-") for n in range(3)]
    infos = []
    for index, pair in enumerate(pairs):
        await pair.connect(name=f"agent-{index}")
        (link,) = pair.server.links
        info: ClientInfo[EchoStub] = ClientInfo(
            link,
            server=None,
            layer=pair.server.layer,
            dispatch=EventDispatch(),
            client_stub=EchoStub,
        )
        table.add(info)
        presence.connected(info)
        infos.append(info)
    assert len(table) == 3 and table.named("agent-1") is infos[1]
    assert (await infos[2].stub.Unary(EchoRequest(text="hi"))).text == "hi"
    infos[0].close("done")
    await infos[0].wait_closed()
    assert table.remove(infos[0]) and not table.remove(infos[0])
    presence.disconnected(infos[0])
    assert [i.name for i in table.find()] == ["agent-1", "agent-2"]
    events = [await watch.__anext__() for _ in range(4)]
    assert [(e.kind.name, e.client.name) for e in events] == [
        ("CONNECTED", "agent-0"),
        ("CONNECTED", "agent-1"),
        ("CONNECTED", "agent-2"),
        ("DISCONNECTED", "agent-0"),
    ]
    await asyncio.sleep(0)
    assert seen == [("+", "agent-0"), ("+", "agent-1"), ("+", "agent-2"), ("-", "agent-0")]
    await watch.aclose()

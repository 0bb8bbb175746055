"""server.call_all(): one call to many clients, one result per client as each completes."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from conftest import wait_for
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.metadata import Deadline
from grpclib.server import Stream

import brpc
from brpc._calls.base import call_deadline
from brpc.testing.v1 import echo_grpc
from brpc.testing.v1.echo_grpc import EchoStub
from brpc.testing.v1.echo_pb2 import EchoReply, EchoRequest

ECHO = "brpc.testing.v1.Echo"


class Agent(echo_grpc.EchoBase):
    """Answers Unary as its role says.

    - ``fast``: at once; ``fail``: NOT_FOUND;
    - ``slow``: once ``release`` is set;
    - ``stuck``: never (until the call is cancelled).
    """

    def __init__(self, role: str, release: asyncio.Event | None = None) -> None:
        self.role = role
        self.release = release or asyncio.Event()
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.deadlines: list[float | None] = []
        self.active = 0

    async def Unary(self, stream: Stream[EchoRequest, EchoReply]) -> None:
        request = await stream.recv_message()
        assert request is not None
        deadline = stream.deadline
        self.deadlines.append(deadline.time_remaining() if deadline else None)
        self.started.set()
        try:
            if self.role == "fail":
                raise GRPCError(Status.NOT_FOUND, f"{request.text} has nothing")
            if self.role == "slow":
                await self.release.wait()
            if self.role == "stuck":
                await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        await stream.send_message(EchoReply(text=f"{self.role}:{request.text}"))

    async def ServerStream(self, stream: Stream[EchoRequest, EchoReply]) -> None:
        request = await stream.recv_message()
        assert request is not None
        for index in range(request.count):
            await stream.send_message(EchoReply(text=request.text, index=index))

    async def ClientStream(self, stream: Stream[EchoRequest, EchoReply]) -> None:
        texts = [request.text async for request in stream]
        await stream.send_message(EchoReply(text=",".join(texts), received=len(texts)))

    async def Bidi(self, stream: Stream[EchoRequest, EchoReply]) -> None:
        async for request in stream:
            await stream.send_message(EchoReply(text=f"{self.role}:{request.text.upper()}"))


def echo_name(stub: EchoStub, info: brpc.ClientInfo[EchoStub]) -> Any:
    return stub.Unary(EchoRequest(text=info.name))


async def _agents(
    server: brpc.Server[Any], connect: Any, roles: list[str], **agent_options: Any
) -> dict[str, tuple[Agent, brpc.ClientConn]]:
    agents: dict[str, tuple[Agent, brpc.ClientConn]] = {}
    for i, role in enumerate(roles):
        agent = Agent(role, **agent_options)
        name = f"{role}-{i}"
        conn = await connect(
            server, name=name, labels={"role": role}, services=[agent], reconnect=False
        )
        agents[name] = (agent, conn)
    return agents


def _call_all_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("brpc call_all")]


async def test_results_arrive_as_each_client_completes(make_server: Any, connect: Any) -> None:
    """Fast, failing, vanishing and slow clients: exactly one result each, in the
    order they completed, with the right status; the slow ones only answer once
    the fast results have all arrived."""
    server = await make_server(client_stub=EchoStub)
    release = asyncio.Event()
    agents = await _agents(server, connect, ["fast", "slow", "fail", "vanish"] * 3, release=release)
    for agent, _ in agents.values():
        if agent.role == "vanish":
            agent.role = "stuck"  # answers never; its client goes away mid-call

    fan = server.call_all(echo_name)
    assert len(fan) == 12
    results: list[brpc.CallResult[EchoStub, EchoReply]] = []
    async for result in fan:
        results.append(result)
        if len(results) == 6:
            assert not release.is_set()
            # The slow ones hold nobody up: another fan-out completes meanwhile.
            others = await server.gather_all(echo_name, select={"role": "fast"})
            assert [r.status for r in others] == [Status.OK] * 3
            for name, (agent, conn) in agents.items():
                if name.startswith("vanish"):
                    await agent.started.wait()
                    await conn.close()
        elif len(results) == 9:
            release.set()

    roles = [r.client.labels["role"] for r in results]
    assert sorted(roles[:6]) == ["fail"] * 3 + ["fast"] * 3
    assert roles[6:] == ["vanish"] * 3 + ["slow"] * 3
    assert sorted(r.client.name for r in results) == sorted(agents)
    assert fan.remaining == 0
    for result in results:
        role, name = result.client.labels["role"], result.client.name
        if role in ("fast", "slow"):
            assert result.ok and result.status is Status.OK and result.error is None
            assert result.value is not None and result.value.text == f"{role}:{name}"
            assert result.unwrap() is result.value
        else:
            assert not result.ok and result.value is None
            assert isinstance(result.error, GRPCError)
            expected = Status.NOT_FOUND if role == "fail" else Status.UNAVAILABLE
            assert result.status is expected and result.error.status is expected
            with pytest.raises(GRPCError):
                result.unwrap()
    assert not _call_all_tasks()


async def test_timeout_cuts_off_stuck_clients(make_server: Any, connect: Any) -> None:
    server = await make_server(client_stub=EchoStub)
    agents = await _agents(server, connect, ["fast", "stuck", "fast", "stuck"])
    results = await server.gather_all(echo_name, timeout=0.5)
    assert [r.client.labels["role"] for r in results] == ["fast", "fast", "stuck", "stuck"]
    for result in results[2:]:
        assert result.status is Status.DEADLINE_EXCEEDED
        assert isinstance(result.error, brpc.DeadlineExceededError)
        assert isinstance(result.error, TimeoutError)
    for agent, _ in agents.values():
        # The deadline went with the call, and stuck calls were cancelled.
        (remaining,) = agent.deadlines
        assert remaining is not None and remaining <= 0.5
        if agent.role == "stuck":
            await asyncio.wait_for(agent.cancelled.wait(), 10)


async def test_the_callers_deadline_caps_the_fan_out(make_server: Any, connect: Any) -> None:
    """call_all inside a handler inherits that handler's deadline."""
    server = await make_server(client_stub=EchoStub)
    agents = await _agents(server, connect, ["fast", "stuck"])
    token = call_deadline.set(Deadline.from_timeout(0.3))
    try:
        results = await server.gather_all(echo_name, timeout=30)
    finally:
        call_deadline.reset(token)
    assert [r.status for r in results] == [Status.OK, Status.DEADLINE_EXCEEDED]
    (remaining,) = agents["fast-0"][0].deadlines
    assert remaining is not None and remaining <= 0.3


async def test_select_by_labels_service_predicate_or_clients(
    make_server: Any, connect: Any
) -> None:
    server = await make_server(client_stub=EchoStub)
    for i in range(4):
        await connect(
            server, name=f"echo-{i}", labels={"zone": "ab"[i % 2]}, services=[Agent("fast")]
        )
    await connect(server, name="silent", labels={"zone": "a"})

    async def names(**options: Any) -> list[str]:
        return sorted(r.client.name for r in await server.gather_all(echo_name, **options))

    assert await names(select={"zone": "a"}) == ["echo-0", "echo-2", "silent"]
    assert await names(select={"zone": "a", "x": "y"}) == []
    assert await names(select=ECHO) == ["echo-0", "echo-1", "echo-2", "echo-3"]
    assert await names(select=lambda info: info.name.endswith("3")) == ["echo-3"]
    picked = [server.clients.named("echo-1"), server.clients.named("silent")]
    assert await names(select=picked) == ["echo-1", "silent"]
    everyone = await server.gather_all(echo_name)
    assert len(everyone) == 5
    # A client that does not serve the service answers UNIMPLEMENTED, in its own result.
    (silent,) = [r for r in everyone if r.client.name == "silent"]
    assert silent.status is Status.UNIMPLEMENTED


async def test_errors_in_the_function_stay_with_their_client(
    make_server: Any, connect: Any
) -> None:
    server = await make_server(client_stub=EchoStub)
    for name in ("good", "buggy", "sync", "self-cancelling"):
        await connect(server, name=name, services=[Agent("fast")])

    def fn(stub: EchoStub, info: brpc.ClientInfo[EchoStub]) -> Any:
        if info.name == "buggy":
            raise ValueError("bug in fn")
        if info.name == "sync":
            return "not awaitable"
        if info.name == "self-cancelling":
            return _cancelled()
        return stub.Unary(EchoRequest(text="fine"))

    results = {r.client.name: r for r in await server.gather_all(fn)}
    assert results["good"].ok
    assert isinstance(results["buggy"].error, ValueError)
    assert results["buggy"].status is Status.UNKNOWN
    assert isinstance(results["sync"].error, TypeError)
    assert results["self-cancelling"].status is Status.CANCELLED


async def _cancelled() -> None:
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    future.cancel()
    await future


async def test_streaming_calls_fan_out(make_server: Any, connect: Any) -> None:
    server = await make_server(client_stub=EchoStub)
    await _agents(server, connect, ["fast", "fast", "fast"])

    async def server_stream(stub: EchoStub, info: brpc.ClientInfo[EchoStub]) -> list[int]:
        replies = await stub.ServerStream(EchoRequest(text=info.name, count=4))
        return [reply.index for reply in replies]

    results = await server.gather_all(server_stream)
    assert [r.value for r in results] == [[0, 1, 2, 3]] * 3

    async def chat(stub: EchoStub, info: brpc.ClientInfo[EchoStub]) -> list[str]:
        texts = []
        async with stub.Bidi.open() as stream:
            for word in ("hello", info.name):
                await stream.send_message(EchoRequest(text=word))
                reply = await stream.recv_message()
                assert reply is not None
                texts.append(reply.text)
            await stream.end()
        return texts

    results = await server.gather_all(chat)
    assert sorted(r.unwrap()[1] for r in results) == ["fast:FAST-0", "fast:FAST-1", "fast:FAST-2"]
    assert all(r.unwrap()[0] == "fast:HELLO" for r in results)


async def test_concurrency_caps_calls_in_flight(make_server: Any, connect: Any) -> None:
    server = await make_server(client_stub=EchoStub)
    gate = asyncio.Event()
    active = 0
    most = 0

    async def fn(stub: EchoStub, info: brpc.ClientInfo[EchoStub]) -> str:
        nonlocal active, most
        active += 1
        most = max(most, active)
        try:
            await gate.wait()
            return (await stub.Unary(EchoRequest(text=info.name))).text
        finally:
            active -= 1

    await _agents(server, connect, ["fast"] * 6)
    fan = server.call_all(fn, concurrency=2)
    await wait_for(lambda: active == 2)
    assert len(_call_all_tasks()) == 2
    gate.set()
    results = await fan.gather()
    assert len(results) == 6 and all(r.ok for r in results)
    assert most == 2


async def test_a_client_gone_before_its_turn_is_unavailable(make_server: Any, connect: Any) -> None:
    server = await make_server(client_stub=EchoStub)
    agents = await _agents(server, connect, ["slow", "fast"])
    (slow, _), (_, fast_conn) = agents["slow-0"], agents["fast-1"]
    fan = server.call_all(echo_name, concurrency=1)
    await slow.started.wait()
    await fast_conn.close()
    await wait_for(lambda: len(server.clients) == 1)
    slow.release.set()
    first, second = await fan.gather()
    assert (first.client.name, first.status) == ("slow-0", Status.OK)
    assert (second.client.name, second.status) == ("fast-1", Status.UNAVAILABLE)
    assert "disconnected" in str(second.error)
    assert isinstance(second.error, brpc.CallNotStartedError)  # it was never sent


@pytest.mark.parametrize("how", ["async-with", "cancel-consumer", "break-and-drop", "aclose"])
async def test_stopping_early_cancels_the_calls_still_running(
    make_server: Any, connect: Any, how: str
) -> None:
    server = await make_server(client_stub=EchoStub)
    agents = await _agents(server, connect, ["fast", "stuck", "stuck", "stuck"])
    stuck = [agent for agent, _ in agents.values() if agent.role == "stuck"]

    async def all_started() -> None:
        for agent in stuck:
            await agent.started.wait()

    if how == "async-with":
        async with server.call_all(echo_name) as fan:
            assert (await anext(fan)).client.name == "fast-0"
            await all_started()
        assert fan.remaining == 3
    elif how == "cancel-consumer":
        fan = server.call_all(echo_name)
        consumer = asyncio.create_task(fan.gather())
        await all_started()
        consumer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await consumer
    elif how == "break-and-drop":
        async for result in server.call_all(echo_name):
            assert result.client.name == "fast-0"
            await all_started()
            break
    else:
        fan = server.call_all(echo_name)
        await all_started()
        await fan.aclose()
        assert await anext(fan, None) is None

    for agent in stuck:
        await asyncio.wait_for(agent.cancelled.wait(), 10)
    await wait_for(lambda: not _call_all_tasks())


async def test_edges(make_server: Any, connect: Any) -> None:
    server = await make_server()
    with pytest.raises(RuntimeError, match="client_stub"):
        server.call_all(echo_name)
    server = await make_server(client_stub=EchoStub)
    assert await server.gather_all(echo_name) == []
    await connect(server, services=[Agent("fast")])
    with pytest.raises(ValueError, match="concurrency"):
        server.call_all(echo_name, concurrency=0)
    with pytest.raises(ValueError, match="timeout"):
        server.call_all(echo_name, timeout=-1)
    (result,) = await server.gather_all(echo_name, timeout=0)
    assert result.status is Status.DEADLINE_EXCEEDED

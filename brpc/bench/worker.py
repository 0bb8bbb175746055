"""The benchmark's worker processes and the commands they run.

A worker is a fresh Python process (``spawn``), optionally pinned to one CPU
core, running an asyncio event loop. It waits for commands on a pipe from the
orchestrating process, runs each one and sends back its result (or the
error). Between commands the event loop keeps running, so a worker holding a
brpc connection keeps serving calls the server makes to it.

One worker plays the server (it holds a :class:`BenchServer`), another the
client (it holds the connections); which one generates load depends on the
direction being measured.
"""

from __future__ import annotations

import asyncio
import logging
import os
import traceback
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from .endpoints import BenchConnection, BenchServer, connect, start_server
from .load import run_server_stream, run_unary, run_uploads, small_request
from .probes import (
    answer_connects,
    call_clients,
    connect_many,
    measure_connects,
    measure_fanout,
)
from .probes import resident_set_size as rss
from .spec import TransportSpec

__all__ = ["Command", "WorkerFailed", "WorkerState", "worker_main"]

log = logging.getLogger(__name__)


@dataclass
class WorkerState:
    """What a worker holds between commands."""

    server: BenchServer | None = None
    #: The connection load runs over, by name.
    connections: dict[str, BenchConnection] = field(default_factory=dict)
    #: Groups of idle connections (memory probe), by prefix.
    groups: dict[str, list[BenchConnection]] = field(default_factory=dict)
    #: Anything else a command keeps for later ones (the cluster benchmark's members
    #: and clients), by name; ``closers`` run, newest first, when the worker stops.
    held: dict[str, Any] = field(default_factory=dict)
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    stopping: bool = False

    def require_server(self) -> BenchServer:
        if self.server is None:
            raise RuntimeError("this worker runs no server")
        return self.server

    async def close(self) -> None:
        closers, self.closers = self.closers, []
        for closer in reversed(closers):
            try:
                await closer()
            except Exception:
                log.exception("closing what a command left failed")
        self.held.clear()
        for group in self.groups.values():
            for conn in group:
                await conn.close()
        self.groups.clear()
        for conn in self.connections.values():
            await conn.close()
        self.connections.clear()
        if self.server is not None:
            await self.server.close()
            self.server = None


class Command(ABC):
    """Something a worker does on request; the result goes back over the pipe."""

    @abstractmethod
    async def run(self, state: WorkerState) -> Any: ...


@dataclass(frozen=True)
class WorkerFailed:
    """A command raised; the traceback as text."""

    command: str
    traceback: str


# -- commands -------------------------------------------------------------------------


@dataclass(frozen=True)
class StartServer(Command):
    spec: TransportSpec

    async def run(self, state: WorkerState) -> int:
        state.server = await start_server(self.spec)
        return state.server.port


@dataclass(frozen=True)
class BrpcPort(Command):
    """The UDP port brpc clients dial on this worker's server."""

    async def run(self, state: WorkerState) -> int:
        return state.require_server().brpc_port


@dataclass(frozen=True)
class MeasureFanout(Command):
    """Broadcasts through the relay front on ``port`` to the clients labelled ``group``."""

    port: int
    group: str
    clients: int
    warmup: float
    window: float

    async def run(self, state: WorkerState) -> dict[str, float]:
        return await measure_fanout(
            self.port,
            group=self.group,
            clients=self.clients,
            warmup=self.warmup,
            window=self.window,
        )


@dataclass(frozen=True)
class Connect(Command):
    spec: TransportSpec
    port: int
    name: str

    async def run(self, state: WorkerState) -> None:
        conn = await connect(self.spec, self.port, name=self.name, serve=True)
        state.connections[self.name] = conn
        # grpclib and grpcio connect on the first call.
        await conn.caller.unary(small_request())


@dataclass(frozen=True)
class RunLoad(Command):
    """Run one load workload, over the named client connection or, in a
    server worker, towards the named client."""

    workload: str
    peer: str
    warmup: float
    window: float

    async def run(self, state: WorkerState) -> dict[str, float]:
        if state.server is not None:
            caller = state.server.client_named(self.peer)
            if caller is None:
                raise RuntimeError(f"client {self.peer!r} is not connected")
        else:
            caller = state.connections[self.peer].caller
        timing = {"warmup": self.warmup, "window": self.window}
        if self.workload == "unary_c1":
            return await run_unary(caller, concurrency=1, **timing)
        if self.workload == "unary_c64":
            return await run_unary(caller, concurrency=64, **timing)
        if self.workload == "server_stream":
            return await run_server_stream(caller, **timing)
        if self.workload == "upload_1mib":
            return await run_uploads(caller, concurrency=1, **timing)
        raise ValueError(f"unknown load workload {self.workload!r}")


@dataclass(frozen=True)
class MeasureConnects(Command):
    spec: TransportSpec
    port: int
    warmup: float
    window: float
    server_calls_first: bool

    async def run(self, state: WorkerState) -> dict[str, float]:
        return await measure_connects(
            self.spec,
            self.port,
            warmup=self.warmup,
            window=self.window,
            server_calls_first=self.server_calls_first,
        )


@dataclass(frozen=True)
class AnswerConnects(Command):
    async def run(self, state: WorkerState) -> dict[str, float]:
        return await answer_connects(state.require_server())


@dataclass(frozen=True)
class ConnectMany(Command):
    spec: TransportSpec
    port: int
    prefix: str
    count: int
    call: bool

    async def run(self, state: WorkerState) -> int:
        conns = await connect_many(
            self.spec, self.port, prefix=self.prefix, count=self.count, call=self.call, serve=True
        )
        state.groups.setdefault(self.prefix, []).extend(conns)
        return len(conns)


@dataclass(frozen=True)
class CloseMany(Command):
    prefix: str

    async def run(self, state: WorkerState) -> int:
        conns = state.groups.pop(self.prefix, [])
        await asyncio.gather(*(conn.close() for conn in conns))
        return len(conns)


@dataclass(frozen=True)
class CallClients(Command):
    prefix: str

    async def run(self, state: WorkerState) -> int:
        return await call_clients(state.require_server(), self.prefix)


@dataclass(frozen=True)
class ResidentSetSize(Command):
    async def run(self, state: WorkerState) -> int:
        return rss()


@dataclass(frozen=True)
class Sleep(Command):
    seconds: float

    async def run(self, state: WorkerState) -> None:
        await asyncio.sleep(self.seconds)


@dataclass(frozen=True)
class Stop(Command):
    async def run(self, state: WorkerState) -> None:
        state.stopping = True
        await state.close()


# -- the process -------------------------------------------------------------------------


async def _next_command(pipe: Connection) -> Command:
    """Wait for the next command without blocking the event loop."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(pipe.fileno(), readable)
    try:
        if not pipe.poll():
            await ready
    finally:
        loop.remove_reader(pipe.fileno())
    command = pipe.recv()
    if not isinstance(command, Command):
        raise TypeError(f"not a command: {command!r}")
    return command


async def _serve(pipe: Connection) -> None:
    state = WorkerState()
    try:
        while not state.stopping:
            try:
                command = await _next_command(pipe)
            except EOFError:
                log.warning("the orchestrating process went away; stopping")
                return
            try:
                result = await command.run(state)
            except Exception:
                result = WorkerFailed(repr(command), traceback.format_exc())
            pipe.send(result)
    finally:
        await state.close()


def worker_main(pipe: Connection, core: int | None, log_level: int) -> None:
    """Entry point of a worker process."""
    logging.basicConfig(level=log_level, format="%(processName)s %(name)s: %(message)s")
    if core is not None:
        os.sched_setaffinity(0, {core})
    try:
        asyncio.run(_serve(pipe))
    except KeyboardInterrupt:
        pass
    finally:
        pipe.close()

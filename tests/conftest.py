"""Shared fixtures: development certificates, servers on loopback, dialled clients."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from layers import CALL_LAYERS

import brpc
from brpc.certs import DevCertificates, write_dev_certificates

ServerFactory = Callable[..., Awaitable[brpc.Server[Any]]]
DialFactory = Callable[..., Awaitable[brpc.ClientConn]]


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> DevCertificates:
    """A CA, a server certificate for loopback and client certificates."""
    return write_dev_certificates(
        tmp_path_factory.mktemp("certs"), client_names=("client", "other-client")
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "both_call_layers: run each test using call_layer once per call layer"
    )
    config.addinivalue_line(
        "markers",
        "defaults_only: a test of brpc's defaults, left out of the second pass "
        "(BRPC_CALL_LAYER/BRPC_ENGINE set)",
    )


#: Client and server engines the end-to-end modules below run on, by test ID.
ENGINE_PAIRS: dict[str, tuple[str, str]] = {
    "qh3-aioquic": ("qh3", "aioquic"),  # a qh3 client (engine="qh3") and the default server
    "aioquic-aioquic": ("aioquic", "aioquic"),
    "qh3-qh3": ("qh3", "qh3"),
    "aioquic-qh3": ("aioquic", "qh3"),
}
_ENGINE_MODULES = {"test_semantics", "test_security", "test_identity"}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run marked tests once per call layer, and the end-to-end modules once per engine pair."""
    if (
        metafunc.definition.get_closest_marker("both_call_layers") is not None
        and "call_layer" in metafunc.fixturenames
    ):
        metafunc.parametrize("call_layer", CALL_LAYERS)
    module = metafunc.module.__name__.rsplit(".", 1)[-1]
    uses_quic = {"make_server", "connect"} & set(metafunc.fixturenames)
    if module in _ENGINE_MODULES and uses_quic:
        metafunc.parametrize(
            "engines", list(ENGINE_PAIRS.values()), ids=list(ENGINE_PAIRS), indirect=True
        )


#: Whether this run sets brpc's defaults through the environment: ./scripts/test
#: runs the suite a second time with ``BRPC_CALL_LAYER=lanes BRPC_ENGINE=qh3``
#: so that every test also runs on the other call layer and engine.
SECOND_PASS = bool(os.environ.get("BRPC_CALL_LAYER") or os.environ.get("BRPC_ENGINE"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """In the second pass, leave out what the first one already ran on every
    layer and engine: tests parametrized over them, and tests of the defaults."""
    if not SECOND_PASS:
        return
    kept: list[pytest.Item] = []
    left_out: list[pytest.Item] = []
    for item in items:
        callspec = getattr(item, "callspec", None)
        params = callspec.params if callspec is not None else {}
        if (
            "call_layer" in params
            or "engines" in params
            or item.get_closest_marker("defaults_only") is not None
        ):
            left_out.append(item)
        else:
            kept.append(item)
    config.hook.pytest_deselected(items=left_out)
    items[:] = kept


@pytest.fixture
def call_layer() -> str | None:
    """The call layer ``make_server`` and ``connect`` use; None: brpc's default
    (streams, falling back to lanes). Modules parametrize it over both layers
    with ``pytestmark = on_both_call_layers`` (tests/layers.py)."""
    return None


@pytest.fixture
def engines(request: pytest.FixtureRequest) -> tuple[str, str]:
    """(client engine, server engine) for :func:`connect` and :func:`make_server`."""
    pair: tuple[str, str] = getattr(request, "param", ("auto", "auto"))
    return pair


@pytest.fixture
async def make_server(
    certs: DevCertificates, call_layer: str | None, engines: tuple[str, str]
) -> AsyncIterator[ServerFactory]:
    """Start servers on 127.0.0.1 (port 0); close them after the test."""
    servers: list[brpc.Server[Any]] = []

    async def factory(
        handlers: Iterable[Any] = (), *, host: str = "127.0.0.1", port: int = 0, **options: Any
    ) -> brpc.Server[Any]:
        if call_layer is not None:
            options.setdefault("call_layer", call_layer)
        options.setdefault("engine", engines[1])
        options.setdefault("certfile", certs.server_cert)
        options.setdefault("keyfile", certs.server_key)
        server: brpc.Server[Any] = brpc.Server(list(handlers), **options)
        await server.start(host, port)
        servers.append(server)
        return server

    yield factory
    for server in servers:
        server.close()
        await server.wait_closed()


@pytest.fixture
async def connect(
    certs: DevCertificates, call_layer: str | None, engines: tuple[str, str]
) -> AsyncIterator[DialFactory]:
    """Dial a server with the test CA; close the connections after the test."""
    conns: list[brpc.ClientConn] = []

    async def factory(target: brpc.Server[Any] | str, **options: Any) -> brpc.ClientConn:
        if call_layer is not None:
            options.setdefault("call_layer", call_layer)
        options.setdefault("ca", certs.ca)
        options.setdefault("engine", engines[0])
        address = target if isinstance(target, str) else target.address
        conn = await brpc.dial(address, **options)
        conns.append(conn)
        return conn

    yield factory
    for conn in conns:
        await conn.close()


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait until ``predicate()`` holds, re-checking on every loop iteration.

    For state that has no event to wait on (a registry emptying, a counter
    reaching a value); bounded by ``timeout``.
    """
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - re-check after each loop iteration
            await asyncio.sleep(0)


@pytest.fixture
def cert_paths(certs: DevCertificates) -> dict[str, Path]:
    return {
        "ca": certs.ca,
        "server_cert": certs.server_cert,
        "server_key": certs.server_key,
        "client_cert": certs.client_cert,
        "client_key": certs.client_key,
    }


# -- a private redis-server for the cluster directory tests ------------------------------


class RedisServer:
    """A ``redis-server`` process on 127.0.0.1 with nothing persisted, in its own folder.

    ``stop()`` kills it (as a crash would); ``start()`` brings it back on the
    same port, empty.
    """

    def __init__(self, executable: str, folder: Path) -> None:
        import socket

        self.executable = executable
        self.folder = folder
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            self.port: int = probe.getsockname()[1]
        self.process: Any = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        import subprocess
        import time

        if self.running:
            return
        options = {
            "bind": "127.0.0.1",
            "port": str(self.port),
            "save": "",
            "appendonly": "no",
            "dir": str(self.folder),
            "logfile": str(self.folder / "redis.log"),
            "daemonize": "no",
        }
        argv = [self.executable]
        for option, value in options.items():
            argv += [f"--{option}", value]
        self.process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while not self._answers_ping():
            if self.process.poll() is not None:
                log = (self.folder / "redis.log").read_text(errors="replace")[-2000:]
                pytest.fail(f"redis-server exited with {self.process.returncode}:\n{log}")
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"redis-server did not answer PING within {timeout} s")
            time.sleep(0.02)  # polling a process we started; nothing to wait on

    def stop(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                self.process.kill()
            self.process.wait(timeout=10)
            self.process = None

    def _answers_ping(self) -> bool:
        import socket

        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(16).startswith(b"+PONG")
        except OSError:
            return False


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterable[RedisServer]:
    """A private redis-server for the whole session (restarted by tests that need it up)."""
    import shutil

    executable = shutil.which("redis-server")
    if executable is None:
        pytest.fail(
            "redis-server is not installed: ./scripts/test installs it, or run "
            "`apt-get update && apt-get install -y redis-server` (Debian's package)"
        )
    server = RedisServer(executable, tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The URL of the private redis-server, started again if a test stopped it."""
    redis_server.start()
    return redis_server.url

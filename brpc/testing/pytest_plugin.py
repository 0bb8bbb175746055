"""A pytest fixture for :func:`brpc.testing.connected`.

Enable it in the ``conftest.py`` at the root of a project's tests::

    pytest_plugins = ["brpc.testing.pytest_plugin"]

and use the ``brpc_connected`` fixture, a factory that takes the arguments of
:func:`brpc.testing.connected` and returns ``(server, conn)``; everything it made
is closed when the test ends::

    async def test_greet(brpc_connected):
        greeter = Greeter()
        server, conn = await brpc_connected([greeter], [Namer("ada")], NamerStub)
        greeter.server = server
        assert (await GreeterStub(conn).Greet(GreetRequest())).message == "Hello ada"

Needs pytest-asyncio (the fixture is an asyncio fixture, in strict mode too).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Collection, Coroutine, Iterable
from typing import Any

import pytest_asyncio
from grpclib.client import Channel

from ..client import ClientConn
from ..server import Server
from .kit import connected

__all__ = ["ConnectedFactory", "brpc_connected"]

#: The type of the ``brpc_connected`` fixture.
ConnectedFactory = Callable[..., Coroutine[Any, Any, tuple[Server[Any], ClientConn]]]


@pytest_asyncio.fixture
async def brpc_connected() -> AsyncIterator[ConnectedFactory]:
    """Start a server and a connected client (see :func:`brpc.testing.connected`);
    closed after the test."""
    async with contextlib.AsyncExitStack() as stack:

        async def connect(
            server_handlers: Collection[Any],
            client_services: Iterable[Any] = (),
            client_stub: Callable[[Channel], Any] | None = None,
            **options: Any,
        ) -> tuple[Server[Any], ClientConn]:
            return await stack.enter_async_context(
                connected(server_handlers, client_services, client_stub, **options)
            )

        yield connect

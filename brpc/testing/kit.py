"""A server and a client connected to it over loopback, for unit tests of services.

:func:`connected` is to brpc what ``grpclib.testing.ChannelFor`` is to grpclib:
one ``async with`` starts a :class:`brpc.Server` with the given handlers on
127.0.0.1 (a free port), dials it with a client that serves the given services,
and closes both afterwards. Certificates are made on the fly in a temporary
directory that is removed on exit, so nothing is left behind.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import tempfile
from collections.abc import AsyncIterator, Callable, Collection, Iterable
from typing import Any, TypeVar

from grpclib.client import Channel

from ..certs import write_dev_certificates
from ..client import ClientConn, dial
from ..server import Server

__all__ = ["connected", "split_options"]

C = TypeVar("C")


@functools.cache
def _parameters() -> tuple[frozenset[str], frozenset[str]]:
    """Keyword names of ``Server(...)`` and of ``dial(...)``."""
    server = frozenset(inspect.signature(Server.__init__).parameters)
    client = frozenset(inspect.signature(dial).parameters)
    return server - {"self", "handlers", "client_stub"}, client - {"target", "services"}


def split_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(server options, dial options)`` from one set of keyword arguments.

    A name only :class:`brpc.Server` takes goes to the server, one only
    :func:`brpc.dial` takes to the client, and one both take (``lanes``,
    ``max_message_size``, ``keepalive_interval``, ...) to both. ``server_<name>``
    and ``dial_<name>`` give an option to one side only (``server_authorize=``,
    ``dial_authorize=``). Anything else raises TypeError.
    """
    server_parameters, dial_parameters = _parameters()
    server: dict[str, Any] = {}
    client: dict[str, Any] = {}
    for name, value in options.items():
        known = False
        if name in server_parameters:
            server[name], known = value, True
        if name in dial_parameters:
            client[name], known = value, True
        if known:
            continue
        if name.startswith("server_") and name.removeprefix("server_") in server_parameters:
            server[name.removeprefix("server_")] = value
        elif name.startswith("dial_") and name.removeprefix("dial_") in dial_parameters:
            client[name.removeprefix("dial_")] = value
        else:
            raise TypeError(
                f"connected() got an option neither brpc.Server nor brpc.dial takes: {name!r}"
            )
    return server, client


@contextlib.asynccontextmanager
async def connected(
    server_handlers: Collection[Any],
    client_services: Iterable[Any] = (),
    client_stub: Callable[[Channel], C] | None = None,
    **options: Any,
) -> AsyncIterator[tuple[Server[C], ClientConn]]:
    """A started server serving ``server_handlers`` and a ready client serving
    ``client_services``, connected over loopback with fresh certificates.

    ``client_stub`` is the server's stub class for the clients' service (for
    handlers that call ``server.client_from_context(stream)``). Other keyword
    arguments go to :class:`brpc.Server` and/or :func:`brpc.dial` as
    :func:`split_options` says. The client is dialled with no name unless
    ``name=`` is given. Everything is closed on exit, also when the block raises::

        async with brpc.testing.connected([greeter], [Namer("ada")], NamerStub) as (server, conn):
            greeter.server = server
            reply = await GreeterStub(conn).Greet(GreetRequest())
    """
    server_options, dial_options = split_options(options)
    with tempfile.TemporaryDirectory(prefix="brpc-test-certs-") as directory:
        certificates = write_dev_certificates(directory)
        server_options.setdefault("certfile", certificates.server_cert)
        server_options.setdefault("keyfile", certificates.server_key)
        dial_options.setdefault("ca", certificates.ca)
        server: Server[C] = Server(server_handlers, client_stub=client_stub, **server_options)
        await server.start("127.0.0.1", 0)
        try:
            async with dial(server.address, services=client_services, **dial_options) as conn:
                yield server, conn
        finally:
            server.close()
            await server.wait_closed()

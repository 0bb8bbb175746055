"""A connected client as the server sees it: :class:`ClientInfo`.

Its own module so that the client table, presence and fan-out can name it
without importing the server. A ClientInfo stands for one connection: it
describes the client (what its hello said, its verified identity, where its
packets come from) and calls the client's services over that connection
(``stub`` and ``channel``).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Generator, Mapping
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

from ._calls._grpclib import EventDispatch
from ._calls.channel import CallChannel
from .errors import CallNotStartedError, CloseCode

if TYPE_CHECKING:
    from ._calls.base import CallConnection, CallLayer
    from ._core.link import Link
    from .auth import Identity

__all__ = ["ClientInfo", "Closing"]

C = TypeVar("C")


class Closing:
    """What ``close()`` returns: the close has started; await it to wait until it is done.

    So ``close()`` works called as a plain method (the grpclib way) and as
    ``await x.close()``.
    """

    __slots__ = ("_wait",)

    def __init__(self, wait: Callable[[], Awaitable[None]]) -> None:
        self._wait = wait

    def __await__(self) -> Generator[Any, None, None]:
        return _await(self._wait()).__await__()


async def _await(awaitable: Awaitable[None]) -> None:
    await awaitable


class _LinkTarget:
    """Calls to one client go over its one connection, or fail."""

    def __init__(self, link: Link) -> None:
        self._link = link

    async def acquire(self) -> CallConnection:
        link = self._link
        if link.closed is not None:
            raise CallNotStartedError(link.loss_reason())
        if not link.usable:
            raise CallNotStartedError(f"{link!r} is closing: it takes no new calls")
        return link

    def loss_reason(self) -> str:
        return self._link.loss_reason()


class ClientInfo(Generic[C]):
    """A connected client as the server sees it.

    ``stub`` calls the client's services over this client's own connection;
    everything else describes the client. The object stays valid after the
    client leaves (``closed`` becomes true and calls fail with UNAVAILABLE).
    """

    def __init__(
        self,
        link: Link,
        *,
        server: object,
        layer: CallLayer,
        dispatch: EventDispatch | None = None,
        client_stub: Callable[[Channel], C] | None,
    ) -> None:
        """``dispatch``: where grpclib events of calls to this client go (a new
        ``EventDispatch`` of its own, made with the channel, when None)."""
        self._link = link
        #: The server this client is connected to.
        self.server = server
        self._layer = layer
        self._dispatch = dispatch
        self._client_stub = client_stub
        self._channel: Channel | None = None
        self._stub: C | None = None

    @property
    def channel(self) -> Channel:
        """A grpclib ``Channel`` to this client: ``SomeStub(info.channel)``.

        Made when first asked for: most clients of a server are never called
        through their own channel, and an idle connection should cost little.
        """
        channel = self._channel
        if channel is None:
            channel = self._channel = self._make_channel()
        return channel

    def _make_channel(self) -> Channel:
        link = self._link
        authority = link.peer.name or link.connection_id
        dispatch = self._dispatch
        if dispatch is None:
            dispatch = EventDispatch()
        channel = CallChannel(
            authority,
            dispatch=dispatch,
            caller=self._layer.caller(_LinkTarget(link), authority=authority, dispatch=dispatch),
            # A function of the hello's facts, not a bound method: the channel
            # belongs to this object, which must not be a reference cycle.
            check=functools.partial(
                _check_served,
                link.peer.services,
                repr(link.peer.name) if link.peer.name else link.connection_id,
            ),
        )
        # Calls in flight fail when the connection ends (at once if it has).
        link.add_close_callback(lambda _: channel.close())
        return channel

    @property
    def connection_id(self) -> str:
        return self._link.connection_id

    @property
    def name(self) -> str:
        return self._link.peer.name

    @property
    def labels(self) -> Mapping[str, str]:
        return self._link.peer.labels

    @property
    def services(self) -> tuple[str, ...]:
        return self._link.peer.services

    @property
    def address(self) -> tuple[str, int] | None:
        """Where the client's packets come from now (kept current across NAT rebinding)."""
        return self._link.address

    @property
    def identity(self) -> Identity | None:
        """The client's verified identity (mutual TLS and/or the authentication
        hook), or None when the server checks neither."""
        return self._link.peer.identity

    @property
    def connected_at(self) -> float:
        """Wall-clock time (``time.time()``) the client's hello was accepted."""
        return self._link.peer.connected_at

    @property
    def stub(self) -> C:
        """The server's ``client_stub`` bound to this client's connection."""
        if self._stub is None:
            factory = self._client_stub
            if factory is None:
                raise RuntimeError(
                    "this Server was made without client_stub=...; pass the generated stub "
                    "class (for example client_stub=NamerStub) to call clients"
                )
            self._stub = factory(self.channel)
        return self._stub

    @property
    def closed(self) -> bool:
        return self._link.closed is not None

    @property
    def close_reason(self) -> str | None:
        closed = self._link.closed
        return closed.describe() if closed is not None else None

    @property
    def calls_in_flight(self) -> int:
        """Calls from this client being handled right now."""
        return self._link.calls_in

    @property
    def outgoing_calls_in_flight(self) -> int:
        """Calls to this client (through :attr:`stub` or :attr:`channel`) in flight right now."""
        return self._link.calls_out

    async def ping(self) -> float:
        """Round-trip time to the client over the control stream, in seconds."""
        return await self._link.ping()

    async def health(self, service: str = "", *, timeout: float | None = 5.0) -> str:
        """The client's health, in one call: ``"SERVING"``, ``"NOT_SERVING"``, ...

        Asks the standard ``grpc.health.v1.Health/Check`` the client serves
        (``brpc.dial(..., health=True)``) for ``service`` ("" for the whole
        client). Raises ``GRPCError`` as the call does: UNIMPLEMENTED when the
        client serves no health service, NOT_FOUND for an unknown service.
        """
        reply = await HealthStub(self.channel).Check(
            HealthCheckRequest(service=service), timeout=timeout
        )
        return HealthCheckResponse.ServingStatus.Name(reply.status)

    def transport_stats(self) -> list[dict[str, int]]:
        """Byte counters of this client's streams."""
        return self._link.session.transport_stats()

    def close(self, reason: str = "closed by the server") -> Closing:
        """Disconnect this client; its calls in flight fail.

        A plain call starts the close; ``await info.close()`` also waits until
        the connection is gone (as :meth:`wait_closed`).
        """
        self._link.close(CloseCode.NO_ERROR, reason)
        return Closing(self.wait_closed)

    async def wait_closed(self) -> None:
        await self._link.closed_event.wait()

    def __repr__(self) -> str:
        name = f" {self.name!r}" if self.name else ""
        state = " closed" if self.closed else ""
        return f"<ClientInfo{name} id={self.connection_id} {self.address}{state}>"


def _check_served(services: tuple[str, ...], who: str, method: str) -> GRPCError | None:
    """The error of a call to a service the client's hello did not list (never sent).

    ``who`` names the client (its name, else its connection ID).
    """
    if not services:  # the hello listed none: let the client answer
        return None
    service = method.split("/")[1] if method.count("/") == 2 else method
    if service in services:
        return None
    return GRPCError(
        Status.UNIMPLEMENTED,
        f"client {who} does not serve {service} (it serves {', '.join(services)}); "
        f"{method} was not sent",
    )

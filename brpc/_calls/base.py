"""The call-layer seam: what every way of carrying gRPC calls offers, and needs.

A *call layer* carries grpclib calls over a session's streams, in both
directions, with grpclib's client and server ``Stream`` APIs on top: one QUIC
stream per call (:mod:`brpc._calls.streams`, the default) or HTTP/2 lanes
(:mod:`brpc._calls.lanes`). The hello chooses one per connection, used both ways.

- :class:`CallConnection` is what a layer needs from the connection a call
  runs on (``brpc._core.link.Link`` implements it): open a stream, admit and
  count calls, say why it was lost.
- :class:`CallTarget` is where a channel's calls go: the usable connection
  now, or one to wait for (a dialing client reconnects).
- :class:`Caller` is a layer's outgoing half for one channel; :class:`CallLayer`
  makes callers and serves streams the peer opens.
- :data:`current_call_connection` tells code running for an incoming call which
  connection the call arrived on. The session layer sets it (through the
  stream's :class:`contextvars.Context`); nothing the peer sends can change it.
- :data:`call_deadline` carries the deadline of the incoming call being
  handled, so calls a handler makes inherit it (deadline propagation).
- :class:`RefusedBeforeStart` is how admission refuses a call whose handler
  has not started, so that a layer that can say so on the wire does.
"""

from __future__ import annotations

import asyncio
import contextvars
import weakref
from collections.abc import Mapping
from typing import Any, Protocol

from grpclib.const import Cardinality, Handler, Status
from grpclib.exceptions import GRPCError
from grpclib.metadata import Deadline

from ._grpclib import ClientStream, EventDispatch, MetadataLike, RecvType, SendType

__all__ = [
    "CallConnection",
    "CallLayer",
    "CallTarget",
    "Caller",
    "RefusedBeforeStart",
    "Servable",
    "call_deadline",
    "connection_of",
    "current_call_connection",
    "effective_deadline",
    "remember_connection",
]


class RefusedBeforeStart(GRPCError):
    """Raised by :meth:`CallConnection.admit`: the connection cannot take the
    call now, and its handler has not started.

    A layer that can tell the caller "never started" on the wire does so (the
    streams layer ends the call's stream with ``CONNECTION_CLOSING`` when
    ``closing``, else ``REFUSED``); any other layer sends its UNAVAILABLE status.
    """

    def __init__(self, message: str, *, closing: bool) -> None:
        super().__init__(Status.UNAVAILABLE, message)
        #: The connection is draining (it sent a go-away), rather than unable
        #: to take the call for another reason.
        self.closing = closing


class CallConnection(Protocol):
    """One connection, as the call layers see it."""

    @property
    def handle(self) -> Any:
        """The public object standing for the connection (ClientInfo or ClientConn)."""
        ...

    @property
    def usable(self) -> bool:
        """Whether new outgoing calls may start on it."""
        ...

    @property
    def lost(self) -> bool:
        """Whether it has ended."""
        ...

    @property
    def accepting(self) -> bool:
        """Whether incoming calls may start on it (not draining, not lost)."""
        ...

    @property
    def max_message_size(self) -> int: ...

    def loss_reason(self) -> str:
        """Why calls on it failed, for their UNAVAILABLE status."""
        ...

    def open_stream(self, protocol: asyncio.Protocol) -> None:
        """Run ``protocol`` on a new outgoing stream, or raise ``GRPCError(UNAVAILABLE)``
        (:class:`~brpc.errors.CallNotStartedError` when nothing was sent)."""
        ...

    def outgoing_started(self) -> None:
        """An outgoing call started on this connection."""
        ...

    def outgoing_finished(self) -> None:
        """An outgoing call counted by :meth:`outgoing_started` ended."""
        ...

    async def admit(self, method: str) -> None:
        """Admit an incoming call or raise ``GRPCError`` (limits, draining, authorization):
        :class:`RefusedBeforeStart` when it cannot take the call now (draining, closed)."""
        ...

    def incoming_finished(self) -> None:
        """An admitted incoming call ended."""
        ...


class CallTarget(Protocol):
    """Where the calls of one channel go."""

    async def acquire(self) -> CallConnection:
        """A usable connection for a new call, waiting for one if the channel
        waits for ready; raises ``GRPCError(UNAVAILABLE)`` otherwise."""
        ...

    def loss_reason(self) -> str:
        """Why calls failed when no connection is at hand."""
        ...


class Caller(Protocol):
    """A call layer's outgoing half for one channel."""

    def request(
        self,
        name: str,
        cardinality: Cardinality,
        request_type: type[SendType],
        reply_type: type[RecvType],
        *,
        deadline: Deadline | None,
        metadata: MetadataLike | None,
    ) -> ClientStream[SendType, RecvType]: ...

    def close(self) -> None:
        """Fail the calls in flight; later calls start afresh."""
        ...


class CallLayer(Protocol):
    """One way of carrying calls, for one side (a server or a dialing client)."""

    #: The name negotiated in the hello (``"streams"``, ``"lanes"``).
    name: str

    def caller(self, target: CallTarget, *, authority: str, dispatch: EventDispatch) -> Caller:
        """The outgoing half for a channel whose calls go to ``target`` and whose
        grpclib events go to ``dispatch`` (the channel's own)."""
        ...

    def accept_stream(self, connection: CallConnection) -> asyncio.Protocol:
        """The protocol serving a stream the peer opened on ``connection``."""
        ...


class Servable(Protocol):
    """What grpclib-generated service bases are: anything with ``__mapping__()``."""

    def __mapping__(self) -> Mapping[str, Handler]: ...


current_call_connection: contextvars.ContextVar[CallConnection | None] = contextvars.ContextVar(
    "brpc_current_call_connection", default=None
)
call_deadline: contextvars.ContextVar[Deadline | None] = contextvars.ContextVar(
    "brpc_call_deadline", default=None
)

_CONNECTION_OF: weakref.WeakKeyDictionary[object, CallConnection] = weakref.WeakKeyDictionary()


def remember_connection(stream: object, connection: CallConnection) -> None:
    """Note that the server-side ``stream`` is a call that arrived on ``connection``.

    A stream with a ``call_connection`` attribute (a call layer's own) that names
    it already needs no note.
    """
    if getattr(stream, "call_connection", None) is not connection:
        _CONNECTION_OF[stream] = connection


def connection_of(stream: object) -> CallConnection | None:
    """The connection an incoming call's server-side stream arrived on, if brpc served it."""
    connection: CallConnection | None = getattr(stream, "call_connection", None)
    if connection is not None:
        return connection
    return _CONNECTION_OF.get(stream)


def effective_deadline(timeout: float | None, deadline: Deadline | None) -> Deadline | None:
    """The deadline of an outgoing call: its own, capped by the one it runs under."""
    if timeout is not None:
        by_timeout = Deadline.from_timeout(timeout)
        deadline = by_timeout if deadline is None else min(deadline, by_timeout)
    inherited = call_deadline.get()
    if inherited is not None:
        deadline = inherited if deadline is None else min(deadline, inherited)
    return deadline

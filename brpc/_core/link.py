"""One established brpc connection, either side: calls both ways over one session.

A :class:`Link` exists once the hello exchange succeeded. It owns:

- the connection's call layer, both ways: it opens streams for outgoing calls
  and serves the streams the peer opens, running them in the link's
  :class:`contextvars.Context` so that handlers know the connection they serve;
- admission of incoming calls (authorization, concurrency limit, draining) and
  the count of calls in flight each way;
- the control stream after the hello (ping/pong, go-away);
- draining, written once for both sides: no new calls either way, a go-away to
  the peer, calls in flight finish within a grace period;
- what happens when the session ends: the close callbacks run once.

The link knows nothing about registries or reconnecting: the server and the
client connection build those on top of it.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import itertools
import logging
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from grpclib.const import Status
from grpclib.exceptions import GRPCError

from .._calls.base import RefusedBeforeStart, current_call_connection
from ..errors import CallNotStartedError, CloseCode, ProtocolViolation
from ..v1 import control_pb2 as pb

if TYPE_CHECKING:
    from .._calls.base import CallLayer
    from .._session.base import Session, SessionClosed
    from ..auth import Authorizer, Identity
    from ..options import Options
    from .control_stream import ControlProtocol

__all__ = ["Link", "PeerInfo"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PeerInfo:
    """What the hello said about the other side of a link."""

    #: Name from the client's hello ("" when none was given, or for servers).
    name: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    #: Services the peer said it serves.
    services: tuple[str, ...] = ()
    #: Wall-clock time (``time.time()``) the hello exchange finished.
    connected_at: float = field(default_factory=time.time)
    #: The peer's verified identity, if the server checks one.
    identity: Identity | None = None


class Link:
    """Calls in both directions over one established session."""

    def __init__(
        self,
        session: Session,
        control: ControlProtocol,
        *,
        connection_id: str,
        peer: PeerInfo,
        layer: CallLayer,
        options: Options,
        describe: str,
        make_handle: Callable[[Link], Any],
        authorize: Authorizer | None = None,
        on_go_away: Callable[[Link, pb.GoAway], None] | None = None,
    ) -> None:
        """``make_handle(link)`` makes the public object standing for this
        connection (a ClientInfo, or the ClientConn); ``authorize(handle,
        method)`` decides each incoming call; ``on_go_away`` hears the peer's
        go-away after the link stopped sending new calls."""
        self.session = session
        self.control = control
        self.connection_id = connection_id
        self.peer = peer
        self.layer = layer
        self.options = options
        self._describe = describe
        self._authorize = authorize
        self._on_go_away = on_go_away
        self.calls_in = 0
        self.calls_out = 0
        #: We are draining: incoming calls are refused and no new calls go out.
        self.draining = False
        #: The peer said it is going away: new outgoing calls should use another link.
        self.peer_going_away = False
        self.closed: SessionClosed | None = None
        # Made when first waited for (see closed_event, wait_idle): an asyncio.Event
        # costs about 400 bytes, and most links are never waited on.
        self._closed_event: asyncio.Event | None = None
        self._idle_waiters: list[asyncio.Future[None]] | None = None
        self._close_callbacks: list[Callable[[Link], None]] = []
        #: Tasks handling the peer's calls right now (cancelled if the link ends first).
        self._handling: set[asyncio.Task[Any]] = set()
        self._ping_ids = itertools.count(1)
        self._pings: dict[int, asyncio.Future[None]] = {}
        self.context = contextvars.copy_context()
        self.context.run(current_call_connection.set, self)
        self._handle: Any = make_handle(self)
        self._handle_ref: weakref.ref[Any] | None = None

    def __repr__(self) -> str:
        return f"<Link {self._describe}>"

    # -- CallConnection ----------------------------------------------------------

    @property
    def handle(self) -> Any:
        """The public object standing for this connection (ClientInfo or ClientConn).

        The handle refers to its link, so the link holds it strongly only while
        it may still be asked for it: until it closed and its last incoming call
        ended. From then on it holds it weakly, and a closed connection nobody
        refers to any more is freed by reference counting, not by a collection.
        """
        handle = self._handle
        if handle is None and self._handle_ref is not None:
            handle = self._handle_ref()
        return handle

    def _release_handle(self) -> None:
        handle = self._handle
        if handle is not None and self.closed is not None and self.calls_in == 0:
            try:
                self._handle_ref = weakref.ref(handle)
            except TypeError:
                return  # not weakly referable: keep it
            self._handle = None

    @property
    def usable(self) -> bool:
        """Whether new outgoing calls may start on this link."""
        return self.closed is None and not self.draining and not self.peer_going_away

    @property
    def lost(self) -> bool:
        return self.closed is not None

    @property
    def accepting(self) -> bool:
        """Whether incoming calls may start on this link."""
        return self.closed is None and not self.draining

    @property
    def max_message_size(self) -> int:
        return self.options.max_message_size

    def loss_reason(self) -> str:
        if self.closed is None:
            return f"stream to {self._describe} closed"
        return f"connection to {self._describe} lost: {self.closed.describe()}"

    def open_stream(self, protocol: asyncio.Protocol) -> None:
        """Run ``protocol`` on a new outgoing stream, or raise
        :class:`~brpc.errors.CallNotStartedError` (UNAVAILABLE): nothing was sent."""
        if self.closed is not None:
            raise CallNotStartedError(
                f"{self.loss_reason()}; the call was not sent, it is safe to retry"
            )
        if not self.usable:
            raise CallNotStartedError(
                f"connection to {self._describe} is closing; the call was not sent, "
                "it is safe to retry on another connection"
            )
        try:
            self.session.open_stream(protocol)
        except ConnectionError as exc:
            # The session made no stream (closing, or no stream credit it can wait for).
            raise CallNotStartedError(
                f"connection to {self._describe}: {exc}; the call was not sent, it is safe to retry"
            ) from None

    def outgoing_started(self) -> None:
        self.calls_out += 1

    def outgoing_finished(self) -> None:
        self.calls_out -= 1
        self._check_idle()

    async def admit(self, method: str) -> None:
        """Admit an incoming call (see :class:`~brpc._calls.base.CallConnection`).

        Draining or closed, it raises :class:`RefusedBeforeStart` (the handler
        has not started); not authorized or over ``max_concurrent_calls``, a
        ``GRPCError`` with that status (docs/protocol.md §4.6, "Callee").
        """
        if self.draining or self.closed is not None:
            raise self._refusal(method)
        authorize = self._authorize
        if authorize is not None:
            allowed = authorize(self.handle, method)
            if inspect.isawaitable(allowed):
                allowed = await allowed
                if self.draining or self.closed is not None:
                    # Began draining (or ended) while the hook decided.
                    raise self._refusal(method)
            if allowed is not True:
                raise GRPCError(
                    Status.PERMISSION_DENIED, f"{method} is not allowed on this connection"
                )
        limit = self.options.max_concurrent_calls
        if self.calls_in >= limit:
            raise GRPCError(
                Status.RESOURCE_EXHAUSTED,
                f"{method}: more than {limit} concurrent calls on this connection "
                "(max_concurrent_calls)",
            )
        self.calls_in += 1
        task = asyncio.current_task()
        if task is not None:
            self._handling.add(task)

    def _refusal(self, method: str) -> RefusedBeforeStart:
        if self.closed is not None:
            return RefusedBeforeStart(f"{method}: {self.loss_reason()}", closing=False)
        return RefusedBeforeStart(f"{method}: the connection is closing", closing=True)

    def incoming_finished(self) -> None:
        self.calls_in -= 1
        task = asyncio.current_task()
        if task is not None:
            self._handling.discard(task)
        self._check_idle()
        if self.closed is not None:
            self._release_handle()

    def _check_idle(self) -> None:
        waiters = self._idle_waiters
        if waiters and self.calls_in == 0 and self.calls_out == 0:
            self._idle_waiters = None
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    # -- streams the peer opens -----------------------------------------------------

    def accept_stream(self) -> tuple[asyncio.Protocol, contextvars.Context] | None:
        """The protocol and context for a stream the peer opened, or None to refuse it."""
        if self.closed is not None:
            return None
        return self.layer.accept_stream(self), self.context

    # -- lifecycle -------------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int] | None:
        """Where the peer's packets come from now (it can change: migration, NAT rebinding)."""
        return self.session.peer_address

    @property
    def busy(self) -> bool:
        """Whether calls are in flight either way."""
        return self.calls_in > 0 or self.calls_out > 0

    @property
    def closed_event(self) -> asyncio.Event:
        """Set once the link has ended."""
        event = self._closed_event
        if event is None:
            event = self._closed_event = asyncio.Event()
            if self.closed is not None:
                event.set()
        return event

    def add_close_callback(self, callback: Callable[[Link], None]) -> None:
        """Run ``callback(link)`` once when the link ends (now, if it has)."""
        if self.closed is not None:
            callback(self)
        else:
            self._close_callbacks.append(callback)

    def close(self, code: int = CloseCode.NO_ERROR, reason: str = "") -> None:
        self.session.close(code, reason)

    async def wait_idle(self) -> None:
        """Wait until no call is in flight either way."""
        if not self.busy:
            return
        waiter = asyncio.get_running_loop().create_future()
        if self._idle_waiters is None:
            self._idle_waiters = []
        waiters = self._idle_waiters
        waiters.append(waiter)
        try:
            await waiter
        finally:
            if waiter in waiters:
                waiters.remove(waiter)

    def begin_drain(self, reason: str, grace: float) -> None:
        """Take no new calls either way and tell the peer we are going away."""
        if self.closed is not None or self.draining:
            return
        self.draining = True
        self.control.send(
            pb.Envelope(go_away=pb.GoAway(reason=reason, grace_ms=max(0, int(grace * 1000))))
        )

    async def drain(self, grace: float, reason: str) -> bool:
        """:meth:`begin_drain`, then wait up to ``grace`` seconds for the calls in
        flight either way; return whether they all finished. The link stays open."""
        self.begin_drain(reason, grace)
        try:
            async with asyncio.timeout(grace):
                await self.wait_idle()
        except TimeoutError:
            return False
        return True

    def session_closed(self, closed: SessionClosed) -> None:
        """Called by the owner of the session when it ends."""
        if self.closed is not None:
            return
        self.closed = closed
        # The context refers to the link: without this they would be a cycle.
        # Tasks started in it have their own copies.
        self.context.run(current_call_connection.set, None)
        # Likewise the go-away hook (a method of the ClientConn holding this link).
        self._on_go_away = None
        log.info("%s: %s", self._describe, closed.describe())
        for waiter in self._pings.values():
            if not waiter.done():
                waiter.set_exception(ConnectionError(closed.describe()))
        self._pings.clear()
        # Whatever state its streams were in, no handler outlives its connection.
        handling, self._handling = self._handling, set()
        for task in handling:
            task.cancel()
        if self._closed_event is not None:
            self._closed_event.set()
        callbacks, self._close_callbacks = self._close_callbacks, []
        for callback in callbacks:
            try:
                callback(self)
            except Exception:
                log.exception("close callback of %s failed", self._describe)
        self._release_handle()

    # -- control stream ------------------------------------------------------------

    async def ping(self) -> float:
        """Round-trip time of a control-stream ping, in seconds."""
        if self.closed is not None:
            raise ConnectionError(self.loss_reason())
        nonce = next(self._ping_ids)
        waiter = asyncio.get_running_loop().create_future()
        self._pings[nonce] = waiter
        started = time.perf_counter()
        self.control.send(pb.Envelope(ping=pb.Ping(nonce=nonce)))
        try:
            await waiter
        finally:
            self._pings.pop(nonce, None)
        return time.perf_counter() - started

    def control_received(self, envelope: pb.Envelope) -> None:
        kind = envelope.WhichOneof("message")
        if kind == "ping":
            self.control.send(pb.Envelope(pong=pb.Pong(nonce=envelope.ping.nonce)))
        elif kind == "pong":
            waiter = self._pings.get(envelope.pong.nonce)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        elif kind == "go_away":
            log.info("%s is going away: %s", self._describe, envelope.go_away.reason)
            self.peer_going_away = True
            if self._on_go_away is not None:
                self._on_go_away(self, envelope.go_away)
        elif kind is None:
            log.debug("%s sent a control message of an unknown kind; ignored", self._describe)
        else:
            self.control_violation(
                ProtocolViolation(f"unexpected {kind} message after the hello exchange")
            )

    def control_violation(self, exc: ProtocolViolation) -> None:
        log.warning("%s broke the control protocol: %s", self._describe, exc)
        self.close(CloseCode.PROTOCOL_VIOLATION, str(exc))

    def control_closed(self, exc: Exception | None) -> None:
        if self.closed is None:
            self.close(CloseCode.PROTOCOL_VIOLATION, "control stream closed")

"""One established brpc connection, either side: calls both ways over one session.

A :class:`Link` exists once the hello exchange succeeded. It owns:

- opening outgoing lanes for the channels that send calls over it;
- serving incoming lanes with a grpclib server whose handlers were wrapped by
  :func:`brpc._calls.instrument`, each lane's callbacks running in the link's
  :class:`contextvars.Context` so handlers know the connection they serve;
- admission of incoming calls (concurrency limit, draining) and the count of
  calls in flight each way;
- the control stream after the hello (ping/pong, go-away);
- what happens when the session ends: outgoing calls fail with UNAVAILABLE and
  the close callbacks run once.

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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from grpclib.const import Status
from grpclib.exceptions import GRPCError

from ._calls import current_link
from ._grpclib import server_lane_protocol
from .errors import CloseCode, ProtocolViolation
from .v1 import control_pb2 as pb

if TYPE_CHECKING:
    from grpclib.server import Server, Stream

    from ._control_stream import ControlProtocol
    from ._session import QuicSession, SessionClosed
    from .auth import Authorizer, Identity

__all__ = ["Link", "LinkSettings", "PeerInfo"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PeerInfo:
    """What is known about the other side of a link."""

    #: Name from the client's hello ("" when none was given, or for servers).
    name: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    #: Services the peer said it serves.
    services: tuple[str, ...] = ()
    #: ``(host, port)`` the peer's packets come from.
    address: tuple[str, int] | None = None
    #: Wall-clock time (``time.time()``) the hello exchange finished.
    connected_at: float = field(default_factory=time.time)
    #: The peer's verified identity, if the server checks one.
    identity: Identity | None = None


@dataclass(frozen=True)
class LinkSettings:
    """Per-connection limits and tuning."""

    lanes: int = 1
    max_message_size: int = 4 << 20
    max_concurrent_calls: int = 1000


class Link:
    """Calls in both directions over one established QUIC session."""

    def __init__(
        self,
        session: QuicSession,
        control: ControlProtocol,
        *,
        connection_id: str,
        peer: PeerInfo,
        serving: Server,
        settings: LinkSettings,
        describe: str,
    ) -> None:
        self.session = session
        self.control = control
        self.connection_id = connection_id
        self.peer = peer
        self.settings = settings
        self.max_message_size = settings.max_message_size
        self._serving = serving
        self._describe = describe
        #: The public object standing for this connection (ClientInfo or ClientConn).
        self.handle: Any = None
        self.calls_in = 0
        #: We are draining: incoming calls are refused and no lanes are opened.
        self.draining = False
        #: The peer said it is going away: new outgoing calls should use another link.
        self.peer_going_away = False
        self.closed: SessionClosed | None = None
        self.closed_event = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._close_callbacks: list[Callable[[Link], None]] = []
        self._ping_ids = itertools.count(1)
        self._pings: dict[int, asyncio.Future[None]] = {}
        self.on_go_away: Callable[[pb.GoAway], None] | None = None
        #: Decides per incoming call whether it may run (see ``brpc.auth.Authorizer``).
        self.authorizer: Authorizer | None = None
        self.context = contextvars.copy_context()
        self.context.run(current_link.set, self)
        control.on_message = self._control_message
        control.on_violation = self._control_violation
        control.on_closed = self._control_closed

    def __repr__(self) -> str:
        return f"<Link {self._describe}>"

    @property
    def usable(self) -> bool:
        """Whether new outgoing calls may start on this link."""
        return self.closed is None and not self.draining and not self.peer_going_away

    def transport_stats(self) -> list[dict[str, int]]:
        """Byte counters of the link's live streams (control stream and lanes)."""
        return self.session.transport_stats()

    # -- lifecycle -------------------------------------------------------------

    def add_close_callback(self, callback: Callable[[Link], None]) -> None:
        """Run ``callback(link)`` once when the link ends (now, if it has)."""
        if self.closed is not None:
            callback(self)
        else:
            self._close_callbacks.append(callback)

    def close(self, code: CloseCode = CloseCode.NO_ERROR, reason: str = "") -> None:
        self.session.close(code, reason)

    def session_closed(self, closed: SessionClosed) -> None:
        """Called by the owner of the session when it ends."""
        if self.closed is not None:
            return
        self.closed = closed
        log.info("%s: %s", self._describe, closed.describe())
        for waiter in self._pings.values():
            if not waiter.done():
                waiter.set_exception(ConnectionError(closed.describe()))
        self._pings.clear()
        self.closed_event.set()
        callbacks, self._close_callbacks = self._close_callbacks, []
        for callback in callbacks:
            try:
                callback(self)
            except Exception:
                log.exception("close callback of %s failed", self._describe)

    def loss_reason(self) -> str:
        if self.closed is None:
            return f"lane to {self._describe} closed"
        return f"connection to {self._describe} lost: {self.closed.describe()}"

    # -- lanes -----------------------------------------------------------------

    def open_lane(self, protocol: asyncio.Protocol) -> None:
        """Run ``protocol`` on a new outgoing lane, or raise GRPCError(UNAVAILABLE)."""
        if self.closed is not None:
            raise GRPCError(Status.UNAVAILABLE, self.loss_reason())
        if not self.usable:
            raise GRPCError(Status.UNAVAILABLE, f"connection to {self._describe} is closing")
        self.session.open_stream(protocol)

    def incoming_lane(self) -> tuple[asyncio.Protocol, contextvars.Context] | None:
        """The protocol and context for a lane the peer opened, or None to refuse."""
        if self.closed is not None:
            return None
        # HTTP/2 allows twice the call limit, so that calls over the limit are
        # not queued by the sender but reach admission and fail fast with a
        # clear RESOURCE_EXHAUSTED; the stream limit only stops floods.
        protocol = server_lane_protocol(
            self._serving, max_concurrent_streams=2 * self.settings.max_concurrent_calls
        )
        return protocol, self.context

    # -- admission of incoming calls ---------------------------------------------

    async def admit(self, method: str, stream: Stream[Any, Any]) -> None:
        if self.draining or self.closed is not None:
            raise GRPCError(Status.UNAVAILABLE, f"{method}: the connection is closing")
        authorizer = self.authorizer
        if authorizer is not None:
            allowed = authorizer(self.handle, method)
            if inspect.isawaitable(allowed):
                allowed = await allowed
            if allowed is not True:
                raise GRPCError(
                    Status.PERMISSION_DENIED, f"{method} is not allowed on this connection"
                )
        if self.calls_in >= self.settings.max_concurrent_calls:
            raise GRPCError(
                Status.RESOURCE_EXHAUSTED,
                f"{method}: more than {self.settings.max_concurrent_calls} concurrent calls "
                "on this connection (max_concurrent_calls)",
            )
        self.calls_in += 1
        self._idle.clear()

    def finished(self) -> None:
        self.calls_in -= 1
        if self.calls_in == 0:
            self._idle.set()

    @property
    def admission(self) -> Link:
        return self

    async def wait_idle(self) -> None:
        """Wait until no incoming call is in flight."""
        await self._idle.wait()

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

    def send_go_away(self, reason: str, grace: float) -> None:
        self.control.send(
            pb.Envelope(go_away=pb.GoAway(reason=reason, grace_ms=max(0, int(grace * 1000))))
        )

    def _control_message(self, envelope: pb.Envelope) -> None:
        kind = envelope.WhichOneof("message")
        if kind == "ping":
            self.control.send(pb.Envelope(pong=pb.Pong(nonce=envelope.ping.nonce)))
        elif kind == "pong":
            waiter = self._pings.get(envelope.pong.nonce)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        elif kind == "go_away":
            log.info("%s is going away: %s", self._describe, envelope.go_away.reason)
            if self.on_go_away is not None:
                self.on_go_away(envelope.go_away)
        elif kind is None:
            log.debug("%s sent a control message of an unknown kind; ignored", self._describe)
        else:
            self._control_violation(
                ProtocolViolation(f"unexpected {kind} message after the hello exchange")
            )

    def _control_violation(self, exc: ProtocolViolation) -> None:
        log.warning("%s broke the control protocol: %s", self._describe, exc)
        self.close(CloseCode.PROTOCOL_VIOLATION, str(exc))

    def _control_closed(self, exc: Exception | None) -> None:
        if self.closed is None:
            self.close(CloseCode.PROTOCOL_VIOLATION, "control stream closed")

"""Presence: telling the application that clients came and went.

This module owns the presence events (:class:`PresenceEvent`), the
``on_connect``/``on_disconnect`` callbacks and the :class:`Watch` iterators
behind ``server.watch()``. The server reports each change once, in order, when
a client enters or leaves its table (:class:`brpc.registry.Clients`).

Guarantees:

- Events are dispatched one at a time in the order they happened, even when a
  callback causes another change (closing a client from ``on_connect``): the
  new event waits until the current one has been handed to everybody.
- Sync callbacks run inline. Async callbacks (any callback returning an
  awaitable) run as tasks tracked here, so they can never stall connection
  handling; for one client they run one after another, so its ``on_disconnect``
  callbacks start only once its ``on_connect`` callbacks have finished. Keep
  them short and start long-lived work as your own task.
- Callbacks run in a fresh :mod:`contextvars` context: nothing of the code that
  triggered the change (a handler's deadline, for instance) leaks into them.
- An exception in a callback is logged and goes no further.
- A :class:`Watch` holds at most ``max_pending`` undelivered events. A reader
  that falls further behind is resynchronised instead of growing memory: its
  backlog is dropped and, when it reads again, it gets the difference between
  what it was last told and the table's current state, as *replayed* events.
  A watch that started with the clients already connected (the default) thus
  never shows a client's disconnect without its connect before it.
- Watchers also see MOVED events when a connected client's packets start
  coming from another address (NAT rebinding, migration). A resynchronisation
  does not replay them: ``ClientInfo.address`` is always the current address.
"""

from __future__ import annotations

import asyncio
import contextvars
import enum
import inspect
import logging
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeAlias, TypeVar

if TYPE_CHECKING:
    from .peer import ClientInfo
    from .registry import Clients

__all__ = ["Presence", "PresenceCallback", "PresenceEvent", "PresenceKind", "Watch"]

log = logging.getLogger(__name__)

C = TypeVar("C")

#: A presence callback: called with the client; may return an awaitable, which is
#: then run as a task (so ``async def`` callbacks work).
PresenceCallback: TypeAlias = "Callable[[ClientInfo[C]], object]"

_DEFAULT_MAX_PENDING = 1024


class PresenceKind(enum.Enum):
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    #: A connected client's packets now come from another address (NAT
    #: rebinding, migration); the connection goes on. Watchers only.
    MOVED = "moved"


@dataclass(frozen=True, eq=False)
class PresenceEvent(Generic[C]):
    """A client entered (CONNECTED) or left (DISCONNECTED) the server's table,
    or its address changed (MOVED)."""

    kind: PresenceKind
    client: ClientInfo[C]
    #: Wall-clock time (``time.time()``) the event was made.
    at: float = field(default_factory=time.time)
    #: Made up from the table's state rather than observed as it happened: the
    #: clients already connected when a watch began, or a resynchronisation
    #: after the watcher fell more than ``max_pending`` events behind.
    replayed: bool = False
    #: For MOVED: the address the client's packets come from now.
    address: tuple[str, int] | None = None

    @property
    def connected(self) -> bool:
        return self.kind is PresenceKind.CONNECTED

    @property
    def reason(self) -> str | None:
        """Why the client left (None for other events)."""
        return self.client.close_reason if self.kind is PresenceKind.DISCONNECTED else None

    def __repr__(self) -> str:
        replayed = " replayed" if self.replayed else ""
        return f"<PresenceEvent {self.kind.value}{replayed} {self.client!r}>"


class Presence(Generic[C]):
    """Dispatches one server's presence changes to callbacks and watchers."""

    def __init__(self, clients: Clients[C], server_closed: asyncio.Event) -> None:
        #: The clients connected now (what watchers start from and resync to).
        self.clients = clients
        #: Set once the server has closed: watchers end when the last client left.
        self.server_closed = server_closed
        self._on_connect: list[PresenceCallback[C]] = []
        self._on_disconnect: list[PresenceCallback[C]] = []
        self._watchers: weakref.WeakSet[Watch[C]] = weakref.WeakSet()
        self._queue: deque[PresenceEvent[C]] = deque()
        self._dispatching = False
        #: Async callback tasks still running, and the latest one per connection ID.
        self._tasks: set[asyncio.Task[None]] = set()
        self._latest: dict[str, asyncio.Task[None]] = {}

    # -- subscribing -----------------------------------------------------------------

    def on_connect(self, callback: PresenceCallback[C]) -> Callable[[], None]:
        """Call ``callback(client)`` for every client that connects; returns an unsubscriber."""
        return _subscribe(self._on_connect, callback)

    def on_disconnect(self, callback: PresenceCallback[C]) -> Callable[[], None]:
        """Call ``callback(client)`` for every client that leaves; returns an unsubscriber."""
        return _subscribe(self._on_disconnect, callback)

    def watch(self, *, existing: bool = True, max_pending: int = _DEFAULT_MAX_PENDING) -> Watch[C]:
        if max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        watch = Watch(self, existing=existing, max_pending=max_pending)
        self._watchers.add(watch)
        return watch

    @property
    def pending_callbacks(self) -> int:
        """Async callbacks still running."""
        return len(self._tasks)

    # -- reporting (the server's) ----------------------------------------------------

    def connected(self, client: ClientInfo[C]) -> None:
        self._emit(PresenceEvent(PresenceKind.CONNECTED, client))

    def disconnected(self, client: ClientInfo[C]) -> None:
        self._emit(PresenceEvent(PresenceKind.DISCONNECTED, client))

    def moved(self, client: ClientInfo[C], address: tuple[str, int]) -> None:
        self._emit(PresenceEvent(PresenceKind.MOVED, client, address=address))

    # -- internals -------------------------------------------------------------------

    def _emit(self, event: PresenceEvent[C]) -> None:
        self._queue.append(event)
        if self._dispatching:
            return  # the dispatch loop further up the stack delivers it, in order
        self._dispatching = True
        try:
            while self._queue:
                self._dispatch(self._queue.popleft())
        finally:
            self._dispatching = False

    def _dispatch(self, event: PresenceEvent[C]) -> None:
        for watch in list(self._watchers):
            watch.push(event)
        if event.kind is PresenceKind.MOVED:
            return  # for watchers; ClientInfo.address is always current
        callbacks = self._on_connect if event.connected else self._on_disconnect
        for callback in list(callbacks):
            try:
                result = contextvars.Context().run(callback, event.client)
            except Exception:
                log.exception("%s callback %r failed for %r", event.kind.value, callback, event)
                continue
            if inspect.isawaitable(result):
                self._run_later(event, callback, result)

    def _run_later(
        self, event: PresenceEvent[C], callback: object, awaitable: Awaitable[object]
    ) -> None:
        connection_id = event.client.connection_id
        previous = self._latest.get(connection_id)
        task = asyncio.get_running_loop().create_task(
            _run_callback(previous, awaitable, callback, event),
            name=f"brpc presence {event.kind.value} {connection_id}",
            context=contextvars.Context(),
        )
        self._tasks.add(task)
        self._latest[connection_id] = task
        task.add_done_callback(lambda done: self._callback_done(done, connection_id))

    def _callback_done(self, task: asyncio.Task[None], connection_id: str) -> None:
        self._tasks.discard(task)
        if self._latest.get(connection_id) is task:
            del self._latest[connection_id]

    def forget(self, watch: Watch[C]) -> None:
        self._watchers.discard(watch)


async def _run_callback(
    previous: asyncio.Task[None] | None,
    awaitable: Awaitable[object],
    callback: object,
    event: PresenceEvent[Any],
) -> None:
    try:
        if previous is not None and not previous.done():
            await asyncio.wait([previous])
        await awaitable
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("%s callback %r failed for %r", event.kind.value, callback, event)
    finally:
        if inspect.iscoroutine(awaitable) and (
            inspect.getcoroutinestate(awaitable) == inspect.CORO_CREATED
        ):
            awaitable.close()  # cancelled before it started: no "never awaited" warning


def _subscribe(callbacks: list[Any], callback: Any) -> Callable[[], None]:
    callbacks.append(callback)

    def unsubscribe() -> None:
        if callback in callbacks:
            callbacks.remove(callback)

    return unsubscribe


class Watch(Generic[C]):
    """Presence changes as an async iterator, from ``server.watch()``.

    ``async for event in server.watch(): ...`` yields :class:`PresenceEvent`\\ s
    in order. With ``existing=True`` (the default) it starts with a replayed
    CONNECTED event for every client already connected, so the events add up
    to the table's state. With ``existing=False`` it shows changes only: a
    client that connected before the watch began may appear only as it
    leaves. It ends after the server has closed and every client's
    DISCONNECTED event was delivered.

    It stops receiving events when closed: by :meth:`aclose`, on leaving
    ``async with``, or when the iterator is garbage collected (``break`` out of
    the loop and drop it). It never holds more than ``max_pending`` events;
    see :mod:`brpc.presence` for what happens to a reader that falls behind.
    """

    def __init__(self, presence: Presence[C], *, existing: bool, max_pending: int) -> None:
        self._presence = presence
        self._max_pending = max_pending
        self._events: deque[PresenceEvent[C]] = deque()
        #: Clients this reader was told are connected (and not yet that they left).
        self._known: dict[str, ClientInfo[C]] = {}
        self._lagged = False
        self._closed = False
        self._waiter: asyncio.Future[None] | None = None
        #: Events dropped because the reader fell behind.
        self.dropped = 0
        current = presence.clients.snapshot()
        if existing:
            self._events.extend(
                PresenceEvent(PresenceKind.CONNECTED, info, replayed=True) for info in current
            )
            if len(self._events) > max_pending:
                self._overflow()
        else:
            self._known = {info.connection_id: info for info in current}

    def __aiter__(self) -> Watch[C]:
        return self

    async def __anext__(self) -> PresenceEvent[C]:
        while True:
            if self._closed:
                raise StopAsyncIteration
            if self._lagged:
                self._resync()
            if self._events:
                event = self._events.popleft()
                if event.connected:
                    self._known[event.client.connection_id] = event.client
                elif event.kind is PresenceKind.DISCONNECTED:
                    self._known.pop(event.client.connection_id, None)
                return event
            if self._presence.server_closed.is_set() and not len(self._presence.clients):
                self._close()
                raise StopAsyncIteration
            await self._wait()

    @property
    def pending(self) -> int:
        """Events received and not yet read."""
        return len(self._events)

    async def aclose(self) -> None:
        """Stop watching; a pending or later ``__anext__`` ends the iteration."""
        self._close()

    async def __aenter__(self) -> Watch[C]:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        self._close()

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return f"<Watch pending={len(self._events)} dropped={self.dropped}{state}>"

    # -- internals -------------------------------------------------------------------

    def push(self, event: PresenceEvent[C]) -> None:
        if self._closed:
            return
        if self._lagged:
            self.dropped += 1  # the resync at the next read accounts for it
            return
        self._events.append(event)
        if len(self._events) > self._max_pending:
            self._overflow()
        self._wake()

    def _overflow(self) -> None:
        log.warning(
            "a presence watcher fell more than %d events behind; it will be resynchronised",
            self._max_pending,
        )
        self.dropped += len(self._events)
        self._events.clear()
        self._lagged = True

    def _resync(self) -> None:
        """Replace the dropped backlog with the difference to the table's state."""
        self._lagged = False
        current = {info.connection_id: info for info in self._presence.clients}
        for connection_id, info in list(self._known.items()):
            if current.get(connection_id) is not info:
                self._events.append(PresenceEvent(PresenceKind.DISCONNECTED, info, replayed=True))
        for connection_id, info in current.items():
            if self._known.get(connection_id) is not info:
                self._events.append(PresenceEvent(PresenceKind.CONNECTED, info, replayed=True))

    async def _wait(self) -> None:
        loop = asyncio.get_running_loop()
        self._waiter = waiter = loop.create_future()
        server_closed = self._presence.server_closed
        watcher: asyncio.Task[Any] | None = None
        if not server_closed.is_set():
            watcher = loop.create_task(server_closed.wait(), name="brpc watch: server closed")
            watcher.add_done_callback(lambda _: _resolve(waiter))
        try:
            await waiter
        finally:
            self._waiter = None
            if watcher is not None and not watcher.done():
                watcher.cancel()

    def _wake(self) -> None:
        if self._waiter is not None:
            _resolve(self._waiter)

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            self._events.clear()
            self._known.clear()
            self._presence.forget(self)
            self._wake()


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)

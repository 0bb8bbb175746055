"""Fan-out: one call to many clients, with a result per client as each completes.

This module owns :class:`FanOut` (what ``server.call_all()`` returns) and
:class:`CallResult` (a :class:`CallSucceeded` or a :class:`CallFailed`). How it
keeps one client from holding up the others:

- every selected client gets its own task, started at once (or, with
  ``concurrency``, as soon as a slot frees); there is no shared lock, and
  nothing waits on the slowest client;
- each task puts its result in the fan-out's queue the moment it has one, so
  the iterator yields results in completion order;
- ``timeout`` is one deadline for the whole fan-out: it is sent with every
  call the function makes (gRPC deadline propagation, capped by the deadline
  of the handler calling ``call_all``, if any) and enforced locally, so a
  client that never answers yields DEADLINE_EXCEEDED when it passes;
- failures stay per client: a ``GRPCError`` as raised, UNAVAILABLE when the
  client is gone (:class:`~brpc.CallNotStartedError` when it was gone before
  its turn), any other exception (a bug in the function) as raised;
- stopping early (``aclose()``, leaving ``async with``, cancelling the task
  that iterates, or dropping the iterator) cancels the calls still running.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, Literal, NoReturn, TypeAlias, TypeVar, cast

from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.metadata import Deadline

from ._calls.base import call_deadline
from .errors import CallNotStartedError, DeadlineExceededError

if TYPE_CHECKING:
    from .peer import ClientInfo

__all__ = ["CallFailed", "CallResult", "CallSucceeded", "FanOut"]

log = logging.getLogger(__name__)

C = TypeVar("C")
T = TypeVar("T")


@dataclass(frozen=True, eq=False, repr=False)
class CallSucceeded(Generic[C, T]):
    """A fan-out call on one client that returned: ``ok`` is true, ``value`` is set."""

    client: ClientInfo[C]
    #: What the function returned.
    value: T
    #: Seconds from the start of this client's call to its result.
    elapsed: float = 0.0

    @property
    def ok(self) -> Literal[True]:
        return True

    @property
    def error(self) -> None:
        """Always None: the call succeeded."""
        return None

    @property
    def status(self) -> Status:
        """Always OK."""
        return Status.OK

    def unwrap(self) -> T:
        """The value."""
        return self.value

    def __repr__(self) -> str:
        return f"<CallResult {self.client!r} value={self.value!r}>"


@dataclass(frozen=True, eq=False, repr=False)
class CallFailed(Generic[C, T]):
    """A fan-out call on one client that raised: ``ok`` is false, ``error`` is set."""

    client: ClientInfo[C]
    #: What it raised: ``GRPCError`` for call failures (UNAVAILABLE when the client
    #: left, DEADLINE_EXCEEDED past the timeout), anything else as raised.
    error: Exception
    #: Seconds from the start of this client's call to its result.
    elapsed: float = 0.0

    @property
    def ok(self) -> Literal[False]:
        return False

    @property
    def value(self) -> None:
        """Always None: the call failed."""
        return None

    @property
    def status(self) -> Status:
        """The ``GRPCError``'s status, or UNKNOWN for other exceptions."""
        if isinstance(self.error, GRPCError):
            return self.error.status
        return Status.UNKNOWN

    def unwrap(self) -> NoReturn:
        """Raise the error."""
        raise self.error

    def __repr__(self) -> str:
        return f"<CallResult {self.client!r} error={self.error!r}>"


#: The outcome of a fan-out call on one client: a :class:`CallSucceeded` (``ok`` is
#: true and ``value`` is what the function returned) or a :class:`CallFailed`
#: (``ok`` is false and ``error`` is what it raised). Testing ``result.ok`` narrows
#: the type, so a type checker knows ``result.value`` is the value type there.
#: Both have ``client``, ``value``, ``error``, ``elapsed``, ``status`` and ``unwrap()``.
CallResult: TypeAlias = CallSucceeded[C, T] | CallFailed[C, T]


class FanOut(Generic[C, T]):
    """Results of one ``server.call_all()``: an async iterator, one result per client.

    Use ``async for result in fan_out`` (results in completion order),
    ``await fan_out.gather()`` (all of them, as a list in completion order),
    and ``async with`` or :meth:`aclose` to stop early and cancel what is left.
    """

    def __init__(
        self,
        fn: Callable[[C, ClientInfo[C]], Awaitable[T]],
        clients: Iterable[ClientInfo[C]],
        *,
        timeout: float | None = None,
        concurrency: int | None = None,
    ) -> None:
        if timeout is not None and timeout < 0:
            raise ValueError("timeout must not be negative")
        if concurrency is not None and concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self._run: _Run[C, T] = _Run(fn, list(clients), timeout=timeout, concurrency=concurrency)
        self.clients: tuple[ClientInfo[C], ...] = tuple(self._run.waiting)
        # Dropping the iterator (``break`` out of ``async for``) cancels what is left.
        weakref.finalize(self, self._run.cancel).atexit = False
        self._run.start()

    def __len__(self) -> int:
        """How many clients were selected (and so how many results there will be)."""
        return len(self.clients)

    @property
    def remaining(self) -> int:
        """Results not yet yielded."""
        return len(self.clients) - self._run.yielded

    def __aiter__(self) -> FanOut[C, T]:
        return self

    async def __anext__(self) -> CallResult[C, T]:
        try:
            return await self._run.next_result()
        except asyncio.CancelledError:
            self._run.cancel()
            raise

    async def gather(self) -> list[CallResult[C, T]]:
        """Every remaining result, in completion order."""
        return [result async for result in self]

    async def aclose(self) -> None:
        """Cancel the calls still running and wait until they have ended."""
        await self._run.cancel_and_wait()

    async def __aenter__(self) -> FanOut[C, T]:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<FanOut clients={len(self.clients)} remaining={self.remaining}>"


class _Run(Generic[C, T]):
    """The state of one fan-out, referenced by its tasks (not by the FanOut's user)."""

    def __init__(
        self,
        fn: Callable[[C, ClientInfo[C]], Awaitable[T]],
        clients: list[ClientInfo[C]],
        *,
        timeout: float | None,
        concurrency: int | None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.fn = fn
        self.waiting: deque[ClientInfo[C]] = deque(clients)
        self.concurrency = concurrency or max(1, len(clients))
        self.total = len(clients)
        self.yielded = 0
        self.running: set[asyncio.Task[None]] = set()
        self.results: deque[CallResult[C, T]] = deque()
        self.waiter: asyncio.Future[None] | None = None
        self.cancelled = False
        # Calls made from the tasks inherit the caller's context (and so the
        # deadline of the handler calling call_all, which caps our own).
        self.context = contextvars.copy_context()
        inherited = self.context.get(call_deadline)
        if inherited is not None:
            remaining = max(0.0, inherited.time_remaining())
            timeout = remaining if timeout is None else min(timeout, remaining)
        self.timeout = timeout
        self.deadline = Deadline.from_timeout(timeout) if timeout is not None else None
        self.when = self.loop.time() + timeout if timeout is not None else None

    def start(self) -> None:
        while self.waiting and len(self.running) < self.concurrency and not self.cancelled:
            self._launch(self.waiting.popleft())

    async def next_result(self) -> CallResult[C, T]:
        while not self.results:
            if self.yielded >= self.total or self.cancelled:
                raise StopAsyncIteration
            self.waiter = self.loop.create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        self.yielded += 1
        return self.results.popleft()

    def cancel(self) -> None:
        if self.cancelled:
            return
        self.cancelled = True
        self.waiting.clear()
        for task in list(self.running):
            task.cancel()
        self._wake()

    async def cancel_and_wait(self) -> None:
        self.cancel()
        if self.running:
            await asyncio.wait(list(self.running))

    # -- internals -------------------------------------------------------------------

    def _launch(self, client: ClientInfo[C]) -> None:
        if client.closed:
            self._deliver(CallFailed(client, _gone(client)))
        elif self.when is not None and self.loop.time() >= self.when:
            self._deliver(CallFailed(client, self._expired(client)))
        else:
            task = self.loop.create_task(
                self._call(client),
                name=f"brpc call_all {client.name or client.connection_id}",
                context=self.context.copy(),
            )
            self.running.add(task)
            task.add_done_callback(self._finished)

    async def _call(self, client: ClientInfo[C]) -> None:
        started = self.loop.time()
        value: T | None = None
        error: Exception | None = None
        if self.deadline is not None:
            call_deadline.set(self.deadline)
        try:
            async with asyncio.timeout_at(self.when) as scope:
                awaitable = self.fn(client.stub, client)
                if not inspect.isawaitable(awaitable):
                    raise TypeError(
                        f"call_all's function must return an awaitable, got {awaitable!r}"
                    )
                value = await awaitable
        except GRPCError as exc:
            error = exc
        except TimeoutError as exc:
            error = self._expired(client) if scope.expired() else exc
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self.cancelled or (task is not None and task.cancelling()):
                raise
            # Cancelled from inside the function, not by us: that call was cancelled.
            error = GRPCError(Status.CANCELLED, "the call was cancelled")
        except Exception as exc:
            error = exc
        elapsed = self.loop.time() - started
        if error is None:
            self._deliver(CallSucceeded(client, cast(T, value), elapsed))
        else:
            self._deliver(CallFailed(client, error, elapsed))

    def _finished(self, task: asyncio.Task[None]) -> None:
        self.running.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("call_all task failed", exc_info=task.exception())
        self.start()

    def _deliver(self, result: CallResult[C, T]) -> None:
        if self.cancelled:
            return
        self.results.append(result)
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _expired(self, client: ClientInfo[C]) -> DeadlineExceededError:
        name = client.name or client.connection_id
        return DeadlineExceededError(f"no result from client {name} within {self.timeout} s")


def _gone(client: ClientInfo[Any]) -> GRPCError:
    name = client.name or client.connection_id
    # Not sent: nothing ran on that client.
    return CallNotStartedError(f"client {name} has disconnected: {client.close_reason}")

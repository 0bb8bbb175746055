"""One-to-many relaying: ``brpc.relay.v1.Relay/Broadcast`` and the :func:`relay_all` helper.

:class:`BroadcastService` forwards one call to every target the director
picks. Every target has its own task and its own outgoing call; their items
(initial metadata, each message as bytes, the result with trailers, status and
raw details) go into one queue the handler writes to the caller as they come,
each tagged with its source, so a slow or stuck target holds up nobody else.
Request messages are offered to every target's own queue of at most
``Relay(broadcast_queue=...)`` messages; a target that falls further behind is
cancelled and ends with RESOURCE_EXHAUSTED in its own result.

:func:`relay_all` calls that method through any grpclib channel (a
``ClientConn``, or a ``grpclib.client.Channel`` to a server's TCP front) and
yields one typed :class:`RelayResult` per target, in completion order.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from google.protobuf.message import Message
from grpclib.client import Channel
from grpclib.client import Stream as ClientStream
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError
from grpclib.server import Stream
from multidict import MultiDict

from .._calls.serving import (
    RawMessage,
    raw_status_details,
    status_details_codec,
)
from ..peer import ClientInfo
from .director import SELECT_KEY, TARGET_ID_KEY, TARGET_KEY
from .forward import caller_of, check_serves, failure
from .v1 import relay_pb2 as pb
from .v1.relay_grpc import RelayBase, RelayStub

if TYPE_CHECKING:
    from .forward import Bound

__all__ = ["BroadcastService", "RelayResult", "RelaySource", "relay_all"]

M = TypeVar("M", bound=Message)
_END = object()


def _entries(metadata: Mapping[str, Any] | None) -> list[pb.MetadataEntry]:
    if not metadata:
        return []
    return [
        pb.MetadataEntry(key=key, value=value if isinstance(value, bytes) else value.encode())
        for key, value in metadata.items()
    ]


class _Leg:
    """One target of a broadcast."""

    def __init__(self, target: ClientInfo[Any], limit: int) -> None:
        self.target = target
        self.limit = limit
        # One more slot than messages allowed, so the end of the stream always fits.
        self.requests: asyncio.Queue[Any] = asyncio.Queue(maxsize=limit + 1)
        self.behind = False
        self.task: asyncio.Task[None] | None = None
        self.source = pb.Source(
            connection_id=target.connection_id, name=target.name, labels=dict(target.labels)
        )

    def offer(self, message: Any) -> None:
        task = self.task
        if task is None or task.done() or self.behind:
            return
        if message is not _END and self.requests.qsize() >= self.limit:
            self.behind = True
            task.cancel()
            return
        self.requests.put_nowait(message)


class BroadcastService(RelayBase):
    """``brpc.relay.v1.Relay``, served by a server with a relay."""

    def __init__(self, bound: Bound) -> None:
        self._bound = bound

    async def Broadcast(self, stream: Stream[pb.BroadcastRequest, pb.BroadcastItem]) -> None:
        bound = self._bound
        first = await stream.recv_message()
        if first is None or not first.method:
            raise GRPCError(
                Status.INVALID_ARGUMENT,
                "the first BroadcastRequest must name the method, for example "
                "'/greeter.v1.Greeter/Greet'",
            )
        method = first.method
        metadata: Mapping[str, Any] = stream.metadata or MultiDict()
        hops = bound.hops(metadata, method)
        caller = caller_of(stream)
        targets = await bound.targets(method, metadata, caller)
        await bound.admit(caller, method, targets)
        forwarded = bound.forwarded_metadata(metadata, hops, caller)
        raw_status_details.set(True)
        items: asyncio.Queue[pb.BroadcastItem] = asyncio.Queue(maxsize=bound.relay.broadcast_queue)
        legs = [_Leg(target, bound.relay.broadcast_queue) for target in targets]
        for leg in legs:
            leg.task = asyncio.create_task(self._run_leg(leg, method, forwarded, items))
        if first.HasField("message"):
            for leg in legs:
                leg.offer(first.message)
        distributor = asyncio.create_task(_distribute(stream, legs))
        try:
            remaining = len(legs)
            while remaining:
                item = await items.get()
                await stream.send_message(item)
                if item.HasField("result"):
                    remaining -= 1
        finally:
            distributor.cancel()
            for leg in legs:
                if leg.task is not None:
                    leg.task.cancel()
            await asyncio.gather(
                distributor, *(leg.task for leg in legs if leg.task), return_exceptions=True
            )

    async def _run_leg(
        self,
        leg: _Leg,
        method: str,
        metadata: MultiDict[Any],
        items: asyncio.Queue[pb.BroadcastItem],
    ) -> None:
        target, source = leg.target, leg.source
        call: Any = None
        try:
            check_serves(target, method)
            call = target.channel.request(
                method,
                Cardinality.STREAM_STREAM,
                RawMessage,
                RawMessage,
                timeout=self._bound.relay.max_timeout,
                metadata=metadata,
            )
            async with call:
                await call.send_request()
                sender = asyncio.create_task(_send_queued(leg, call))
                try:
                    await call.recv_initial_metadata()
                    headers = pb.Headers(metadata=_entries(call.initial_metadata))
                    await items.put(pb.BroadcastItem(source=source, headers=headers))
                    while (message := await call.recv_message()) is not None:
                        await items.put(pb.BroadcastItem(source=source, message=message))
                    await call.recv_trailing_metadata()
                finally:
                    sender.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await sender
            result = pb.Result(code=0, trailers=_entries(call.trailing_metadata))
        except GRPCError as err:
            status, message, details = failure(err, target, method)
            result = pb.Result(
                code=status.value,
                message=message or "",
                details=details.data if details is not None else b"",
                trailers=_entries(call.trailing_metadata if call is not None else None),
            )
        except asyncio.CancelledError:
            if not leg.behind:
                raise
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
            result = pb.Result(
                code=Status.RESOURCE_EXHAUSTED.value,
                message=(
                    f"{target.name or target.connection_id} fell behind: more than "
                    f"{leg.limit} request messages of {method} waiting for it"
                ),
            )
        await items.put(pb.BroadcastItem(source=source, result=result))


async def _send_queued(leg: _Leg, call: Any) -> None:
    while (message := await leg.requests.get()) is not _END:
        await call.send_message(message)
    await call.end()


async def _distribute(
    stream: Stream[pb.BroadcastRequest, pb.BroadcastItem], legs: list[_Leg]
) -> None:
    async for request in stream:
        if request.HasField("message"):
            for leg in legs:
                leg.offer(request.message)
    for leg in legs:
        leg.offer(_END)


# -- the caller's side ------------------------------------------------------------------


@dataclass(frozen=True)
class RelaySource:
    """The client a :class:`RelayResult` comes from."""

    connection_id: str
    name: str
    labels: Mapping[str, str]


@dataclass(frozen=True)
class RelayResult(Generic[M]):
    """One target's outcome of :func:`relay_all`: its messages, or its error."""

    source: RelaySource
    #: The messages it answered (one for unary methods).
    messages: Sequence[M] = ()
    #: ``GRPCError`` with the target's status, message and decoded details.
    error: GRPCError | None = None
    initial_metadata: MultiDict[Any] = field(default_factory=MultiDict)
    trailing_metadata: MultiDict[Any] = field(default_factory=MultiDict)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def status(self) -> Status:
        return Status.OK if self.error is None else self.error.status

    @property
    def value(self) -> M | None:
        """The last message (the answer of a unary method), or None."""
        return self.messages[-1] if self.messages else None

    def unwrap(self) -> M:
        """The answer, or raise the error."""
        if self.error is not None:
            raise self.error
        if not self.messages:
            raise GRPCError(
                Status.INTERNAL, f"{self.source.name or self.source.connection_id} answered nothing"
            )
        return self.messages[-1]


def _metadata(entries: Iterable[pb.MetadataEntry]) -> MultiDict[Any]:
    return MultiDict(
        (e.key, e.value if e.key.endswith("-bin") else e.value.decode("utf-8", "replace"))
        for e in entries
    )


async def relay_all(
    channel: Channel,
    method: str,
    request: Message | Iterable[Message] | AsyncIterable[Message],
    reply_type: type[M],
    *,
    target: str | None = None,
    target_id: str | None = None,
    select: str | None = None,
    metadata: Mapping[str, str | bytes] | None = None,
    timeout: float | None = None,
) -> AsyncIterator[RelayResult[M]]:
    """Call ``method`` on every client the relay behind ``channel`` picks.

    ``channel``: a ``ClientConn`` or a grpclib ``Channel`` to a server's TCP
    front. ``request``: one request message, or several (client streaming), from
    a list or an async iterator (sent as it yields them).
    ``target``/``target_id``/``select`` set the ``brpc-target``,
    ``brpc-target-id`` and ``brpc-select`` metadata. Yields one
    :class:`RelayResult` per target, in completion order; the broadcast call's
    own failure (no target, not allowed) raises ``GRPCError``.
    """
    sent: list[tuple[str, str | bytes]] = list((metadata or {}).items())
    for key, value in ((TARGET_KEY, target), (TARGET_ID_KEY, target_id), (SELECT_KEY, select)):
        if value is not None:
            sent.append((key, value))
    codec = status_details_codec()
    headers: dict[str, MultiDict[Any]] = {}
    messages: dict[str, list[M]] = {}
    async with RelayStub(channel).Broadcast.open(metadata=sent, timeout=timeout) as call:
        if isinstance(request, AsyncIterable):
            await _send_streamed(call, method, request)
        else:
            await _send_listed(
                call, method, [request] if isinstance(request, Message) else list(request)
            )
        async for item in call:
            key = item.source.connection_id
            kind = item.WhichOneof("kind")
            if kind == "headers":
                headers[key] = _metadata(item.headers.metadata)
            elif kind == "message":
                messages.setdefault(key, []).append(reply_type.FromString(item.message))
            elif kind == "result":
                result = item.result
                error = None
                if result.code != 0:
                    status = Status(result.code)
                    details = (
                        codec.decode(status, result.message, result.details)
                        if result.details
                        else None
                    )
                    error = GRPCError(status, result.message or None, details)
                yield RelayResult(
                    source=RelaySource(
                        item.source.connection_id, item.source.name, dict(item.source.labels)
                    ),
                    messages=messages.pop(key, []),
                    error=error,
                    initial_metadata=headers.pop(key, MultiDict()),
                    trailing_metadata=_metadata(result.trailers),
                )


_BroadcastCall = ClientStream[pb.BroadcastRequest, pb.BroadcastItem]


async def _send_listed(call: _BroadcastCall, method: str, requests: Sequence[Message]) -> None:
    """Send known requests, the last with END_STREAM (a unary call is one write)."""
    first = pb.BroadcastRequest(method=method)
    if requests:
        first.message = requests[0].SerializeToString()
    await call.send_message(first, end=len(requests) <= 1)
    for index, message in enumerate(requests[1:], start=2):
        await call.send_message(
            pb.BroadcastRequest(message=message.SerializeToString()),
            end=index == len(requests),
        )


async def _send_streamed(
    call: _BroadcastCall, method: str, requests: AsyncIterable[Message]
) -> None:
    """Send requests as the iterator yields them, then end the stream."""
    first: pb.BroadcastRequest | None = pb.BroadcastRequest(method=method)
    async for message in requests:
        if first is not None:
            first.message = message.SerializeToString()
            await call.send_message(first)
            first = None
        else:
            await call.send_message(pb.BroadcastRequest(message=message.SerializeToString()))
    if first is not None:
        await call.send_message(first, end=True)
    else:
        await call.end()

"""One-to-one forwarding: a relayed call, bytes untouched, to one connected client.

:class:`Bound` is a :class:`~brpc.relay.Relay` serving one server. Its
:meth:`Bound.fallback` is the server's fallback, so every call layer (and the
TCP front) answers a method the server does not serve with :meth:`Bound.forward`:

- the director picks the target clients (one is used: the least busy);
  ``authorize(caller, method, targets)`` decides;
- the call goes to the target over its brpc connection as a bidirectional
  stream of :class:`~brpc._calls.serving.RawMessage`: messages are never
  decoded or re-encoded, whatever the method's cardinality;
- the caller's metadata goes first (without the relay's own keys, with
  ``brpc-hops`` one higher), then messages flow both ways as they come, one at
  a time per direction: a leg reads its next message only once the previous
  one was handed to the other leg, so the buffer of each leg is the HTTP/2 and
  QUIC flow-control windows and a slow reader stops the sender;
- the target's initial metadata, messages, trailers, status, message and
  ``grpc-status-details-bin`` (as bytes, see
  :class:`~brpc._calls.serving.RawStatusDetails`) go back unchanged;
- deadline: the caller's, capped by ``max_timeout``; cancelling the incoming
  call cancels the outgoing one (and an outgoing failure ends the incoming
  call with its status).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

from grpclib.const import Cardinality, Handler, Status
from grpclib.exceptions import GRPCError
from grpclib.server import Stream
from multidict import MultiDict

from .._calls.base import connection_of
from .._calls.serving import RawMessage, RawStatusDetails, raw_status_details
from ..peer import ClientInfo
from .director import (
    HOPS_KEY,
    RELAY_KEYS,
    Targets,
    default_director,
    describe_target,
)

if TYPE_CHECKING:
    from ..server import Server
    from .relay import Relay

__all__ = [
    "CALLER_KEY",
    "Bound",
    "RelayAuthorizer",
    "caller_of",
    "check_serves",
    "describe_client",
    "failure",
]

log = logging.getLogger(__name__)

#: ``authorize(caller, method, targets) -> bool`` (or a coroutine).
RelayAuthorizer: TypeAlias = Callable[
    [Any, str, Sequence["ClientInfo[Any]"]], "bool | Awaitable[bool]"
]
#: Set by the relay on forwarded calls: the verified identity name of the caller
#: (absent when it has none). Whatever a caller sends under this key is dropped.
CALLER_KEY = "brpc-caller"
_STRIPPED = RELAY_KEYS | {CALLER_KEY, "authorization"}


def describe_client(info: ClientInfo[Any]) -> str:
    """``client 'worker-1' (3f2a...)`` or ``client 3f2a...``, for messages."""
    if info.name:
        return f"client {info.name!r} ({info.connection_id})"
    return f"client {info.connection_id}"


def caller_of(stream: Any) -> Any:
    """The caller of an incoming call: a ClientInfo, a FrontCaller, or None."""
    connection = connection_of(stream)
    return connection.handle if connection is not None else None


class Bound:
    """A relay serving one server."""

    def __init__(self, relay: Relay, server: Server[Any]) -> None:
        self.relay = relay
        self.server = server
        self._director = relay.director

    def fallback(self, path: str) -> Handler:
        return Handler(
            functools.partial(self.forward, path),
            Cardinality.STREAM_STREAM,
            RawMessage,
            RawMessage,
        )

    # -- choosing and admitting targets -------------------------------------------------

    def hops(self, metadata: Mapping[str, Any], method: str) -> int:
        raw = metadata.get(HOPS_KEY, "0")
        try:
            hops = int(raw)
        except (TypeError, ValueError):
            raise GRPCError(
                Status.INVALID_ARGUMENT, f"{HOPS_KEY} must be a number, not {raw!r}"
            ) from None
        if hops >= self.relay.max_hops:
            raise GRPCError(
                Status.FAILED_PRECONDITION,
                f"{method} was already relayed {hops} times ({HOPS_KEY}); this relay refuses "
                f"more than {self.relay.max_hops} (a relay loop?)",
            )
        return hops

    async def targets(
        self, method: str, metadata: Mapping[str, Any], caller: Any
    ) -> list[ClientInfo[Any]]:
        director = self._director or default_director(self.server.clients)
        found: Targets | Awaitable[Targets] = director(method, metadata, caller)
        if inspect.isawaitable(found):
            found = await found
        if found is None:
            targets: list[ClientInfo[Any]] = []
        elif isinstance(found, ClientInfo):
            targets = [found]
        else:
            targets = list(cast_targets(found))
        targets = [t for t in targets if not t.closed]
        if not targets:
            raise GRPCError(
                Status.UNAVAILABLE,
                f"no connected client to relay {method} to ({describe_target(metadata)})",
            )
        return targets

    async def admit(self, caller: Any, method: str, targets: Sequence[ClientInfo[Any]]) -> None:
        authorize = self.relay.authorize
        if authorize is None:
            if isinstance(caller, ClientInfo):
                raise GRPCError(
                    Status.PERMISSION_DENIED,
                    f"{describe_client(caller)} may not call other clients through this server "
                    f"({method}): allow it with Relay(authorize=...)",
                )
            return
        allowed = authorize(caller, method, targets)
        if inspect.isawaitable(allowed):
            allowed = await allowed
        if allowed is not True:
            raise GRPCError(
                Status.PERMISSION_DENIED, f"relaying {method} is not allowed for this caller"
            )

    def forwarded_metadata(
        self, metadata: Mapping[str, Any], hops: int, caller: Any
    ) -> MultiDict[Any]:
        out: MultiDict[Any] = MultiDict(
            (key, value) for key, value in metadata.items() if key not in _STRIPPED
        )
        out[HOPS_KEY] = str(hops + 1)
        identity = getattr(caller, "identity", None)
        if identity is not None and identity.name:
            out[CALLER_KEY] = identity.name
        return out

    # -- one-to-one ---------------------------------------------------------------------

    async def forward(self, method: str, stream: Stream[Any, Any]) -> None:
        metadata: Mapping[str, Any] = stream.metadata or MultiDict()
        hops = self.hops(metadata, method)
        caller = caller_of(stream)
        targets = await self.targets(method, metadata, caller)
        target = min(targets, key=lambda info: info.outgoing_calls_in_flight)
        await self.admit(caller, method, [target])
        check_serves(target, method)
        raw_status_details.set(True)
        call = target.channel.request(
            method,
            Cardinality.STREAM_STREAM,
            RawMessage,
            RawMessage,
            timeout=self.relay.max_timeout,
            metadata=self.forwarded_metadata(metadata, hops, caller),
        )
        await _pump(stream, call, target, method)


def cast_targets(found: Iterable[ClientInfo[Any]]) -> Iterable[ClientInfo[Any]]:
    for item in found:
        if not isinstance(item, ClientInfo):
            raise TypeError(f"a relay director returned {item!r}, not a ClientInfo")
        yield item


def check_serves(target: ClientInfo[Any], method: str) -> None:
    service = method.split("/")[1] if method.count("/") >= 2 else method
    if service not in target.services:
        raise GRPCError(
            Status.UNIMPLEMENTED,
            f"{describe_client(target)} does not serve {method} (it serves "
            f"{', '.join(target.services) or 'nothing'})",
        )


def failure(err: GRPCError, target: ClientInfo[Any], method: str) -> tuple[Status, str | None, Any]:
    """Status, message and raw details to pass on for a failed outgoing call."""
    details = err.details if isinstance(err.details, RawStatusDetails) else None
    message = err.message
    if target.closed and err.status is Status.UNAVAILABLE and details is None:
        message = f"{describe_client(target)} left during {method}: {target.close_reason}"
    elif details is None and err.status is Status.UNAVAILABLE:
        message = f"relaying {method} to {describe_client(target)}: {message}"
    return err.status, message, details


async def _send_requests(stream: Stream[Any, Any], call: Any) -> None:
    """Caller -> target, one message at a time, then the end of the stream."""
    try:
        async for message in stream:
            await call.send_message(message)
        await call.end()
    except (GRPCError, ConnectionError, asyncio.CancelledError):
        # Reading the caller's stream failed (a message over the size limit,
        # ...): the caller gets this error and the target's call is reset.
        raise
    except Exception as exc:  # the target ended the call: its status says why
        log.debug("relay: request stream stopped: %r", exc)


async def _receive_replies(stream: Stream[Any, Any], call: Any) -> None:
    """Target -> caller: initial metadata, then each message as it comes."""
    await call.recv_initial_metadata()
    await stream.send_initial_metadata(metadata=call.initial_metadata)
    while (message := await call.recv_message()) is not None:
        await stream.send_message(message)
    await call.recv_trailing_metadata()


async def _pump(stream: Stream[Any, Any], call: Any, target: ClientInfo[Any], method: str) -> None:
    legs: list[asyncio.Task[None]] = []
    try:
        async with call:
            await call.send_request()
            sender = asyncio.create_task(_send_requests(stream, call))
            receiver = asyncio.create_task(_receive_replies(stream, call))
            legs = [sender, receiver]
            # Until the target's status arrives, or the caller's side fails.
            await asyncio.wait(legs, return_when=asyncio.FIRST_EXCEPTION)
            if not receiver.done():
                receiver.cancel()
                sender.result()  # raises what stopped the caller's side
            receiver.result()
    except GRPCError as err:
        status, text, details = failure(err, target, method)
        await stream.send_trailing_metadata(
            status=status,
            status_message=text,
            status_details=details,
            metadata=call.trailing_metadata or (),
        )
        return
    finally:
        for leg in legs:
            leg.cancel()
        for leg in legs:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await leg
    await stream.send_trailing_metadata(metadata=call.trailing_metadata or ())

"""What one side serves: its handlers, wrapped so every incoming call is admitted.

:class:`Serving` is built once per server or dialing client from the
grpclib service implementations it serves. Every handler is wrapped: the
wrapper finds the connection the call arrived on (from the stream's context,
never from anything the peer sent), asks it to admit the call (limits,
draining, authorization), remembers the connection for
``client_from_context``, makes the call's deadline the one nested calls
inherit, and counts the call until it ends. Every call layer serves through
the same wrapped mapping.

A side may also have a *fallback*: a function that answers methods it does
not serve itself (the relay forwards them to connected clients). Call layers
find a method's handler with :meth:`Serving.lookup`, which consults the
mapping first and the fallback second, and wraps what the fallback returns
like every other handler. :class:`RawMessage` is the marker type of messages
passed through as bytes, undecoded: :class:`SizeLimitedCodec` hands them over
as they are, and :class:`PassThroughStatusDetailsCodec` passes
``grpc-status-details-bin`` through as :class:`RawStatusDetails` where
:data:`raw_status_details` is set.
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from grpclib.const import Handler, Status
from grpclib.encoding.base import StatusDetailsCodecBase
from grpclib.encoding.proto import ProtoCodec, ProtoStatusDetailsCodec
from grpclib.exceptions import GRPCError
from grpclib.health.service import Health
from grpclib.reflection.service import ServerReflection
from grpclib.server import Stream

from ._grpclib import EventDispatch
from .base import Servable, call_deadline, current_call_connection, remember_connection

__all__ = [
    "Fallback",
    "PassThroughStatusDetailsCodec",
    "RawMessage",
    "RawStatusDetails",
    "Serving",
    "SizeLimitedCodec",
    "raw_status_details",
    "served_extras",
    "service_names",
    "status_details_codec",
]


class RawMessage:
    """Marker message type: a message of this type is its encoded ``bytes``, untouched."""


@dataclass(frozen=True)
class RawStatusDetails:
    """The bytes of a ``grpc-status-details-bin`` trailer, passed through as they are."""

    data: bytes


#: Set (to True) in the task of a call whose received status details must stay
#: raw bytes (:class:`RawStatusDetails`) instead of being decoded.
raw_status_details: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "brpc_raw_status_details", default=False
)

#: ``fallback(path)`` -> a handler for a method the side does not serve, or None.
Fallback = Callable[[str], Handler | None]


class SizeLimitedCodec(ProtoCodec):
    """Protobuf codec that refuses to encode messages above ``max_size`` bytes.

    Messages of type :class:`RawMessage` are bytes and pass through as they are.
    """

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size

    def encode(self, message: Any, message_type: Any) -> bytes:
        data = message if message_type is RawMessage else super().encode(message, message_type)
        if len(data) > self.max_size:
            raise GRPCError(
                Status.RESOURCE_EXHAUSTED,
                f"message of {len(data)} bytes exceeds the limit of {self.max_size} bytes "
                "(max_message_size)",
            )
        return data

    def decode(self, data: bytes, message_type: Any) -> Any:
        if message_type is RawMessage:
            return data
        return super().decode(data, message_type)


class PassThroughStatusDetailsCodec(ProtoStatusDetailsCodec):
    """google.rpc.Status details, with a way to pass them through undecoded.

    Encoding :class:`RawStatusDetails` sends its bytes unchanged; decoding in a
    task where :data:`raw_status_details` is set returns them as
    :class:`RawStatusDetails` (so details of types this process does not know
    are never re-encoded).
    """

    def encode(self, status: Status, message: str | None, details: Any) -> bytes:
        if isinstance(details, RawStatusDetails):
            return details.data
        return super().encode(status, message, details)

    def decode(self, status: Status, message: str | None, data: bytes) -> Any:
        if raw_status_details.get():
            return RawStatusDetails(data)
        return super().decode(status, message, data)


def status_details_codec() -> StatusDetailsCodecBase:
    """The codec of google.rpc.Status details (googleapis-common-protos is a dependency)."""
    return PassThroughStatusDetailsCodec()


def service_names(handlers: Iterable[Servable]) -> tuple[str, ...]:
    """The fully-qualified names of the services ``handlers`` implement, in order."""
    names: dict[str, None] = {}
    for servable in handlers:
        for method in servable.__mapping__():
            names[method.split("/")[1]] = None
    return tuple(names)


def _wrap(method: str, func: Any) -> Any:
    @functools.wraps(func)
    async def handle(stream: Stream[Any, Any]) -> None:
        connection = current_call_connection.get()
        if connection is None:
            raise GRPCError(Status.INTERNAL, "call did not arrive on a brpc connection")
        await connection.admit(method)
        try:
            remember_connection(stream, connection)
            call_deadline.set(stream.deadline)
            await func(stream)
        finally:
            connection.incoming_finished()

    return handle


def _instrument(handlers: Iterable[Servable]) -> dict[str, Handler]:
    mapping: dict[str, Handler] = {}
    for servable in handlers:
        for method, handler in servable.__mapping__().items():
            if method in mapping:
                raise ValueError(f"method {method} is served by more than one handler")
            mapping[method] = handler._replace(func=_wrap(method, handler.func))
    return mapping


def served_extras(
    handlers: Iterable[Servable], *, reflection: bool, health: bool
) -> list[Servable]:
    """``handlers`` plus grpclib's health service and server reflection, if asked for."""
    served = list(handlers)
    if health:
        served.append(Health())
    if reflection:
        served = list(ServerReflection.extend(served))
    return served


class Serving:
    """The wrapped handlers of one side, with the codecs and event dispatcher they use.

    Call layers find handlers with :meth:`lookup` (never ``mapping`` alone), so
    that a fallback set with :meth:`set_fallback` answers the other methods.
    """

    def __init__(
        self,
        handlers: Iterable[Servable],
        *,
        max_message_size: int,
        dispatch: EventDispatch,
        fallback: Fallback | None = None,
    ) -> None:
        handlers = tuple(handlers)
        #: Method path -> wrapped grpclib ``Handler``.
        self.mapping: Mapping[str, Handler] = _instrument(handlers)
        #: Services served, by full name.
        self.services = service_names(handlers)
        self.max_message_size = max_message_size
        self.codec = SizeLimitedCodec(max_message_size)
        self.status_details_codec = status_details_codec()
        #: grpclib's events of both sides: ``grpclib.events.listen(owner, ...)``.
        self.dispatch = dispatch
        self._fallback = fallback

    def set_fallback(self, fallback: Fallback | None) -> None:
        """Answer methods not in :attr:`mapping` with ``fallback(path)`` (None: no fallback)."""
        self._fallback = fallback

    def lookup(self, path: str) -> Handler | None:
        """The wrapped handler of method ``path``: served here, else from the fallback.

        None means the method is not served (the call layer answers UNIMPLEMENTED).
        A handler from the fallback is admitted and counted like any other.
        """
        handler = self.mapping.get(path)
        if handler is not None or self._fallback is None:
            return handler
        found = self._fallback(path)
        if found is None:
            return None
        return found._replace(func=_wrap(path, found.func))

"""What one side serves: its handlers, wrapped so every incoming call is admitted.

:class:`Serving` is built once per server or dialing client from the
grpclib service implementations it serves. Every handler is wrapped: the
wrapper finds the connection the call arrived on (from the stream's context,
never from anything the peer sent), asks it to admit the call (limits,
draining, authorization), remembers the connection for
``client_from_context``, makes the call's deadline the one nested calls
inherit, and counts the call until it ends. Every call layer serves through
the same wrapped mapping.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from grpclib.const import Cardinality, Handler, Status
from grpclib.encoding.base import StatusDetailsCodecBase
from grpclib.encoding.proto import ProtoCodec, ProtoStatusDetailsCodec
from grpclib.exceptions import GRPCError
from grpclib.server import Stream

from ._grpclib import EventDispatch, deadline_fired
from .base import Servable, call_deadline, current_call_connection, remember_connection

__all__ = ["Serving", "SizeLimitedCodec", "service_names", "status_details_codec"]


class SizeLimitedCodec(ProtoCodec):
    """Protobuf codec that refuses to encode messages above ``max_size`` bytes."""

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size

    def encode(self, message: Any, message_type: Any) -> bytes:
        data = super().encode(message, message_type)
        if len(data) > self.max_size:
            raise GRPCError(
                Status.RESOURCE_EXHAUSTED,
                f"message of {len(data)} bytes exceeds the limit of {self.max_size} bytes "
                "(max_message_size)",
            )
        return data


def status_details_codec() -> StatusDetailsCodecBase:
    """The codec of google.rpc.Status details (googleapis-common-protos is a dependency)."""
    return ProtoStatusDetailsCodec()


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
        except (TimeoutError, GRPCError) as exc:
            if _deadline_ran_out(stream, exc):
                # The handler was waiting on a call that inherited this call's
                # deadline and reported it; for grpclib that is the handler
                # refusing to be cancelled ("Failed to handle cancellation"
                # and a traceback). It was cancelled, by the deadline.
                raise asyncio.CancelledError() from exc
            raise
        finally:
            connection.incoming_finished()

    return handle


def _deadline_ran_out(stream: Stream[Any, Any], exc: Exception) -> bool:
    if isinstance(exc, GRPCError) and exc.status is not Status.DEADLINE_EXCEEDED:
        return False
    return deadline_fired(stream)


def _instrument(handlers: Iterable[Servable]) -> dict[str, Handler]:
    mapping: dict[str, Handler] = {}
    for servable in handlers:
        for method, handler in servable.__mapping__().items():
            if method in mapping:
                raise ValueError(f"method {method} is served by more than one handler")
            mapping[method] = handler._replace(func=_wrap(method, handler.func))
    return mapping


class _ServedMethods(Mapping[str, Handler]):
    """The wrapped handlers by method path.

    ``get()`` of a method not served returns a handler that fails the call
    with UNIMPLEMENTED naming the method and who was called (grpclib's own
    answer is a bare "Method not found").
    """

    def __init__(self, handlers: dict[str, Handler], *, side: str, services: tuple[str, ...]):
        self._handlers = handlers
        self._side = side
        self._services = services

    def __getitem__(self, method: str) -> Handler:
        return self._handlers[method]

    def __iter__(self) -> Iterator[str]:
        return iter(self._handlers)

    def __len__(self) -> int:
        return len(self._handlers)

    def get(self, method: str, default: Any = None) -> Any:
        handler = self._handlers.get(method)
        if handler is not None:
            return handler
        return Handler(self._unimplemented(method), Cardinality.UNARY_UNARY, object, object)

    def _unimplemented(self, method: str) -> Any:
        served = ", ".join(self._services) or "no services"
        message = f"{method} is not served by {self._side} (it serves {served})"

        async def unimplemented(stream: Stream[Any, Any]) -> None:
            raise GRPCError(Status.UNIMPLEMENTED, message)

        return unimplemented


class Serving:
    """The wrapped handlers of one side, with the codecs and event dispatcher they use."""

    def __init__(
        self,
        handlers: Iterable[Servable],
        *,
        max_message_size: int,
        dispatch: EventDispatch,
        side: str = "the peer",
    ) -> None:
        """``side`` names this side for callers' errors ("the server", "the client 'web-1'")."""
        handlers = tuple(handlers)
        #: Services served, by full name.
        self.services = service_names(handlers)
        #: Method path -> wrapped grpclib ``Handler``.
        self.mapping: Mapping[str, Handler] = _ServedMethods(
            _instrument(handlers), side=side, services=self.services
        )
        self.max_message_size = max_message_size
        self.codec = SizeLimitedCodec(max_message_size)
        self.status_details_codec = status_details_codec()
        #: grpclib's events of both sides: ``grpclib.events.listen(owner, ...)``.
        self.dispatch = dispatch

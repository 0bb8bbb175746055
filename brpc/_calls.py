"""What brpc wraps around every gRPC call, in either direction.

- :data:`current_link` is the context variable that tells code running for an
  incoming call which connection the call arrived on. The session layer sets it
  (through the lane's :class:`contextvars.Context`) from the stream the call
  arrived on; nothing the peer sends can change it.
- :data:`call_deadline` carries the deadline of the incoming call being
  handled, so that calls a handler makes inherit it (deadline propagation).
- :func:`instrument` wraps service handlers: it admits or refuses each call
  through the connection's :class:`CallAdmission` (limits, draining,
  authorization), bounds received message sizes and tracks calls in flight.
- :class:`SizeLimitedCodec` refuses to send messages above the limit.
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from grpclib.const import Handler, Status
from grpclib.encoding.base import StatusDetailsCodecBase
from grpclib.encoding.proto import ProtoCodec, ProtoStatusDetailsCodec
from grpclib.exceptions import GRPCError
from grpclib.metadata import Deadline
from grpclib.server import Server

from ._grpclib import limit_received_message_size, server_h2_stream

if TYPE_CHECKING:
    from grpclib.server import Stream

    from ._link import Link

__all__ = [
    "CallAdmission",
    "Servable",
    "SizeLimitedCodec",
    "call_deadline",
    "current_link",
    "effective_deadline",
    "instrument",
    "serving_server",
    "status_details_codec",
]

current_link: contextvars.ContextVar[Link | None] = contextvars.ContextVar(
    "brpc_current_link", default=None
)
call_deadline: contextvars.ContextVar[Deadline | None] = contextvars.ContextVar(
    "brpc_call_deadline", default=None
)


def effective_deadline(timeout: float | None, deadline: Deadline | None) -> Deadline | None:
    """The deadline of an outgoing call: its own, capped by the one it runs under."""
    if timeout is not None:
        by_timeout = Deadline.from_timeout(timeout)
        deadline = by_timeout if deadline is None else min(deadline, by_timeout)
    inherited = call_deadline.get()
    if inherited is not None:
        deadline = inherited if deadline is None else min(deadline, inherited)
    return deadline


class Servable(Protocol):
    """What grpclib-generated service bases are: anything with ``__mapping__()``."""

    def __mapping__(self) -> Mapping[str, Handler]: ...


class CallAdmission(Protocol):
    """The per-connection gate every incoming call passes."""

    max_message_size: int

    async def admit(self, method: str, stream: Stream[Any, Any]) -> None:
        """Raise ``GRPCError`` to refuse the call before the handler runs."""
        ...

    def finished(self) -> None:
        """Called once for every admitted call when it ends."""
        ...


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


def _wrap(method: str, func: Any) -> Any:
    @functools.wraps(func)
    async def handle(stream: Stream[Any, Any]) -> None:
        link = current_link.get()
        if link is None:
            raise GRPCError(Status.INTERNAL, "call did not arrive on a brpc connection")
        admission = link.admission
        await admission.admit(method, stream)
        try:
            limit_received_message_size(server_h2_stream(stream), admission.max_message_size)
            call_deadline.set(stream.deadline)
            await func(stream)
        finally:
            admission.finished()

    return handle


def instrument(handlers: Iterable[Servable]) -> Mapping[str, Handler]:
    """The merged ``__mapping__()`` of ``handlers`` with every method wrapped."""
    mapping: dict[str, Handler] = {}
    for servable in handlers:
        for method, handler in servable.__mapping__().items():
            if method in mapping:
                raise ValueError(f"method {method} is served by more than one handler")
            mapping[method] = handler._replace(func=_wrap(method, handler.func))
    return mapping


def status_details_codec() -> StatusDetailsCodecBase:
    """The codec of google.rpc.Status details (googleapis-common-protos is a dependency)."""
    return ProtoStatusDetailsCodec()


def serving_server(handlers: Iterable[Servable], max_message_size: int) -> Server:
    """A grpclib server for incoming lanes: instrumented handlers, size-limited codec."""
    return Server(
        [InstrumentedServable(instrument(handlers))],
        codec=SizeLimitedCodec(max_message_size),
        status_details_codec=status_details_codec(),
    )


class InstrumentedServable:
    """A ``Servable`` exposing an already instrumented mapping."""

    def __init__(self, mapping: Mapping[str, Handler]) -> None:
        self._mapping = mapping

    def __mapping__(self) -> Mapping[str, Handler]:
        return self._mapping

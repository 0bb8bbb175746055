"""Which frames may arrive when on a call's stream, without I/O.

A call's stream carries, from the caller, ``REQUEST_HEADERS MESSAGE* FIN``
and, from the callee, ``[RESPONSE_HEADERS] MESSAGE* TRAILERS FIN``. The two
receive-side state machines here take the decoder's events and the stream's
end (FIN) in arrival order and raise :class:`~brpc._wire.callframe.CallStreamError`
for anything out of order. Each is a transition table, nothing more.
"""

from __future__ import annotations

import enum
from typing import ClassVar

from .callframe import (
    CallStreamError,
    FrameEvent,
    MessageReceived,
    RequestHeadersReceived,
    ResponseHeadersReceived,
    StreamError,
    TrailersReceived,
)

__all__ = [
    "CalleeReceiveState",
    "CallerReceiveState",
    "EndOfStream",
    "EndedWithoutStatus",
    "ReceiveState",
]


class EndOfStream:
    """The peer's FIN: it sends nothing more on the stream."""


class ReceiveState(enum.Enum):
    """Where one side's receiving half of a call's stream is."""

    #: Callee: nothing received yet; the request headers come first.
    AWAITING_REQUEST_HEADERS = enum.auto()
    #: Caller: nothing received yet; response headers, a message or trailers come next.
    AWAITING_RESPONSE = enum.auto()
    #: Messages may arrive (callee: then FIN; caller: then trailers).
    RECEIVING_MESSAGES = enum.auto()
    #: Caller: the trailers arrived; only FIN may follow.
    TRAILERS_RECEIVED = enum.auto()
    #: The peer's FIN arrived after everything it had to send.
    CLOSED = enum.auto()

    # Members are singletons: hash them by identity, in C (Enum hashes the name
    # in Python, once per frame received).
    __hash__ = object.__hash__


class EndedWithoutStatus(CallStreamError):
    """The callee ended its side of the stream (FIN) without sending trailers.

    The call has no status: the caller reports INTERNAL, or UNAVAILABLE when it
    knows the connection is going away.
    """

    def __init__(self, message: str) -> None:
        super().__init__(StreamError.PROTOCOL_ERROR, message)


_State = ReceiveState
_Input = type[FrameEvent] | type[EndOfStream]


class _ReceiveMachine:
    _TRANSITIONS: ClassVar[dict[tuple[_State, _Input], _State]]
    _INITIAL: ClassVar[_State]
    _SIDE: ClassVar[str]
    __slots__ = ("state",)

    def __init__(self) -> None:
        self.state = self._INITIAL

    def receive(self, event: FrameEvent) -> None:
        """Accept ``event`` or raise :class:`CallStreamError` (PROTOCOL_ERROR)."""
        new = self._TRANSITIONS.get((self.state, type(event)))
        if new is None:
            raise CallStreamError(
                StreamError.PROTOCOL_ERROR,
                f"{self._SIDE} received {_describe(type(event))} "
                f"while {self.state.name.lower().replace('_', ' ')}",
            )
        self.state = new

    def end_of_stream(self) -> None:
        """Accept the peer's FIN or raise :class:`CallStreamError`."""
        new = self._TRANSITIONS.get((self.state, EndOfStream))
        if new is None:
            if self.state is ReceiveState.CLOSED:
                raise CallStreamError(
                    StreamError.PROTOCOL_ERROR, f"{self._SIDE} received the end of the stream twice"
                )
            raise self._early_end()
        self.state = new

    def _early_end(self) -> CallStreamError:
        raise NotImplementedError


def _describe(kind: _Input) -> str:
    return {
        RequestHeadersReceived: "request headers",
        ResponseHeadersReceived: "response headers",
        MessageReceived: "a message",
        TrailersReceived: "trailers",
        EndOfStream: "the end of the stream",
    }[kind]


class CalleeReceiveState(_ReceiveMachine):
    """What the callee may receive from the caller: ``REQUEST_HEADERS MESSAGE* FIN``."""

    _INITIAL = ReceiveState.AWAITING_REQUEST_HEADERS
    _SIDE = "callee"
    _TRANSITIONS: ClassVar[dict[tuple[_State, _Input], _State]] = {
        (_State.AWAITING_REQUEST_HEADERS, RequestHeadersReceived): _State.RECEIVING_MESSAGES,
        (_State.RECEIVING_MESSAGES, MessageReceived): _State.RECEIVING_MESSAGES,
        (_State.RECEIVING_MESSAGES, EndOfStream): _State.CLOSED,
    }
    __slots__ = ()

    def _early_end(self) -> CallStreamError:
        return CallStreamError(
            StreamError.PROTOCOL_ERROR, "the caller ended the stream before its request headers"
        )


class CallerReceiveState(_ReceiveMachine):
    """What the caller may receive: ``[RESPONSE_HEADERS] MESSAGE* TRAILERS FIN``."""

    _INITIAL = ReceiveState.AWAITING_RESPONSE
    _SIDE = "caller"
    _TRANSITIONS: ClassVar[dict[tuple[_State, _Input], _State]] = {
        (_State.AWAITING_RESPONSE, ResponseHeadersReceived): _State.RECEIVING_MESSAGES,
        (_State.AWAITING_RESPONSE, MessageReceived): _State.RECEIVING_MESSAGES,
        (_State.AWAITING_RESPONSE, TrailersReceived): _State.TRAILERS_RECEIVED,
        (_State.RECEIVING_MESSAGES, MessageReceived): _State.RECEIVING_MESSAGES,
        (_State.RECEIVING_MESSAGES, TrailersReceived): _State.TRAILERS_RECEIVED,
        (_State.TRAILERS_RECEIVED, EndOfStream): _State.CLOSED,
    }
    __slots__ = ()

    def _early_end(self) -> CallStreamError:
        return EndedWithoutStatus(
            "the callee ended the call's stream without sending a status (no trailers)"
        )

"""A grpclib ``Channel`` whose calls go through a call layer's :class:`Caller`.

Generated stubs take a ``grpclib.client.Channel`` and only ever call its
``request()``. :class:`CallChannel` is such a channel (a real subclass, so
type checkers accept ``FooStub(conn)``); its ``request()`` applies deadline
propagation and hands the call to its caller. grpclib's event hooks
(``grpclib.events.listen(channel, SendRequest, ...)``) work on it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from grpclib.client import Channel
from grpclib.const import Cardinality
from grpclib.exceptions import GRPCError
from grpclib.metadata import Deadline

from ._grpclib import ClientStream, EventDispatch, MetadataLike, RecvType, SendType
from .base import Caller, effective_deadline

__all__ = ["CallChannel"]


class CallChannel(Channel):
    """Base of brpc's channels: ``request()`` through a call layer."""

    def __init__(
        self,
        authority: str,
        *,
        dispatch: EventDispatch,
        caller: Caller,
        check: Callable[[str], GRPCError | None] | None = None,
    ) -> None:
        """``check(method)``, if given, runs for each call; a ``GRPCError`` it
        returns fails the call when it would send its request (nothing is sent)."""
        super().__init__(host=authority, port=443)
        self._authority = authority
        self.__dispatch__ = dispatch
        self._caller = caller
        self._check = check

    def request(
        self,
        name: str,
        cardinality: Cardinality,
        request_type: type[SendType],
        reply_type: type[RecvType],
        *,
        timeout: float | None = None,
        deadline: Deadline | None = None,
        metadata: MetadataLike | None = None,
    ) -> ClientStream[SendType, RecvType]:
        stream = self._caller.request(
            name,
            cardinality,
            request_type,
            reply_type,
            deadline=effective_deadline(timeout, deadline),
            metadata=metadata,
        )
        if self._check is not None:
            # Every layer's stream fails with ``refused`` instead of sending its request.
            cast(Any, stream).refused = self._check(name)
        return stream

    def close(self) -> None:
        """Fail the calls in flight through this channel; the connection stays up."""
        self._caller.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._authority}>"

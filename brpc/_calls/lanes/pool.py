"""Outgoing lanes: one channel's calls over HTTP/2-in-a-stream lanes.

A lane is a bidirectional stream carrying one HTTP/2 connection; the side that
opens it is the HTTP/2 client. :class:`LanePool` spreads a channel's outgoing
calls over a fixed number of lanes, round robin. Each lane opens its stream
lazily, on the connection its :class:`CallTarget` gives, on its first call and
again after its stream died, so a broken lane costs one stream, never the
connection. A lane whose connection stopped taking new calls (draining, going
away, lost) is left to its calls in flight and replaced for new ones.
"""

from __future__ import annotations

from typing import Any

from grpclib.const import Cardinality
from grpclib.metadata import Deadline
from grpclib.protocol import H2Protocol

from .._grpclib import (
    CallStream,
    EventDispatch,
    LaneChannel,
    MetadataLike,
    RecvType,
    SendType,
    close_lane,
)
from ..base import CallConnection, CallTarget

__all__ = ["LanePool"]


class _Lane(LaneChannel):
    """One lane of a pool: a grpclib channel whose connection is a stream."""

    def __init__(self, target: CallTarget, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._target = target
        #: The connection the current lane's stream belongs to.
        self.connection: CallConnection | None = None

    async def open_lane(self, protocol: H2Protocol) -> None:
        connection = await self._target.acquire()
        connection.open_stream(protocol)
        self.connection = connection

    def loss_reason(self) -> str:
        connection = self.connection
        return connection.loss_reason() if connection is not None else self._target.loss_reason()

    def lane_lost(self) -> bool:
        connection = self.connection
        return super().lane_lost() or (connection is not None and connection.lost)

    def call_started(self, stream: CallStream[Any, Any]) -> None:
        connection = self.connection
        if connection is not None:
            stream.counted_on = connection
            connection.outgoing_started()

    def call_ended(self, stream: CallStream[Any, Any]) -> None:
        connection, stream.counted_on = stream.counted_on, None
        if connection is not None:
            connection.outgoing_finished()

    def retire_if_unusable(self) -> None:
        """Send new calls on a new lane if this one's connection takes no new calls."""
        connection = self.connection
        if connection is not None and not connection.usable:
            self.detach()
            self.connection = None


class LanePool:
    """A fixed set of lanes behind one ``request()``: the lanes layer's :class:`Caller`."""

    def __init__(
        self,
        target: CallTarget,
        *,
        count: int,
        authority: str,
        max_message_size: int,
        codec: Any,
        status_details_codec: Any,
        dispatch: EventDispatch,
    ) -> None:
        if count < 1:
            raise ValueError("a connection needs at least one lane per direction")
        self._lanes = [
            _Lane(
                target,
                authority=authority,
                max_message_size=max_message_size,
                codec=codec,
                status_details_codec=status_details_codec,
                dispatch=dispatch,
            )
            for _ in range(count)
        ]
        self._next = 0

    def request(
        self,
        name: str,
        cardinality: Cardinality,
        request_type: type[SendType],
        reply_type: type[RecvType],
        *,
        deadline: Deadline | None,
        metadata: MetadataLike | None,
    ) -> CallStream[SendType, RecvType]:
        lanes = self._lanes
        lane = lanes[self._next]
        self._next = (self._next + 1) % len(lanes)
        lane.retire_if_unusable()
        return lane.request(
            name, cardinality, request_type, reply_type, deadline=deadline, metadata=metadata
        )

    def close(self) -> None:
        """Close every lane; calls on them fail. Later calls open new lanes."""
        for lane in self._lanes:
            protocol = lane.protocol
            if protocol is not None:
                close_lane(protocol)
            lane.close()
            lane.connection = None

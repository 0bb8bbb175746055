"""Outgoing lanes: a grpclib-compatible channel over HTTP/2-in-QUIC-stream lanes.

A lane is a QUIC bidirectional stream carrying one HTTP/2 connection; the side
that opens it is the HTTP/2 client. :class:`LanePool` spreads a connection's
outgoing calls over a fixed number of lanes, round robin. Each lane opens its
stream lazily on its first call and again after the stream dies, so a broken
lane costs one stream, never the connection. The pool does not know QUIC: the
owner gives it a coroutine that runs a protocol on a new stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from grpclib.const import Cardinality
from grpclib.metadata import Deadline
from grpclib.protocol import H2Protocol

from ._calls import effective_deadline
from ._grpclib import (
    CallStream,
    LaneChannel,
    MetadataLike,
    RecvType,
    SendType,
    close_lane,
    lane_streams,
    wait_lane_idle,
)

__all__ = ["LanePool"]

OpenStream = Callable[[asyncio.Protocol], Awaitable[None]]


class _PoolLane(LaneChannel):
    def __init__(self, pool: LanePool, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._pool = pool

    async def open_lane(self, protocol: H2Protocol) -> None:
        await self._pool.open_stream(protocol)

    def loss_reason(self) -> str:
        return self._pool.loss_reason()

    def lane_lost(self) -> bool:
        return super().lane_lost() or self._pool.is_lost()


class LanePool:
    """A fixed set of lanes behind one ``request()``."""

    def __init__(
        self,
        *,
        count: int,
        authority: str,
        max_message_size: int,
        codec: Any,
        status_details_codec: Any,
        dispatch: Any,
        open_stream: OpenStream,
        loss_reason: Callable[[], str],
        is_lost: Callable[[], bool],
    ) -> None:
        if count < 1:
            raise ValueError("a connection needs at least one lane per direction")
        self.open_stream = open_stream
        self.loss_reason = loss_reason
        self.is_lost = is_lost
        self._lanes = [
            _PoolLane(
                self,
                authority=authority,
                max_message_size=max_message_size,
                codec=codec,
                status_details_codec=status_details_codec,
                dispatch=dispatch,
            )
            for _ in range(count)
        ]
        self._next = 0
        self._retired: list[H2Protocol] = []

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
    ) -> CallStream[SendType, RecvType]:
        lanes = self._lanes
        lane = lanes[self._next]
        self._next = (self._next + 1) % len(lanes)
        return lane.request(
            name,
            cardinality,
            request_type,
            reply_type,
            deadline=effective_deadline(timeout, deadline),
            metadata=metadata,
        )

    def detach(self) -> None:
        """Send new calls on new lanes; calls in flight finish on the old ones."""
        self._retired = [p for p in self._retired if lane_streams(p)]
        for lane in self._lanes:
            protocol = lane.detach()
            if protocol is not None:
                self._retired.append(protocol)

    def streams_in_flight(self) -> int:
        """Calls in flight on all lanes, current and detached."""
        return sum(lane_streams(p) for p in self._protocols())

    async def wait_idle(self) -> None:
        """Wait until no call is in flight on any lane, current or detached."""
        for protocol in self._protocols():
            await wait_lane_idle(protocol)

    def close(self) -> None:
        """Close every lane; calls on them fail. Later calls open new lanes."""
        for protocol in self._protocols():
            close_lane(protocol)
        self._retired.clear()
        for lane in self._lanes:
            lane.close()

    def _protocols(self) -> list[H2Protocol]:
        current = [lane.protocol for lane in self._lanes if lane.protocol is not None]
        return current + self._retired

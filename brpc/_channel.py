"""A grpclib ``Channel`` that sends calls over brpc lanes.

Generated stubs take a ``grpclib.client.Channel`` and only ever call its
``request()``. :class:`LinkChannel` is such a channel (a real subclass, so
type checkers accept ``FooStub(conn)``) whose ``request()`` sends the call over
its own :class:`LanePool`. Subclasses say where new lanes go: a server's view
of one client opens them on that client's link; a dialing client opens them on
its current link, waiting for a reconnect if asked to.

grpclib's event hooks (``grpclib.events.listen(channel, SendRequest, ...)``)
work on these channels as on any grpclib channel.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from grpclib.client import Channel
from grpclib.const import Cardinality
from grpclib.metadata import Deadline

from ._calls import SizeLimitedCodec, status_details_codec
from ._lanes import LanePool

if TYPE_CHECKING:
    from ._grpclib import CallStream, MetadataLike, RecvType, SendType

__all__ = ["LinkChannel"]


class LinkChannel(Channel):
    """Base of brpc's channels: ``request()`` over a pool of lanes."""

    def __init__(self, authority: str, *, lanes: int, max_message_size: int) -> None:
        super().__init__(host=authority, port=443)
        self._authority = authority
        self._pool = LanePool(
            count=lanes,
            authority=authority,
            max_message_size=max_message_size,
            codec=SizeLimitedCodec(max_message_size),
            status_details_codec=status_details_codec(),
            dispatch=self.__dispatch__,
            open_stream=self.open_lane,
            loss_reason=self.loss_reason,
            is_lost=self.is_lost,
        )

    async def open_lane(self, protocol: asyncio.Protocol) -> None:
        """Run ``protocol`` on a new outgoing lane; raise ``GRPCError`` if impossible."""
        raise NotImplementedError

    def loss_reason(self) -> str:
        """Why calls in flight failed, for their UNAVAILABLE status."""
        raise NotImplementedError

    def is_lost(self) -> bool:
        """Whether the connection the current lanes run on is gone."""
        raise NotImplementedError

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
        return self._pool.request(
            name,
            cardinality,
            request_type,
            reply_type,
            timeout=timeout,
            deadline=deadline,
            metadata=metadata,
        )

    def close_lanes(self) -> None:
        """Close the open lanes (calls on them fail); later calls open new ones."""
        self._pool.close()

    def detach_lanes(self) -> None:
        """New calls go on new lanes (via :meth:`open_lane`); calls in flight finish."""
        self._pool.detach()

    async def wait_lanes_idle(self) -> None:
        """Wait until no call made through this channel is in flight."""
        await self._pool.wait_idle()

    @property
    def calls_in_flight(self) -> int:
        """Calls made through this channel that are still in flight."""
        return self._pool.streams_in_flight()

    def close(self) -> None:
        """Close the open lanes; the connection itself stays up."""
        self._pool.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._authority}>"

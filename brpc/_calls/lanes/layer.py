"""The lanes call layer: calls as HTTP/2 streams inside one stream of the session.

The reference layer (``"lanes"`` in the hello): grpclib's own HTTP/2 client
and server run unchanged over :class:`~brpc._session.stream_transport.
StreamTransport`. Each side opens its own lanes for the calls it makes;
every stream the peer opens is a lane served by a grpclib server protocol.
"""

from __future__ import annotations

import asyncio

from grpclib.server import Server

from .._grpclib import EventDispatch, server_lane_protocol, serving_server
from ..base import CallConnection, Caller, CallTarget
from ..serving import Serving
from .pool import LanePool

__all__ = ["LanesCallLayer"]


class LanesCallLayer:
    """HTTP/2 lanes for one side: its callers and the lanes its peers open."""

    name = "lanes"

    def __init__(self, serving: Serving, *, lanes: int, max_concurrent_calls: int) -> None:
        self._serving = serving
        self._lanes = lanes
        self._max_concurrent_calls = max_concurrent_calls
        # Made for the first lane a peer opens: a client offers this layer
        # along with streams, and most connections never use it.
        self._server: Server | None = None

    def caller(self, target: CallTarget, *, authority: str, dispatch: EventDispatch) -> Caller:
        serving = self._serving
        return LanePool(
            target,
            count=self._lanes,
            authority=authority,
            max_message_size=serving.max_message_size,
            codec=serving.codec,
            status_details_codec=serving.status_details_codec,
            dispatch=dispatch,
        )

    def accept_stream(self, connection: CallConnection) -> asyncio.Protocol:
        # HTTP/2 allows twice the call limit, so that calls over the limit are
        # not queued by the sender but reach admission and fail fast with a
        # clear RESOURCE_EXHAUSTED; the stream limit only stops floods.
        server = self._server
        if server is None:
            serving = self._serving
            server = self._server = serving_server(
                serving.resolve,
                codec=serving.codec,
                status_details_codec=serving.status_details_codec,
                dispatch=serving.dispatch,
            )
        return server_lane_protocol(
            server,
            max_message_size=connection.max_message_size,
            max_concurrent_streams=2 * self._max_concurrent_calls,
        )

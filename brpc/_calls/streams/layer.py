"""The streams call layer: each gRPC call is one stream of the session.

The fast layer (``"streams"`` in the hello, the default): no HTTP/2 inside the
streams, just the frames of :mod:`brpc._wire.callframe`. Each side opens one
stream per outgoing call (:class:`~brpc._calls.streams.client.StreamsCaller`);
every stream the peer opens is one incoming call
(:class:`~brpc._calls.streams.server.CalleeProtocol`).
"""

from __future__ import annotations

import asyncio

from .._grpclib import EventDispatch
from ..base import CallConnection, Caller, CallTarget
from ..serving import Serving
from .client import StreamsCaller
from .server import CalleeProtocol

__all__ = ["StreamsCallLayer"]


class StreamsCallLayer:
    """One stream per call for one side: its callers and the calls its peers open."""

    name = "streams"

    def __init__(self, serving: Serving) -> None:
        self._serving = serving

    def caller(self, target: CallTarget, *, authority: str, dispatch: EventDispatch) -> Caller:
        serving = self._serving
        return StreamsCaller(
            target,
            codec=serving.codec,
            status_details_codec=serving.status_details_codec,
            dispatch=dispatch,
        )

    def accept_stream(self, connection: CallConnection) -> asyncio.Protocol:
        return CalleeProtocol(self._serving, connection)

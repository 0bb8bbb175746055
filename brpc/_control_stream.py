"""The asyncio adapter for the control stream.

:class:`ControlProtocol` runs on the control stream's transport: it feeds
received bytes to the sans-IO :class:`ControlDecoder` and hands each envelope
to a callback; :meth:`ControlProtocol.send` writes one. Protocol violations
and the stream's end are reported to callbacks too; the owner decides what
they mean for the connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

from ._control import ControlDecoder, encode_envelope
from .errors import ProtocolViolation
from .v1 import control_pb2 as pb

__all__ = ["ControlProtocol"]


class ControlProtocol(asyncio.Protocol):
    """Length-prefixed envelopes over one stream transport."""

    def __init__(
        self,
        *,
        max_message_size: int,
        on_message: Callable[[pb.Envelope], None],
        on_violation: Callable[[ProtocolViolation], None],
        on_closed: Callable[[Exception | None], None],
    ) -> None:
        self._decoder = ControlDecoder(max_message_size)
        #: Callbacks; the owner may replace them (the link takes over after the hello).
        self.on_message = on_message
        self.on_violation = on_violation
        self.on_closed = on_closed
        self._transport: asyncio.Transport | None = None
        self._failed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._failed:
            return
        try:
            envelopes = self._decoder.feed(data)
        except ProtocolViolation as exc:
            self._failed = True
            self.on_violation(exc)
            return
        for envelope in envelopes:
            self.on_message(envelope)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self.on_closed(exc)

    def send(self, envelope: pb.Envelope) -> None:
        """Write ``envelope``; silently dropped once the stream is closed."""
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(encode_envelope(envelope))

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

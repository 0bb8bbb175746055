"""The asyncio adapter for the control stream.

:class:`ControlProtocol` runs on the control stream's transport: it feeds
received bytes to the sans-IO :class:`ControlDecoder` and hands each envelope
to its :class:`ControlReceiver`; :meth:`ControlProtocol.send` writes one.
Protocol violations and the stream's end go to the receiver too, which decides
what they mean for the connection. The receiver is fixed when the protocol is
made: the accepting or connecting side's handler, which passes messages on to
the link once the hello exchange is over.

What a peer makes us send is bounded: if replies (pongs) pile up unsent
because the peer grants no flow-control credit, the peer is reported as a
violator rather than buffered without limit.
"""

from __future__ import annotations

import asyncio
from typing import Protocol, cast

from .._wire.control import ControlDecoder, encode_envelope
from ..errors import ProtocolViolation
from ..v1 import control_pb2 as pb

__all__ = ["MAX_UNSENT_CONTROL_BYTES", "ControlProtocol", "ControlReceiver"]

#: Control-stream bytes waiting to be sent (or acknowledged) beyond which the
#: peer is treated as not reading its control stream.
MAX_UNSENT_CONTROL_BYTES = 256 << 10


class ControlReceiver(Protocol):
    """Who the control stream reports to."""

    def control_received(self, envelope: pb.Envelope) -> None: ...

    def control_violation(self, exc: ProtocolViolation) -> None: ...

    def control_closed(self, exc: Exception | None) -> None: ...


class _Closed:
    """The receiver of a control stream that ended: it hears nothing more."""

    def control_received(self, envelope: pb.Envelope) -> None:
        pass

    def control_violation(self, exc: ProtocolViolation) -> None:
        pass

    def control_closed(self, exc: Exception | None) -> None:
        pass


_CLOSED = _Closed()


class ControlProtocol(asyncio.Protocol):
    """Length-prefixed envelopes over one stream transport."""

    def __init__(self, receiver: ControlReceiver, *, max_message_size: int) -> None:
        self._decoder = ControlDecoder(max_message_size)
        self._receiver = receiver
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
            self._fail(exc)
            return
        for envelope in envelopes:
            if self._failed:
                return
            self._receiver.control_received(envelope)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        receiver, self._receiver = self._receiver, _CLOSED
        receiver.control_closed(exc)

    def send(self, envelope: pb.Envelope) -> None:
        """Write ``envelope``; dropped once the stream is closed or the peer stopped reading."""
        transport = self._transport
        if transport is None or transport.is_closing() or self._failed:
            return
        if transport.get_write_buffer_size() > MAX_UNSENT_CONTROL_BYTES:
            self._fail(
                ProtocolViolation(
                    f"peer left more than {MAX_UNSENT_CONTROL_BYTES} bytes of control messages "
                    "unread (no flow-control credit on the control stream)"
                )
            )
            return
        transport.write(encode_envelope(envelope))

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def _fail(self, exc: ProtocolViolation) -> None:
        self._failed = True
        self._receiver.control_violation(exc)

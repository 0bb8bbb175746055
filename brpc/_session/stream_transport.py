"""An asyncio transport over one bidirectional stream of a session.

:class:`StreamTransport` lets any :class:`asyncio.Protocol` (grpclib's HTTP/2
protocol, the control protocol, a per-call stream) run over a session's stream:

- writes go to the QUIC stream; the protocol's ``pause_writing`` is called when
  the stream's unacknowledged send buffer passes a high-water mark and
  ``resume_writing`` when acknowledgements bring it under a low one;
- a FIN from the peer closes the stream both ways and becomes
  ``connection_lost(None)``; a reset or STOP_SENDING becomes
  ``connection_lost(ConnectionResetError)``; losing the QUIC connection becomes
  ``connection_lost`` with the connection's reason;
- ``close()`` sends a FIN and STOP_SENDING so that aioquic can forget the
  stream once both sides are done.

When given a :class:`contextvars.Context`, every protocol callback runs in it;
tasks the protocol starts from ``data_received`` inherit it. This is how a
handler knows which connection its call arrived on.

The transport does no I/O itself: it calls back into its session through the
:class:`~brpc._session.base.StreamHost` interface, so every session
implementation (QUIC, in-memory) shares it.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["StreamCounters", "StreamHost", "StreamTransport"]

log = logging.getLogger(__name__)

#: ids of the contexts stream callbacks are running in right now.
_ENTERED: set[int] = set()


class StreamHost(Protocol):
    """What a stream transport asks of the session its stream belongs to (every session)."""

    def send_stream_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None: ...

    def reset_stream(self, stream_id: int, error_code: int = 0) -> None: ...

    def stop_stream(self, stream_id: int, error_code: int = 0) -> None: ...

    def send_buffer_size(self, stream_id: int) -> int: ...

    def watch_paused(self, transport: StreamTransport) -> None: ...

    def forget_stream(self, transport: StreamTransport) -> None: ...

    def extra_info(self, name: str, default: Any = None) -> Any: ...


class StreamCounters:
    """Byte counters of one stream transport, for tests and diagnostics."""

    __slots__ = ("bytes_received", "bytes_sent", "pauses", "peak_send_buffer")

    def __init__(self) -> None:
        self.bytes_sent = 0
        self.bytes_received = 0
        #: Largest unacknowledged send buffer seen right after a write.
        self.peak_send_buffer = 0
        #: How many times writing was paused.
        self.pauses = 0


class StreamTransport(asyncio.Transport):
    """asyncio transport for one bidirectional stream of a session."""

    def __init__(
        self,
        session: StreamHost,
        stream_id: int,
        protocol: asyncio.Protocol,
        *,
        context: contextvars.Context | None = None,
        high_water: int,
        low_water: int,
    ) -> None:
        super().__init__()
        if not 0 <= low_water <= high_water:
            raise ValueError("need 0 <= low_water <= high_water")
        self._session = session
        self.stream_id = stream_id
        self._protocol = protocol
        self._context = context
        self._high_water = high_water
        self._low_water = low_water
        self._write_closed = False
        self._read_closed = False
        self._paused = False
        self._lost = False
        self.counters = StreamCounters()

    # -- asyncio.Transport -------------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "stream_id":
            return self.stream_id
        if name == "context":
            return self._context
        return self._session.extra_info(name, default)

    def is_closing(self) -> bool:
        return self._write_closed

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        if not isinstance(protocol, asyncio.Protocol):
            raise TypeError("a stream transport needs an asyncio.Protocol")
        self._protocol = protocol

    def set_context(self, context: contextvars.Context | None) -> None:
        """Run the protocol's callbacks in ``context`` from now on."""
        self._context = context

    def is_reading(self) -> bool:
        return not self._read_closed

    def pause_reading(self) -> None:
        """Not supported: QUIC flow control windows bound what a peer can send."""

    def resume_reading(self) -> None:
        """Not supported; see :meth:`pause_reading`."""

    def get_write_buffer_size(self) -> int:
        return self._session.send_buffer_size(self.stream_id)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low_water, self._high_water

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        high = self._high_water if high is None else high
        low = high // 4 if low is None else low
        if not 0 <= low <= high:
            raise ValueError("need 0 <= low <= high")
        self._high_water, self._low_water = high, low

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._write_closed or not data:
            return
        size = len(data)
        self._session.send_stream_data(self.stream_id, bytes(data))
        counters = self.counters
        counters.bytes_sent += size
        buffered = self._session.send_buffer_size(self.stream_id)
        counters.peak_send_buffer = max(counters.peak_send_buffer, buffered)
        if not self._paused and buffered > self._high_water:
            self._paused = True
            counters.pauses += 1
            self._session.watch_paused(self)
            self._call_outside(self._protocol.pause_writing)

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        if not self._write_closed:
            self._write_closed = True
            self._session.send_stream_data(self.stream_id, b"", end_stream=True)

    def close(self) -> None:
        """FIN our side, ask the peer to stop sending, then report connection_lost."""
        if self._lost:
            return
        self.write_eof()
        self._stop_reading()
        asyncio.get_running_loop().call_soon(self._connection_lost, None)

    def abort(self) -> None:
        """Reset both directions of the stream at once."""
        if self._lost:
            return
        if not self._write_closed:
            self._write_closed = True
            self._session.reset_stream(self.stream_id)
        self._stop_reading()
        self._connection_lost(None)

    # -- called by the session ---------------------------------------------

    def check_resume(self) -> bool:
        """Resume writing if the send buffer drained; return True if resumed."""
        if self._paused and (
            self._write_closed or self._session.send_buffer_size(self.stream_id) <= self._low_water
        ):
            self._paused = False
            if not self._lost:
                self._call_outside(self._protocol.resume_writing)
            return True
        return False

    def data_received(self, data: bytes, end_stream: bool) -> None:
        if self._lost or self._read_closed:
            return
        if data:
            self.counters.bytes_received += len(data)
            self._call(self._protocol.data_received, data)
        if end_stream and not self._lost:
            self._read_closed = True
            self.write_eof()
            self._connection_lost(None)

    def reset_received(self, error_code: int) -> None:
        """The peer reset its sending side: the stream is dead both ways."""
        self._read_closed = True
        if not self._write_closed:
            self._write_closed = True
            self._session.reset_stream(self.stream_id)
        self._connection_lost(ConnectionResetError(f"stream reset by peer (code {error_code})"))

    def stop_sending_received(self, error_code: int) -> None:
        """The peer stopped reading: aioquic already reset our sending side."""
        self._write_closed = True
        self._stop_reading()
        self._connection_lost(
            ConnectionResetError(f"peer stopped reading the stream (code {error_code})")
        )

    def connection_terminated(self, exc: Exception) -> None:
        self._write_closed = True
        self._read_closed = True
        self._connection_lost(exc)

    # -- internals -----------------------------------------------------------

    def _stop_reading(self) -> None:
        if not self._read_closed:
            self._read_closed = True
            self._session.stop_stream(self.stream_id)

    def _connection_lost(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._write_closed = True
        self._session.forget_stream(self)
        self._call(self._protocol.connection_lost, exc)

    def _call_outside(self, callback: Callable[[], object]) -> None:
        """Run a flow-control callback without entering the stream's context.

        A write from inside ``data_received`` (already running in the context)
        can pause the writer; entering the context again there would raise.
        Pausing and resuming start no tasks, so they need no context.
        """
        try:
            callback()
        except Exception:
            log.exception("protocol on stream %d failed; resetting it", self.stream_id)
            if not self._lost:
                self.abort()

    def _call(self, callback: Callable[..., object], *args: Any) -> None:
        context = self._context
        try:
            if context is None or id(context) in _ENTERED:
                # Already inside it (a callback of another stream of the same
                # connection led here): entering it again would raise.
                callback(*args)
            else:
                _ENTERED.add(id(context))
                try:
                    context.run(callback, *args)
                finally:
                    _ENTERED.discard(id(context))
        except Exception:
            log.exception("protocol on stream %d failed; resetting it", self.stream_id)
            if not self._lost:
                self.abort()

"""An asyncio transport over one bidirectional stream of a session.

:class:`StreamTransport` lets any :class:`asyncio.Protocol` (grpclib's HTTP/2
protocol, the control protocol, a per-call stream) run over a session's stream:

- writes go to the QUIC stream; the protocol's ``pause_writing`` is called when
  the stream's unacknowledged send buffer passes a high-water mark and
  ``resume_writing`` when acknowledgements bring it under a low one;
- a FIN from the peer calls the protocol's ``eof_received()``: if it returns
  a true value the stream is half-closed (the protocol may go on writing, and
  ``connection_lost(None)`` follows its own ``write_eof()``); otherwise the
  stream closes both ways and becomes ``connection_lost(None)`` at once;
- a reset becomes ``connection_lost(StreamResetError)`` carrying the peer's
  application error code; so does STOP_SENDING, unless the protocol has a
  ``sending_stopped(code)`` method that returns a true value (then only the
  sending side ends and the protocol goes on reading); losing the connection
  becomes ``connection_lost`` with the connection's reason;
- ``close()`` sends a FIN and STOP_SENDING so that aioquic can forget the
  stream once both sides are done; ``abort(code)`` resets both directions
  with an application error code;
- ``pause_reading()`` holds received data in the transport and tells the
  session, which withholds flow-control credit for the stream (and for the
  bytes held, on the connection) until ``resume_reading()``: credit follows
  what the protocol consumed, so a peer whose receiver does not read stops at
  a bounded buffer.

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

__all__ = ["StreamCounters", "StreamHost", "StreamResetError", "StreamTransport"]

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

    def credit_paused(self, stream_id: int, paused: bool) -> None:
        """Withhold (``paused``) or grant again the stream's receive credit."""
        ...

    def credit_held(self, delta: int) -> bool:
        """Bytes received but held unconsumed by paused transports changed by ``delta``.

        True when the session cannot hold that much: it could not withhold the
        peer's credit, and the transport must end its stream (see
        :meth:`StreamTransport._hold`).
        """
        ...


class StreamResetError(ConnectionResetError):
    """The peer reset the stream (RESET_STREAM) or stopped reading it (STOP_SENDING).

    :attr:`code` is the application error code the peer sent.
    """

    def __init__(self, message: str, *, code: int, stop_sending: bool = False) -> None:
        super().__init__(message)
        self.code = code
        #: True for STOP_SENDING (the peer stopped reading), False for RESET_STREAM.
        self.stop_sending = stop_sending


class StreamCounters:
    """Byte counters of one stream transport, for tests and diagnostics."""

    __slots__ = (
        "bytes_received",
        "bytes_sent",
        "pauses",
        "peak_held",
        "peak_send_buffer",
        "read_pauses",
    )

    def __init__(self) -> None:
        self.bytes_sent = 0
        self.bytes_received = 0
        #: Largest unacknowledged send buffer seen right after a write.
        self.peak_send_buffer = 0
        #: How many times writing was paused.
        self.pauses = 0
        #: How many times reading was paused.
        self.read_pauses = 0
        #: Most bytes held unconsumed while reading was paused.
        self.peak_held = 0


class StreamTransport(asyncio.Transport):
    """asyncio transport for one bidirectional stream of a session."""

    # One per call on the streams layer: slots make it smaller and quicker to set up.
    __slots__ = (
        "_context",
        "_flush_handle",
        "_half_closed",
        "_held",
        "_held_bytes",
        "_high_water",
        "_lost",
        "_low_water",
        "_paused",
        "_protocol",
        "_read_closed",
        "_reading_paused",
        "_session",
        "_write_closed",
        "counters",
        "stream_id",
    )

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
        # Half-closed by the peer's FIN, the protocol still writing.
        self._half_closed = False
        self._reading_paused = False
        self._held: list[tuple[bytes, bool]] = []
        self._held_bytes = 0
        self._flush_handle: asyncio.Handle | None = None
        self.counters = StreamCounters()

    # -- asyncio.Transport -------------------------------------------------

    def start(self) -> None:
        """Introduce the protocol to this transport (``connection_made``, in the
        stream's context); the session calls it once the stream is registered."""
        self._call(self._protocol.connection_made, self)

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
        """Stop delivering data and stop granting the peer credit for more.

        Data the peer already had credit for is held here until
        :meth:`resume_reading`.
        """
        if self._reading_paused or self._lost:
            return
        self._reading_paused = True
        self.counters.read_pauses += 1
        self._session.credit_paused(self.stream_id, True)

    def resume_reading(self) -> None:
        """Deliver the held data (on a later turn of the loop) and grant credit again."""
        if not self._reading_paused or self._lost:
            return
        self._reading_paused = False
        self._session.credit_paused(self.stream_id, False)
        if self._held and self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_soon(self._flush_held)

    @property
    def reading_paused(self) -> bool:
        return self._reading_paused

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

    def write_eof(self, data: bytes = b"") -> None:
        """Send FIN, after ``data`` (in the same call: the last bytes and the FIN
        can share a packet)."""
        if not self._write_closed:
            self._write_closed = True
            if data:
                self.counters.bytes_sent += len(data)
            self._session.send_stream_data(self.stream_id, data, end_stream=True)
            if self._half_closed:
                self._connection_lost(None)

    def close(self) -> None:
        """FIN our side, ask the peer to stop sending, then report connection_lost."""
        if self._lost:
            return
        self.write_eof()
        self._stop_reading()
        asyncio.get_running_loop().call_soon(self._connection_lost, None)

    def abort(self, error_code: int = 0) -> None:
        """Reset both directions of the stream at once, with ``error_code``
        (RESET_STREAM unless the FIN was sent, STOP_SENDING unless the peer's arrived)."""
        if self._lost:
            return
        if not self._write_closed:
            self._write_closed = True
            self._session.reset_stream(self.stream_id, error_code)
        self._stop_reading(error_code)
        self._connection_lost(None)

    def stop_reading(self, error_code: int = 0) -> None:
        """Ask the peer to stop sending (STOP_SENDING ``error_code``); keep writing.

        The stream ends (``connection_lost(None)``) once the sending side is closed too.
        """
        if self._lost:
            return
        self._stop_reading(error_code)
        self._drop_held()
        if self._write_closed:
            self._connection_lost(None)
        else:
            self._half_closed = True

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
        if self._reading_paused or self._held:
            self._hold(data, end_stream)
            return
        if data:
            self._call(self._protocol.data_received, data)
        if end_stream and not self._lost:
            self._end_received()

    def reset_received(self, error_code: int) -> None:
        """The peer reset its sending side: the stream is dead both ways."""
        self._read_closed = True
        self._drop_held()
        if not self._write_closed:
            self._write_closed = True
            self._session.reset_stream(self.stream_id, error_code)
        self._connection_lost(
            StreamResetError(f"stream reset by peer (code {error_code:#x})", code=error_code)
        )

    def stop_sending_received(self, error_code: int) -> None:
        """The peer stopped reading: aioquic already reset our sending side."""
        self._write_closed = True
        if self._lost:
            return
        hook = getattr(self._protocol, "sending_stopped", None)
        if hook is not None and not self._read_closed:
            keep_reading = False
            try:
                keep_reading = bool(self._run_in_context(hook, error_code))
            except Exception:
                log.exception("protocol on stream %d failed; resetting it", self.stream_id)
            if keep_reading and not self._lost:
                self._half_closed = True
                return
        self._stop_reading(error_code)
        self._drop_held()
        self._connection_lost(
            StreamResetError(
                f"peer stopped reading the stream (code {error_code:#x})",
                code=error_code,
                stop_sending=True,
            )
        )

    def connection_terminated(self, exc: Exception) -> None:
        self._write_closed = True
        self._read_closed = True
        self._drop_held()
        self._connection_lost(exc)

    # -- internals -----------------------------------------------------------

    def _end_received(self) -> None:
        """The peer's FIN, after all its data was delivered."""
        self._read_closed = True
        keep_open = False
        try:
            keep_open = bool(self._run_in_context(self._protocol.eof_received))
        except Exception:
            log.exception("protocol on stream %d failed; resetting it", self.stream_id)
            self.abort()
            return
        if self._lost:
            return
        if keep_open and not self._write_closed:
            self._half_closed = True
            return
        self.write_eof()
        self._connection_lost(None)

    def _hold(self, data: bytes, end_stream: bool) -> None:
        self._held.append((data, end_stream))
        if data:
            self._held_bytes += len(data)
            self.counters.peak_held = max(self.counters.peak_held, self._held_bytes)
            if self._session.credit_held(len(data)):
                self._receive_overflowed()

    def _flush_held(self) -> None:
        self._flush_handle = None
        while self._held and not self._reading_paused and not self._lost:
            data, end_stream = self._held.pop(0)
            if data:
                self._held_bytes -= len(data)
                self._session.credit_held(-len(data))
                self._call(self._protocol.data_received, data)
            if end_stream and not self._lost:
                self._end_received()

    def _receive_overflowed(self) -> None:
        """The session holds more unread data than it can (its engine granted the
        peer credit regardless): end this stream rather than grow without bound.

        The protocol's ``receive_overflowed()`` hook, if it has one, fails its
        side and aborts the stream with its own code; otherwise code 0.
        """
        log.warning(
            "stream %d: unread data over the session's limit; ending the stream", self.stream_id
        )
        self._drop_held()
        hook = getattr(self._protocol, "receive_overflowed", None)
        if hook is not None:
            try:
                self._run_in_context(hook)
            except Exception:
                log.exception("protocol on stream %d failed; resetting it", self.stream_id)
        if not self._lost:
            self.abort()

    def _drop_held(self) -> None:
        if self._held_bytes:
            self._session.credit_held(-self._held_bytes)
            self._held_bytes = 0
        self._held.clear()
        if self._reading_paused:
            self._reading_paused = False
            self._session.credit_paused(self.stream_id, False)

    def _stop_reading(self, error_code: int = 0) -> None:
        if not self._read_closed:
            self._read_closed = True
            self._session.stop_stream(self.stream_id, error_code)

    def _connection_lost(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._drop_held()
        self._lost = True
        self._write_closed = True
        self._session.forget_stream(self)
        self._call(self._protocol.connection_lost, exc)

    def _run_in_context(self, callback: Callable[..., object], *args: Any) -> object:
        context = self._context
        if context is None or id(context) in _ENTERED:
            return callback(*args)
        _ENTERED.add(id(context))
        try:
            return context.run(callback, *args)
        finally:
            _ENTERED.discard(id(context))

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

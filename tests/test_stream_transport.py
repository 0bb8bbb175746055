"""The stream transport's half-close, error codes and read pausing, over the
in-memory session pair."""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

from brpc._session.base import Session, SessionClosed
from brpc._session.stream_transport import StreamResetError
from brpc.testing import session_pair


class _Recorder(asyncio.Protocol):
    def __init__(self, *, half_close: bool = True, keep_reading: bool | None = None) -> None:
        self.transport: Any = None
        self.chunks: list[bytes] = []
        self.eof = False
        self.stopped: int | None = None
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
        self._half_close = half_close
        if keep_reading is not None:
            self.sending_stopped = self._sending_stopped  # type: ignore[method-assign]
            self._keep_reading = keep_reading

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)

    def eof_received(self) -> bool:
        self.eof = True
        return self._half_close

    def _sending_stopped(self, code: int) -> bool:
        self.stopped = code
        return self._keep_reading

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


class _Accept:
    def __init__(self) -> None:
        self.opened: asyncio.Queue[_Recorder] = asyncio.Queue()
        self.make = _Recorder

    def handshake_completed(self, session: Session) -> None:
        pass

    def stream_opened(
        self, session: Session, stream_id: int
    ) -> tuple[asyncio.Protocol, contextvars.Context | None]:
        protocol = self.make()
        self.opened.put_nowait(protocol)
        return protocol, None

    def session_closed(self, session: Session, closed: SessionClosed) -> None:
        pass


async def _pair() -> tuple[Any, _Accept]:
    accept = _Accept()
    client, _server = session_pair(_Accept(), accept)
    return client, accept


async def test_half_close_keeps_the_other_direction_open() -> None:
    client, accept = await _pair()
    caller = _Recorder()
    client.open_stream(caller)
    caller.transport.write_eof(b"request")
    callee = await asyncio.wait_for(accept.opened.get(), 5)
    await asyncio.wait_for(_until(lambda: callee.eof), 5)
    assert callee.chunks == [b"request"] and not callee.lost.done()
    callee.transport.write(b"reply")
    callee.transport.write_eof(b"!")
    assert await asyncio.wait_for(callee.lost, 5) is None
    assert await asyncio.wait_for(caller.lost, 5) is None
    assert b"".join(caller.chunks) == b"reply!" and caller.eof


async def test_abort_carries_its_code_to_the_peer() -> None:
    client, accept = await _pair()
    caller = _Recorder()
    client.open_stream(caller)
    caller.transport.write(b"x")
    callee = await asyncio.wait_for(accept.opened.get(), 5)
    caller.transport.abort(0x11)
    exc = await asyncio.wait_for(callee.lost, 5)
    assert isinstance(exc, StreamResetError) and exc.code == 0x11


async def test_stop_sending_can_leave_the_receiving_side_open() -> None:
    client, accept = await _pair()
    caller = _Recorder(keep_reading=True)
    client.open_stream(caller)
    caller.transport.write(b"upload")
    callee = await asyncio.wait_for(accept.opened.get(), 5)
    callee.transport.write(b"status")
    callee.transport.stop_reading(0)
    await asyncio.wait_for(_until(lambda: caller.stopped == 0), 5)
    assert caller.transport.is_closing() and not caller.lost.done()
    callee.transport.write_eof()
    assert await asyncio.wait_for(caller.lost, 5) is None
    assert caller.chunks == [b"status"]


async def test_paused_reading_holds_data_until_resumed() -> None:
    client, accept = await _pair()
    caller = _Recorder()
    client.open_stream(caller)
    caller.transport.write(b"first")
    callee = await asyncio.wait_for(accept.opened.get(), 5)
    await asyncio.wait_for(_until(lambda: callee.chunks == [b"first"]), 5)
    callee.transport.pause_reading()
    caller.transport.write(b"second")
    caller.transport.write_eof(b"third")
    await asyncio.wait_for(_until(lambda: callee.transport.counters.bytes_received == 16), 5)
    assert callee.chunks == [b"first"] and not callee.eof
    assert callee.transport.counters.peak_held == 11
    callee.transport.resume_reading()
    await asyncio.wait_for(_until(lambda: callee.eof), 5)
    assert callee.chunks == [b"first", b"second", b"third"]


async def _until(predicate: Any) -> None:
    while not predicate():  # noqa: ASYNC110 - re-check after each loop iteration
        await asyncio.sleep(0)

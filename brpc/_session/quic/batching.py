"""Reading many waiting datagrams per wake-up and transmitting once for all of them.

With ``read_batch`` > 1 a socket is drained of up to that many datagrams
before the sessions that received them transmit, once each: fewer, fuller
packets and fewer wake-ups. The listener's endpoint does it for a server's
shared socket; a dialing session drains its own socket with
:func:`drain_socket`.

Where the kernel and the event loop allow (Linux, asyncio's own loop), a
:class:`GroReader` reads the socket in place of the asyncio transport, whose
``recvfrom`` takes one datagram per system call and could not split the
buffers ``UDP_GRO`` coalesces: one ``recvmsg`` returns up to 64 datagrams from
one sender. It reads whole buffers until ``read_batch`` datagrams came, then
transmits once.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from .udp import GRO_BUFFER, GRO_CMSG_SPACE, enable_gro, gro_datagrams

if TYPE_CHECKING:
    from .session import QuicSession

__all__ = ["DatagramBatch", "GroReader", "drain_socket", "dup_socket"]

log = logging.getLogger(__name__)


class DatagramBatch:
    """The sessions that received datagrams during one drain of a shared socket."""

    def __init__(self) -> None:
        self.active = False
        self._sessions: dict[QuicSession, None] = {}

    def add(self, session: QuicSession) -> None:
        self._sessions[session] = None

    def flush(self) -> None:
        sessions, self._sessions = self._sessions, {}
        for session in sessions:
            try:
                session.flush_batch()
            except Exception:
                log.exception("failed to transmit after a batch of datagrams")


_MAX_DATAGRAM = 65535
_IS_LINUX = sys.platform.startswith("linux")
#: Early flush: a drain stops once it took this long (seconds). Datagrams of
#: bulk data cost little each and batch well; datagrams carrying calls cost
#: far more (their handlers are started), and holding those back until a long
#: batch ends puts caller and callee into lock-step.
_BATCH_BUDGET = 0.0005


def drain_socket(
    sock: socket.socket,
    data: bytes | str,
    addr: Any,
    limit: int,
    *,
    receive: Callable[[bytes | str, Any], bool],
    on_error: Callable[[OSError], None],
) -> None:
    """Hand ``data``, then up to ``limit - 1`` datagrams already waiting on
    ``sock``, to ``receive``; stop when it returns False, when nothing waits or
    after :data:`_BATCH_BUDGET` seconds (the early flush)."""
    budget_end = time.perf_counter() + _BATCH_BUDGET
    for read in range(1, limit + 1):
        if not receive(data, addr) or read == limit or time.perf_counter() > budget_end:
            return
        try:
            data, addr = sock.recvfrom(_MAX_DATAGRAM)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            on_error(exc)
            return


def dup_socket(transport: asyncio.DatagramTransport) -> socket.socket:
    """A second, non-blocking handle on ``transport``'s socket, to read waiting datagrams."""
    sock = cast(socket.socket, transport.get_extra_info("socket").dup())
    sock.setblocking(False)
    return sock


class GroReader:
    """Reads a datagram transport's socket itself, with UDP GRO on.

    Made by :meth:`take_over`, which pauses the transport's own reading (the
    transport still sends and closes the socket). Each wake-up reads whole
    buffers until ``limit`` (``read_batch``) datagrams came, nothing waits, or
    :data:`_BATCH_BUDGET` passed, so it handles at most ``limit`` - 1 + 64
    datagrams; each goes to ``receive`` (False: read no further buffer), and
    ``flush`` (the transmit) is called once at the end, or after every
    datagram when ``limit`` is 1. Transmitting once per coalesced buffer
    rather than every ``limit`` datagrams in it means fewer acknowledgements,
    so fewer and bigger flights from the sender, which coalesce better in
    turn. ``OSError`` from ``recvmsg`` (ICMP errors on a connected socket)
    goes to ``on_error``, as the transport would have given it to
    ``error_received``.
    """

    def __init__(
        self,
        transport: asyncio.DatagramTransport,
        sock: socket.socket,
        *,
        limit: int,
        receive: Callable[[bytes, Any], bool],
        flush: Callable[[], None],
        on_error: Callable[[OSError], None],
    ) -> None:
        self._transport = transport
        self._sock: socket.socket | None = sock
        self._limit = limit
        self._receive = receive
        self._flush = flush
        self._on_error = on_error
        self._loop = asyncio.get_running_loop()
        #: Counters: ``recvmsg`` calls that returned a buffer, buffers that carried
        #: more than one datagram, and datagrams.
        self.reads = 0
        self.coalesced = 0
        self.datagrams = 0

    @classmethod
    def take_over(
        cls,
        transport: asyncio.DatagramTransport,
        *,
        limit: int,
        receive: Callable[[bytes, Any], bool],
        flush: Callable[[], None],
        on_error: Callable[[OSError], None],
    ) -> GroReader | None:
        """Read ``transport``'s socket with GRO from now on; None (the transport
        reads on) off Linux, under loops whose transports cannot pause reading
        (uvloop's read through libuv), or when the kernel refuses ``UDP_GRO``.
        Call it in ``connection_made``, before the transport reads."""
        if not _IS_LINUX:
            return None
        pause = getattr(transport, "pause_reading", None)
        resume = getattr(transport, "resume_reading", None)
        is_reading = getattr(transport, "is_reading", None)
        if pause is None or resume is None or is_reading is None:
            return None
        pause()
        if is_reading():
            return None
        sock = dup_socket(transport)
        if not enable_gro(sock):
            sock.close()
            resume()
            return None
        reader = cls(transport, sock, limit=limit, receive=receive, flush=flush, on_error=on_error)
        reader._loop.add_reader(sock.fileno(), reader._read_ready)
        return reader

    def close(self) -> None:
        """Stop reading (the transport closes the socket itself) and let go of the
        callbacks, so that the session owning this reader is not kept in a
        reference cycle with it (the counters stay readable)."""
        sock, self._sock = self._sock, None
        if sock is not None:
            if not self._loop.is_closed():
                self._loop.remove_reader(sock.fileno())
            sock.close()
        self._receive = _receive_nothing
        self._flush = _flush_nothing
        self._on_error = _ignore_error

    def _read_ready(self) -> None:
        sock = self._sock
        if sock is None:
            return
        if self._transport.is_closing():
            self.close()
            return
        limit = self._limit
        one_at_a_time = limit == 1
        received = 0
        budget_end = time.perf_counter() + _BATCH_BUDGET
        try:
            go_on = True
            while go_on and received < limit:
                try:
                    data, ancdata, flags, addr = sock.recvmsg(GRO_BUFFER, GRO_CMSG_SPACE)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as exc:
                    self._on_error(exc)
                    return
                datagrams = gro_datagrams(data, ancdata, flags)
                self.reads += 1
                self.datagrams += len(datagrams)
                if len(datagrams) > 1:
                    self.coalesced += 1
                for datagram in datagrams:
                    go_on = self._receive(datagram, addr) and go_on
                    received += 1
                    if one_at_a_time:
                        self._flush()
                if time.perf_counter() > budget_end:
                    return
        finally:
            if received and not one_at_a_time:
                self._flush()


def _receive_nothing(data: bytes, addr: Any) -> bool:
    return False


def _flush_nothing() -> None:
    return None


def _ignore_error(exc: OSError) -> None:
    return None

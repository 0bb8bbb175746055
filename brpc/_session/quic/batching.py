"""Reading many waiting datagrams per wake-up and transmitting once for all of them.

With ``read_batch`` > 1 a socket is drained of up to that many datagrams
before the sessions that received them transmit, once each: fewer, fuller
packets and fewer wake-ups. the listener's endpoint does it for a server's
shared socket; a dialing session drains its own socket with
:func:`drain_socket`.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from .session import QuicSession

__all__ = ["DatagramBatch", "drain_socket", "dup_socket"]

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

"""When written stream data should leave before the end of the loop iteration.

A session transmits what its streams wrote once per event loop iteration. On a
busy connection one iteration can run the handlers of dozens of calls; holding
every reply until the last one is done puts all of them into one big datagram
(16 KiB after path MTU probing on loopback), and the two processes then take
turns: one works while the other waits for its whole batch, each idle half the
time. :class:`EarlyFlush` says when data has waited long enough behind other
work to go out at the next write instead. Pure: the caller passes the time.
"""

from __future__ import annotations

__all__ = ["EARLY_FLUSH_AFTER", "EarlyFlush"]

#: Seconds written data may wait behind other work before the next write sends
#: it. Measured at 64 calls in flight on loopback, two processes, 16 KiB
#: datagrams: without it both processes idled half the time; 2-5 ms gave
#: +50 % calls/s on both call layers; 8 ms fell back into lock-step on the
#: streams layer.
EARLY_FLUSH_AFTER = 0.003


class EarlyFlush:
    """The time since the oldest write not yet transmitted."""

    __slots__ = ("_after", "_since")

    def __init__(self, after: float = EARLY_FLUSH_AFTER) -> None:
        self._after = after
        self._since: float | None = None

    def wrote(self, now: float) -> bool:
        """Data was written at ``now``: whether to transmit at once."""
        since = self._since
        if since is None:
            self._since = now
            return False
        return now - since >= self._after

    def transmitted(self) -> None:
        """Everything written so far has been handed to the engine to send."""
        self._since = None

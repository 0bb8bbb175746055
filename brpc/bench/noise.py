"""How busy the rest of the machine was while something was measured.

The benchmark's two worker processes each own a core; any other process
running at the same time steals CPU from them and skews the figures. A
:class:`NoiseMeter` reads the machine's total busy CPU time (``/proc/stat``)
and the CPU time of the benchmark's own processes before and after a
measurement; the difference is what everything else used, in cores.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path

import psutil

__all__ = ["NoiseMeter"]

_STAT = Path("/proc/stat")
# user nice system idle iowait irq softirq steal: everything but idle and iowait.
_BUSY_FIELDS = (0, 1, 2, 5, 6, 7)


def _machine_busy_seconds() -> float | None:
    try:
        first = _STAT.read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    ticks = [int(value) for value in first[1:9]]
    return sum(ticks[i] for i in _BUSY_FIELDS) / os.sysconf("SC_CLK_TCK")


def _process_seconds(pids: Iterable[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


class NoiseMeter:
    """CPU used by processes other than ``pids`` (and this one) over an interval."""

    def __init__(self, pids: Iterable[int]) -> None:
        self._pids = [os.getpid(), *pids]
        self._wall = time.monotonic()
        self._busy = _machine_busy_seconds()
        self._ours = _process_seconds(self._pids)

    def foreign_cores(self) -> float:
        """Average number of cores the rest of the machine kept busy since the start.

        NaN where ``/proc/stat`` cannot be read. Clock-tick granularity
        (10 ms) makes values under a few hundredths meaningless.
        """
        busy = _machine_busy_seconds()
        if busy is None or self._busy is None:
            return float("nan")
        elapsed = time.monotonic() - self._wall
        if elapsed <= 0:
            return 0.0
        ours = _process_seconds(self._pids) - self._ours
        return max(0.0, (busy - self._busy - ours) / elapsed)

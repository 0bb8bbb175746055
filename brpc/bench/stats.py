"""Summaries of repeated measurements: percentiles of samples, median and spread of reps."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Spread", "percentile"]


def percentile(samples: Sequence[float], fraction: float) -> float:
    """The ``fraction`` (0..1) percentile of ``samples``, nearest-rank method.

    Nearest rank keeps every reported latency an observed one: p99 of 100
    calls is the 99th slowest, never an interpolation between two calls.
    """
    if not samples:
        return math.nan
    if not 0 <= fraction <= 1:
        raise ValueError("fraction must be between 0 and 1")
    ordered = sorted(samples)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class Spread:
    """One metric over several repetitions: median, min, max and every value."""

    median: float
    low: float
    high: float
    values: tuple[float, ...]

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        finite = [v for v in values if not math.isnan(v)]
        if not finite:
            return cls(math.nan, math.nan, math.nan, tuple(values))
        return cls(statistics.median(finite), min(finite), max(finite), tuple(values))

    def to_json(self) -> dict[str, object]:
        return {
            "median": _clean(self.median),
            "min": _clean(self.low),
            "max": _clean(self.high),
            "values": [_clean(v) for v in self.values],
        }


def _clean(value: float) -> float | None:
    """JSON has no NaN: missing values become null."""
    return None if math.isnan(value) else value

"""Load generators: drive an :class:`EchoCaller` for a warm-up and a measuring window.

Each generator runs continuously from the start of the warm-up to the end of
the window, so the window sees a system already in its steady state. Only
work that completes inside the window counts, and every call is timed on
its own: latency percentiles come from per-call timings, throughput from
completions in the window divided by its length.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from brpc.testing.v1.echo_pb2 import EchoRequest

from .callers import EchoCaller
from .stats import percentile

__all__ = [
    "STREAM_BATCH",
    "UPLOAD_SIZE",
    "Window",
    "run_server_stream",
    "run_unary",
    "run_uploads",
    "small_request",
]

#: Payload of a "small" message, request and reply.
SMALL_PAYLOAD = 32
#: Replies per server-streaming call.
STREAM_BATCH = 500
UPLOAD_SIZE = 1 << 20
_MIB = 1 << 20


def small_request() -> EchoRequest:
    return EchoRequest(text="bench", payload=b"p" * SMALL_PAYLOAD)


@dataclass(frozen=True)
class Window:
    """When measuring starts and ends, on the ``time.perf_counter`` clock."""

    start: float
    end: float

    @classmethod
    def after(cls, warmup: float, length: float) -> Window:
        if warmup < 0 or length <= 0:
            raise ValueError("need warmup >= 0 and a positive window")
        start = time.perf_counter() + warmup
        return cls(start, start + length)

    @property
    def length(self) -> float:
        return self.end - self.start

    def holds(self, moment: float) -> bool:
        return self.start <= moment <= self.end


async def _timed_calls(
    caller: EchoCaller, request: EchoRequest, concurrency: int, window: Window
) -> list[float]:
    """Per-call latencies of the calls that completed inside ``window``."""
    latencies: list[float] = []
    clock = time.perf_counter

    async def loop() -> None:
        while (started := clock()) < window.end:
            await caller.unary(request)
            finished = clock()
            if window.holds(finished):
                latencies.append(finished - started)

    await asyncio.gather(*(loop() for _ in range(concurrency)))
    return latencies


async def run_unary(
    caller: EchoCaller, *, concurrency: int, warmup: float, window: float
) -> dict[str, float]:
    """Small unary calls with ``concurrency`` in flight: calls/s, p50 and p99."""
    span = Window.after(warmup, window)
    latencies = await _timed_calls(caller, small_request(), concurrency, span)
    return {
        "calls_per_s": len(latencies) / span.length,
        "p50_ms": percentile(latencies, 0.50) * 1e3,
        "p99_ms": percentile(latencies, 0.99) * 1e3,
    }


async def run_uploads(
    caller: EchoCaller, *, concurrency: int, warmup: float, window: float
) -> dict[str, float]:
    """1 MiB unary requests with a 1-byte reply: MiB/s uploaded."""
    span = Window.after(warmup, window)
    request = EchoRequest(text="upload", payload=b"u" * UPLOAD_SIZE, reply_size=1)
    latencies = await _timed_calls(caller, request, concurrency, span)
    return {"mib_per_s": len(latencies) * UPLOAD_SIZE / _MIB / span.length}


async def run_server_stream(
    caller: EchoCaller, *, warmup: float, window: float
) -> dict[str, float]:
    """Server-streaming calls of :data:`STREAM_BATCH` small replies, one after another:
    replies received per second."""
    span = Window.after(warmup, window)
    request = EchoRequest(text="stream", count=STREAM_BATCH, reply_size=SMALL_PAYLOAD)
    clock = time.perf_counter
    received = 0
    while clock() < span.end:
        async for _ in caller.server_stream(request):
            if span.holds(clock()):
                received += 1
    return {"messages_per_s": received / span.length}

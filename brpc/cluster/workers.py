"""Several worker processes serving one UDP port: :func:`start_workers` and :func:`run_workers`.

One brpc server is one event loop on one core. To use several cores of a
machine, start N processes that each run ``main(index)``; each builds a
``brpc.Server`` with a :class:`~brpc.Cluster` of its own ``server_id`` on a
directory the processes share (a :class:`~brpc.RedisDirectory`), calls
``cluster.serve_peers(...)`` (peers must reach this very process, so each has
a peer port of its own) and ``server.start(host, port, reuse_port=True)``.
The kernel (SO_REUSEPORT) then spreads clients over the workers by the hash of
their address; a caller on any worker reaches any client through the cluster.

What it cannot do: a client whose address changes (NAT rebinding, a new
network) hashes to another worker, which does not know its QUIC connection;
the client reconnects (``dial`` does by itself) and appears on that worker.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import signal
from collections.abc import Awaitable, Callable
from multiprocessing.process import BaseProcess

__all__ = ["Workers", "run_workers", "start_workers"]

log = logging.getLogger(__name__)

#: ``main(index)``: a top-level (picklable) coroutine function run in each worker.
WorkerMain = Callable[[int], Awaitable[None]]


def _run_worker(main: WorkerMain, index: int) -> None:
    async def run() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await main(index)
        except asyncio.CancelledError:
            log.info("worker %d stopped", index)

    asyncio.run(run())


class Workers:
    """Worker processes started by :func:`start_workers`."""

    def __init__(self, processes: list[BaseProcess]) -> None:
        self.processes = processes

    @property
    def alive(self) -> int:
        return sum(1 for process in self.processes if process.is_alive())

    def stop(self, timeout: float = 10.0) -> None:
        """Ask every worker to stop (SIGTERM: ``main`` is cancelled, so its ``finally``
        blocks close its server), wait up to ``timeout``, then kill what is left."""
        for process in self.processes:
            if process.is_alive():
                process.terminate()
        for process in self.processes:
            process.join(timeout)
            if process.is_alive():
                log.warning("worker %s did not stop within %s s; killing it", process.pid, timeout)
                process.kill()
                process.join()

    def join(self) -> list[int | None]:
        """Wait until every worker has exited; their exit codes."""
        for process in self.processes:
            process.join()
        return [process.exitcode for process in self.processes]


def start_workers(main: WorkerMain, workers: int) -> Workers:
    """Start ``workers`` processes running ``main(0)`` .. ``main(workers - 1)``.

    ``main`` must be importable by the workers (a module-level coroutine
    function): processes are spawned, not forked, so no event loop or socket
    of this process leaks into them.
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, not {workers!r}")
    context = multiprocessing.get_context("spawn")
    processes: list[BaseProcess] = []
    for index in range(workers):
        process = context.Process(
            target=_run_worker, args=(main, index), name=f"brpc-worker-{index}", daemon=False
        )
        process.start()
        processes.append(process)
    return Workers(processes)


def run_workers(main: WorkerMain, workers: int) -> int:
    """:func:`start_workers`, then wait; SIGINT or SIGTERM stops them all. Returns an exit code."""
    started = start_workers(main, workers)

    def stop(signum: int, frame: object) -> None:
        started.stop()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        codes = started.join()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return max((abs(code or 0) for code in codes), default=0)

"""Worker processes as seen from the orchestrating process.

:class:`WorkerProcess` starts a worker (see :mod:`brpc.bench.worker`) in a
fresh interpreter, pinned to a CPU core when given one, sends it commands and
waits for their results. Leaving the ``with`` block stops the worker: politely
first, then by signal, so that no benchmark process outlives a run.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from types import TracebackType
from typing import Any

from .worker import Command, Stop, WorkerFailed, worker_main

__all__ = ["WorkerError", "WorkerProcess", "core_pair"]

log = logging.getLogger(__name__)

_STOP_TIMEOUT = 10.0


class WorkerError(RuntimeError):
    """A command failed inside a worker, or the worker died."""


def core_pair() -> tuple[int | None, int | None]:
    """Cores for the server and the client: two different ones when there are two."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) >= 2:
        return cores[0], cores[1]
    return None, None


class WorkerProcess:
    """One worker process and the pipe to it."""

    def __init__(
        self, name: str, *, core: int | None, timeout: float, log_level: int = logging.WARNING
    ) -> None:
        context = multiprocessing.get_context("spawn")
        self._pipe, child = context.Pipe()
        self.name = name
        self.core = core
        self._timeout = timeout
        self._process = context.Process(
            target=worker_main,
            args=(child, core, log_level),
            name=name,
            daemon=True,
        )
        self._process.start()
        child.close()
        self._pending: str | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def submit(self, command: Command) -> None:
        """Send ``command``; collect its result with :meth:`result`."""
        if self._pending is not None:
            raise RuntimeError(f"{self.name} is still running {self._pending}")
        self._pending = repr(command)
        self._pipe.send(command)

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the result of the submitted command."""
        pending = self._pending
        if pending is None:
            raise RuntimeError(f"nothing was submitted to {self.name}")
        wait = self._timeout if timeout is None else timeout
        if not self._pipe.poll(wait):
            raise WorkerError(f"{self.name} did not finish {pending} within {wait:.0f} s")
        try:
            result = self._pipe.recv()
        except (EOFError, OSError):
            raise WorkerError(f"{self.name} died while running {pending}") from None
        finally:
            self._pending = None
        if isinstance(result, WorkerFailed):
            raise WorkerError(f"{self.name} failed running {result.command}:\n{result.traceback}")
        return result

    def call(self, command: Command, timeout: float | None = None) -> Any:
        self.submit(command)
        return self.result(timeout)

    def stop(self) -> None:
        """Stop the worker: a Stop command, then SIGTERM, then SIGKILL."""
        process = self._process
        if process.is_alive() and self._pending is None:
            try:
                self.call(Stop(), timeout=_STOP_TIMEOUT)
            except (WorkerError, OSError) as exc:
                log.warning("%s did not stop cleanly: %s", self.name, exc)
            process.join(_STOP_TIMEOUT)
        if process.is_alive():
            process.terminate()
            process.join(_STOP_TIMEOUT)
        if process.is_alive():
            process.kill()
            process.join()
        self._pipe.close()

    def __enter__(self) -> WorkerProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        self.stop()

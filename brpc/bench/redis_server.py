"""A private ``redis-server`` for one benchmark run: :class:`PrivateRedis`.

Started on 127.0.0.1 on a free port, with nothing persisted, in a temporary
folder; stopped (killed) when the ``with`` block ends. Needs Debian's
``redis-server`` (``apt-get install redis-server``; ``scripts/bench cluster``
installs it when run as root).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

__all__ = ["PrivateRedis", "RedisMissing"]

_START_TIMEOUT = 10.0


class RedisMissing(RuntimeError):
    """No ``redis-server`` program on this machine."""

    def __init__(self) -> None:
        super().__init__(
            "the cluster benchmark needs redis-server: install Debian's package "
            "(apt-get install -y redis-server), or run it through scripts/bench cluster"
        )


def _free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class PrivateRedis:
    """``with PrivateRedis() as redis: redis.url``."""

    def __init__(self) -> None:
        executable = shutil.which("redis-server")
        if executable is None:
            raise RedisMissing()
        self._executable = executable
        self._folder = tempfile.TemporaryDirectory(prefix="brpc-bench-redis-")
        self.port = _free_tcp_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> None:
        folder = Path(self._folder.name)
        argv = [self._executable]
        options = {
            "bind": "127.0.0.1",
            "port": str(self.port),
            "save": "",
            "appendonly": "no",
            "dir": str(folder),
            "logfile": str(folder / "redis.log"),
            "daemonize": "no",
        }
        for option, value in options.items():
            argv += [f"--{option}", value]
        self._process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + _START_TIMEOUT
        while not _answers_ping(self.port):
            if self._process.poll() is not None:
                log = (folder / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server exited with {self._process.returncode}:\n{log}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not answer PING within {_START_TIMEOUT} s")
            time.sleep(0.02)  # polling a process we started; nothing to wait on

    def stop(self) -> None:
        if self._process is not None:
            if self._process.poll() is None:
                self._process.kill()
            self._process.wait(timeout=10)
            self._process = None
        self._folder.cleanup()

    def __enter__(self) -> PrivateRedis:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        self.stop()

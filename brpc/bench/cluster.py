"""Many servers: ``python -m brpc.bench.cluster`` (also ``scripts/bench cluster``).

Three measurements, each next to a baseline measured in the same run, all on
a private ``redis-server`` as the directory (:class:`brpc.RedisDirectory`):

- **forwarding**: a caller on cluster member A makes unary Echo calls (1 and
  64 in flight) to a client connected to A (*local*, the baseline) and to a
  client connected to member B (*forwarded*: over A's peer connection to B
  and through B's relay). A, B and the two clients are four processes; the
  caller runs in A, as a server calling its clients does.
- **workers**: clients call Echo on a server listening on one UDP port, run
  as 1 worker process (the baseline) and as 2 (``brpc.cluster.start_workers``,
  SO_REUSEPORT, the way ``brpc workers -n 2`` runs them); the load comes from
  separate processes, each with many connections, so the kernel spreads them.
  Reports the aggregate calls/s and the CPU each side used.
- **storm**: directory operations per second while 1,000 clients connect to
  three servers (:func:`brpc.cluster._storm.run_storm`), against plain Redis
  round trips (SET) driven the same way.

Repetitions alternate the two sides of each comparison; the report gives the
median (and min-max) of each figure, the ratios, the load average and how
busy the rest of the machine was (``foreign_cores``). Needs the ``bench`` and
``redis`` extras and Debian's ``redis-server``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import functools
import importlib.util
import json
import logging
import math
import os
import socket
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import psutil

from ..certs import write_dev_certificates
from ..cluster import Directory, DirectorySnapshot, RedisDirectory
from ..cluster._storm import run_round_trips, run_storm
from ..cluster.workers import Workers, start_workers
from .cluster_roles import (
    AwaitClients,
    CallClient,
    Certs,
    DialMany,
    Drive,
    EchoWorkerConfig,
    HangUp,
    ServeEcho,
    StartMember,
    echo_worker,
)
from .machine import describe_machine
from .noise import NoiseMeter
from .procs import WorkerProcess
from .redis_server import PrivateRedis
from .stats import Spread, percentile

__all__ = ["QUICK", "SCHEMA", "Settings", "main", "run"]

log = logging.getLogger("brpc.bench.cluster")

SCHEMA = "brpc-bench-cluster/1"
_HAVE_QH3 = importlib.util.find_spec("qh3") is not None
PARTS = ("forwarding", "workers", "storm")
_PATHS = ("local", "forwarded")
_WORKER_COUNTS = (1, 2)
#: Seconds a command may take beyond its measuring window.
_SLACK = 60.0


@dataclass(frozen=True)
class Settings:
    """How long and how hard each part measures."""

    reps: int = 3
    warmup: float = 1.0
    window: float = 3.0
    #: Calls in flight for the forwarding comparison.
    concurrency: tuple[int, ...] = (1, 64)
    #: Load processes, connections per process and calls in flight per connection
    #: for the workers comparison.
    load_processes: int = 2
    load_connections: int = 16
    load_concurrency: int = 4
    #: The load processes' QUIC engine: the cheapest there is, so that more of the
    #: machine's cores are left to the servers measured (which use the default).
    load_engine: str = field(default_factory=lambda: "qh3" if _HAVE_QH3 else "aioquic")
    storm_clients: int = 1000
    parts: tuple[str, ...] = PARTS
    #: Before each measurement, wait up to ``quiet_wait`` seconds until other
    #: processes keep at most ``max_noise`` cores busy; measure up to ``retries``
    #: more times while they kept more busy, and keep the quietest measurement.
    max_noise: float = 0.1
    quiet_wait: float = 3.0
    retries: int = 0


QUICK = Settings(reps=1, warmup=0.3, window=1.0, quiet_wait=0.0)
#: Seconds over which the machine's load is sampled while waiting for quiet.
_QUIET_PROBE = 0.5


# -- processes and what they used ---------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return math.nan
    return float(times.user + times.system)


@dataclass
class _Window:
    """CPU of named processes and of everything else over one measuring window."""

    pids: Mapping[str, int]
    started: float = 0.0
    before: dict[str, float] | None = None
    noise: NoiseMeter | None = None

    def start(self) -> None:
        self.noise = NoiseMeter(self.pids.values())
        self.before = {name: _cpu_seconds(pid) for name, pid in self.pids.items()}
        self.started = time.monotonic()

    def stop(self) -> dict[str, Any]:
        assert self.before is not None and self.noise is not None
        elapsed = max(time.monotonic() - self.started, 1e-9)
        cores = {
            name: round((_cpu_seconds(pid) - self.before[name]) / elapsed, 3)
            for name, pid in self.pids.items()
        }
        return {"cpu_cores": cores, "foreign_cores": round(self.noise.foreign_cores(), 3)}


def _measure_window(pids: Mapping[str, int], begin: float, length: float) -> dict[str, Any]:
    """Sleep until ``begin`` (``time.monotonic()``), then measure CPU for ``length`` s."""
    window = _Window(pids)
    time.sleep(max(0.0, begin - time.monotonic()))
    window.start()
    time.sleep(length)
    return window.stop()


def _wait_for_quiet(pids: Sequence[int], settings: Settings) -> None:
    deadline = time.monotonic() + settings.quiet_wait
    while time.monotonic() < deadline:
        meter = NoiseMeter(pids)
        time.sleep(_QUIET_PROBE)
        noise = meter.foreign_cores()
        if math.isnan(noise) or noise <= settings.max_noise:
            return


def _quietest(
    what: str, pids: Sequence[int], settings: Settings, measure: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    """``measure()`` after waiting for quiet, again while other processes kept more than
    ``max_noise`` cores busy (up to ``retries`` times); the quietest result."""
    best: dict[str, Any] | None = None
    for attempt in range(1 + settings.retries):
        _wait_for_quiet(pids, settings)
        result = measure()
        noise = result["foreign_cores"]
        if best is None or noise < best["foreign_cores"]:
            best = result
        if not noise > settings.max_noise:
            break
        if attempt < settings.retries:
            log.info("%s: other processes kept %.2f cores busy; measuring again", what, noise)
    assert best is not None
    return best


def _pid(process: WorkerProcess) -> int:
    pid = process.pid
    if pid is None:
        raise RuntimeError(f"{process.name} has no process ID")
    return pid


@contextmanager
def _processes(
    names: Sequence[str], log_level: int, timeout: float
) -> Iterator[list[WorkerProcess]]:
    with ExitStack() as stack:
        yield [
            stack.enter_context(
                WorkerProcess(name, core=None, timeout=timeout, log_level=log_level)
            )
            for name in names
        ]


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _wait_directory(
    url: str, prefix: str, ready: Callable[[DirectorySnapshot], bool], timeout: float
) -> DirectorySnapshot:
    """Read the directory under ``prefix`` until ``ready(snapshot)``; the last snapshot."""

    async def poll() -> DirectorySnapshot:
        directory: Directory = RedisDirectory(url, key_prefix=prefix)
        try:
            async with asyncio.timeout(timeout):
                while True:
                    snapshot = await directory.snapshot()
                    if ready(snapshot):
                        return snapshot
                    await asyncio.sleep(0.05)  # polling another process's registrations
        finally:
            await directory.close()

    try:
        return asyncio.run(poll())
    except TimeoutError:
        raise RuntimeError(f"the directory {prefix!r} did not settle within {timeout} s") from None


def _summary(values: Sequence[float]) -> dict[str, object]:
    return Spread.of(values).to_json()


def _ratio(top: Sequence[float], bottom: Sequence[float]) -> float | None:
    a, b = Spread.of(top).median, Spread.of(bottom).median
    if math.isnan(a) or math.isnan(b) or b == 0:
        return None
    return round(a / b, 3)


# -- forwarding -------------------------------------------------------------------------


def _forwarding(url: str, certs: Certs, settings: Settings, log_level: int) -> dict[str, Any]:
    prefix = f"brpc-bench-{uuid.uuid4().hex[:8]}:"
    timeout = settings.warmup + settings.window + _SLACK
    names = ("member-a", "member-b", "target-near", "target-far")
    with _processes(names, log_level, timeout) as (a, b, near, far):
        a.submit(StartMember(url, prefix, "a", certs))
        b.submit(StartMember(url, prefix, "b", certs))
        address_a, address_b = a.result(), b.result()
        near.submit(ServeEcho(address_a, "near", certs.ca))
        far.submit(ServeEcho(address_b, "far", certs.ca))
        near.result()
        far.result()
        held = a.call(AwaitClients(("near", "far"), 30.0))
        if held != {"near": "a", "far": "b"}:
            raise RuntimeError(f"the targets are not where they should be: {held}")
        pids = {
            "member_a": _pid(a),
            "member_b": _pid(b),
            "target_near": _pid(near),
            "target_far": _pid(far),
        }
        samples: dict[tuple[int, str], list[dict[str, Any]]] = {
            (level, path): [] for level in settings.concurrency for path in _PATHS
        }
        for rep in range(settings.reps):
            for level in settings.concurrency:
                order = _PATHS if rep % 2 == 0 else tuple(reversed(_PATHS))
                for path in order:
                    call = CallClient(
                        "near" if path == "local" else "far",
                        level,
                        settings.warmup,
                        settings.window,
                    )

                    def measure(call: CallClient = call) -> dict[str, Any]:
                        submitted = time.monotonic()
                        a.submit(call)
                        usage = _measure_window(pids, submitted + settings.warmup, settings.window)
                        result: dict[str, Any] = a.result()
                        return {**result, **usage}

                    result = _quietest(
                        f"forwarding c={level} {path}", list(pids.values()), settings, measure
                    )
                    samples[(level, path)].append(result)
                    log.info(
                        "forwarding c=%d %-9s %7.0f calls/s  p50 %.2f ms",
                        level,
                        path,
                        result["calls_per_s"],
                        result["p50_ms"],
                    )
    report: dict[str, Any] = {}
    for level in settings.concurrency:
        row: dict[str, Any] = {}
        for path in _PATHS:
            runs = samples[(level, path)]
            row[path] = {
                metric: _summary([run[metric] for run in runs])
                for metric in ("calls_per_s", "p50_ms", "p99_ms")
            }
            row[path]["cpu_cores"] = {
                name: Spread.of([run["cpu_cores"][name] for run in runs]).median for name in pids
            }
            row[path]["cpu_us_per_call"] = _summary([_cpu_per_call(run) for run in runs])
            row[path]["foreign_cores"] = max(run["foreign_cores"] for run in runs)
        row["ratios"] = {
            f"forwarded/local {metric}": _ratio(
                [_metric(run, metric) for run in samples[(level, "forwarded")]],
                [_metric(run, metric) for run in samples[(level, "local")]],
            )
            for metric in ("calls_per_s", "p50_ms", "cpu_us_per_call")
        }
        report[f"unary_c{level}"] = row
    return report


def _cpu_per_call(run: Mapping[str, Any]) -> float:
    """Microseconds of CPU, all four processes together, per call."""
    calls = run["calls_per_s"]
    return sum(run["cpu_cores"].values()) / calls * 1e6 if calls else math.nan


def _metric(run: Mapping[str, Any], metric: str) -> float:
    return _cpu_per_call(run) if metric == "cpu_us_per_call" else float(run[metric])


# -- worker processes on one port -------------------------------------------------------


def _workers(url: str, certs: Certs, settings: Settings, log_level: int) -> dict[str, Any]:
    connections = settings.load_processes * settings.load_connections
    timeout = settings.warmup + settings.window + _SLACK
    sets: dict[int, tuple[Workers, EchoWorkerConfig]] = {}
    try:
        for count in _WORKER_COUNTS:
            config = EchoWorkerConfig(
                redis_url=url,
                key_prefix=f"brpc-bench-w{count}-{uuid.uuid4().hex[:8]}:",
                port=_free_udp_port(),
                certs=certs,
                name=f"w{count}",
            )
            sets[count] = (start_workers(functools.partial(echo_worker, config), count), config)
        for count, (_, config) in sets.items():
            wanted = {f"{config.name}-{index}" for index in range(count)}

            def registered(snapshot: DirectorySnapshot, wanted: set[str] = wanted) -> bool:
                return wanted <= set(snapshot.servers)

            _wait_directory(url, config.key_prefix, registered, 60)
        names = [f"load-{index}" for index in range(settings.load_processes)]
        samples: dict[int, list[dict[str, Any]]] = {count: [] for count in _WORKER_COUNTS}
        with _processes(names, log_level, timeout) as loaders:
            for rep in range(settings.reps):
                order = _WORKER_COUNTS if rep % 2 == 0 else tuple(reversed(_WORKER_COUNTS))
                for count in order:
                    workers, config = sets[count]
                    ours = [p.pid for p in workers.processes if p.pid is not None]
                    ours += [_pid(loader) for loader in loaders]
                    sample = _quietest(
                        f"workers={count}",
                        ours,
                        settings,
                        functools.partial(
                            _drive_workers, workers, config, loaders, settings, connections
                        ),
                    )
                    samples[count].append(sample)
                    log.info(
                        "workers=%d  %7.0f calls/s  p50 %.2f ms  connections per worker %s",
                        count,
                        sample["calls_per_s"],
                        sample["p50_ms"],
                        sample["connections_per_worker"],
                    )
    finally:
        for workers, _ in sets.values():
            workers.stop()
    report: dict[str, Any] = {}
    for count in _WORKER_COUNTS:
        runs = samples[count]
        report[f"workers_{count}"] = {
            "calls_per_s": _summary([run["calls_per_s"] for run in runs]),
            "p50_ms": _summary([run["p50_ms"] for run in runs]),
            "p99_ms": _summary([run["p99_ms"] for run in runs]),
            "errors": sum(run["errors"] for run in runs),
            "worker_cores": _summary([run["worker_cores"] for run in runs]),
            "calls_per_worker_core": _summary([run["calls_per_worker_core"] for run in runs]),
            "load_cores": _summary([run["load_cores"] for run in runs]),
            "connections_per_worker": [run["connections_per_worker"] for run in runs],
            "foreign_cores": max(run["foreign_cores"] for run in runs),
        }
    report["ratios"] = {
        "workers_2/workers_1 calls_per_s": _ratio(
            [run["calls_per_s"] for run in samples[2]], [run["calls_per_s"] for run in samples[1]]
        ),
        "workers_2/workers_1 calls_per_worker_core": _ratio(
            [run["calls_per_worker_core"] for run in samples[2]],
            [run["calls_per_worker_core"] for run in samples[1]],
        ),
        "workers_2/workers_1 worker_cores": _ratio(
            [run["worker_cores"] for run in samples[2]],
            [run["worker_cores"] for run in samples[1]],
        ),
    }
    return report


def _drive_workers(
    workers: Workers,
    config: EchoWorkerConfig,
    loaders: Sequence[WorkerProcess],
    settings: Settings,
    connections: int,
) -> dict[str, Any]:
    """One repetition: connect every load process, drive them in one window, hang up."""
    for loader in loaders:
        loader.submit(
            DialMany(config.port, settings.load_connections, config.certs.ca, settings.load_engine)
        )
    for loader in loaders:
        loader.result()
    snapshot = _wait_directory(
        config.redis_url, config.key_prefix, lambda s: len(s.clients) == connections, 30
    )
    spread = Counter(record.server_id for record in snapshot.clients.values())
    start_at = time.monotonic() + 0.3
    for loader in loaders:
        loader.submit(Drive(settings.load_concurrency, start_at, settings.warmup, settings.window))
    pids = {f"worker_{i}": p.pid for i, p in enumerate(workers.processes) if p.pid is not None}
    pids.update({loader.name: _pid(loader) for loader in loaders})
    usage = _measure_window(pids, start_at + settings.warmup, settings.window)
    results: list[dict[str, Any]] = [loader.result() for loader in loaders]
    for loader in loaders:
        loader.submit(HangUp())
    for loader in loaders:
        loader.result()
    _wait_directory(config.redis_url, config.key_prefix, lambda s: not s.clients, 30)
    latencies = [value for result in results for value in result["latencies"]]
    cores = usage["cpu_cores"]
    rate = sum(result["calls"] for result in results) / settings.window
    worker_cores = sum(v for k, v in cores.items() if k.startswith("worker_"))
    return {
        "calls_per_s": rate,
        "calls_per_worker_core": rate / worker_cores if worker_cores else math.nan,
        "p50_ms": percentile(latencies, 0.5) * 1e3,
        "p99_ms": percentile(latencies, 0.99) * 1e3,
        "errors": sum(result["errors"] for result in results),
        "worker_cores": worker_cores,
        "load_cores": sum(v for k, v in cores.items() if k.startswith("load-")),
        "connections_per_worker": sorted(spread.values(), reverse=True),
        "foreign_cores": usage["foreign_cores"],
    }


# -- connect storm ----------------------------------------------------------------------


def _storm(url: str, redis_pid: int | None, settings: Settings) -> dict[str, Any]:
    clients = settings.storm_clients
    directory_runs: list[dict[str, float]] = []
    floor_runs: list[float] = []
    foreign: list[float] = []
    pids = [redis_pid] if redis_pid is not None else []
    for rep in range(settings.reps):

        def measure(rep: int = rep) -> dict[str, Any]:
            prefix = f"brpc-bench-storm-{uuid.uuid4().hex[:8]}:"

            def make_directory() -> Directory:
                return RedisDirectory(url, key_prefix=prefix)

            meter = NoiseMeter(pids)
            measured: dict[str, Any] = {}
            for step in ("storm", "floor") if rep % 2 == 0 else ("floor", "storm"):
                if step == "storm":
                    measured["storm"] = asyncio.run(run_storm(make_directory, clients=clients))
                else:
                    floor = run_round_trips(url, operations=2 * clients)
                    measured["floor"] = asyncio.run(floor)
            measured["foreign_cores"] = meter.foreign_cores()
            return measured

        measured = _quietest("storm", pids, settings, measure)
        result = measured["storm"]
        directory_runs.append(
            {
                "connect_ops_per_s": result.connect_ops_per_second,
                "clients_per_s": result.connect_ops_per_second / 2,
                "disconnect_ops_per_s": result.disconnect_ops_per_second,
                "replica_converged_ms": result.replica_converged_after * 1e3,
                "snapshot_ms": result.snapshot_seconds * 1e3,
            }
        )
        floor_runs.append(measured["floor"])
        foreign.append(measured["foreign_cores"])
        log.info(
            "storm: %7.0f directory ops/s, %7.0f Redis SET/s",
            directory_runs[-1]["connect_ops_per_s"],
            floor_runs[-1],
        )
    report: dict[str, Any] = {
        "clients": clients,
        "servers": 3,
        "concurrency_per_server": 32,
        "directory": {
            key: _summary([run[key] for run in directory_runs]) for key in directory_runs[0]
        },
        "redis_set_per_s": _summary(floor_runs),
        "foreign_cores": round(max(foreign), 3),
    }
    report["ratios"] = {
        "connect_ops_per_s/redis_set_per_s": _ratio(
            [run["connect_ops_per_s"] for run in directory_runs], floor_runs
        )
    }
    return report


# -- the run ----------------------------------------------------------------------------


def run(settings: Settings, *, log_level: int = logging.ERROR) -> dict[str, Any]:
    """Measure the parts of ``settings`` in order (storm, forwarding, workers); the report."""
    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="brpc-bench-cluster-") as folder:
        written = write_dev_certificates(folder)
        certs = Certs(
            ca=str(written.ca), certfile=str(written.server_cert), keyfile=str(written.server_key)
        )
        with PrivateRedis() as redis:
            if "storm" in settings.parts:
                report["storm"] = _storm(redis.url, redis.pid, settings)
            if "forwarding" in settings.parts:
                report["forwarding"] = _forwarding(redis.url, certs, settings, log_level)
            if "workers" in settings.parts:
                report["workers"] = _workers(redis.url, certs, settings, log_level)
    return report


def _cell(spread: Mapping[str, Any], digits: int = 0) -> str:
    median, low, high = spread["median"], spread["min"], spread["max"]
    if median is None:
        return "-"
    if low == high:
        return f"{median:,.{digits}f}"
    return f"{median:,.{digits}f} ({low:,.{digits}f}-{high:,.{digits}f})"


def format_report(report: Mapping[str, Any]) -> str:
    lines: list[str] = []
    settings = report.get("settings", {})
    if settings:
        lines.append(
            f"{settings['reps']} repetition(s) of {settings['warmup']:g} s warm-up + "
            f"{settings['window']:g} s window; median (min-max)"
        )
        lines.append("")
    forwarding = report.get("forwarding")
    if forwarding:
        lines.append("forwarded vs local: a caller on member A, unary Echo")
        lines.append(f"{'workload':<14}{'path':<11}{'calls/s':>26}{'p50 ms':>22}")
        for key, row in forwarding.items():
            for path in _PATHS:
                lines.append(
                    f"{key:<14}{path:<11}{_cell(row[path]['calls_per_s']):>26}"
                    f"{_cell(row[path]['p50_ms'], 2):>22}"
                )
            ratios = row["ratios"]
            lines.append(
                f"{'':<14}forwarded / local: {ratios['forwarded/local calls_per_s']} x calls/s, "
                f"{ratios['forwarded/local p50_ms']} x p50, "
                f"{ratios['forwarded/local cpu_us_per_call']} x CPU per call"
            )
        lines.append("")
    workers = report.get("workers")
    if workers:
        lines.append("workers on one UDP port (SO_REUSEPORT): clients calling unary Echo")
        if settings:
            lines.append(
                f"load: {settings['load_processes']} processes x "
                f"{settings['load_connections']} connections x {settings['load_concurrency']} "
                f"in flight, {settings['load_engine']} engine"
            )
        lines.append(
            f"{'workers':<9}{'calls/s':>26}{'p50 ms':>22}{'worker cores':>14}{'load cores':>12}"
        )
        for count in _WORKER_COUNTS:
            row = workers[f"workers_{count}"]
            lines.append(
                f"{count:<9}{_cell(row['calls_per_s']):>26}{_cell(row['p50_ms'], 2):>22}"
                f"{row['worker_cores']['median']:>14.2f}{row['load_cores']['median']:>12.2f}"
            )
        spread = workers["workers_2"]["connections_per_worker"]
        ratios = workers["ratios"]
        lines.append(
            f"workers=2 / workers=1: {ratios['workers_2/workers_1 calls_per_s']} x calls/s, "
            f"{ratios['workers_2/workers_1 worker_cores']} x worker CPU, "
            f"{ratios['workers_2/workers_1 calls_per_worker_core']} x calls per worker core"
        )
        lines.append(f"connections per worker with 2: {spread}")
        lines.append("")
    storm = report.get("storm")
    if storm:
        directory = storm["directory"]
        lines.append(
            f"connect storm: {storm['clients']} clients over {storm['servers']} servers on Redis"
        )
        lines.append(f"  directory ops/s      {_cell(directory['connect_ops_per_s']):>26}")
        lines.append(f"  clients/s            {_cell(directory['clients_per_s']):>26}")
        lines.append(f"  plain Redis SET/s    {_cell(storm['redis_set_per_s']):>26}")
        ratio = storm["ratios"]["connect_ops_per_s/redis_set_per_s"]
        lines.append(f"  directory ops / Redis SETs: {ratio} x")
    return "\n".join(lines).rstrip()


def _parts(text: str) -> tuple[str, ...]:
    chosen = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [part for part in chosen if part not in PARTS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(
            f"unknown part {', '.join(unknown) or '(none given)'}; choose from {', '.join(PARTS)}"
        )
    return chosen


def parser(prog: str = "python -m brpc.bench.cluster") -> argparse.ArgumentParser:
    full = Settings()
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Many servers: forwarded vs local calls, 2 worker processes vs 1 on one "
        "port, and directory operations during a connect storm, on a private redis-server.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"one short repetition ({QUICK.warmup:g}+{QUICK.window:g} s per measurement; "
        "about half a minute in all)",
    )
    parser.add_argument("--reps", type=int, help=f"repetitions (default {full.reps})")
    parser.add_argument(
        "--warmup", type=float, help=f"seconds before each window (default {full.warmup:g})"
    )
    parser.add_argument(
        "--window", type=float, help=f"seconds measured each time (default {full.window:g})"
    )
    parser.add_argument(
        "--parts",
        type=_parts,
        default=PARTS,
        metavar="PARTS",
        help=f"comma-separated parts to run: {', '.join(PARTS)} (default: all)",
    )
    parser.add_argument(
        "--storm-clients",
        type=int,
        default=full.storm_clients,
        help=f"clients of the connect storm (default {full.storm_clients})",
    )
    parser.add_argument(
        "--load-connections",
        type=int,
        default=full.load_connections,
        help=f"connections per load process in the workers part (default "
        f"{full.load_connections}, from {full.load_processes} processes)",
    )
    parser.add_argument(
        "--load-concurrency",
        type=int,
        default=full.load_concurrency,
        help=f"calls in flight per connection in the workers part (default "
        f"{full.load_concurrency})",
    )
    parser.add_argument(
        "--load-engine",
        choices=("aioquic", "qh3"),
        default=full.load_engine,
        help="QUIC engine of the load processes in the workers part (default "
        f"{full.load_engine}: the cheaper one installed; the servers use the default engine)",
    )
    parser.add_argument(
        "--max-noise",
        type=float,
        default=full.max_noise,
        metavar="CORES",
        help="other processes may keep this many cores busy during a measurement "
        f"(default {full.max_noise:g})",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        metavar="SECONDS",
        help="before each measurement, wait up to this long for other processes to leave the "
        f"cores alone (default {full.quiet_wait:g}, {QUICK.quiet_wait:g} with --quick)",
    )
    parser.add_argument(
        "--retries",
        type=int,
        metavar="N",
        help="measure again up to N times when other processes were busier than --max-noise "
        f"(default {full.retries})",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the report as JSON here")
    parser.add_argument("-v", "--verbose", action="store_true", help="log from the processes too")
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    base = QUICK if args.quick else Settings()
    settings = replace(
        base,
        reps=args.reps if args.reps is not None else base.reps,
        warmup=args.warmup if args.warmup is not None else base.warmup,
        window=args.window if args.window is not None else base.window,
        storm_clients=args.storm_clients,
        load_connections=args.load_connections,
        load_concurrency=args.load_concurrency,
        load_engine=args.load_engine,
        parts=args.parts,
        max_noise=args.max_noise,
        quiet_wait=args.quiet_wait if args.quiet_wait is not None else base.quiet_wait,
        retries=args.retries if args.retries is not None else base.retries,
    )
    if (
        settings.reps < 1
        or settings.retries < 0
        or settings.warmup < 0
        or settings.window <= 0
        or settings.storm_clients < 1
        or settings.load_connections < 1
        or settings.load_concurrency < 1
    ):
        raise SystemExit(
            "need --reps >= 1, --retries >= 0, --warmup >= 0, --window > 0 and at least 1 "
            "storm client, load connection and call in flight"
        )
    return settings


def main(argv: Sequence[str] | None = None, *, prog: str = "python -m brpc.bench.cluster") -> int:
    args = parser(prog).parse_args(argv)
    settings = _settings(args)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    started = time.monotonic()
    load_before = os.getloadavg()
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": [prog, *(argv if argv is not None else sys.argv[1:])],
        "machine": describe_machine(),
        "settings": asdict(settings),
    }
    report.update(run(settings, log_level=logging.INFO if args.verbose else logging.ERROR))
    report["load_average"] = {
        "before": [round(v, 2) for v in load_before],
        "after": [round(v, 2) for v in os.getloadavg()],
    }
    report["duration_s"] = round(time.monotonic() - started, 1)
    print(format_report(report))
    before, after = report["load_average"]["before"], report["load_average"]["after"]
    print(
        f"\nload average (1/5/15 min) before {before}, after {after}; took {report['duration_s']} s"
    )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        log.info("wrote %s", args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Runs the measurements: one pair of pinned processes per target and repetition.

For every repetition and every target (brpc in each direction, then the
baselines) a fresh server process and a fresh client process are started,
pinned to different cores, and run the selected workloads in a fixed order:
server memory per idle client first (on a server that has served nothing
else yet), then the load workloads over one connection, then connection
set-up. Targets are interleaved within each repetition, so slow drift of
the machine spreads over all of them instead of favouring one.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .noise import NoiseMeter
from .procs import WorkerProcess, core_pair
from .spec import (
    FANOUT_CLIENTS,
    TARGETS,
    WORKLOADS,
    BrpcTuning,
    Direction,
    Target,
    Transport,
    TransportSpec,
)
from .stats import Spread, percentile
from .worker import (
    AnswerConnects,
    BrpcPort,
    CallClients,
    CloseMany,
    Connect,
    ConnectMany,
    MeasureConnects,
    MeasureFanout,
    ResidentSetSize,
    RunLoad,
    Sleep,
    StartServer,
)

__all__ = ["Certificates", "Results", "Settings", "run"]

log = logging.getLogger(__name__)

#: Name of the connection load workloads run over.
_MAIN = "main"
#: Connections opened and closed before the memory baseline is taken.
_MEMORY_WARM_CLIENTS = 20
#: Seconds for closed connections to be gone and idle ones to settle.
_SETTLE = 0.5
#: Seconds over which the machine's load is sampled while waiting for quiet.
_QUIET_PROBE = 0.5
#: Seconds a command may take beyond its warm-up and window.
_COMMAND_SLACK = 120.0

Metrics = dict[str, float]


@dataclass(frozen=True)
class Certificates:
    ca: str
    certfile: str
    keyfile: str


@dataclass(frozen=True)
class Settings:
    """How long and how often to measure what."""

    warmup: float
    window: float
    reps: int
    memory_clients: int
    workloads: tuple[str, ...] = tuple(w.key for w in WORKLOADS)
    targets: tuple[Target, ...] = TARGETS
    tuning: BrpcTuning = field(default_factory=BrpcTuning)
    #: A measurement during which other processes kept more than this many
    #: cores busy is taken again (up to ``retries`` times); the quietest counts.
    max_noise: float = 0.1
    retries: int = 0
    #: Seconds to wait for the machine to quieten down before measuring.
    quiet_wait: float = 0.0


@dataclass
class Results:
    """Every repetition's metrics: ``values[workload][target][metric] -> [per rep]``."""

    values: dict[str, dict[str, dict[str, list[float]]]] = field(default_factory=dict)

    def add(self, workload: str, target: str, metrics: Metrics) -> None:
        per_target = self.values.setdefault(workload, {}).setdefault(target, {})
        for key, value in metrics.items():
            per_target.setdefault(key, []).append(value)

    def spread(self, workload: str, target: str, metric: str) -> Spread | None:
        values = self.values.get(workload, {}).get(target, {}).get(metric)
        return Spread.of(values) if values else None


class _Session:
    """One target, one repetition: a server worker and a client worker."""

    def __init__(
        self,
        target: Target,
        settings: Settings,
        certs: Certificates,
        server: WorkerProcess,
        client: WorkerProcess,
    ) -> None:
        self.target = target
        self.settings = settings
        self.server = server
        self.client = client
        self.spec = TransportSpec(
            target.transport,
            ca=certs.ca,
            certfile=certs.certfile,
            keyfile=certs.keyfile,
            tuning=settings.tuning,
            call_layer=target.call_layer or "streams",
            engine=target.engine,
        )
        self.port = 0
        self.timeout = settings.warmup + settings.window + _COMMAND_SLACK

    @property
    def server_calls(self) -> bool:
        return self.target.direction is Direction.SERVER_TO_CLIENT

    def run(self, report: Callable[[str, Metrics], None]) -> None:
        self.port = self.server.call(StartServer(self.spec))
        wanted = self.settings.workloads
        if "idle_memory" in wanted:
            report("idle_memory", self._quietest("idle_memory", self.idle_memory, retry=False))
        loads = [w.key for w in WORKLOADS if w.is_load and w.key in wanted]
        if loads:
            self.client.call(Connect(self.spec, self.port, _MAIN), self.timeout)
            generator = self.server if self.server_calls else self.client
            for workload in loads:
                command = RunLoad(workload, _MAIN, self.settings.warmup, self.settings.window)

                def load(command: RunLoad = command) -> Metrics:
                    metrics: Metrics = generator.call(command, self.timeout)
                    return metrics

                report(workload, self._quietest(workload, load))
        if "connect" in wanted:
            report("connect", self._quietest("connect", self.connect))
        if "relay_fanout" in wanted and self.target.transport is Transport.RELAY:
            report("relay_fanout", self._quietest("relay_fanout", self.relay_fanout))

    def relay_fanout(self) -> Metrics:
        """Time to the last of :data:`FANOUT_CLIENTS` results of one relayed broadcast."""
        brpc_port = self.server.call(BrpcPort())
        brpc_spec = dataclasses.replace(self.spec, transport=Transport.BRPC)
        group = "fan"
        self.client.call(
            ConnectMany(brpc_spec, brpc_port, group, FANOUT_CLIENTS, call=False),
            self.timeout,
        )
        try:
            command = MeasureFanout(
                self.port, group, FANOUT_CLIENTS, self.settings.warmup, self.settings.window
            )
            metrics: Metrics = self.client.call(command, self.timeout)
        finally:
            self.client.call(CloseMany(group), self.timeout)
        return metrics

    def _quietest(
        self, workload: str, measure: Callable[[], Metrics], retry: bool = True
    ) -> Metrics:
        """Measure, again while other processes were busy; keep the quietest attempt."""
        pids = [pid for pid in (self.server.pid, self.client.pid) if pid is not None]
        best: Metrics | None = None
        attempts = 1 + (self.settings.retries if retry else 0)
        for attempt in range(1, attempts + 1):
            self._wait_for_quiet(pids)
            meter = NoiseMeter(pids)
            metrics = dict(measure())
            noise = metrics["foreign_cores"] = meter.foreign_cores()
            if best is None or noise < best["foreign_cores"]:
                best = metrics
            if math.isnan(noise) or noise <= self.settings.max_noise:
                break
            if attempt < attempts:
                log.info(
                    "  %s: other processes kept %.2f cores busy; measuring again", workload, noise
                )
        assert best is not None
        return best

    def _wait_for_quiet(self, pids: list[int]) -> None:
        """Wait (up to ``quiet_wait`` seconds) until other processes leave the cores alone."""
        deadline = time.monotonic() + self.settings.quiet_wait
        while time.monotonic() < deadline:
            meter = NoiseMeter(pids)
            time.sleep(_QUIET_PROBE)
            noise = meter.foreign_cores()
            if math.isnan(noise) or noise <= self.settings.max_noise:
                return

    def idle_memory(self) -> Metrics:
        count = self.settings.memory_clients
        self._connect_group("warm", min(_MEMORY_WARM_CLIENTS, count))
        self.client.call(CloseMany("warm"), self.timeout)
        self.server.call(Sleep(_SETTLE))
        before = self.server.call(ResidentSetSize())
        self._connect_group("idle", count)
        self.server.call(Sleep(_SETTLE))
        after = self.server.call(ResidentSetSize())
        self.client.call(CloseMany("idle"), self.timeout)
        return {"kib_per_client": (after - before) / count / 1024}

    def _connect_group(self, prefix: str, count: int) -> None:
        command = ConnectMany(self.spec, self.port, prefix, count, call=not self.server_calls)
        self.client.call(command, self.timeout)
        if self.server_calls:
            self.server.call(CallClients(prefix), self.timeout)

    def connect(self) -> Metrics:
        settings = self.settings
        probe = MeasureConnects(
            self.spec,
            self.port,
            settings.warmup,
            settings.window,
            server_calls_first=self.server_calls,
        )
        if self.server_calls:
            self.server.submit(AnswerConnects())
            started = self.client.call(probe, self.timeout)
            answered = self.server.result(self.timeout)
            durations = [answered[name] - t for name, t in started.items() if name in answered]
        else:
            durations = list(self.client.call(probe, self.timeout).values())
        return {
            "p50_ms": percentile(durations, 0.50) * 1e3,
            "p99_ms": percentile(durations, 0.99) * 1e3,
            "samples": float(len(durations)),
        }


def run(
    settings: Settings,
    certs: Certificates,
    *,
    timeout: float = 60.0,
    worker_log_level: int = logging.ERROR,
    results: Results | None = None,
    quiet: bool = False,
) -> Results:
    """Measure every selected workload on every target, ``settings.reps`` times,
    adding to ``results`` when given."""
    results = Results() if results is None else results
    say = log.debug if quiet else log.info
    server_core, client_core = core_pair()
    for rep in range(1, settings.reps + 1):
        for target in settings.targets:
            started = time.monotonic()
            say("repetition %d/%d: %s", rep, settings.reps, target.label)

            def report(workload: str, metrics: Metrics, target: Target = target) -> None:
                results.add(workload, target.key, metrics)
                shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())
                log.info("  %-14s %-9s %s", workload, target.key, shown)

            with (
                WorkerProcess(
                    "bench-server", core=server_core, timeout=timeout, log_level=worker_log_level
                ) as server,
                WorkerProcess(
                    "bench-client", core=client_core, timeout=timeout, log_level=worker_log_level
                ) as client,
            ):
                _Session(target, settings, certs, server, client).run(report)
            say("  (%.1f s)", time.monotonic() - started)
    return results

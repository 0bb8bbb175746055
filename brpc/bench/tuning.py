"""The tuning sweep: brpc alone, each knob at several values, before and after.

Every variant changes one knob from the defaults (:class:`BrpcTuning`) and is
measured with the selected workloads (by default the load workloads) in both
directions, in the same two-process setup as the comparison. Variants are
interleaved within each repetition so that drift of the machine spreads over
all of them.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass

from . import runner
from .report import format_cell, results_json
from .spec import BRPC_TARGETS, WORKLOADS, BrpcTuning

__all__ = ["VARIANTS", "Sweep", "format_sweep", "parse_variants", "run_sweep", "sweep_json"]

log = logging.getLogger(__name__)

_DEFAULTS = BrpcTuning()
#: (knob, value) pairs tried against the defaults. Datagram sizes stop at
#: 16383: aioquic 1.7 encodes a STREAM frame's length in two bytes and larger
#: datagrams corrupt frames.
VARIANTS: tuple[tuple[str, int], ...] = (
    ("max_datagram_size", 4096),
    ("max_datagram_size", 9000),
    ("max_datagram_size", 16383),
    ("lanes", 2),
    ("lanes", 4),
    ("read_batch", 1),
    ("read_batch", 4),
    ("read_batch", 32),
)


@dataclass
class Sweep:
    """Results of every variant, by its name ("defaults" first)."""

    tunings: dict[str, BrpcTuning]
    results: dict[str, runner.Results]


def parse_variants(text: str) -> tuple[tuple[str, int], ...]:
    """``"read_batch=16,lanes=2"`` -> ``(("read_batch", 16), ("lanes", 2))``."""
    knobs = {f.name for f in dataclasses.fields(BrpcTuning)}
    variants = []
    for part in text.split(","):
        knob, _, value = part.strip().partition("=")
        if knob not in knobs or not value.isdigit():
            raise ValueError(f"expected KNOB=NUMBER with KNOB one of {', '.join(sorted(knobs))}")
        variants.append((knob, int(value)))
    return tuple(variants)


def _tunings(variants: tuple[tuple[str, int], ...]) -> dict[str, BrpcTuning]:
    tunings = {"defaults": _DEFAULTS}
    for knob, value in variants:
        tunings[f"{knob}={value}"] = dataclasses.replace(_DEFAULTS, **{knob: value})
    return tunings


def run_sweep(
    settings: runner.Settings,
    certs: runner.Certificates,
    *,
    worker_log_level: int,
    variants: tuple[tuple[str, int], ...] = VARIANTS,
) -> Sweep:
    tunings = _tunings(variants)
    results = {name: runner.Results() for name in tunings}
    workloads = settings.workloads
    for rep in range(1, settings.reps + 1):
        for name, tuning in tunings.items():
            log.info("tuning, repetition %d/%d: %s", rep, settings.reps, name)
            once = dataclasses.replace(
                settings, reps=1, tuning=tuning, targets=BRPC_TARGETS, workloads=workloads
            )
            runner.run(
                once, certs, worker_log_level=worker_log_level, results=results[name], quiet=True
            )
    return Sweep(tunings, results)


def format_sweep(sweep: Sweep, settings: runner.Settings) -> str:
    columns = [
        (workload, metric, target)
        for workload in WORKLOADS
        if workload.key in settings.workloads
        for metric in workload.metrics[:1]
        for target in BRPC_TARGETS
    ]
    header = [
        "variant",
        *(f"{w.key} {t.label.removeprefix('brpc ')} {m.label}" for w, m, t in columns),
    ]
    rows = [header]
    defaults = sweep.results["defaults"]
    for name, results in sweep.results.items():
        row = [name]
        for workload, metric, target in columns:
            spread = results.spread(workload.key, target.key, metric.key)
            cell = format_cell(spread, metric)
            base = defaults.spread(workload.key, target.key, metric.key)
            if name != "defaults" and spread is not None and base is not None and base.median:
                change = spread.median / base.median - 1
                if not math.isnan(change):
                    cell += f" {change:+.0%}"
            row.append(cell)
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    ]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])


def sweep_json(sweep: Sweep, settings: runner.Settings) -> dict[str, object]:
    variants = {}
    for name, results in sweep.results.items():
        tuning = sweep.tunings[name]
        body = results_json(
            results, dataclasses.replace(settings, tuning=tuning, targets=BRPC_TARGETS)
        )
        variants[name] = {
            "tuning": dataclasses.asdict(tuning),
            "results": body["results"],
        }
    return {"variants": variants}

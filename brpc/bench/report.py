"""Turning results into the stdout table and the JSON document.

Every cell is the median over the repetitions with the spread (min-max) next
to it. Ratio columns divide each brpc median by each baseline's median for
the same workload and metric: above 1 is better for rates, below 1 is better
for times and memory.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .runner import Results, Settings
from .spec import BASELINES, TARGETS, WORKLOADS, BrpcTuning, Metric, Target
from .stats import Spread

__all__ = ["NOISE_KEY", "format_table", "load_report", "ratios", "results_json"]

#: Per-measurement metric: cores other processes kept busy meanwhile.
NOISE_KEY = "foreign_cores"


def _number(value: float, decimals: int) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:,.{decimals}f}"


def format_cell(spread: Spread | None, metric: Metric) -> str:
    if spread is None:
        return "n/a"
    text = _number(spread.median, metric.decimals)
    if len(spread.values) > 1 and not math.isnan(spread.median):
        low = _number(spread.low, metric.decimals)
        high = _number(spread.high, metric.decimals)
        text += f" ({low}-{high})"
    return text


def _ratio(brpc: Spread | None, baseline: Spread | None) -> float:
    if brpc is None or baseline is None or not baseline.median:
        return math.nan
    return brpc.median / baseline.median


def ratios(results: Results, settings: Settings) -> dict[str, dict[str, dict[str, float]]]:
    """``ratios[workload][metric]["brpc-c2s/grpclib"]``: brpc median ÷ baseline median."""
    brpc_targets = [t for t in settings.targets if t.is_brpc]
    baselines = [t for t in settings.targets if not t.is_brpc]
    table: dict[str, dict[str, dict[str, float]]] = {}
    for workload in WORKLOADS:
        if workload.key not in settings.workloads:
            continue
        for metric in workload.metrics:
            for brpc in brpc_targets:
                for baseline in baselines:
                    value = _ratio(
                        results.spread(workload.key, brpc.key, metric.key),
                        results.spread(workload.key, baseline.key, metric.key),
                    )
                    table.setdefault(workload.key, {}).setdefault(metric.key, {})[
                        f"{brpc.key}/{baseline.key}"
                    ] = value
    return table


def _render(rows: Sequence[Sequence[str]], right_from: int) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [
            cell.rjust(width) if i >= right_from else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


def _render_markdown(rows: Sequence[Sequence[str]], right_from: int) -> list[str]:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    align = ["---" if i < right_from else "---:" for i in range(len(rows[0]))]
    return [line(rows[0]), line(align), *(line(row) for row in rows[1:])]


def format_table(
    results: Results,
    settings: Settings,
    *,
    markdown: bool = False,
    ratio_baselines: Sequence[str] | None = None,
) -> str:
    """The results as a fixed-width text table, or as a Markdown table.

    ``ratio_baselines``: the baselines (by key) that get ratio columns (None: all).
    """
    targets = list(settings.targets)
    brpc_targets = [t for t in targets if t.is_brpc]
    baselines = [
        t
        for t in targets
        if not t.is_brpc and (ratio_baselines is None or t.key in ratio_baselines)
    ]
    ratio_columns = [(b, base) for base in baselines for b in brpc_targets]
    header = ["workload", "metric", *(t.label for t in targets)]
    header += [f"{b.label.removeprefix('brpc ')} ÷ {base.key}" for b, base in ratio_columns]
    rows = [header]
    all_ratios = ratios(results, settings)
    for workload in WORKLOADS:
        if workload.key not in settings.workloads:
            continue
        for index, metric in enumerate(workload.metrics):
            row = [workload.title if index == 0 else "", metric.label]
            row += [
                format_cell(results.spread(workload.key, t.key, metric.key), metric)
                for t in targets
            ]
            for b, base in ratio_columns:
                value = all_ratios[workload.key][metric.key][f"{b.key}/{base.key}"]
                row.append("-" if math.isnan(value) else f"{value:.2f}")
            rows.append(row)
    if markdown:
        return "\n".join([*_render_markdown(rows, right_from=2), "", describe_noise(results)])
    lines = _render(rows, right_from=2)
    rule = "-" * max(len(line) for line in lines)
    return "\n".join([lines[0], rule, *lines[1:], describe_noise(results)])


def describe_noise(results: Results) -> str:
    """One line on how busy other processes kept the machine during the measurements."""
    noise = [
        value
        for per_target in results.values.values()
        for metrics in per_target.values()
        for value in metrics.get(NOISE_KEY, [])
        if not math.isnan(value)
    ]
    if not noise:
        return "(load from other processes unknown)"
    return (
        f"other processes kept {statistics.median(noise):.2f} cores busy (median over "
        f"{len(noise)} measurements, max {max(noise):.2f})"
    )


def describe_settings(settings: Settings) -> str:
    reps = f"{settings.reps} repetition{'s' if settings.reps != 1 else ''}"
    spread = ", median (min-max)" if settings.reps > 1 else ""
    return (
        f"{reps}, {settings.warmup:g} s warm-up + {settings.window:g} s window per workload"
        f"{spread}; memory with {settings.memory_clients} idle clients; "
        f"brpc {settings.tuning.describe()}"
    )


def load_report(data: Mapping[str, Any]) -> tuple[Results, Settings]:
    """The results and settings of a comparison report written by :func:`results_json`."""
    raw = data["settings"]
    tuning = raw["brpc_tuning"]
    target_keys = {t["key"] for t in data["targets"]}
    settings = Settings(
        warmup=raw["warmup_s"],
        window=raw["window_s"],
        reps=raw["repetitions"],
        memory_clients=raw["memory_clients"],
        workloads=tuple(raw["workloads"]),
        targets=tuple(t for t in TARGETS if t.key in target_keys),
        tuning=BrpcTuning(
            lanes=tuning["lanes"],
            max_datagram_size=tuning["max_datagram_size"],
            read_batch=tuning["read_batch"],
        ),
        max_noise=raw.get("max_noise_cores", 0.1),
        retries=raw.get("retries", 0),
        quiet_wait=raw.get("quiet_wait_s", 0.0),
    )
    results = Results()
    for workload, per_target in data["results"].items():
        for target, metrics in per_target.items():
            for metric, spread in metrics.items():
                values = [math.nan if v is None else float(v) for v in spread["values"]]
                results.values.setdefault(workload, {}).setdefault(target, {})[metric] = values
    return results, settings


def _target_json(target: Target) -> dict[str, str]:
    return {
        "key": target.key,
        "label": target.label,
        "transport": target.transport.value,
        "direction": target.direction.value,
        "call_layer": target.call_layer or "",
        "engine": target.engine if target.is_brpc else "",
    }


def _clean(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 4)


def settings_json(settings: Settings) -> dict[str, object]:
    return {
        "warmup_s": settings.warmup,
        "window_s": settings.window,
        "repetitions": settings.reps,
        "memory_clients": settings.memory_clients,
        "max_noise_cores": settings.max_noise,
        "retries": settings.retries,
        "quiet_wait_s": settings.quiet_wait,
        "workloads": list(settings.workloads),
        "brpc_tuning": {
            "lanes": settings.tuning.lanes,
            "max_datagram_size": settings.tuning.max_datagram_size,
            "read_batch": settings.tuning.read_batch,
        },
    }


def results_json(
    results: Results, settings: Settings, targets: Iterable[Target] | None = None
) -> dict[str, object]:
    """``results``, ``ratios``, ``targets``, ``workloads`` and ``settings`` of a run."""
    chosen = list(settings.targets if targets is None else targets)
    body: dict[str, dict[str, dict[str, object]]] = {}
    for workload in WORKLOADS:
        if workload.key not in settings.workloads:
            continue
        for target in chosen:
            for key in [*(m.key for m in workload.metrics), NOISE_KEY]:
                spread = results.spread(workload.key, target.key, key)
                if spread is not None:
                    body.setdefault(workload.key, {}).setdefault(target.key, {})[key] = (
                        spread.to_json()
                    )
    return {
        "settings": settings_json(settings),
        "targets": [_target_json(t) for t in chosen],
        "baselines": [t.key for t in chosen if t in BASELINES],
        "workloads": [
            {
                "key": w.key,
                "title": w.title,
                "metrics": [
                    {"key": m.key, "label": m.label, "higher_is_better": m.higher_is_better}
                    for m in w.metrics
                ],
            }
            for w in WORKLOADS
            if w.key in settings.workloads
        ],
        "results": body,
        "ratios": {
            workload: {
                metric: {pair: _clean(value) for pair, value in pairs.items()}
                for metric, pairs in per_metric.items()
            }
            for workload, per_metric in ratios(results, settings).items()
        },
    }

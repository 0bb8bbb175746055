"""Command line of the benchmark: ``python -m brpc.bench`` / ``scripts/bench``.

Parses the options, makes throw-away certificates in a temporary directory,
runs the measurements (or the tuning sweep), prints the table and writes the
JSON report.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from brpc.certs import write_dev_certificates

from . import runner, tuning
from .machine import describe_machine
from .report import describe_settings, format_table, load_report, results_json
from .spec import TARGETS, WORKLOADS, BrpcTuning

__all__ = ["main"]

log = logging.getLogger("brpc.bench")

SCHEMA = "brpc-bench/1"
_FULL = {"reps": 3, "warmup": 1.0, "window": 4.0, "retries": 3, "quiet_wait": 30.0}
_QUICK = {"reps": 1, "warmup": 0.2, "window": 0.8, "retries": 0, "quiet_wait": 0.0}
_DEFAULT_MEMORY_CLIENTS = 200


def _keys(text: str, known: Sequence[str], what: str) -> tuple[str, ...]:
    chosen = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [key for key in chosen if key not in known]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(
            f"unknown {what} {', '.join(unknown) or '(none given)'}; choose from {', '.join(known)}"
        )
    return chosen


def _variants(text: str) -> tuple[tuple[str, int], ...]:
    try:
        return tuning.parse_variants(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _parser() -> argparse.ArgumentParser:
    workloads = [w.key for w in WORKLOADS]
    targets = [t.key for t in TARGETS]
    parser = argparse.ArgumentParser(
        prog="scripts/bench",
        description="Benchmark brpc (both directions) against grpclib and grpcio over TCP "
        "loopback, server and client in separate processes pinned to different cores.",
        epilog="Many servers: `scripts/bench cluster [options]` measures forwarded vs local "
        "calls, 2 worker processes vs 1 on one port and directory operations during a connect "
        "storm instead (see `scripts/bench cluster --help`). Its options: " + _cluster_options(),
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"one short repetition (about {_QUICK['warmup']:g}+{_QUICK['window']:g} s per "
        "workload); the whole run takes well under a minute",
    )
    parser.add_argument("--reps", type=int, help=f"repetitions (default {_FULL['reps']})")
    parser.add_argument(
        "--warmup",
        type=float,
        help=f"seconds of warm-up per workload (default {_FULL['warmup']:g})",
    )
    parser.add_argument(
        "--window",
        type=float,
        help=f"seconds measured per workload (default {_FULL['window']:g})",
    )
    parser.add_argument(
        "--memory-clients",
        type=int,
        default=_DEFAULT_MEMORY_CLIENTS,
        help=f"idle clients for the memory workload (default {_DEFAULT_MEMORY_CLIENTS})",
    )
    parser.add_argument(
        "--only",
        type=lambda text: _keys(text, workloads, "workload"),
        metavar="WORKLOADS",
        help=f"comma-separated workloads to run: {', '.join(workloads)} (default: all; "
        "with --tuning, the four load workloads)",
    )
    parser.add_argument(
        "--targets",
        type=lambda text: _keys(text, targets, "target"),
        default=tuple(targets),
        metavar="TARGETS",
        help=f"comma-separated targets to run: {', '.join(targets)}",
    )
    parser.add_argument(
        "--max-noise",
        type=float,
        default=0.1,
        metavar="CORES",
        help="measure again when other processes kept more than this many cores busy (default 0.1)",
    )
    parser.add_argument(
        "--retries",
        type=int,
        help=f"how often to measure again (default {_FULL['retries']}, {_QUICK['retries']} "
        "with --quick)",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        metavar="SECONDS",
        help="before each measurement, wait up to this long for other processes to leave the "
        f"cores alone (default {_FULL['quiet_wait']:g}, {_QUICK['quiet_wait']:g} with --quick)",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the report as JSON here")
    parser.add_argument(
        "--markdown", action="store_true", help="print the table as Markdown (for the README)"
    )
    parser.add_argument(
        "--ratios-to",
        metavar="BASELINES",
        type=lambda text: tuple(key.strip() for key in text.split(",") if key.strip()),
        help="comma-separated baselines that get ratio columns in the table "
        "(default: every baseline run)",
    )
    parser.add_argument(
        "--render",
        type=Path,
        metavar="PATH",
        help="measure nothing: print the table of a JSON report written by an earlier run",
    )
    knobs = parser.add_argument_group("brpc tuning")
    defaults = BrpcTuning()
    knobs.add_argument("--lanes", type=int, default=defaults.lanes, help="lanes per direction")
    knobs.add_argument(
        "--datagram-size",
        type=int,
        default=defaults.max_datagram_size,
        help="QUIC max_datagram_size in bytes",
    )
    knobs.add_argument(
        "--read-batch",
        type=int,
        default=defaults.read_batch,
        help="datagrams read per wake-up before one transmit (1: off)",
    )
    knobs.add_argument(
        "--tuning",
        action="store_true",
        help="instead of the comparison, measure brpc with each knob at several values",
    )
    knobs.add_argument(
        "--variants",
        type=_variants,
        default=tuning.VARIANTS,
        metavar="KNOB=N,...",
        help="the knob values --tuning tries against the defaults (default: "
        + ",".join(f"{k}={v}" for k, v in tuning.VARIANTS)
        + ")",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log from the workers too")
    return parser


def _cluster_options() -> str:
    from .cluster import parser as cluster_parser  # noqa: PLC0415 (only for --help)

    actions = cluster_parser()._actions
    return ", ".join("/".join(action.option_strings) for action in actions if action.option_strings)


def _default_workloads(sweep: bool) -> tuple[str, ...]:
    return tuple(w.key for w in WORKLOADS if w.is_load or not sweep)


def _settings(args: argparse.Namespace) -> runner.Settings:
    base = _QUICK if args.quick else _FULL
    reps = args.reps if args.reps is not None else int(base["reps"])
    warmup = args.warmup if args.warmup is not None else base["warmup"]
    window = args.window if args.window is not None else base["window"]
    retries = args.retries if args.retries is not None else int(base["retries"])
    quiet_wait = args.quiet_wait if args.quiet_wait is not None else base["quiet_wait"]
    if reps < 1 or warmup < 0 or window <= 0 or args.memory_clients < 1 or retries < 0:
        raise SystemExit(
            "need --reps >= 1, --warmup >= 0, --window > 0, --memory-clients >= 1, --retries >= 0"
        )
    return runner.Settings(
        warmup=warmup,
        window=window,
        reps=reps,
        memory_clients=args.memory_clients,
        max_noise=args.max_noise,
        retries=retries,
        quiet_wait=max(0.0, quiet_wait),
        workloads=args.only or _default_workloads(args.tuning),
        targets=tuple(t for t in TARGETS if t.key in args.targets),
        tuning=BrpcTuning(
            lanes=args.lanes, max_datagram_size=args.datagram_size, read_batch=args.read_batch
        ),
    )


def _render(path: Path, markdown: bool, ratios_to: Sequence[str] | None) -> int:
    data = json.loads(path.read_text())
    if "results" not in data:
        raise SystemExit(f"{path} holds no comparison results (a --tuning report?)")
    results, settings = load_report(data)
    machine = data.get("machine", {})
    print(describe_settings(settings))
    print(
        f"{data.get('created', '?')}, {machine.get('cpu_model', '?')}, "
        f"{machine.get('cpu_count', '?')} cores, Python {machine.get('python', '?')}"
    )
    print()
    print(format_table(results, settings, markdown=markdown, ratio_baselines=ratios_to))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["cluster"]:
        from .cluster import main as cluster_main  # noqa: PLC0415 (needs the redis extra)

        return cluster_main(arguments[1:], prog="scripts/bench cluster")
    args = _parser().parse_args(argv)
    if args.render is not None:
        return _render(args.render, args.markdown, args.ratios_to)
    logging.basicConfig(
        level=logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
    )
    worker_log_level = logging.INFO if args.verbose else logging.ERROR
    settings = _settings(args)
    started = time.monotonic()
    created = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    report: dict[str, object] = {
        "schema": SCHEMA,
        "created": created,
        "command": ["scripts/bench", *(argv if argv is not None else sys.argv[1:])],
        "machine": describe_machine(),
    }
    with tempfile.TemporaryDirectory(prefix="brpc-bench-") as directory:
        certificates = write_dev_certificates(directory)
        certs = runner.Certificates(
            ca=str(certificates.ca),
            certfile=str(certificates.server_cert),
            keyfile=str(certificates.server_key),
        )
        if args.tuning:
            sweep = tuning.run_sweep(
                settings, certs, worker_log_level=worker_log_level, variants=args.variants
            )
            text = tuning.format_sweep(sweep, settings)
            report["tuning"] = tuning.sweep_json(sweep, settings)
        else:
            results = runner.run(settings, certs, worker_log_level=worker_log_level)
            text = format_table(
                results, settings, markdown=args.markdown, ratio_baselines=args.ratios_to
            )
            report.update(results_json(results, settings))
    report["duration_s"] = round(time.monotonic() - started, 1)
    print()
    print(describe_settings(settings))
    print(text)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        log.info("wrote %s", args.json)
    log.info("took %.1f s", time.monotonic() - started)
    return 0

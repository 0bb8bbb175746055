"""``brpc workers``: run N worker processes of a server on one UDP port.

``brpc workers -n 4 myapp.serve:worker`` imports ``worker`` from ``myapp.serve``
(a coroutine function taking the worker's index) and runs it in N spawned
processes with :func:`brpc.cluster.run_workers`; each worker builds its server
and cluster member and starts it with ``reuse_port=True`` (see the README's
"Many servers"). SIGINT or SIGTERM stops them all.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["register", "run"]

PROG = "brpc workers"


def _parser(prog: str = PROG, **options: Any) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Run MODULE:FUNCTION, a coroutine function taking the worker index, "
        "in N worker processes (each a cluster member on the shared UDP port).",
        **options,
    )
    parser.add_argument("target", metavar="MODULE:FUNCTION", help="the worker's main")
    parser.add_argument(
        "-n", "--workers", type=int, default=os.cpu_count() or 1, help="processes (default: cores)"
    )
    return parser


def register(subparsers: Any) -> None:
    # Listed for `brpc --help`; `brpc workers ...` is handed to run() before the
    # top-level parser sees it (it runs for as long as the workers do).
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "workers", help="run a server's worker processes on one UDP port", add_help=False
    )
    parser.add_argument("arguments", nargs=argparse.REMAINDER)
    parser.set_defaults(func=None)


def run(argv: Sequence[str]) -> int:
    # Not at the top: brpc.cluster loads redis-py, which other commands do not need.
    from ..cluster.workers import run_workers  # noqa: PLC0415

    args = _parser().parse_args(list(argv))
    module_name, sep, function_name = args.target.partition(":")
    if not sep or not module_name or not function_name:
        print(f"{PROG}: expected MODULE:FUNCTION, not {args.target!r}", file=sys.stderr)
        return 2
    if args.workers < 1:
        print(f"{PROG}: -n must be at least 1", file=sys.stderr)
        return 2
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        main = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as exc:
        print(f"{PROG}: cannot load {args.target}: {exc}", file=sys.stderr)
        return 1
    return run_workers(main, args.workers)

"""``brpc certs``: development certificates, as ``python -m brpc.certs`` makes them.

The options and the work are :func:`brpc.certs.main`'s; this module only hands
the arguments after ``certs`` over to it.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from .. import certs

__all__ = ["register", "run"]

PROG = "brpc certs"


def register(subparsers: Any) -> None:
    # Listed for `brpc --help`; `brpc certs ...` itself is handed to run() before
    # the top-level parser sees it, so that `brpc certs --help` shows certs' own options.
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "certs",
        help="make a development CA, server and client certificates",
        add_help=False,
    )
    parser.add_argument("arguments", nargs=argparse.REMAINDER)
    parser.set_defaults(func=None)


def run(argv: Sequence[str]) -> int:
    return certs.main(list(argv), prog=PROG)

"""The ``brpc`` console command: certificates, calls with JSON, reflection, clients, ping,
worker processes.

``brpc SUBCOMMAND --help`` describes each subcommand; each lives in a module of
this package (``certs``, ``call``, ``listing`` for ``list``, ``describe``,
``clients``, ``ping``, ``workers``), and ``_common`` holds the dialing options, output and
exit codes they share. Also runs as ``python -m brpc.cli``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from . import call, certs, clients, describe, listing, ping, workers
from ._common import run_command

__all__ = ["build_parser", "main"]

_EPILOG = """\
exit status: 0 on success; the gRPC status code (1-16) when a call fails with a
status; 1 when the command cannot connect or cannot use its input; 2 for a
command line it does not understand.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="brpc",
        description="Talk to brpc servers: call methods with JSON, list and describe services "
        "(server reflection), list connected clients, ping, make development certificates.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the connection does")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (call, listing, describe, clients, ping, certs, workers):
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    leading = [a for a in arguments[:2] if a in ("-v", "--verbose")]
    rest = arguments[len(leading) :]
    if rest[:1] == ["certs"]:
        return certs.run(rest[1:])
    if rest[:1] == ["workers"]:
        return workers.run(rest[1:])
    args = build_parser().parse_args(arguments)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        # aioquic logs a failed handshake as a warning; the command reports it itself.
        logging.getLogger("quic").setLevel(logging.ERROR)
    return run_command(args.func, args)

"""What the ``brpc`` subcommands share: dialing options, progress, output, exit codes.

Exit codes: 0 when everything worked; the gRPC status code number (1-16) when a
call fails with a status; 1 when the command cannot connect, or its input cannot
be used; 2 for a command line argparse rejects; 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from typing import Any, TextIO

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from grpclib.exceptions import GRPCError

import brpc

__all__ = [
    "CONNECT_FAILED",
    "DEFAULT_QUERY_TIMEOUT",
    "CommandError",
    "add_dial_arguments",
    "add_json_argument",
    "connect",
    "print_fields",
    "print_json",
    "print_table",
    "query_timeout",
    "run_command",
    "status_details",
]

#: Exit code when the command cannot connect or cannot use its input.
CONNECT_FAILED = 1
#: Deadline in seconds of reflection and admin calls when --timeout is not given.
DEFAULT_QUERY_TIMEOUT = 10.0
_INTERRUPTED = 130
_BROKEN_PIPE = 141
_SPINNER_PERIOD = 0.1


class CommandError(Exception):
    """A failure the command reports as ``error: <message>`` and exits with ``exit_code``."""

    def __init__(self, message: str, exit_code: int = CONNECT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# -- arguments -------------------------------------------------------------------------


def add_dial_arguments(parser: argparse.ArgumentParser) -> None:
    """TARGET and the options that say how to reach and trust it."""
    parser.add_argument("target", metavar="TARGET", help="server address, host:port")
    tls = parser.add_argument_group("connection")
    tls.add_argument(
        "--ca", metavar="FILE", help="CA certificate (PEM) that signed the server's certificate"
    )
    tls.add_argument("--cert", metavar="FILE", help="client certificate (PEM) for mutual TLS")
    tls.add_argument("--key", metavar="FILE", help="private key (PEM) of --cert")
    tls.add_argument(
        "--server-name",
        metavar="NAME",
        help="name the server's certificate must carry (default: TARGET's host)",
    )
    tls.add_argument(
        "--insecure",
        action="store_true",
        help="do not verify the server's certificate (experiments only)",
    )
    tls.add_argument(
        "--token", metavar="TOKEN", help="token sent in the hello, for servers that ask"
    )
    tls.add_argument(
        "--connect-timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds for each connection attempt (default: 10)",
    )
    tls.add_argument(
        "--timeout",
        type=float,
        metavar="S",
        help="deadline of each call in seconds (default: none; reflection and admin "
        f"calls: {DEFAULT_QUERY_TIMEOUT:g})",
    )
    tls.add_argument(
        "--retries",
        type=int,
        default=0,
        metavar="N",
        help="connection attempts to make after a failed one (default: 0)",
    )


def query_timeout(args: argparse.Namespace) -> float:
    """The deadline of a reflection or admin call: ``--timeout``, else a default."""
    timeout: float | None = args.timeout
    return DEFAULT_QUERY_TIMEOUT if timeout is None else timeout


def add_json_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


# -- progress and connecting ----------------------------------------------------------


@contextlib.asynccontextmanager
async def _progress(text: str, stream: TextIO) -> AsyncIterator[None]:
    """Show ``text`` and the time spent on ``stream`` while the block runs, when
    ``stream`` is a terminal; nothing otherwise."""
    if not stream.isatty():
        yield
        return
    started = time.monotonic()

    async def spin() -> None:
        while True:
            stream.write(f"\r{text} {time.monotonic() - started:.1f} s")
            stream.flush()
            await asyncio.sleep(_SPINNER_PERIOD)

    task = asyncio.create_task(spin())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        stream.write("\r\033[K")
        stream.flush()


async def connect(args: argparse.Namespace) -> brpc.ClientConn:
    """Dial ``args.target`` with the options of :func:`add_dial_arguments`.

    The connection does not reconnect: a command makes its calls and leaves.
    """
    if args.key and not args.cert:
        raise CommandError("--key needs --cert")
    attempts = max(0, args.retries) + 1
    for attempt in range(1, attempts + 1):
        label = f"connecting to {args.target}"
        if attempts > 1:
            label += f" (attempt {attempt}/{attempts})"
        try:
            async with _progress(label, sys.stderr):
                return await brpc.dial(
                    args.target,
                    ca=args.ca,
                    certfile=args.cert,
                    keyfile=args.key,
                    server_name=args.server_name,
                    insecure=args.insecure,
                    token=args.token,
                    timeout=args.connect_timeout,
                    reconnect=False,
                )
        except (brpc.HandshakeError, brpc.RefusedError):
            raise
        except brpc.ConnectError as exc:
            if attempt == attempts:
                raise
            if sys.stderr.isatty():
                print(f"attempt {attempt}/{attempts} failed: {exc}", file=sys.stderr)
            await asyncio.sleep(min(0.2 * 2 ** (attempt - 1), 2.0))
    raise AssertionError("unreachable")


# -- output ---------------------------------------------------------------------------


def print_json(value: Any, stream: TextIO | None = None) -> None:
    """``value`` as one JSON document (indented on a terminal)."""
    out = stream or sys.stdout
    indent = 2 if out.isatty() else None
    out.write(json.dumps(value, indent=indent, ensure_ascii=False) + "\n")


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Left-aligned columns with a header line; an empty table prints ``(none)``."""
    if not rows:
        print("(none)")
        return
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    for row in (headers, *rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def print_fields(fields: Sequence[tuple[str, str]]) -> None:
    """``name  value`` lines with the values aligned."""
    width = max((len(name) for name, _ in fields), default=0)
    for name, value in fields:
        print(f"{name.ljust(width)}  {value}")


def status_details(exc: GRPCError) -> list[Any]:
    """The decoded ``grpc-status-details-bin`` details of ``exc``, as JSON values."""
    decoded: list[Any] = []
    for detail in exc.details or ():
        if isinstance(detail, Message):
            decoded.append({"@type": detail.DESCRIPTOR.full_name, **MessageToDict(detail)})
        else:
            decoded.append(repr(detail))
    return decoded


def _report_status(exc: GRPCError, as_json: bool) -> int:
    details = status_details(exc)
    if as_json:
        print_json(
            {
                "code": exc.status.name,
                "code_number": exc.status.value,
                "message": exc.message or "",
                "details": details,
            },
            sys.stderr,
        )
    else:
        print(f"ERROR: {exc.status.name}: {exc.message or ''}", file=sys.stderr)
        for detail in details:
            print(f"  detail: {json.dumps(detail, ensure_ascii=False)}", file=sys.stderr)
    return int(exc.status.value)


def run_command(
    command: Callable[[argparse.Namespace], Coroutine[Any, Any, int]], args: argparse.Namespace
) -> int:
    """Run an async subcommand and turn its failures into messages and exit codes."""
    as_json = bool(getattr(args, "json", False))
    try:
        return asyncio.run(command(args))
    except GRPCError as exc:
        return _report_status(exc, as_json)
    except CommandError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:
        # Whoever read the output stopped early (`brpc call ... | head -1`).
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return _BROKEN_PIPE
    except (brpc.BrpcError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return CONNECT_FAILED
    except KeyboardInterrupt:
        return _INTERRUPTED

"""A processor: dials the gateway server and handles the action types it declares.

The processor makes the connection (so it works from behind NAT) and says in
its labels which action types it handles (``--handles echo,upper``); the
server routes each action to a processor of its type. ``--fail`` makes a
processor that fails every action on purpose, to see errors come back.

    python -m brpc.certs --out certs          # once: development certificates
    python -m examples.gateway.processor --name echo-1 --handles echo,upper
    python -m examples.gateway.processor --name audit-1 --handles audit --fail

It stays connected until Ctrl-C or SIGTERM. ``--help`` lists every option.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.server import Stream

import brpc
from examples.gateway import gateway_grpc, gateway_pb2

#: Label prefix a processor declares its action types with: ``action.echo=yes``.
ACTION_LABEL = "action."


def action_labels(types: Sequence[str]) -> dict[str, str]:
    """The labels saying a processor handles ``types``."""
    return {ACTION_LABEL + kind: "yes" for kind in types}


class ProcessorService(gateway_grpc.ProcessorBase):
    """Handles actions: ``echo`` returns the payload, ``upper`` upper-cases it,
    anything else is echoed with the type in front; ``fail`` fails everything."""

    def __init__(self, name: str, *, fail: bool = False, delay: float = 0.0) -> None:
        self.name = name
        self.fail = fail
        self.delay = delay
        self.handled = 0

    async def Process(self, stream: Stream[gateway_pb2.Action, gateway_pb2.ActionResult]) -> None:
        action = await stream.recv_message()
        assert action is not None
        self.handled += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail:
            raise GRPCError(
                Status.FAILED_PRECONDITION, f"{self.name} fails every action, on purpose"
            )
        if action.type == "upper":
            payload = action.payload.upper()
        elif action.type == "echo":
            payload = action.payload
        else:
            payload = action.type.encode() + b": " + action.payload
        await stream.send_message(gateway_pb2.ActionResult(processor=self.name, payload=payload))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m examples.gateway.processor",
        description="Processor: dials the gateway server and handles actions of its types.",
    )
    parser.add_argument("--target", default="127.0.0.1:4435", help="server host:port")
    parser.add_argument(
        "--ca", type=Path, default=Path("certs/ca.pem"), help="CA that signed the server cert"
    )
    parser.add_argument(
        "--name",
        default=f"{socket.gethostname()}-{os.getpid()}",
        help="the processor's name (default: HOSTNAME-PID)",
    )
    parser.add_argument(
        "--handles",
        default="echo",
        metavar="TYPE,...",
        help="comma-separated action types this processor handles (default: echo)",
    )
    parser.add_argument("--fail", action="store_true", help="fail every action, on purpose")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds to spend on each action")
    parser.add_argument("-v", "--verbose", action="store_true", help="log the connection")
    args = parser.parse_args(argv)
    args.handles = [kind.strip() for kind in args.handles.split(",") if kind.strip()]
    if not args.handles:
        parser.error("--handles needs at least one action type")
    return args


async def run(args: argparse.Namespace) -> int:
    if not args.ca.exists():
        print(f"no {args.ca}: make certificates with `python -m brpc.certs`", file=sys.stderr)
        return 2
    service = ProcessorService(args.name, fail=args.fail, delay=args.delay)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with brpc.dial(
        args.target,
        services=[service],
        ca=args.ca,
        name=args.name,
        labels=action_labels(args.handles),
    ) as conn:
        print(f"processor {args.name} ({','.join(args.handles)}) connected", flush=True)
        closed = asyncio.create_task(conn.wait_closed())
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait([closed, stopped], return_when=asyncio.FIRST_COMPLETED)
        closed.cancel()
        stopped.cancel()
    print(f"processor {args.name} stopped", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    logging.getLogger("quic").setLevel(logging.WARNING)
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())

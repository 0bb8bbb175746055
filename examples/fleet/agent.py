"""A fleet agent: dials the fleet server and serves ``fleet.v1.Agent`` to it.

The agent makes the connection (so it works from behind NAT); the server then
calls the agent's ``Status`` and ``Run`` over that same connection. Labels
given with ``--label key=value`` let the server pick groups of agents.

    python -m brpc.certs --out certs          # once: development certificates
    python -m examples.fleet.agent --name web-1 --label role=web --label zone=eu

It stays connected (reconnecting when the connection drops) until Ctrl-C or
SIGTERM. ``--broken`` and ``--delay`` make an agent misbehave, to see per-agent errors
and timeouts in the server's results. ``--help`` lists every option.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.server import Stream

import brpc
from examples.fleet import fleet_grpc, fleet_pb2
from examples.fleet.labels import parse_label

log = logging.getLogger("examples.fleet.agent")


class AgentService(fleet_grpc.AgentBase):
    """The agent's side of ``fleet.v1.Agent``."""

    def __init__(self, *, delay: float = 0.0, broken: str | None = None) -> None:
        self.delay = delay
        self.broken = broken
        self.calls = 0
        self._started = time.monotonic()

    async def Status(self, stream: Stream[fleet_pb2.StatusRequest, fleet_pb2.StatusReply]) -> None:
        await stream.recv_message()
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.broken:
            raise GRPCError(Status.FAILED_PRECONDITION, self.broken)
        try:
            load = os.getloadavg()[0]
        except OSError:
            load = 0.0
        await stream.send_message(
            fleet_pb2.StatusReply(
                hostname=socket.gethostname(),
                pid=os.getpid(),
                uptime_seconds=time.monotonic() - self._started,
                load_1m=load,
                calls=self.calls,
            )
        )

    async def Run(self, stream: Stream[fleet_pb2.RunRequest, fleet_pb2.RunOutput]) -> None:
        request = await stream.recv_message()
        assert request is not None
        self.calls += 1
        if request.task == "echo":
            await stream.send_message(fleet_pb2.RunOutput(line=" ".join(request.args)))
        elif request.task == "count":
            try:
                upto = int(request.args[0]) if request.args else 3
            except ValueError:
                raise GRPCError(Status.INVALID_ARGUMENT, "count needs a number") from None
            for number in range(1, min(upto, 1000) + 1):
                await stream.send_message(fleet_pb2.RunOutput(line=str(number)))
        elif request.task == "fail":
            raise GRPCError(Status.INTERNAL, "the task failed, as asked")
        else:
            raise GRPCError(
                Status.INVALID_ARGUMENT, f"unknown task {request.task!r} (echo, count, fail)"
            )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m examples.fleet.agent",
        description="Fleet agent: dials the fleet server and serves fleet.v1.Agent to it.",
    )
    parser.add_argument("--target", default="127.0.0.1:4434", help="server host:port")
    parser.add_argument(
        "--ca", type=Path, default=Path("certs/ca.pem"), help="CA that signed the server cert"
    )
    parser.add_argument(
        "--name",
        default=f"{socket.gethostname()}-{os.getpid()}",
        help="the agent's name (default: HOSTNAME-PID)",
    )
    parser.add_argument(
        "--label",
        type=parse_label,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a label the server can select agents by; repeat for more",
    )
    parser.add_argument(
        "--delay", type=float, default=0.0, help="seconds to wait before answering Status"
    )
    parser.add_argument(
        "--broken", metavar="REASON", help="answer Status with FAILED_PRECONDITION: REASON"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log the connection")
    return parser.parse_args(argv)


async def run(args: argparse.Namespace) -> int:
    if not args.ca.exists():
        print(f"no {args.ca}: make certificates with `python -m brpc.certs`", file=sys.stderr)
        return 2
    service = AgentService(delay=args.delay, broken=args.broken)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with brpc.dial(
        args.target, services=[service], ca=args.ca, name=args.name, labels=dict(args.label)
    ) as conn:
        print(f"agent {args.name} connected to {args.target}", flush=True)
        closed = asyncio.create_task(conn.wait_closed())
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait([closed, stopped], return_when=asyncio.FIRST_COMPLETED)
        closed.cancel()
        stopped.cancel()
        if conn.state is brpc.ConnState.CLOSED:
            log.warning("connection closed for good: %s", conn.close_reason)
            return 1
    print(f"agent {args.name} stopped", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    logging.getLogger("quic").setLevel(logging.WARNING)  # aioquic's per-connection chatter
    try:
        return asyncio.run(run(args))
    except brpc.ConnectError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""The fleet server: lists the agents connected to it and fans calls out to them.

Agents (``python -m examples.fleet.agent``) dial this server and serve
``fleet.v1.Agent``. The server shows a table of the connected agents whenever
one comes or goes, and every ``--interval`` seconds calls ``Status`` on all of
them (or those matching ``--select``) and prints each agent's result or error
as it arrives: a slow or broken agent delays nobody else's line.

    python -m brpc.certs --out certs          # once: development certificates
    python -m examples.fleet.server           # live: Ctrl-C to stop
    python -m examples.fleet.server --once 3 --run "count 3"

With ``--once N`` it waits for N agents, prints the table, fans out once (and
runs ``--run`` on every agent, a streaming call), then exits. ``--help``
lists every option.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import logging
import shlex
import signal
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import brpc
from examples.fleet import fleet_grpc, fleet_pb2
from examples.fleet.labels import parse_label

Agent = brpc.ClientInfo[fleet_grpc.AgentStub]


# -- what the server prints ------------------------------------------------------------


def _labels(agent: Agent) -> str:
    return " ".join(f"{key}={value}" for key, value in sorted(agent.labels.items())) or "-"


def _address(agent: Agent) -> str:
    if agent.address is None:
        return "-"
    host, port = agent.address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def format_table(agents: Iterable[Agent], now: float | None = None) -> str:
    """The connected agents as a text table, one line per agent."""
    now = time.time() if now is None else now
    rows = [("NAME", "ID", "ADDRESS", "UP", "LABELS")]
    for agent in agents:
        rows.append(
            (
                agent.name or "(unnamed)",
                agent.connection_id[:8],
                _address(agent),
                f"{max(0.0, now - agent.connected_at):.0f}s",
                _labels(agent),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = [
        "  ".join([*(cell.ljust(width) for cell, width in zip(row, widths, strict=False)), row[-1]])
        for row in rows
    ]
    return "\n".join(line.rstrip() for line in lines)


def print_table(server: brpc.Server[fleet_grpc.AgentStub]) -> None:
    print(f"\n{len(server.clients)} agent(s) connected:")
    print(format_table(server.clients))


def print_event(event: brpc.PresenceEvent[fleet_grpc.AgentStub]) -> None:
    agent = event.client
    if event.connected:
        when = "connected" if not event.replayed else "already connected"
        print(f"+ {agent.name} {when} from {_address(agent)} ({_labels(agent)})")
    else:
        print(f"- {agent.name} left: {event.reason}")


def format_result(result: brpc.CallResult[Any, Any], describe: Any) -> str:
    name = result.client.name or result.client.connection_id[:8]
    took = f"{result.elapsed * 1000:.0f} ms"
    if result.ok:
        return f"  {name:<12} OK                   {describe(result.value)}  ({took})"
    status = result.status.name
    message = getattr(result.error, "message", None) or str(result.error)
    return f"  {name:<12} {status:<20} {message}  ({took})"


def _describe_status(reply: fleet_pb2.StatusReply) -> str:
    return (
        f"host={reply.hostname} pid={reply.pid} up={reply.uptime_seconds:.0f}s "
        f"load={reply.load_1m:.2f} calls={reply.calls}"
    )


# -- fanning out ----------------------------------------------------------------------


async def fan_out_status(
    server: brpc.Server[fleet_grpc.AgentStub], select: dict[str, str] | None, timeout: float
) -> list[brpc.CallResult[fleet_grpc.AgentStub, fleet_pb2.StatusReply]]:
    """Call Status on every selected agent; print each result as it arrives."""

    async def status(stub: fleet_grpc.AgentStub, agent: Agent) -> fleet_pb2.StatusReply:
        return await stub.Status(fleet_pb2.StatusRequest())

    results = []
    async with server.call_all(status, select=select, timeout=timeout) as fan_out:
        print(f"\nStatus of {len(fan_out)} agent(s), as they answer (timeout {timeout:g} s):")
        async for result in fan_out:
            print(format_result(result, _describe_status), flush=True)
            results.append(result)
    failed = sum(not result.ok for result in results)
    print(f"{len(results) - failed} ok, {failed} failed")
    return results


async def fan_out_run(
    server: brpc.Server[fleet_grpc.AgentStub],
    command: str,
    select: dict[str, str] | None,
    timeout: float,
) -> None:
    """Run a task on every selected agent: a server-streaming call to each."""
    task, *task_args = shlex.split(command)
    request = fleet_pb2.RunRequest(task=task, args=task_args)

    async def run(stub: fleet_grpc.AgentStub, agent: Agent) -> list[str]:
        return [output.line for output in await stub.Run(request)]

    print(f"\nRun {command!r} on every agent:")
    async with server.call_all(run, select=select, timeout=timeout) as fan_out:
        async for result in fan_out:
            print(format_result(result, " | ".join), flush=True)


# -- modes ----------------------------------------------------------------------------


async def once(server: brpc.Server[fleet_grpc.AgentStub], args: argparse.Namespace) -> int:
    print(f"waiting for {args.once} agent(s)...", flush=True)
    try:
        async with asyncio.timeout(args.wait), server.watch() as presence:
            async for event in presence:
                print_event(event)
                if len(server.clients) >= args.once:
                    break
    except TimeoutError:
        print(
            f"only {len(server.clients)} of {args.once} agent(s) connected within {args.wait:g} s",
            file=sys.stderr,
        )
        return 1
    print_table(server)
    await fan_out_status(server, args.select, args.timeout)
    if args.run:
        await fan_out_run(server, args.run, args.select, args.timeout)
    return 0


async def live(server: brpc.Server[fleet_grpc.AgentStub], args: argparse.Namespace) -> int:
    async def fan_out_periodically() -> None:
        while True:
            await asyncio.sleep(args.interval)
            if server.clients:
                await fan_out_status(server, args.select, args.timeout)
                if args.run:
                    await fan_out_run(server, args.run, args.select, args.timeout)

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, server.close)
    print("waiting for agents (Ctrl-C to stop)...")
    periodic = asyncio.create_task(fan_out_periodically())
    try:
        # Ends once the server has closed and every agent has left.
        async for event in server.watch():
            print_event(event)
            if not event.replayed:
                print_table(server)
    finally:
        periodic.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await periodic
    print("fleet server stopped")
    return 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m examples.fleet.server",
        description="Fleet server: lists connected agents and fans calls out to them.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=4434, help="UDP port (0 picks one)")
    parser.add_argument(
        "--certs",
        type=Path,
        default=Path("certs"),
        help="directory with server.pem and server.key (make them: python -m brpc.certs)",
    )
    parser.add_argument(
        "--select",
        type=parse_label,
        action="append",
        metavar="KEY=VALUE",
        help="fan out only to agents with this label; repeat for more",
    )
    parser.add_argument(
        "--timeout", type=float, default=5.0, help="seconds every fan-out may take (default: 5)"
    )
    parser.add_argument(
        "--run", metavar="TASK", help='also run TASK on every agent, e.g. "count 3" or "echo hi"'
    )
    parser.add_argument(
        "--interval", type=float, default=10.0, help="seconds between fan-outs (default: 10)"
    )
    parser.add_argument(
        "--once",
        type=int,
        metavar="N",
        help="wait for N agents, fan out once, print the results and exit",
    )
    parser.add_argument(
        "--wait", type=float, default=30.0, help="with --once: seconds to wait for the agents"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log connections")
    args = parser.parse_args(argv)
    args.select = dict(args.select) if args.select else None
    return args


async def run(args: argparse.Namespace) -> int:
    certfile, keyfile = args.certs / "server.pem", args.certs / "server.key"
    if not (certfile.exists() and keyfile.exists()):
        print(f"no {certfile} or {keyfile}: make them with `python -m brpc.certs`", file=sys.stderr)
        return 2
    server = brpc.Server([], client_stub=fleet_grpc.AgentStub, certfile=certfile, keyfile=keyfile)
    await server.start(args.host, args.port)
    print(f"fleet server listening on {server.address}", flush=True)
    try:
        if args.once is not None:
            return await once(server, args)
        return await live(server, args)
    finally:
        server.close()
        await server.wait_closed()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    logging.getLogger("quic").setLevel(logging.WARNING)  # aioquic's per-connection chatter
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)  # a live view, even through a pipe
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(run(args))
    return 130


if __name__ == "__main__":
    sys.exit(main())

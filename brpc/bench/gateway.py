"""HTTP/JSON unary calls through the gateway, against an aiohttp server answering itself.

``python -m brpc.bench.gateway`` (``--help`` for the options) measures, at
each concurrency (default 1 and 64), calls of ``brpc.testing.v1.Echo/Unary``
with a JSON body made by an aiohttp client:

- *direct*: an aiohttp server parses the JSON into ``EchoRequest``, builds the
  ``EchoReply`` and answers it as JSON, all in one process;
- *gateway*: :class:`brpc.gateway.HttpGateway` translates the JSON, calls a brpc
  client process serving Echo over QUIC, and translates the reply back.

Servers, the brpc client and the load generator are separate processes. The
report gives calls per second and latency percentiles of both, and the
gateway's cost as a throughput ratio and added median latency. Needs the
``bench`` and ``gateway`` extras.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import multiprocessing
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from multiprocessing.context import SpawnProcess
from pathlib import Path
from typing import Any

# First: without aiohttp this names the extra to install.
from ..gateway import HttpGateway  # isort: skip

import aiohttp
from aiohttp import web
from google.protobuf import json_format

from .. import Server, dial
from ..certs import write_dev_certificates
from ..testing import EchoService
from ..testing.v1.echo_pb2 import EchoReply, EchoRequest
from .stats import percentile

__all__ = ["GatewayResult", "main", "run"]

log = logging.getLogger(__name__)

_PATH = "/brpc.testing.v1.Echo/Unary"
_BODY = {"text": "hello", "payload": "eHl6"}


@dataclass(frozen=True)
class GatewayResult:
    """One mode at one concurrency."""

    mode: str
    concurrency: int
    calls: int
    calls_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int


# -- processes ------------------------------------------------------------------------


def _serve_direct(ready: Any) -> None:
    async def unary(request: web.Request) -> web.Response:
        message = json_format.Parse(await request.text(), EchoRequest())
        reply = EchoReply(text=message.text, payload=message.payload, received=1)
        return web.Response(
            text=json.dumps(json_format.MessageToDict(reply), separators=(",", ":")),
            content_type="application/json",
        )

    async def main() -> None:
        app = web.Application()
        app.router.add_post(_PATH, unary)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        ready.put(f"http://127.0.0.1:{runner.addresses[0][1]}")
        await asyncio.Event().wait()

    asyncio.run(main())


def _serve_gateway(ready: Any, certs: str) -> None:
    async def main() -> None:
        directory = Path(certs)
        server: Server[Any] = Server(
            [], certfile=directory / "server.pem", keyfile=directory / "server.key"
        )
        await server.start("127.0.0.1", 0)
        gateway = HttpGateway(server)
        port = await gateway.start("127.0.0.1", 0)
        ready.put((server.address, f"http://127.0.0.1:{port}"))
        await asyncio.Event().wait()

    asyncio.run(main())


def _serve_echo_client(ready: Any, target: str, certs: str) -> None:
    async def main() -> None:
        async with dial(target, services=[EchoService()], ca=Path(certs) / "ca.pem", name="echo"):
            ready.put("connected")
            await asyncio.Event().wait()

    asyncio.run(main())


def _load(done: Any, url: str, concurrency: int, warmup: float, window: float) -> None:
    async def main() -> tuple[list[float], int]:
        latencies: list[float] = []
        errors = 0
        body = json.dumps(_BODY).encode()
        headers = {"Content-Type": "application/json"}
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:
            loop = asyncio.get_running_loop()
            start = loop.time()
            measure_from, end = start + warmup, start + warmup + window

            async def worker() -> None:
                nonlocal errors
                while (now := loop.time()) < end:
                    async with session.post(url + _PATH, data=body, headers=headers) as response:
                        await response.read()
                        ok = response.status == 200
                    finished = loop.time()
                    if now >= measure_from:
                        if ok:
                            latencies.append(finished - now)
                        else:
                            errors += 1

            await asyncio.gather(*(worker() for _ in range(concurrency)))
        return latencies, errors

    latencies, errors = asyncio.run(main())
    done.put(
        (
            len(latencies),
            len(latencies) / window,
            percentile(latencies, 0.5) * 1000,
            percentile(latencies, 0.99) * 1000,
            errors,
        )
    )


# -- orchestration --------------------------------------------------------------------


def _start(context: Any, target: Any, *args: Any) -> tuple[SpawnProcess, Any]:
    queue = context.Queue()
    process = context.Process(target=target, args=(queue, *args), daemon=True)
    process.start()
    return process, queue


def _measure(
    context: Any, mode: str, url: str, *, concurrency: int, warmup: float, window: float
) -> GatewayResult:
    process, queue = _start(context, _load, url, concurrency, warmup, window)
    try:
        calls, rate, p50, p99, errors = queue.get(timeout=warmup + window + 60)
    finally:
        process.join(10)
    return GatewayResult(mode, concurrency, calls, rate, p50, p99, errors)


def run(
    *, concurrency: Sequence[int] = (1, 64), warmup: float = 1.0, window: float = 4.0
) -> list[GatewayResult]:
    """Measure both modes at every concurrency; servers run in their own processes."""
    context = multiprocessing.get_context("spawn")
    processes: list[SpawnProcess] = []
    results: list[GatewayResult] = []
    with tempfile.TemporaryDirectory(prefix="brpc-bench-gateway-") as certs:
        write_dev_certificates(Path(certs))
        try:
            direct, queue = _start(context, _serve_direct)
            processes.append(direct)
            direct_url = queue.get(timeout=60)
            gateway, queue = _start(context, _serve_gateway, certs)
            processes.append(gateway)
            brpc_address, gateway_url = queue.get(timeout=60)
            echo, queue = _start(context, _serve_echo_client, brpc_address, certs)
            processes.append(echo)
            queue.get(timeout=60)
            for level in concurrency:
                for mode, url in (("direct", direct_url), ("gateway", gateway_url)):
                    results.append(
                        _measure(
                            context, mode, url, concurrency=level, warmup=warmup, window=window
                        )
                    )
        finally:
            for process in processes:
                process.terminate()
                process.join(10)
    return results


def format_results(results: Sequence[GatewayResult]) -> str:
    lines = [
        f"{'workload':<16}{'mode':<9}{'calls/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}",
    ]
    by_key = {(r.mode, r.concurrency): r for r in results}
    for result in results:
        lines.append(
            f"{'json unary c=' + str(result.concurrency):<16}{result.mode:<9}"
            f"{result.calls_per_second:>10.0f}{result.p50_ms:>9.2f}{result.p99_ms:>9.2f}"
            f"{result.errors:>8}"
        )
    for level in sorted({r.concurrency for r in results}):
        direct, gateway = by_key.get(("direct", level)), by_key.get(("gateway", level))
        if direct and gateway and gateway.calls_per_second:
            ratio = gateway.calls_per_second / direct.calls_per_second
            lines.append(
                f"c={level}: gateway throughput = {ratio:.2f} x direct; "
                f"added median latency {gateway.p50_ms - direct.p50_ms:+.2f} ms"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m brpc.bench.gateway",
        description="HTTP/JSON unary calls through brpc's gateway vs an aiohttp server "
        "answering directly.",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        nargs="+",
        default=[1, 64],
        help="calls in flight (default: 1 64)",
    )
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before measuring")
    parser.add_argument("--window", type=float, default=4.0, help="seconds measured")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    started = time.time()
    results = run(concurrency=args.concurrency, warmup=args.warmup, window=args.window)
    print(format_results(results))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "schema": "brpc-bench-gateway/1",
                    "started": started,
                    "results": [asdict(r) for r in results],
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

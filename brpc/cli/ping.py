"""``brpc ping``: how long connecting takes, the control-stream round trip, and what
the connection looks like."""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import brpc

from ._common import add_dial_arguments, add_json_argument, connect, print_fields, print_json

__all__ = ["register"]


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "ping",
        help="time the connection (handshake and hello) and control-stream round trips",
        description="Connect to TARGET, timing the QUIC/TLS handshake and the brpc hello "
        "together; then ping over the control stream COUNT times and report the round-trip "
        "times and what the connection looks like.",
    )
    add_dial_arguments(parser)
    parser.add_argument(
        "-c", "--count", type=int, default=5, help="round trips to time (default: 5)"
    )
    add_json_argument(parser)
    parser.set_defaults(func=run)


def _address(address: tuple[str, int] | None) -> str:
    if address is None:
        return ""
    host, port = address[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def run(args: argparse.Namespace) -> int:
    count = max(1, args.count)
    started = time.perf_counter()
    async with await connect(args) as conn:
        connect_seconds = time.perf_counter() - started
        samples = [await conn.ping() for _ in range(count)]
        report: dict[str, Any] = {
            "target": conn.target,
            "peer_address": _address(conn.peer_address),
            "connection_id": conn.connection_id,
            "alpn": brpc.ALPN,
            "protocol_version": brpc.PROTOCOL_VERSION,
            "connect_ms": round(connect_seconds * 1000, 3),
            "rtt_ms": {
                "samples": count,
                "min": round(min(samples) * 1000, 3),
                "median": round(statistics.median(samples) * 1000, 3),
                "max": round(max(samples) * 1000, 3),
            },
        }
    if args.json:
        print_json(report)
        return 0
    rtt = report["rtt_ms"]
    print_fields(
        [
            ("target", report["target"]),
            ("peer address", report["peer_address"]),
            ("connection id", report["connection_id"]),
            ("protocol", f"{report['alpn']} version {report['protocol_version']}"),
            ("handshake + hello", f"{report['connect_ms']:.2f} ms"),
            (
                f"round trip ({count} pings)",
                f"min {rtt['min']:.3f} ms, median {rtt['median']:.3f} ms, max {rtt['max']:.3f} ms",
            ),
        ]
    )
    return 0

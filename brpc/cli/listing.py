"""``brpc list``: the services a server lists through reflection, or one service's methods."""

from __future__ import annotations

import argparse
from typing import Any

from ._common import (
    add_dial_arguments,
    add_json_argument,
    connect,
    print_json,
    print_table,
    query_timeout,
)
from ._reflection import ReflectionClient, method_kind

__all__ = ["register"]


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "list",
        help="list services, or a service's methods (server reflection)",
        description="List the services a server offers through server reflection; with "
        "SERVICE, list its methods with their request and response types and streaming kinds.",
    )
    add_dial_arguments(parser)
    parser.add_argument("service", metavar="SERVICE", nargs="?", help="a full service name")
    add_json_argument(parser)
    parser.set_defaults(func=run)


async def run(args: argparse.Namespace) -> int:
    async with await connect(args) as conn:
        reflection = ReflectionClient(conn, timeout=query_timeout(args))
        if args.service is None:
            services = sorted(await reflection.list_services())
            if args.json:
                print_json({"services": services})
            else:
                for name in services:
                    print(name)
            return 0
        schema = await reflection.schema_for([args.service])
        service = schema.service(args.service)
        methods = [
            {
                "name": method.name,
                "path": f"/{service.full_name}/{method.name}",
                "request": method.input_type.full_name,
                "response": method.output_type.full_name,
                "kind": method_kind(method),
            }
            for method in service.methods
        ]
    if args.json:
        print_json({"service": service.full_name, "methods": methods})
    else:
        print_table(
            ["METHOD", "REQUEST", "RESPONSE", "KIND"],
            [[m["name"], m["request"], m["response"], m["kind"]] for m in methods],
        )
    return 0

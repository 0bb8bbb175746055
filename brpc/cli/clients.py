"""``brpc clients``: the clients connected to a server, from its admin service.

Needs a server that serves ``brpc.admin.v1.Admin`` (:class:`brpc.admin.AdminService`,
off by default) and authorises this caller for it. The command's own connection
is left out of the list.
"""

from __future__ import annotations

import argparse
import datetime
from typing import Any

from google.protobuf import json_format

from ..admin.v1 import admin_grpc
from ..admin.v1.admin_pb2 import Client, ListClientsRequest
from ._common import (
    CommandError,
    add_dial_arguments,
    add_json_argument,
    connect,
    print_json,
    print_table,
    query_timeout,
)

__all__ = ["register"]


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "clients",
        help="list the clients connected to a server (admin service)",
        description="List the clients connected to a server: connection ID, name, labels, "
        "services, address and connection time. Needs a server that serves the admin "
        "service brpc.admin.v1.Admin and authorises this caller for it.",
    )
    add_dial_arguments(parser)
    parser.add_argument("--name", help="only clients with this name")
    parser.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="only clients carrying this label value (repeatable)",
    )
    parser.add_argument("--service", help="only clients serving this full service name")
    add_json_argument(parser)
    parser.set_defaults(func=run)


def _labels(pairs: list[str]) -> dict[str, str]:
    labels = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CommandError(f"--label {pair!r}: write it as key=value")
        labels[key] = value
    return labels


def _since(client: Client, now: datetime.datetime) -> str:
    connected = client.connected_at.ToDatetime(tzinfo=datetime.UTC)
    age = int((now - connected).total_seconds())
    return f"{connected:%Y-%m-%d %H:%M:%S}Z ({age // 3600}h{age // 60 % 60:02d}m{age % 60:02d}s)"


async def run(args: argparse.Namespace) -> int:
    request = ListClientsRequest(
        name=args.name or "", labels=_labels(args.label), service=args.service or ""
    )
    async with await connect(args) as conn:
        reply = await admin_grpc.AdminStub(conn).ListClients(request, timeout=query_timeout(args))
        own = conn.connection_id
    clients = [client for client in reply.clients if client.connection_id != own]
    if args.json:
        print_json({"clients": [json_format.MessageToDict(client) for client in clients]})
        return 0
    now = datetime.datetime.now(datetime.UTC)
    print_table(
        ["CONNECTION", "NAME", "LABELS", "SERVICES", "ADDRESS", "CONNECTED SINCE"],
        [
            [
                client.connection_id,
                client.name or "-",
                ",".join(f"{k}={v}" for k, v in sorted(client.labels.items())) or "-",
                ",".join(client.services) or "-",
                client.address or "-",
                _since(client, now),
            ]
            for client in clients
        ],
    )
    return 0

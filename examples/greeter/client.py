"""The greeter client: dials the server, serves Namer (answering with its name)
and calls Greeter.Greet, which the server answers by calling Namer back over the
same connection.

Run: ``python -m examples.greeter.client --help``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from grpclib.server import Stream

import brpc
from examples.greeter import greeter_grpc, greeter_pb2


class Namer(greeter_grpc.NamerBase):
    def __init__(self, name: str) -> None:
        self.name = name

    async def Name(self, stream: Stream[greeter_pb2.NameRequest, greeter_pb2.NameReply]) -> None:
        await stream.recv_message()
        await stream.send_message(greeter_pb2.NameReply(name=self.name))


async def greet(target: str, name: str, greeting: str, ca: Path, *, stay: bool = False) -> str:
    """Greet; with ``stay``, print the greeting and keep serving Namer until interrupted."""
    async with brpc.dial(target, services=[Namer(name)], ca=ca, name=name, reflection=True) as conn:
        reply = await greeter_grpc.GreeterStub(conn).Greet(
            greeter_pb2.GreetRequest(greeting=greeting)
        )
        if stay:
            print(reply.message, flush=True)
            await conn.wait_closed()
        return reply.message


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m examples.greeter.client",
        description="Call Greeter.Greet over brpc while serving Namer to the server.",
    )
    parser.add_argument("--target", default="127.0.0.1:4433", help="server host:port")
    parser.add_argument("--name", default="world", help="the name Namer answers with")
    parser.add_argument("--greeting", default="Hello", help="the greeting to ask for")
    parser.add_argument(
        "--ca", type=Path, default=Path("certs/ca.pem"), help="CA that signed the server cert"
    )
    parser.add_argument(
        "--stay",
        action="store_true",
        help="stay connected, serving Namer, until interrupted (to be called through a relay)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log the connection")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    try:
        message = asyncio.run(greet(args.target, args.name, args.greeting, args.ca, stay=args.stay))
    except brpc.ConnectError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        return
    if not args.stay:
        print(message)


if __name__ == "__main__":
    main()

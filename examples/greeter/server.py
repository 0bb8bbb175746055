"""The greeter server: serves Greeter.Greet, which asks the calling client for its
name (through the client's Namer service, over the same connection) and answers
"Hello <name>".

Run: ``python -m examples.greeter.server --help``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from pathlib import Path

from grpclib.server import Stream

import brpc
from examples.greeter import greeter_grpc, greeter_pb2


class Greeter(greeter_grpc.GreeterBase):
    def __init__(self) -> None:
        self.server: brpc.Server[greeter_grpc.NamerStub] | None = None

    async def Greet(self, stream: Stream[greeter_pb2.GreetRequest, greeter_pb2.GreetReply]) -> None:
        request = await stream.recv_message()
        assert request is not None and self.server is not None
        caller = self.server.client_info_from_context(stream)
        if NAMER in caller.services:
            # A stub bound to the caller's own connection: identity comes from the
            # connection the call arrived on, not from anything the client sent.
            namer = self.server.client_from_context(stream)
            name = (await namer.Name(greeter_pb2.NameRequest())).name
        else:  # a caller that serves no Namer (the brpc command, say)
            name = caller.name or "stranger"
        greeting = request.greeting or "Hello"
        await stream.send_message(greeter_pb2.GreetReply(message=f"{greeting} {name}"))


NAMER = "greeter.v1.Namer"


def make_server(certs: Path, *, relay: bool = False) -> brpc.Server[greeter_grpc.NamerStub]:
    """The greeter server, with server reflection (for ``brpc call`` and grpcurl).

    With ``relay``, calls to methods the server does not serve are relayed to
    connected clients (``brpc call --client NAME greeter.v1.Namer/Name``), for
    every caller: a demonstration, not a policy for production.
    """
    greeter = Greeter()
    server: brpc.Server[greeter_grpc.NamerStub] = brpc.Server(
        [greeter],
        client_stub=greeter_grpc.NamerStub,
        certfile=certs / "server.pem",
        keyfile=certs / "server.key",
        reflection=True,
        relay=brpc.Relay(authorize=lambda caller, method, targets: True) if relay else None,
    )
    greeter.server = server
    return server


async def serve(host: str, port: int, certs: Path, *, relay: bool = False) -> None:
    server = make_server(certs, relay=relay)
    await server.start(host, port)
    print(f"greeter server listening on {server.address}", flush=True)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, server.close)
    await server.serve_forever()
    await server.wait_closed()
    print("greeter server stopped", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m examples.greeter.server",
        description="Serve Greeter over brpc; Greet calls the caller's Namer back.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=4433, help="UDP port (0 picks one)")
    parser.add_argument(
        "--certs",
        type=Path,
        default=Path("certs"),
        help="directory with server.pem and server.key (make them: python -m brpc.certs)",
    )
    parser.add_argument(
        "--relay",
        action="store_true",
        help="relay calls the server does not serve to connected clients (any caller may)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log connections")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.host, args.port, args.certs, relay=args.relay))


if __name__ == "__main__":
    main()

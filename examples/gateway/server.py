"""The gateway server: takes actions over HTTP and gRPC and routes them to processors.

Processors (``python -m examples.gateway.processor``) dial this server over
brpc and declare the action types they handle as labels. The server answers

- ``POST /action`` with ``{"type": "echo", "payload": "hi", "broadcast": false}``
  on its HTTP port, next to everything :class:`brpc.gateway.HttpGateway`
  serves there (``/clients``, the console page at ``/``, calls and fan-outs to
  the processors' own service);
- ``gateway.v1.Gateway/ProcessAction`` over gRPC (plain HTTP/2 on TCP, for
  any gRPC client) and over brpc (for brpc clients of this server).

Each action goes to the least busy processor of its type, or to every one of
them when it is marked ``broadcast``; with no processor of the type connected
the answer is 503 ``unavailable`` (gRPC UNAVAILABLE), never a hang: every call
to a processor has a deadline (``--timeout``).

    python -m brpc.certs --out certs          # once: development certificates
    python -m examples.gateway.server         # live: Ctrl-C to stop
    curl -s localhost:8080/action -d '{"type": "echo", "payload": "hi"}'

``--help`` lists every option.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import logging
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiohttp import web
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.server import Server as GrpcServer
from grpclib.server import Stream

import brpc
from brpc.gateway import HttpGateway, Target, connect_error, pick, select
from examples.gateway import gateway_grpc, gateway_pb2
from examples.gateway.processor import action_labels

PROCESSOR = "gateway.v1.Processor"
Processor = brpc.ClientInfo[gateway_grpc.ProcessorStub]


class ActionRouter(gateway_grpc.GatewayBase):
    """Routes an action to a processor of its type (or all of them), over brpc."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        #: The brpc server the processors dial (set once it is made: it serves this router).
        self.server: brpc.Server[gateway_grpc.ProcessorStub] | None = None

    @property
    def clients(self) -> brpc.Clients[gateway_grpc.ProcessorStub]:
        assert self.server is not None, "ActionRouter.server is not set"
        return self.server.clients

    def _processors(self, action: gateway_pb2.Action) -> Target:
        if not action.type:
            raise GRPCError(Status.INVALID_ARGUMENT, "the action has no type")
        return Target(labels=action_labels([action.type]))

    def _none(self, action: gateway_pb2.Action) -> GRPCError:
        return GRPCError(
            Status.UNAVAILABLE, f"no processor of {action.type!r} actions is connected"
        )

    async def route(self, action: gateway_pb2.Action) -> gateway_pb2.ActionReply:
        target = self._processors(action)
        if action.broadcast:
            processors = select(self.clients, target, PROCESSOR)
            if not processors:
                raise self._none(action)
            results = await asyncio.gather(*(self._try(p, action) for p in processors))
            return gateway_pb2.ActionReply(results=results)
        processor: Processor | None = pick(self.clients, target, PROCESSOR)
        if processor is None:
            raise self._none(action)
        result = await processor.stub.Process(action, timeout=self.timeout)
        return gateway_pb2.ActionReply(results=[result])

    async def _try(
        self, processor: Processor, action: gateway_pb2.Action
    ) -> gateway_pb2.ActionResult:
        try:
            return await processor.stub.Process(action, timeout=self.timeout)
        except GRPCError as exc:
            return gateway_pb2.ActionResult(
                processor=processor.name,
                error_code=exc.status.name.lower(),
                error_message=exc.message or "",
            )

    async def ProcessAction(
        self, stream: Stream[gateway_pb2.ActionRequest, gateway_pb2.ActionReply]
    ) -> None:
        request = await stream.recv_message()
        assert request is not None
        await stream.send_message(await self.route(request.action))


def _result_json(result: gateway_pb2.ActionResult) -> dict[str, Any]:
    entry: dict[str, Any] = {"processor": result.processor}
    if result.error_code:
        entry["error"] = {"code": result.error_code, "message": result.error_message}
    else:
        entry["payload"] = result.payload.decode("utf-8", "replace")
    return entry


def _json(body: Any, status: int = 200) -> web.Response:
    return web.json_response(body, status=status, dumps=_compact)


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _error(status: Status, message: str) -> web.Response:
    http, body = connect_error(status, message)
    return _json(body, http)


def action_route(router: ActionRouter) -> Any:
    """The ``POST /action`` handler: ``{"type", "payload", "broadcast"}`` in, results out."""

    async def post_action(request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError as exc:
            return _error(Status.INVALID_ARGUMENT, f"the body is not JSON: {exc}")
        if not isinstance(body, dict):
            return _error(Status.INVALID_ARGUMENT, 'the body must be {"type": ..., "payload": ...}')
        kind, payload, broadcast = body.get("type"), body.get("payload", ""), body.get("broadcast")
        if not isinstance(kind, str) or not kind:
            return _error(Status.INVALID_ARGUMENT, '"type" must be a non-empty string')
        if not isinstance(payload, str):
            return _error(Status.INVALID_ARGUMENT, '"payload" must be a string')
        if broadcast is not None and not isinstance(broadcast, bool):
            return _error(Status.INVALID_ARGUMENT, '"broadcast" must be true or false')
        action = gateway_pb2.Action(type=kind, payload=payload.encode(), broadcast=bool(broadcast))
        try:
            reply = await router.route(action)
        except GRPCError as exc:
            return _error(exc.status, exc.message or exc.status.name)
        return _json({"results": [_result_json(r) for r in reply.results]})

    return post_action


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m examples.gateway.server",
        description="Gateway server: routes actions from HTTP and gRPC to connected processors.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=4435, help="brpc UDP port (0 picks one)")
    parser.add_argument("--http-port", type=int, default=8080, help="HTTP port (0 picks one)")
    parser.add_argument("--grpc-port", type=int, default=50051, help="gRPC TCP port (0 picks one)")
    parser.add_argument(
        "--certs",
        type=Path,
        default=Path("certs"),
        help="directory with server.pem and server.key (make them: python -m brpc.certs)",
    )
    parser.add_argument(
        "--timeout", type=float, default=5.0, help="seconds a processor may take (default: 5)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log connections")
    return parser.parse_args(argv)


async def run(args: argparse.Namespace) -> int:
    certfile, keyfile = args.certs / "server.pem", args.certs / "server.key"
    if not (certfile.exists() and keyfile.exists()):
        print(f"no {certfile} or {keyfile}: make them with `python -m brpc.certs`", file=sys.stderr)
        return 2
    router = ActionRouter(args.timeout)
    # ProcessAction is served over brpc too, to the server's own clients.
    server = brpc.Server(
        [router], client_stub=gateway_grpc.ProcessorStub, certfile=certfile, keyfile=keyfile
    )
    router.server = server
    await server.start(args.host, args.port)
    gateway = HttpGateway(server)
    gateway.app.router.add_post("/action", action_route(router))
    http_port = await gateway.start(args.host, args.http_port)
    grpc_server = GrpcServer([router])
    grpc_socket = socket.create_server((args.host, args.grpc_port))
    grpc_port = grpc_socket.getsockname()[1]
    await grpc_server.start(sock=grpc_socket)
    print(
        f"gateway server: brpc {server.address} http http://{args.host}:{http_port} "
        f"grpc {args.host}:{grpc_port}",
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        grpc_server.close()
        await grpc_server.wait_closed()
        await gateway.close()
        server.close()
        await server.wait_closed()
    print("gateway server stopped", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    logging.getLogger("quic").setLevel(logging.WARNING)
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(run(args))
    return 130


if __name__ == "__main__":
    sys.exit(main())

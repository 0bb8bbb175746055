"""The gateway's HTTP side: :class:`HttpGateway`, an aiohttp application in brpc's loop.

Routes (see the package docstring for the rules):

- ``GET /``: the console page; ``GET /clients``; ``GET /clients/watch`` (SSE).
- ``POST /fanout/{selector}/{pkg.Service}/{Method}``: one record per client.
- ``POST [/c/{name}|/id/{id}|/l/{k=v,...}]/{pkg.Service}/{Method}``: a call to
  one client, Connect unary, or NDJSON/SSE for server-streaming methods.

Every failure is answered with a Connect error body and the HTTP status of
its code; handlers never let an exception become a bare 500.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from importlib import resources
from typing import Any, cast

from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError
from multidict import CIMultiDict

from .._calls.serving import RawMessage
from ..peer import ClientInfo
from ..presence import Watch
from ..server import Server
from ._connect import (
    CONTENT_JSON,
    CONTENT_PROTO,
    GatewayError,
    encode_bin,
    error_body,
    headers_from_metadata,
    http_status,
    metadata_from_headers,
    parse_duration,
    parse_timeout,
)
from ._select import SelectorError, Target, parse_selector, pick, select, split_route
from ._types import MethodTypes, TypeFinder, UnknownMethod

__all__ = ["HttpGateway", "client_json"]

#: Messages relayed as their bytes (brpc's codec passes this marker type through),
#: typed as what they are.
_RAW = cast("type[bytes]", RawMessage)

log = logging.getLogger(__name__)

_NDJSON = "application/x-ndjson"
_SSE = "text/event-stream"
_PROTO_TYPES = frozenset({CONTENT_PROTO, "application/protobuf", "application/x-protobuf"})
#: Fan-out calls take at most this long unless ``?timeout=`` or a timeout header says otherwise.
_DEFAULT_FANOUT_TIMEOUT = 10.0
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_Metadata = list[tuple[str, str | bytes]]


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")


def _address(info: ClientInfo[Any]) -> str | None:
    if info.address is None:
        return None
    host, port = info.address[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def client_json(info: ClientInfo[Any]) -> dict[str, Any]:
    """A connected client as ``GET /clients`` lists it."""
    return {
        "connection_id": info.connection_id,
        "name": info.name,
        "labels": dict(info.labels),
        "services": list(info.services),
        "address": _address(info),
        "connected_since": _iso(info.connected_at),
    }


def _client_ref(info: ClientInfo[Any]) -> dict[str, Any]:
    return {"connection_id": info.connection_id, "name": info.name, "labels": dict(info.labels)}


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _record(value: Any, *, sse: bool, event: str) -> bytes:
    """One NDJSON line, or one server-sent event."""
    if sse:
        return f"event: {event}\ndata: {_dumps(value)}\n\n".encode()
    return (_dumps(value) + "\n").encode()


def _error_response(
    status: Status,
    message: str | None,
    details: Sequence[Any] | None = None,
    *,
    http: int | None = None,
    headers: list[tuple[str, str]] | None = None,
) -> web.Response:
    response_headers: CIMultiDict[str] = CIMultiDict(headers or ())
    return web.Response(
        status=http if http is not None else http_status(status),
        text=_dumps(error_body(status, message, details)),
        content_type=CONTENT_JSON,
        headers=response_headers,
    )


def _http_code(status: int) -> Status:
    """The gRPC status of an HTTP error aiohttp raised itself (an unknown route...)."""
    return {
        400: Status.INVALID_ARGUMENT,
        401: Status.UNAUTHENTICATED,
        403: Status.PERMISSION_DENIED,
        404: Status.UNIMPLEMENTED,
        405: Status.UNIMPLEMENTED,
        408: Status.DEADLINE_EXCEEDED,
        413: Status.RESOURCE_EXHAUSTED,
        429: Status.RESOURCE_EXHAUSTED,
    }.get(status, Status.INVALID_ARGUMENT if status < 500 else Status.UNAVAILABLE)


def _split_method(path: str) -> tuple[str, str]:
    parts = path.split("/")
    if len(parts) != 3 or parts[0] != "" or not parts[1] or not parts[2] or "." not in parts[1]:
        raise GatewayError(
            Status.UNIMPLEMENTED,
            f"{path!r} names no method: call POST /pkg.Service/Method, optionally after "
            "/c/{name}, /id/{connection_id} or /l/{key=value,...}",
            http=404,
        )
    return parts[1], parts[2]


def _metadata_of(stream: Any) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """A call's initial and trailing metadata (what has arrived of them) as headers."""
    initial, trailing = stream.initial_metadata, stream.trailing_metadata
    return (
        headers_from_metadata(initial.items() if initial is not None else None),
        headers_from_metadata(trailing.items() if trailing is not None else None),
    )


class HttpGateway:
    """An HTTP/JSON front for the clients connected to a :class:`brpc.Server`.

    ``descriptors``: a ``FileDescriptorSet`` file (``protoc --descriptor_set_out
    --include_imports``) for JSON calls of methods this process and the
    clients' reflection do not know. ``max_body``: the largest request body
    accepted, in bytes (larger ones get 413).

    :attr:`app` is the aiohttp ``Application``: routes added to it before
    :meth:`start` are served ahead of the gateway's calls (an application's
    own ``POST /action``, say).
    """

    def __init__(
        self,
        server: Server[Any],
        *,
        descriptors: str | os.PathLike[str] | None = None,
        max_body: int = 4 << 20,
    ) -> None:
        if max_body < 1:
            raise ValueError(f"max_body must be positive, not {max_body!r}")
        self.server = server
        self.max_body = max_body
        self.types = TypeFinder(descriptors)
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._watches: set[Watch[Any]] = set()
        self._unsubscribe: Callable[[], None] | None = None
        self.app = self._make_app()

    # -- lifecycle -------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen on TCP ``host:port`` (0 picks a free port); returns the port."""
        if self._runner is not None:
            raise RuntimeError("the gateway is already started")
        # Last, so routes added to self.app before start() come first.
        self.app.router.add_post("/{path:.*}", self._call)
        runner = web.AppRunner(
            self.app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0
        )
        await runner.setup()
        self._runner = runner
        site = web.TCPSite(runner, host, port)
        await site.start()
        self._port = runner.addresses[0][1]
        self._unsubscribe = self.server.on_disconnect(
            lambda info: self.types.forget(info.connection_id)
        )
        log.info("brpc gateway listening on http://%s:%d", host, self._port)
        return self._port

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the gateway is not started")
        return self._port

    async def close(self) -> None:
        """Stop listening; presence streams end, calls in flight get a second to finish."""
        for watch in list(self._watches):
            await watch.aclose()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> HttpGateway:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- the application -------------------------------------------------------------

    def _make_app(self) -> web.Application:
        app = web.Application(client_max_size=self.max_body, middlewares=[self._errors])
        app.router.add_get("/", self._console)
        app.router.add_get("/clients", self._clients)
        app.router.add_get("/clients/watch", self._watch)
        app.router.add_post("/fanout/{selector}/{service}/{method}", self._fanout)
        return app

    @web.middleware
    async def _errors(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except GatewayError as exc:
            return _error_response(exc.status, exc.message, http=exc.http)
        except SelectorError as exc:
            return _error_response(Status.INVALID_ARGUMENT, f"bad selector: {exc}")
        except GRPCError as exc:
            return _error_response(exc.status, exc.message, exc.details)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return _error_response(_http_code(exc.status), exc.text or exc.reason, http=exc.status)
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception as exc:
            log.exception("gateway failed on %s %s", request.method, request.path)
            return _error_response(
                Status.INTERNAL, f"the gateway failed: {type(exc).__name__}: {exc}"
            )

    async def _console(self, request: web.Request) -> web.Response:
        page = resources.files(__package__).joinpath("static/console.html").read_text("utf-8")
        return web.Response(text=page, content_type="text/html", charset="utf-8")

    async def _clients(self, request: web.Request) -> web.Response:
        return web.Response(
            text=_dumps([client_json(info) for info in self.server.clients]),
            content_type=CONTENT_JSON,
        )

    async def _watch(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Cache-Control": "no-cache"})
        response.content_type = _SSE
        await response.prepare(request)
        watch = self.server.watch()
        self._watches.add(watch)
        try:
            await response.write(b": presence of the server's clients\n\n")
            async for event in watch:
                data = client_json(event.client)
                data["replayed"] = event.replayed
                if event.connected:
                    kind = "connected"
                else:
                    kind = "disconnected"
                    data["reason"] = event.reason
                await response.write(_record(data, sse=True, event=kind))
        except ConnectionResetError:
            pass
        finally:
            self._watches.discard(watch)
            await watch.aclose()
        return response

    # -- reading a call --------------------------------------------------------------

    async def _read_body(self, request: web.Request) -> bytes:
        length = request.content_length
        if length is not None and length > self.max_body:
            raise self._too_large(f"{length} bytes")
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise self._too_large("more bytes") from None

    def _too_large(self, size: str) -> GatewayError:
        return GatewayError(
            Status.RESOURCE_EXHAUSTED,
            f"request body of {size} exceeds the gateway's limit of {self.max_body} bytes "
            "(HttpGateway(max_body=...))",
            http=413,
        )

    @staticmethod
    def _is_json(request: web.Request) -> bool:
        content_type = request.content_type
        if content_type == CONTENT_JSON:
            return True
        if content_type in _PROTO_TYPES:
            return False
        raise GatewayError(
            Status.INVALID_ARGUMENT,
            f"unsupported content type {request.headers.get('Content-Type', '(none)')!r}: "
            f"send {CONTENT_JSON} (protobuf JSON) or {CONTENT_PROTO} (binary protobuf)",
            http=415,
        )

    @staticmethod
    def _timeout(request: web.Request) -> float | None:
        try:
            return parse_timeout(
                request.headers.get("Connect-Timeout-Ms"), request.headers.get("Grpc-Timeout")
            )
        except ValueError as exc:
            raise GatewayError(Status.INVALID_ARGUMENT, str(exc)) from None

    @staticmethod
    def _metadata(request: web.Request) -> _Metadata:
        try:
            return metadata_from_headers(request.headers.items())
        except ValueError as exc:
            raise GatewayError(Status.INVALID_ARGUMENT, str(exc)) from None

    @staticmethod
    def _header_target(request: web.Request) -> Target:
        headers = request.headers
        target = Target(
            name=headers.get("Brpc-Target") or None,
            connection_id=headers.get("Brpc-Target-Id") or None,
        )
        select_text = headers.get("Brpc-Select")
        if select_text:
            target = target.merged(parse_selector(select_text))
        return target

    async def _method_types(
        self, service: str, method: str, clients: list[ClientInfo[Any]], *, needed: bool
    ) -> MethodTypes | None:
        try:
            types = await self.types.find(service, method, clients)
        except UnknownMethod as exc:
            raise GatewayError(Status.UNIMPLEMENTED, str(exc), http=404) from None
        if types is None and needed:
            raise GatewayError(
                Status.UNIMPLEMENTED,
                f"no message types known for /{service}/{method}, so JSON cannot be "
                f"translated: send {CONTENT_PROTO}, serve grpc.reflection.v1 from the client "
                "(grpclib's ServerReflection.extend), import the generated module in the "
                "gateway's process, or pass HttpGateway(descriptors=...)",
            )
        if types is not None and types.client_streaming:
            raise GatewayError(
                Status.UNIMPLEMENTED,
                f"/{service}/{method} is a client-streaming or bidirectional method; the "
                "gateway calls unary and server-streaming methods only",
            )
        return types

    @staticmethod
    def _request_bytes(body: bytes, is_json: bool, types: MethodTypes | None) -> bytes:
        if not is_json:
            return body
        assert types is not None
        try:
            text = body.decode("utf-8") if body.strip() else "{}"
            message = json_format.Parse(text, types.request())
        except UnicodeDecodeError as exc:
            raise GatewayError(
                Status.INVALID_ARGUMENT, f"request body is not UTF-8: {exc}"
            ) from None
        except json_format.ParseError as exc:
            raise GatewayError(
                Status.INVALID_ARGUMENT,
                f"request body is not a {types.request.DESCRIPTOR.full_name} in protobuf "
                f"JSON: {exc}",
            ) from None
        return message.SerializeToString()

    @staticmethod
    def _reply_json(data: bytes, types: MethodTypes | None) -> Any:
        if types is None:
            return {"@base64": encode_bin(data)}
        message: Message = types.reply.FromString(data)
        return json_format.MessageToDict(message)

    # -- one call ------------------------------------------------------------------

    async def _call(self, request: web.Request) -> web.StreamResponse:
        route_target, path = split_route(request.path)
        service, method = _split_method(path)
        target = route_target.merged(self._header_target(request))
        is_json = self._is_json(request)
        timeout = self._timeout(request)
        metadata = self._metadata(request)
        body = await self._read_body(request)
        client = pick(self.server.clients, target, service)
        if client is None:
            raise GatewayError(
                Status.UNAVAILABLE, f"no connected client matches {target.describe(service)}"
            )
        types = await self._method_types(service, method, [client], needed=is_json)
        payload = self._request_bytes(body, is_json, types)
        if types is not None and types.server_streaming:
            return await self._server_stream(
                request=request,
                client=client,
                path=path,
                payload=payload,
                types=types,
                timeout=timeout,
                metadata=metadata,
            )
        return await self._unary(
            client=client,
            path=path,
            payload=payload,
            types=types,
            timeout=timeout,
            metadata=metadata,
            is_json=is_json,
        )

    async def _unary(
        self,
        *,
        client: ClientInfo[Any],
        path: str,
        payload: bytes,
        types: MethodTypes | None,
        timeout: float | None,
        metadata: _Metadata,
        is_json: bool,
    ) -> web.Response:
        stream = client.channel.request(
            path,
            Cardinality.UNARY_STREAM,
            _RAW,
            _RAW,
            timeout=timeout,
            metadata=metadata,
        )
        replies: list[bytes] = []
        try:
            async with stream:
                await stream.send_message(payload, end=True)
                while (reply := await stream.recv_message()) is not None:
                    replies.append(reply)
                await stream.recv_trailing_metadata()
        except GRPCError as exc:
            initial, trailing = _metadata_of(stream)
            error_headers = initial + [(f"trailer-{name}", value) for name, value in trailing]
            return _error_response(exc.status, exc.message, exc.details, headers=error_headers)
        initial, trailing = _metadata_of(stream)
        headers: CIMultiDict[str] = CIMultiDict(initial)
        for name, value in trailing:
            headers.add(f"trailer-{name}", value)
        if len(replies) != 1:
            return _error_response(
                Status.UNIMPLEMENTED,
                f"{path} answered with {len(replies)} messages, not one: call a "
                f"server-streaming method with {CONTENT_JSON} (its descriptors must be known)",
                headers=list(headers.items()),
            )
        if is_json:
            return web.Response(
                text=_dumps(self._reply_json(replies[0], types)),
                content_type=CONTENT_JSON,
                headers=headers,
            )
        return web.Response(body=bytes(replies[0]), content_type=CONTENT_PROTO, headers=headers)

    async def _server_stream(
        self,
        *,
        request: web.Request,
        client: ClientInfo[Any],
        path: str,
        payload: bytes,
        types: MethodTypes,
        timeout: float | None,
        metadata: _Metadata,
    ) -> web.StreamResponse:
        sse = _SSE in request.headers.get("Accept", "")
        stream = client.channel.request(
            path,
            Cardinality.UNARY_STREAM,
            _RAW,
            _RAW,
            timeout=timeout,
            metadata=metadata,
        )
        response: web.StreamResponse | None = None
        end: dict[str, Any]
        try:
            async with stream:
                await stream.send_message(payload, end=True)
                await stream.recv_initial_metadata()
                initial, _ = _metadata_of(stream)
                response = web.StreamResponse(headers=CIMultiDict(initial))
                response.content_type = _SSE if sse else _NDJSON
                response.headers["Cache-Control"] = "no-cache"
                await response.prepare(request)
                while (reply := await stream.recv_message()) is not None:
                    record = {"result": self._reply_json(reply, types)}
                    await response.write(_record(record, sse=sse, event="message"))
                await stream.recv_trailing_metadata()
            end = {"code": "ok"}
        except GRPCError as exc:
            if response is None:
                initial, trailing = _metadata_of(stream)
                headers = initial + [(f"trailer-{name}", value) for name, value in trailing]
                return _error_response(exc.status, exc.message, exc.details, headers=headers)
            end = error_body(exc.status, exc.message, exc.details)
        _, trailing = _metadata_of(stream)
        end["trailers"] = dict(trailing)
        await response.write(_record({"end": end}, sse=sse, event="end"))
        await response.write_eof()
        return response

    # -- fan-out -------------------------------------------------------------------

    async def _fanout(self, request: web.Request) -> web.StreamResponse:
        service = request.match_info["service"]
        method = request.match_info["method"]
        path = f"/{service}/{method}"
        _split_method(path)
        target = parse_selector(request.match_info["selector"])
        is_json = self._is_json(request)
        timeout_text = request.query.get("timeout")
        try:
            timeout = parse_duration(timeout_text) if timeout_text is not None else None
        except ValueError as exc:
            raise GatewayError(Status.INVALID_ARGUMENT, f"?timeout=: {exc}") from None
        if timeout is None:
            timeout = self._timeout(request) or _DEFAULT_FANOUT_TIMEOUT
        metadata = self._metadata(request)
        body = await self._read_body(request)
        clients = select(self.server.clients, target, service)
        if not clients:
            raise GatewayError(
                Status.UNAVAILABLE, f"no connected client matches {target.describe(service)}"
            )
        types = await self._method_types(service, method, clients, needed=is_json)
        payload = self._request_bytes(body, is_json, types)
        sse = _SSE in request.headers.get("Accept", "")
        response = web.StreamResponse(headers={"Cache-Control": "no-cache"})
        response.content_type = _SSE if sse else _NDJSON
        await response.prepare(request)
        started = time.monotonic()
        streaming = types is not None and types.server_streaming
        tasks = [
            asyncio.create_task(
                self._fanout_one(
                    client=client,
                    path=path,
                    payload=payload,
                    types=types,
                    timeout=timeout,
                    metadata=metadata,
                    streaming=streaming,
                )
            )
            for client in clients
        ]
        ok = 0
        try:
            for next_done in asyncio.as_completed(tasks):
                record = await next_done
                ok += "result" in record
                await response.write(_record(record, sse=sse, event="client"))
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        summary = {
            "clients": len(clients),
            "ok": ok,
            "failed": len(clients) - ok,
            "elapsed_ms": round((time.monotonic() - started) * 1000, 3),
        }
        await response.write(_record({"summary": summary}, sse=sse, event="summary"))
        await response.write_eof()
        return response

    async def _fanout_one(
        self,
        *,
        client: ClientInfo[Any],
        path: str,
        payload: bytes,
        types: MethodTypes | None,
        timeout: float,
        metadata: _Metadata,
        streaming: bool,
    ) -> dict[str, Any]:
        started = time.monotonic()
        record: dict[str, Any] = {"client": _client_ref(client)}
        try:
            async with client.channel.request(
                path,
                Cardinality.UNARY_STREAM,
                _RAW,
                _RAW,
                timeout=timeout,
                metadata=metadata,
            ) as stream:
                await stream.send_message(payload, end=True)
                replies = []
                while (reply := await stream.recv_message()) is not None:
                    replies.append(self._reply_json(reply, types))
                await stream.recv_trailing_metadata()
            if streaming:
                record["result"] = replies
            elif len(replies) == 1:
                record["result"] = replies[0]
            else:
                record["error"] = error_body(
                    Status.UNIMPLEMENTED, f"answered with {len(replies)} messages, not one"
                )
        except GRPCError as exc:
            record["error"] = error_body(exc.status, exc.message, exc.details)
        except (ConnectionError, TimeoutError, DecodeError) as exc:
            record["error"] = error_body(Status.UNAVAILABLE, f"{type(exc).__name__}: {exc}")
        record["elapsed_ms"] = round((time.monotonic() - started) * 1000, 3)
        return record

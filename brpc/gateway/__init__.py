"""brpc's HTTP/JSON gateway: browsers, curl and Connect clients reach connected clients.

``gateway = HttpGateway(server)``; ``port = await gateway.start(host, port)``;
``await gateway.close()``. It needs aiohttp: ``pip install 'brpc[gateway]'``
(importing brpc never imports it).

- ``POST /pkg.Service/Method``: the Connect protocol's unary call, with an
  ``application/json`` (protobuf JSON) or ``application/proto`` body, to one
  connected client. The client is chosen by the path prefix ``/c/{name}``,
  ``/id/{connection_id}`` or ``/l/{key=value,...}``, or by the headers
  ``Brpc-Target`` (name), ``Brpc-Target-Id`` and ``Brpc-Select`` (``k=v,...``);
  without either, any client serving the service; among several, the least
  busy. Headers become call metadata and reply metadata headers (``-bin``
  values base64; trailers as ``trailer-*``); ``Connect-Timeout-Ms`` or
  ``Grpc-Timeout`` set the deadline. Errors are Connect error JSON with the
  HTTP status of the code; no matching client is 503 ``unavailable``.
- Server-streaming methods answer as NDJSON (``{"result": ...}`` lines), or
  as server-sent events when the request accepts ``text/event-stream``; both
  end with an ``{"end": {"code", "message", "details", "trailers"}}`` record.
- ``POST /fanout/{selector}/pkg.Service/Method?timeout=5s`` calls every client
  the selector picks (``*``, ``k=v,...``, ``name:NAME``, ``id:ID``) and streams
  one record per client as each completes, then a ``summary`` record.
- ``GET /clients``, ``GET /clients/watch`` (server-sent presence events) and
  ``GET /`` (the console page).

Target selection lives in :mod:`brpc.gateway._select`; JSON types in
:mod:`brpc.gateway._types`; the Connect conventions in :mod:`brpc.gateway._connect`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._connect import code_name, connect_error, http_status
from ._select import SelectorError, Target, parse_labels, parse_selector, pick, select

if TYPE_CHECKING:
    from ._http import HttpGateway

__all__ = [
    "HttpGateway",
    "SelectorError",
    "Target",
    "code_name",
    "connect_error",
    "http_status",
    "parse_labels",
    "parse_selector",
    "pick",
    "select",
]

_INSTALL_HINT = "brpc.gateway needs aiohttp: pip install 'brpc[gateway]'"


def __getattr__(name: str) -> Any:
    if name in ("HttpGateway", "client_json"):
        try:
            from . import _http  # noqa: PLC0415 - aiohttp only when asked for
        except ModuleNotFoundError as exc:
            if exc.name is not None and exc.name.split(".")[0] in ("aiohttp", "multidict", "yarl"):
                raise ImportError(_INSTALL_HINT) from exc
            raise
        return getattr(_http, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

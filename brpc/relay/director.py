"""Choosing the clients a relayed call goes to: metadata keys and the default director.

A *director* is any callable ``director(method, metadata, caller)`` (or a
coroutine function) returning one :class:`~brpc.ClientInfo`, several, or
None / an empty collection when nothing matches. It refuses a call by raising
``GRPCError``. ``caller`` is the :class:`~brpc.ClientInfo` of a calling brpc
client or the :class:`~brpc.FrontCaller` of a TCP caller.

The default director reads the call's metadata:

- ``brpc-target``: a client name (every connected client of that name);
- ``brpc-target-id``: a connection ID;
- ``brpc-select``: ``k=v,k2=v2`` label matches and/or ``service=NAME``
  (the client must say it serves that full service name).

All given keys must match. A call naming no target is not relayed
(UNIMPLEMENTED, as for any method the server does not serve).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeAlias

from grpclib.const import Status
from grpclib.exceptions import GRPCError

from ..peer import ClientInfo
from ..registry import Clients

__all__ = [
    "HOPS_KEY",
    "RELAY_KEYS",
    "SELECT_KEY",
    "TARGET_ID_KEY",
    "TARGET_KEY",
    "Director",
    "Targets",
    "default_director",
    "describe_target",
    "parse_select",
]

TARGET_KEY = "brpc-target"
TARGET_ID_KEY = "brpc-target-id"
SELECT_KEY = "brpc-select"
#: How many relays a call has passed; the relay refuses calls past its ``max_hops``.
HOPS_KEY = "brpc-hops"
#: Keys the relay consumes (they are not forwarded as they came).
RELAY_KEYS = frozenset({TARGET_KEY, TARGET_ID_KEY, SELECT_KEY, HOPS_KEY})

Targets: TypeAlias = "ClientInfo[Any] | Iterable[ClientInfo[Any]] | None"
#: ``director(method, metadata, caller)`` -> the clients to forward to.
Director = Callable[[str, Mapping[str, Any], Any], "Targets | Awaitable[Targets]"]


def parse_select(value: str) -> tuple[dict[str, str], str | None]:
    """``"k=v,k2=v2,service=pkg.Svc"`` -> ``({"k": "v", "k2": "v2"}, "pkg.Svc")``.

    Raises ``GRPCError(INVALID_ARGUMENT)`` for an entry without ``=``.
    """
    labels: dict[str, str] = {}
    service: str | None = None
    for raw in value.split(","):
        entry = raw.strip()
        if not entry:
            continue
        key, sep, item = entry.partition("=")
        key, item = key.strip(), item.strip()
        if not sep or not key:
            raise GRPCError(
                Status.INVALID_ARGUMENT,
                f"{SELECT_KEY} entry {entry!r} is not key=value "
                "(expected for example 'region=eu,service=pkg.Svc')",
            )
        if key == "service":
            service = item
        else:
            labels[key] = item
    return labels, service


def describe_target(metadata: Mapping[str, Any]) -> str:
    """The target a call's metadata names, for messages (``"brpc-target=worker-1"``)."""
    parts = [
        f"{key}={metadata[key]}"
        for key in (TARGET_KEY, TARGET_ID_KEY, SELECT_KEY)
        if key in metadata
    ]
    return ", ".join(parts) or "no target"


def _text(metadata: Mapping[str, Any], key: str) -> str | None:
    value = metadata.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise GRPCError(Status.INVALID_ARGUMENT, f"{key} must be text metadata")
    return value


def default_director(clients: Clients[Any]) -> Director:
    """The director reading ``brpc-target``, ``brpc-target-id`` and ``brpc-select``."""

    def direct(method: str, metadata: Mapping[str, Any], caller: Any) -> Targets:
        name = _text(metadata, TARGET_KEY)
        connection_id = _text(metadata, TARGET_ID_KEY)
        select = _text(metadata, SELECT_KEY)
        if name is None and connection_id is None and select is None:
            raise GRPCError(
                Status.UNIMPLEMENTED,
                f"method {method} is not served by this server, and the call names no client "
                f"to relay it to (metadata {TARGET_KEY}, {TARGET_ID_KEY} or {SELECT_KEY})",
            )
        labels, service = parse_select(select) if select is not None else ({}, None)
        if connection_id is not None:
            found = clients.get(connection_id)
            candidates = [found] if found is not None else []
        else:
            candidates = clients.find(name=name, labels=labels or None, service=service)
            return candidates
        return [
            info
            for info in candidates
            if (name is None or info.name == name)
            and all(info.labels.get(k) == v for k, v in labels.items())
            and (service is None or service in info.services)
        ]

    return direct

"""The server's table of connected clients: :class:`Clients`, a live read-only view.

This module owns the indexes of the clients connected right now (by connection
ID, by name, by label and by served service), the lookups and filters on them,
and the vocabulary of the duplicate-name policy (:class:`DuplicateNames`). It
knows nothing about connections or events: the server adds a client once its
hello is accepted and removes it when its connection ends; presence events are
:mod:`brpc.presence`'s job.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Generic, TypeAlias, TypeVar

if TYPE_CHECKING:
    from .peer import ClientInfo

__all__ = ["ClientTable", "Clients", "DuplicateNames", "Selector"]

C = TypeVar("C")

#: What :meth:`Clients.select` and :meth:`brpc.Server.call_all` accept to pick clients:
#: a predicate on :class:`~brpc.ClientInfo`, a mapping of labels every picked client
#: must carry, the full name of a service the picked clients serve (for example
#: ``"fleet.v1.Agent"``), or the clients themselves.
Selector: TypeAlias = (
    "Callable[[ClientInfo[C]], bool] | Mapping[str, str] | str | Iterable[ClientInfo[C]]"
)


class DuplicateNames(enum.Enum):
    """What a server does when a client says hello with a name already connected.

    Unnamed clients (name ``""``) never conflict.
    """

    #: Close the older connection (``CloseCode.REPLACED``, with a reason naming the
    #: newer one) and accept the new one. When clients authenticate, only a client
    #: with the same identity (name and source) may replace it; others are refused
    #: as with REJECT.
    REPLACE = "replace"
    #: Refuse the new hello with ``ALREADY_EXISTS``; the dialing client gets
    #: :class:`brpc.RefusedError` with ``code == "ALREADY_EXISTS"``.
    REJECT = "reject"
    #: Accept both; :meth:`Clients.named` returns the newest.
    ALLOW = "allow"


class Clients(Generic[C]):
    """The clients connected to a server right now (``server.clients``).

    A live view: it always shows the current state, and is read-only to its
    users. ``len()``, ``in`` (a :class:`~brpc.ClientInfo` or a connection ID)
    and iteration work; iteration and every list returned are in connection
    order and are snapshots, so clients may come and go while you use them.
    Lookups by name, label and service use indexes, not scans.
    """

    def __init__(self) -> None:
        self._by_id: dict[str, ClientInfo[C]] = {}
        self._by_name: dict[str, dict[str, ClientInfo[C]]] = {}
        self._by_label: dict[tuple[str, str], dict[str, ClientInfo[C]]] = {}
        self._by_service: dict[str, dict[str, ClientInfo[C]]] = {}

    # -- reading ---------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[ClientInfo[C]]:
        return iter(list(self._by_id.values()))

    def __contains__(self, item: object) -> bool:
        if isinstance(item, str):
            return item in self._by_id
        connection_id = getattr(item, "connection_id", None)
        return isinstance(connection_id, str) and self._by_id.get(connection_id) is item

    def __repr__(self) -> str:
        return f"<Clients connected={len(self._by_id)}>"

    def get(self, connection_id: str) -> ClientInfo[C] | None:
        """The client with this connection ID, or None."""
        return self._by_id.get(connection_id)

    def named(self, name: str) -> ClientInfo[C] | None:
        """The newest connected client called ``name``, or None (always None for ``""``)."""
        if not name:
            return None
        holders = self._by_name.get(name)
        if not holders:
            return None
        return next(reversed(holders.values()))

    def find(
        self,
        *,
        name: str | None = None,
        labels: Mapping[str, str] | None = None,
        service: str | None = None,
        where: Callable[[ClientInfo[C]], bool] | None = None,
    ) -> list[ClientInfo[C]]:
        """Clients matching every criterion given, in connection order.

        ``labels`` matches clients carrying all of those label values (others
        may be present too); ``service`` is a full service name such as
        ``"fleet.v1.Agent"``; ``where`` is any predicate. No criteria: everyone.
        """
        buckets: list[dict[str, ClientInfo[C]]] = []
        if name is not None:
            buckets.append(self._by_name.get(name, {}))
        for pair in (labels or {}).items():
            buckets.append(self._by_label.get(pair, {}))
        if service is not None:
            buckets.append(self._by_service.get(service, {}))
        if not buckets:
            candidates: Iterable[ClientInfo[C]] = list(self._by_id.values())
        else:
            smallest = min(buckets, key=len)
            others = [bucket for bucket in buckets if bucket is not smallest]
            candidates = [
                info
                for connection_id, info in smallest.items()
                if all(connection_id in bucket for bucket in others)
            ]
        if where is None:
            return list(candidates)
        return [info for info in candidates if where(info)]

    def select(self, selector: Selector[C] | None = None) -> list[ClientInfo[C]]:
        """The clients a :data:`Selector` picks (all of them for None), in connection order.

        Clients given explicitly are kept only while still connected.
        """
        if selector is None:
            return list(self._by_id.values())
        if isinstance(selector, str):
            return self.find(service=selector)
        if isinstance(selector, Mapping):
            return self.find(labels=selector)
        if callable(selector):
            return self.find(where=selector)
        picked: dict[str, ClientInfo[C]] = {}
        for info in selector:
            if self._by_id.get(info.connection_id) is info:
                picked[info.connection_id] = info
        return list(picked.values())

    def snapshot(self) -> list[ClientInfo[C]]:
        """A list of the clients connected right now."""
        return list(self._by_id.values())


class ClientTable(Clients[C]):
    """The server's own, changeable table behind the :class:`Clients` view it hands out."""

    def add(self, info: ClientInfo[C]) -> None:
        """Register a client whose hello was accepted."""
        connection_id = info.connection_id
        if connection_id in self._by_id:
            raise ValueError(f"connection {connection_id} is already registered")
        self._by_id[connection_id] = info
        self._by_name.setdefault(info.name, {})[connection_id] = info
        for pair in info.labels.items():
            self._by_label.setdefault(pair, {})[connection_id] = info
        for service in info.services:
            self._by_service.setdefault(service, {})[connection_id] = info

    def remove(self, info: ClientInfo[C]) -> bool:
        """Forget ``info``; False when it was not registered (or already removed)."""
        connection_id = info.connection_id
        if self._by_id.get(connection_id) is not info:
            return False
        del self._by_id[connection_id]
        _discard(self._by_name, info.name, connection_id)
        for pair in info.labels.items():
            _discard(self._by_label, pair, connection_id)
        for service in info.services:
            _discard(self._by_service, service, connection_id)
        return True


_K = TypeVar("_K")


def _discard(index: dict[_K, dict[str, ClientInfo[C]]], key: _K, connection_id: str) -> None:
    bucket = index.get(key)
    if bucket is not None:
        bucket.pop(connection_id, None)
        if not bucket:
            del index[key]

"""What a cluster membership looks like from below: typing protocols for ``server.cluster``.

``brpc.Server(cluster=brpc.Cluster(...))`` keeps the :class:`brpc.Cluster` it is
given and hands it back as ``server.cluster``. The cluster package sits above
the server (it builds servers and dials peers), so the server cannot name
``brpc.Cluster``; this module describes, as protocols, the parts users reach
through ``server.cluster``: :class:`ClusterView` (``clients``, ``watch()``,
``call_all()``, ...), the clients view (:class:`ClusterClientsView`), its
entries (:class:`ClusterEntry`) and the presence events of ``watch()``
(:class:`ClusterPresenceView`, :class:`ClusterWatchView`). ``brpc.Cluster``,
``brpc.ClusterClient`` and the replica's types implement them; mypy checks that
where a ``Cluster`` is passed to ``Server``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Protocol, TypeVar

from .fanout import FanOut
from .peer import ClientInfo

if TYPE_CHECKING:
    from grpclib.client import Channel

__all__ = [
    "ClusterClientsView",
    "ClusterEntry",
    "ClusterPresenceView",
    "ClusterRecordView",
    "ClusterView",
    "ClusterWatchView",
]

C = TypeVar("C")
T = TypeVar("T")


class ClusterRecordView(Protocol):
    """A client of some server of the cluster, as the directory records it."""

    @property
    def connection_id(self) -> str: ...
    @property
    def server_id(self) -> str:
        """The server holding the client."""
        ...

    @property
    def name(self) -> str: ...
    @property
    def labels(self) -> Mapping[str, str]: ...
    @property
    def services(self) -> tuple[str, ...]: ...
    @property
    def connected_at(self) -> float: ...


class ClusterEntry(ClusterRecordView, Protocol[C]):
    """A client of the cluster that can be called wherever it is (``brpc.ClusterClient``)."""

    @property
    def local(self) -> bool:
        """True when this server holds the client (then :attr:`info` is set)."""
        ...

    @property
    def info(self) -> ClientInfo[C] | None: ...
    @property
    def closed(self) -> bool: ...
    @property
    def close_reason(self) -> str | None: ...
    @property
    def channel(self) -> Channel: ...
    @property
    def stub(self) -> C: ...


class ClusterClientsView(Protocol[C]):
    """The clients of every server of the cluster (``brpc.cluster.ClusterClients``)."""

    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[ClusterEntry[C]]: ...
    def __contains__(self, item: object) -> bool: ...
    def get(self, connection_id: str) -> ClusterEntry[C] | None: ...
    def named(self, name: str) -> ClusterEntry[C] | None: ...
    def find(
        self,
        *,
        name: str | None = None,
        labels: Mapping[str, str] | None = None,
        service: str | None = None,
        server_id: str | None = None,
        where: Callable[[ClusterRecordView], bool] | None = None,
    ) -> Sequence[ClusterEntry[C]]: ...


class ClusterPresenceView(Protocol):
    """A client appeared in the cluster or left it (``brpc.cluster.ClientPresence``)."""

    @property
    def connected(self) -> bool: ...
    @property
    def disconnected(self) -> bool: ...
    @property
    def client(self) -> ClusterRecordView: ...
    @property
    def replayed(self) -> bool: ...


class ClusterWatchView(Protocol):
    """``async for event in server.cluster.watch()`` (``brpc.cluster.ReplicaWatch``)."""

    def __aiter__(self) -> ClusterWatchView: ...
    async def __anext__(self) -> ClusterPresenceView: ...
    @property
    def pending(self) -> int: ...
    async def aclose(self) -> None: ...
    async def __aenter__(self) -> ClusterWatchView: ...
    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class ClusterView(Protocol[C]):
    """What users reach through ``server.cluster`` (the :class:`brpc.Cluster` they passed)."""

    @property
    def server_id(self) -> str: ...
    @property
    def clients(self) -> ClusterClientsView[C]: ...
    def watch(self, *, existing: bool = True, max_pending: int = 1024) -> ClusterWatchView: ...
    def call_all(
        self,
        fn: Callable[[C, ClientInfo[C]], Awaitable[T]],
        *,
        select: Callable[[ClusterEntry[C]], bool]
        | Mapping[str, str]
        | str
        | Iterable[ClusterEntry[C]]
        | None = None,
        timeout: float | None = None,
        concurrency: int | None = None,
    ) -> FanOut[C, T]: ...
    async def wait_ready(self, timeout: float | None = None) -> None: ...
    async def wait_peers(self, timeout: float | None = None) -> None: ...

"""Several brpc servers serving one fleet: the cluster directory and its local replica.

This package owns the directory of servers and clients shared by a cluster
(:class:`Directory`, with :class:`MemoryDirectory` in one process and
:class:`RedisDirectory` on a Redis server) and :class:`DirectoryReplica`, the
local copy that answers lookups; :class:`Cluster`, a server's membership
(``brpc.Server(cluster=...)``); and :func:`run_workers`, worker processes on
one UDP port. Importing it does not need redis-py; only
constructing a :class:`RedisDirectory` does (``pip install 'brpc[redis]'``).
"""

from .directory import (
    DEFAULT_TTL,
    Change,
    ChangeFeed,
    ChangeKind,
    ClientRecord,
    Directory,
    DirectorySnapshot,
    DirectoryUnavailable,
    NameClaim,
    NameHolder,
    ServerNotRegistered,
    ServerRecord,
    keep_alive,
)
from .member import PEER_IDENTITY_SOURCE, Cluster, ClusterClient, ClusterClients
from .memory import MemoryDirectory
from .redis import RedisDirectory
from .replica import ClientPresence, DirectoryReplica, ReplicaWatch
from .workers import Workers, run_workers, start_workers

__all__ = [
    "DEFAULT_TTL",
    "PEER_IDENTITY_SOURCE",
    "Change",
    "ChangeFeed",
    "ChangeKind",
    "ClientPresence",
    "ClientRecord",
    "Cluster",
    "ClusterClient",
    "ClusterClients",
    "Directory",
    "DirectoryReplica",
    "DirectorySnapshot",
    "DirectoryUnavailable",
    "MemoryDirectory",
    "NameClaim",
    "NameHolder",
    "RedisDirectory",
    "ReplicaWatch",
    "ServerNotRegistered",
    "ServerRecord",
    "Workers",
    "keep_alive",
    "run_workers",
    "start_workers",
]

"""brpc: bidirectional gRPC over a single QUIC connection.

A client :func:`dial`\\ s a :class:`Server`; over that one connection the client
calls the server's services and the server's handlers call services the client
exposes, all with ordinary grpclib-generated stubs and service bases.
"""

import importlib
from typing import TYPE_CHECKING, Any

from ._calls.front import FrontCaller
from ._session.quic.options import QuicOptions
from ._wire.control import ALPN, PROTOCOL_VERSION, HelloLimits
from .auth import (
    Authenticator,
    Authorizer,
    AuthRequest,
    Identity,
    PermissionDenied,
    Unauthenticated,
)
from .client import ClientConn, ConnState, ReconnectPolicy, dial
from .context import current_connection
from .errors import (
    BrpcError,
    CallNotStartedError,
    CloseCode,
    ConnectError,
    DeadlineExceededError,
    HandshakeError,
    ProtocolViolation,
    RefusedError,
)
from .fanout import CallResult, FanOut
from .options import Options
from .peer import ClientInfo, Closing
from .presence import PresenceEvent, PresenceKind, Watch
from .registry import Clients, DuplicateNames
from .relay import Relay, RelayResult, relay_all
from .server import Server

__all__ = [
    "ALPN",
    "PROTOCOL_VERSION",
    "AuthRequest",
    "Authenticator",
    "Authorizer",
    "BrpcError",
    "CallNotStartedError",
    "CallResult",
    "ClientConn",
    "ClientInfo",
    "Clients",
    "CloseCode",
    "Closing",
    "Cluster",
    "ClusterClient",
    "ConnState",
    "ConnectError",
    "DeadlineExceededError",
    "DuplicateNames",
    "FanOut",
    "FrontCaller",
    "HandshakeError",
    "HelloLimits",
    "Identity",
    "MemoryDirectory",
    "Options",
    "PermissionDenied",
    "PresenceEvent",
    "PresenceKind",
    "ProtocolViolation",
    "QuicOptions",
    "ReconnectPolicy",
    "RedisDirectory",
    "RefusedError",
    "Relay",
    "RelayResult",
    "Server",
    "Unauthenticated",
    "Watch",
    "current_connection",
    "dial",
    "relay_all",
]

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .cluster import Cluster, ClusterClient, MemoryDirectory, RedisDirectory

#: Imported on first use: the cluster package loads redis-py (and what it loads).
_CLUSTER_NAMES = frozenset({"Cluster", "ClusterClient", "MemoryDirectory", "RedisDirectory"})


def __getattr__(name: str) -> Any:
    if name in _CLUSTER_NAMES:
        value = getattr(importlib.import_module(".cluster", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'brpc' has no attribute {name!r}")

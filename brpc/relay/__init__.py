"""The relay (L5): calls forwarded as raw bytes to connected clients.

- :class:`Relay`: give it to ``brpc.Server(relay=...)``; the server then
  forwards every method it does not serve itself to the clients a director
  picks, one-to-one (:mod:`brpc.relay.relay`) or one-to-many through
  ``brpc.relay.v1.Relay/Broadcast`` (:mod:`brpc.relay.broadcast`).
- :mod:`brpc.relay.director`: the metadata keys (``brpc-target``,
  ``brpc-target-id``, ``brpc-select``, ``brpc-hops``) and the default director.
- :func:`relay_all`: the one-to-many call from Python, typed results per client.
- :mod:`brpc.relay.reflection`: server reflection listing the clients' services.

The standard gRPC/TCP front that ordinary callers use is ``Server.listen_tcp``.
"""

from .broadcast import RelayResult, RelaySource, relay_all
from .director import (
    HOPS_KEY,
    SELECT_KEY,
    TARGET_ID_KEY,
    TARGET_KEY,
    Director,
    default_director,
    parse_select,
)
from .forward import CALLER_KEY, RelayAuthorizer
from .relay import Relay

__all__ = [
    "CALLER_KEY",
    "HOPS_KEY",
    "SELECT_KEY",
    "TARGET_ID_KEY",
    "TARGET_KEY",
    "Director",
    "Relay",
    "RelayAuthorizer",
    "RelayResult",
    "RelaySource",
    "default_director",
    "parse_select",
    "relay_all",
]

"""The relay: calls to methods a server does not serve, forwarded to its clients.

:class:`Relay` holds the settings; ``brpc.Server(relay=Relay(...))`` attaches
it, which binds it to the server (:class:`~brpc.relay.forward.Bound`) and adds
the one-to-many service and, with ``reflection=True``, the reflection service
that also lists the clients' services. What forwarding does is described in
:mod:`brpc.relay.forward` and :mod:`brpc.relay.broadcast`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .broadcast import BroadcastService
from .director import Director
from .forward import Bound, RelayAuthorizer
from .reflection import RelayReflection

if TYPE_CHECKING:
    from .._calls.base import Servable
    from .._calls.serving import Fallback
    from ..server import Server

__all__ = ["Relay"]


class Relay:
    """Forward calls to methods the server does not serve to connected clients.

    - ``director(method, metadata, caller)`` picks the clients (see
      :mod:`brpc.relay.director`); by default the metadata keys
      ``brpc-target`` (name), ``brpc-target-id`` (connection ID) and
      ``brpc-select`` (``k=v,...`` labels and/or ``service=NAME``).
    - ``authorize(caller, method, targets) -> bool`` (or a coroutine) decides
      each relayed call, after the server's own ``authorize``. Without it,
      callers through the TCP front may relay, and brpc clients may not:
      a client calling other clients through the server must be allowed by
      an ``authorize`` hook.
    - ``max_timeout`` (seconds) caps every relayed call's deadline.
    - ``max_hops``: calls that already passed this many relays (the
      ``brpc-hops`` metadata) are refused, so relays cannot loop.
    - ``broadcast_queue``: request messages buffered per target of a one-to-many
      call; a target further behind ends with RESOURCE_EXHAUSTED.
    """

    def __init__(
        self,
        director: Director | None = None,
        authorize: RelayAuthorizer | None = None,
        max_timeout: float | None = None,
        *,
        max_hops: int = 3,
        broadcast_queue: int = 64,
    ) -> None:
        if max_timeout is not None and max_timeout <= 0:
            raise ValueError(f"max_timeout must be positive, not {max_timeout!r}")
        if max_hops < 1:
            raise ValueError(f"max_hops must be at least 1, not {max_hops!r}")
        if broadcast_queue < 1:
            raise ValueError(f"broadcast_queue must be at least 1, not {broadcast_queue!r}")
        self.director = director
        self.authorize = authorize
        self.max_timeout = max_timeout
        self.max_hops = max_hops
        self.broadcast_queue = broadcast_queue
        self._bound: Bound | None = None
        self._reflection: RelayReflection | None = None

    def attach(
        self, server: Server[Any], handlers: Sequence[Servable], *, reflection: bool
    ) -> tuple[Fallback, Sequence[Servable]]:
        """Serve ``server``'s unknown methods (called by ``Server``; once per relay)."""
        if self._bound is not None:
            raise RuntimeError("this Relay already serves another Server: make one per server")
        bound = Bound(self, server)
        self._bound = bound
        extras: list[Servable] = [BroadcastService(bound)]
        if reflection:
            self._reflection = RelayReflection(bound, [*handlers, *extras])
            extras.extend(self._reflection.services())
        return bound.fallback, extras

    @property
    def reflection(self) -> RelayReflection | None:
        """The reflection service of the server this relay serves (with ``reflection=True``)."""
        return self._reflection

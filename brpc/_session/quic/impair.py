"""Simulated bad networks for tests: datagram loss and reordering, in-process.

Give a :class:`NetworkConditions` to :func:`brpc.dial` or :class:`brpc.Server`
(``network_conditions=...``); every QUIC session made with it then drops and
reorders datagrams, in both directions, as configured. The object can be
changed while connections are running: ``conditions.drop = 1.0`` cuts a peer
off without a goodbye, as if its process had died or its network failed.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["NetworkConditions"]


@dataclass
class NetworkConditions:
    """Loss and reordering applied to each datagram sent and received."""

    #: Fraction of datagrams dropped, in each direction (0 to 1).
    drop: float = 0.0
    #: Fraction of datagrams held back by ``reorder_delay`` so later ones overtake them.
    reorder: float = 0.0
    #: Seconds a reordered datagram is held back.
    reorder_delay: float = 0.005
    #: Seed of the random choices, for reproducible runs.
    seed: int | None = None
    #: Counters: datagrams seen, dropped and reordered (both directions together).
    seen: int = 0
    dropped: int = 0
    reordered: int = 0
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not (0 <= self.drop <= 1 and 0 <= self.reorder <= 1):
            raise ValueError("drop and reorder are fractions between 0 and 1")
        self._rng = random.Random(self.seed)

    def deliver(self, deliver: Callable[..., Any], *args: Any) -> None:
        """Call ``deliver(*args)`` now, later, or never, as the conditions say."""
        self.seen += 1
        rng = self._rng
        if self.drop and rng.random() < self.drop:
            self.dropped += 1
            return
        if self.reorder and rng.random() < self.reorder:
            self.reordered += 1
            asyncio.get_running_loop().call_later(self.reorder_delay, deliver, *args)
            return
        deliver(*args)


class ImpairedTransport(asyncio.DatagramTransport):
    """A datagram transport whose ``sendto`` goes through network conditions."""

    def __init__(self, inner: asyncio.DatagramTransport, conditions: NetworkConditions) -> None:
        super().__init__()
        self._inner = inner
        self._conditions = conditions

    def sendto(self, data: Any, addr: Any = None) -> None:
        self._conditions.deliver(self._send, data, addr)

    def _send(self, data: Any, addr: Any) -> None:
        if not self._inner.is_closing():
            self._inner.sendto(data, addr)

    def close(self) -> None:
        self._inner.close()

    def is_closing(self) -> bool:
        return self._inner.is_closing()

    def abort(self) -> None:
        self._inner.abort()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._inner.get_extra_info(name, default)

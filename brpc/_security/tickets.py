"""TLS session tickets for resumption, on both sides, without I/O.

:class:`TicketBox` keeps the latest ticket a client got from its server, for
the next handshake; :class:`TicketStore` is a server's bounded store in which
each ticket is usable once. Resumption is off unless both sides opt in, and
brpc never accepts 0-RTT data either way (see SECURITY.md).
"""

from __future__ import annotations

from typing import Generic, Protocol, TypeVar

__all__ = ["TicketBox", "TicketStore"]


class _Ticket(Protocol):
    @property
    def ticket(self) -> bytes: ...


T = TypeVar("T", bound=_Ticket)


class TicketBox(Generic[T]):
    """The latest TLS session ticket from a server, for resuming the next handshake."""

    def __init__(self) -> None:
        self.ticket: T | None = None

    def store(self, ticket: T) -> None:
        self.ticket = ticket


class TicketStore(Generic[T]):
    """A server's session tickets: bounded (oldest dropped first), each usable once."""

    def __init__(self, limit: int = 10000) -> None:
        self._limit = limit
        self._tickets: dict[bytes, T] = {}

    def add(self, ticket: T) -> None:
        if len(self._tickets) >= self._limit:
            del self._tickets[next(iter(self._tickets))]
        self._tickets[ticket.ticket] = ticket

    def pop(self, label: bytes) -> T | None:
        return self._tickets.pop(label, None)

    def __len__(self) -> int:
        return len(self._tickets)

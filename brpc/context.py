"""Which connection the code running now serves.

:func:`current_connection` answers, inside a handler, "over which brpc
connection did this call arrive?" The answer comes from the QUIC stream the
call arrived on (the transport runs the handler in that connection's context),
never from anything the peer sent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from grpclib.const import Status
from grpclib.exceptions import GRPCError

from ._calls.base import current_call_connection

if TYPE_CHECKING:
    from .client import ClientConn
    from .peer import ClientInfo

__all__ = ["current_connection"]


def current_connection() -> ClientInfo[Any] | ClientConn:
    """The connection of the call being handled.

    On a server this is the calling client's :class:`~brpc.ClientInfo`; in a
    service a client serves, the client's own :class:`~brpc.ClientConn`.
    Raises ``GRPCError(FAILED_PRECONDITION)`` outside a call handled by brpc.
    """
    connection = current_call_connection.get()
    if connection is None or connection.handle is None:
        raise GRPCError(
            Status.FAILED_PRECONDITION,
            "current_connection() was called outside a call handled by brpc",
        )
    handle: ClientInfo[Any] | ClientConn = connection.handle
    return handle

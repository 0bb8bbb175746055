"""The brpc admin service (``brpc.admin.v1.Admin``): a server's view of its
connected clients, for operators and the ``brpc clients`` command.

Off by default: add ``AdminService(server)`` to a server's handlers to serve it,
and authorise it, since it tells whoever may call it who is connected. The
server's ``authorize=`` hook sees the method ``"/brpc.admin.v1.Admin/ListClients"``.
"""

from .service import LIST_CLIENTS_METHOD, AdminService

__all__ = ["LIST_CLIENTS_METHOD", "AdminService"]

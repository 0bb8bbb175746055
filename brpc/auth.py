"""Who a peer is, and the hooks that decide what it may do.

- :class:`Identity`: a peer's verified identity, from its client certificate
  (mutual TLS) and/or the server's :data:`Authenticator` hook. It is bound to
  the connection: handlers read it from ``ClientInfo.identity`` (for example
  ``brpc.current_connection().identity``), never from anything a call carries.
- :class:`AuthRequest`: what the authentication hook is given.
- :class:`Unauthenticated` / :class:`PermissionDenied`: raised by a hook to
  refuse a connection; the client's :class:`brpc.RefusedError` carries the code
  and the reason.
- :data:`Authorizer`: decides per call whether a method may run; a denied call
  gets PERMISSION_DENIED and never reaches its handler.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import BrpcError

if TYPE_CHECKING:
    from cryptography import x509

__all__ = [
    "AuthRequest",
    "Authenticator",
    "Authorizer",
    "Identity",
    "PermissionDenied",
    "Unauthenticated",
]


@dataclass(frozen=True)
class Identity:
    """A verified identity of a peer."""

    #: The name to use for this peer: a SAN of its certificate, or whatever the
    #: authentication hook decided (a user, a service account, ...).
    name: str
    #: Where it comes from: ``"certificate"``, ``"token"``, or a hook's own word.
    source: str
    #: RFC 4514 subject of the client certificate, when there is one.
    subject: str | None = None
    #: Subject alternative names of the client certificate (DNS names, IPs, URIs, e-mails).
    sans: tuple[str, ...] = ()
    #: Anything else the authentication hook wants handlers to see (roles, tenant, ...).
    attributes: Mapping[str, str] = field(default_factory=dict)
    #: The verified client certificate itself.
    certificate: x509.Certificate | None = field(default=None, compare=False, repr=False)
    #: Client names (the ``name`` of its hello) this identity may use besides
    #: :attr:`name`; ``("*",)`` allows any. Set by an authentication hook.
    names: tuple[str, ...] = ()

    def may_use_name(self, name: str) -> bool:
        """Whether a client with this identity may say hello as ``name``.

        An empty name (an unnamed client) is always allowed; otherwise the name
        must be this identity's own or one the authentication hook allowed in
        :attr:`names`. This stops a client from taking another's name.
        """
        return not name or name == self.name or name in self.names or "*" in self.names


@dataclass(frozen=True)
class AuthRequest:
    """What a server's authentication hook sees of a connecting client."""

    name: str
    labels: Mapping[str, str]
    services: tuple[str, ...]
    token: str
    #: ``(host, port)`` the client's packets come from.
    address: tuple[str, int] | None
    #: The identity from the client certificate, when mutual TLS is on.
    certificate: Identity | None


class Unauthenticated(BrpcError):
    """Raise from an authentication hook: the client is not who it must be."""


class PermissionDenied(BrpcError):
    """Raise from an authentication hook: the client may not connect."""


#: ``authenticate(request) -> Identity | None`` (or a coroutine). Return the
#: client's identity (None keeps the certificate's, if any); raise
#: :class:`Unauthenticated` or :class:`PermissionDenied` to refuse. A named
#: client must use its identity's name unless the returned identity lists the
#: name in :attr:`Identity.names` (see :meth:`Identity.may_use_name`).
Authenticator = Callable[[AuthRequest], "Identity | Awaitable[Identity | None] | None"]

#: ``authorize(connection, method) -> bool`` (or a coroutine): may this call run?
#: ``connection`` is the :class:`~brpc.ClientInfo` of the caller on a server,
#: the :class:`~brpc.ClientConn` on a client; ``method`` is the gRPC path, for
#: example ``"/greeter.v1.Greeter/Greet"``.
Authorizer = Callable[[Any, str], "bool | Awaitable[bool]"]

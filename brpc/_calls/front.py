"""The standard gRPC front: ordinary HTTP/2 gRPC over TCP, served from a :class:`Serving`.

Callers that are not brpc clients (grpcio, grpclib, grpcurl, ...) reach a
server through :class:`TcpFront`: grpclib's own server protocol on an asyncio
TCP server, TLS with the server's certificate unless plaintext was asked for.
Every call is found with :meth:`Serving.lookup` (so the server's own services
and its fallback, the relay, are both served) and admitted like a call from a
brpc client: the wrapper makes a :class:`CallConnection` for the call, whose
``handle`` is a :class:`FrontCaller`, and the server's ``authorize`` hook
decides.

Who a TCP caller is: the identity of its TLS client certificate (verified
against the server's ``client_ca``, required when one is set), replaced by
what the server's ``authenticate`` hook returns for the call's bearer token
(``authorization: Bearer <token>`` metadata), when the server has that hook.
The hook is asked once per token per TCP connection.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from grpclib.const import Cardinality, Handler, Status
from grpclib.exceptions import GRPCError
from grpclib.protocol import H2Protocol
from grpclib.server import Server, Stream

from .._security.verify import CertificateRejected, ClientCertificateVerifier
from ..auth import Authenticator, Authorizer, AuthRequest, Identity, PermissionDenied
from ..auth import Unauthenticated as _Unauthenticated
from ._grpclib import server_lane_protocol, serving_server
from .base import current_call_connection
from .serving import RawMessage, Serving

__all__ = ["FrontCaller", "FrontSettings", "TcpFront"]

log = logging.getLogger(__name__)

_front_connection: contextvars.ContextVar[_FrontConnection | None] = contextvars.ContextVar(
    "brpc_front_connection", default=None
)
_MAX_TOKENS_PER_CONNECTION = 8


@dataclass(frozen=True)
class FrontCaller:
    """Who made a call through the TCP front.

    What the server's ``authorize(caller, method)`` hook, the relay's
    ``authorize(caller, method, targets)`` and directors get as ``caller`` for
    TCP callers (brpc clients are a :class:`brpc.ClientInfo` there).
    """

    #: ``(host, port)`` of the TCP peer.
    address: tuple[str, int] | None
    #: Verified identity: the TLS client certificate's, or what the
    #: authentication hook returned for the call's bearer token; None when the
    #: server checks neither.
    identity: Identity | None
    #: ``"tls"`` or ``"plaintext"``.
    transport: str

    @property
    def name(self) -> str:
        """The identity's name, or "" (a FrontCaller has no client name)."""
        return self.identity.name if self.identity is not None else ""


@dataclass(frozen=True)
class FrontSettings:
    """What the front needs from its server."""

    max_message_size: int
    max_concurrent_calls: int
    authorize: Authorizer | None = None
    authenticate: Authenticator | None = None
    verifier: ClientCertificateVerifier | None = None


class _FrontConnection:
    """One TCP connection to the front."""

    def __init__(self, front: TcpFront, transport: asyncio.BaseTransport) -> None:
        self.front = front
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.address: tuple[str, int] | None = (str(peer[0]), int(peer[1])) if peer else None
        ssl_object = transport.get_extra_info("ssl_object")
        self.tls = ssl_object is not None
        self.certificate_identity: Identity | None = None
        self.refusal: str | None = None
        verifier = front.settings.verifier
        if ssl_object is not None and verifier is not None:
            der = ssl_object.getpeercert(binary_form=True)
            try:
                certificate = x509.load_der_x509_certificate(der) if der else None
                self.certificate_identity = verifier.verify(certificate)
            except (CertificateRejected, ValueError) as exc:
                self.refusal = str(exc)
        self.calls_in = 0
        self._by_token: dict[str, FrontCaller] = {}

    async def caller(self, metadata: Mapping[str, Any]) -> FrontCaller:
        if self.refusal is not None:
            raise GRPCError(Status.UNAUTHENTICATED, self.refusal)
        authenticate = self.front.settings.authenticate
        transport = "tls" if self.tls else "plaintext"
        if authenticate is None:
            return FrontCaller(self.address, self.certificate_identity, transport)
        token = _bearer_token(metadata)
        known = self._by_token.get(token)
        if known is not None:
            return known
        request = AuthRequest(
            name="",
            labels={},
            services=(),
            token=token,
            address=self.address,
            certificate=self.certificate_identity,
        )
        try:
            identity = authenticate(request)
            if inspect.isawaitable(identity):
                identity = await identity
        except _Unauthenticated as exc:
            raise GRPCError(Status.UNAUTHENTICATED, str(exc) or "unauthenticated") from None
        except PermissionDenied as exc:
            raise GRPCError(Status.PERMISSION_DENIED, str(exc) or "permission denied") from None
        except Exception:
            log.exception("the authentication hook failed for a TCP caller")
            raise GRPCError(
                Status.UNAUTHENTICATED, "the server could not authenticate the caller"
            ) from None
        caller = FrontCaller(self.address, identity or self.certificate_identity, transport)
        if len(self._by_token) >= _MAX_TOKENS_PER_CONNECTION:
            self._by_token.clear()
        self._by_token[token] = caller
        return caller


def _bearer_token(metadata: Mapping[str, Any]) -> str:
    value = metadata.get("authorization")
    if not isinstance(value, str):
        return ""
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else value.strip()


class _FrontCall:
    """One call through the front, as the serving wrappers see its connection."""

    def __init__(self, connection: _FrontConnection, caller: FrontCaller) -> None:
        self._connection = connection
        self.handle = caller

    @property
    def usable(self) -> bool:
        return False

    @property
    def lost(self) -> bool:
        return self._connection.transport.is_closing()

    @property
    def max_message_size(self) -> int:
        return self._connection.front.settings.max_message_size

    def loss_reason(self) -> str:
        return "the TCP connection closed"

    def open_stream(self, protocol: asyncio.Protocol) -> None:
        raise GRPCError(Status.UNAVAILABLE, "a TCP caller cannot be called back")

    def outgoing_started(self) -> None:
        pass

    def outgoing_finished(self) -> None:
        pass

    async def admit(self, method: str) -> None:
        front = self._connection.front
        if front.closing:
            raise GRPCError(Status.UNAVAILABLE, f"{method}: the server is shutting down")
        authorize = front.settings.authorize
        if authorize is not None:
            allowed = authorize(self.handle, method)
            if inspect.isawaitable(allowed):
                allowed = await allowed
            if allowed is not True:
                raise GRPCError(
                    Status.PERMISSION_DENIED, f"{method} is not allowed for this caller"
                )
        limit = front.settings.max_concurrent_calls
        if self._connection.calls_in >= limit:
            raise GRPCError(
                Status.RESOURCE_EXHAUSTED,
                f"{method}: more than {limit} concurrent calls on this connection "
                "(max_concurrent_calls)",
            )
        self._connection.calls_in += 1

    def incoming_finished(self) -> None:
        self._connection.calls_in -= 1


async def _unimplemented(path: str, stream: Stream[Any, Any]) -> None:
    raise GRPCError(Status.UNIMPLEMENTED, f"method {path} is not served here")


def _front_handler(func: Callable[[Stream[Any, Any]], Any]) -> Callable[[Stream[Any, Any]], Any]:
    async def handle(stream: Stream[Any, Any]) -> None:
        connection = _front_connection.get()
        if connection is None:
            raise GRPCError(Status.INTERNAL, "call did not arrive on the TCP front")
        caller = await connection.caller(stream.metadata or {})
        token = current_call_connection.set(_FrontCall(connection, caller))
        try:
            await func(stream)
        finally:
            current_call_connection.reset(token)

    return handle


class _FrontProtocol(asyncio.Protocol):
    """grpclib's server protocol for one TCP connection, run in the connection's context."""

    def __init__(self, front: TcpFront, h2: H2Protocol) -> None:
        self._front = front
        self._h2 = h2
        self._context = contextvars.copy_context()
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        connection = _FrontConnection(self._front, transport)
        self._context.run(_front_connection.set, connection)
        self._context.run(self._h2.connection_made, transport)

    def data_received(self, data: bytes) -> None:
        self._context.run(self._h2.data_received, data)

    def pause_writing(self) -> None:
        self._h2.pause_writing()

    def resume_writing(self) -> None:
        self._h2.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._front.forget(self)
        self._context.run(self._h2.connection_lost, exc)


class TcpFront:
    """A TCP listener serving ordinary gRPC from ``serving``."""

    def __init__(
        self,
        serving: Serving,
        settings: FrontSettings,
        *,
        ssl_context: ssl.SSLContext | None,
    ) -> None:
        self.serving = serving
        self.settings = settings
        self._ssl = ssl_context
        self._wrapped: dict[str, Handler] = {}
        self._server: Server = serving_server(
            self._lookup,
            codec=serving.codec,
            status_details_codec=serving.status_details_codec,
            dispatch=serving.dispatch,
        )
        self._listener: asyncio.Server | None = None
        self._protocols: set[_FrontProtocol] = set()
        self.closing = False

    def _lookup(self, path: str) -> Handler | None:
        wrapped = self._wrapped.get(path)
        if wrapped is not None:
            return wrapped
        handler = self.serving.lookup(path)
        if handler is None:
            # grpclib's own answer to an unknown method lacks content-type, which
            # some clients report as UNKNOWN; answer UNIMPLEMENTED properly.
            return Handler(
                functools.partial(_unimplemented, path),
                Cardinality.STREAM_STREAM,
                RawMessage,
                RawMessage,
            )
        wrapped = handler._replace(func=_front_handler(handler.func))
        if path in self.serving.mapping:
            self._wrapped[path] = wrapped
        return wrapped

    def _protocol(self) -> _FrontProtocol:
        h2 = server_lane_protocol(
            self._server,
            max_message_size=self.settings.max_message_size,
            max_concurrent_streams=2 * self.settings.max_concurrent_calls,
        )
        protocol = _FrontProtocol(self, h2)
        self._protocols.add(protocol)
        return protocol

    def forget(self, protocol: _FrontProtocol) -> None:
        self._protocols.discard(protocol)

    async def start(self, host: str, port: int) -> int:
        """Listen on TCP ``host:port`` (0 picks a port); returns the port."""
        loop = asyncio.get_running_loop()
        self._listener = await loop.create_server(self._protocol, host, port, ssl=self._ssl)
        return int(self._listener.sockets[0].getsockname()[1])

    def close(self) -> None:
        """Stop listening and close every connection; calls in flight fail."""
        self.closing = True
        if self._listener is not None:
            self._listener.close()
        for protocol in list(self._protocols):
            if protocol.transport is not None:
                protocol.transport.close()

    async def wait_closed(self) -> None:
        if self._listener is not None:
            await self._listener.wait_closed()


def server_ssl_context(certfile: str, keyfile: str | None, client_ca: str | None) -> ssl.SSLContext:
    """TLS for the front: the server's certificate, HTTP/2 by ALPN, client
    certificates required and verified when ``client_ca`` is set."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile, keyfile)
    context.set_alpn_protocols(["h2"])
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(client_ca)
    return context

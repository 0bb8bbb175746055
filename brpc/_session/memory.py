"""Two connected sessions in memory: no UDP, no TLS, no loss.

:func:`session_pair` makes a dialing and an accepting :class:`MemorySession`
wired to each other, for testing everything above the session layer (the
link, the call layers, the hello phases, the server's table) without sockets
or certificates, like aioquic's ``client_and_server()`` test helper or h11's
``ConnectionPair``. Bytes written on one side's stream reach the other side's
protocol on a later turn of the event loop, in order; FIN, RESET_STREAM,
STOP_SENDING and the connection's close travel the same way.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import itertools
import os
from typing import TYPE_CHECKING, Any

from ..errors import CloseCode
from ..options import DEFAULT_OPTIONS, Options
from .base import SessionClosed, SessionHandler
from .stream_transport import StreamTransport

if TYPE_CHECKING:
    from cryptography import x509

__all__ = ["MemorySession", "session_pair"]


class MemorySession:
    """One end of an in-memory connection; a :class:`~brpc._session.base.Session`."""

    def __init__(
        self,
        *,
        is_client: bool,
        handler: SessionHandler,
        options: Options = DEFAULT_OPTIONS,
        address: tuple[str, int],
        certificate: x509.Certificate | None = None,
    ) -> None:
        self._is_client = is_client
        self.handler = handler
        self._options = options
        self._address = address
        self._certificate = certificate
        self._peer: MemorySession | None = None
        self._streams: dict[int, StreamTransport] = {}
        self._next_id = itertools.count(0 if is_client else 1, 4)
        #: Lowest ID a new peer-opened stream can have (memory delivers in order).
        self._next_peer_stream = 1 if is_client else 0
        self.closed: SessionClosed | None = None
        self.handshake_done = False
        self._exporter_master = b""
        #: Bytes written per stream (the peer has them at once: nothing is unacknowledged).
        self.bytes_written = 0

    def __repr__(self) -> str:
        return f"<MemorySession {'client' if self._is_client else 'server'} {self._address}>"

    # -- Session ---------------------------------------------------------------------

    def open_stream(
        self, protocol: asyncio.Protocol, context: contextvars.Context | None = None
    ) -> StreamTransport:
        if self.closed is not None:
            raise ConnectionError(self.closed.describe())
        return self._attach(next(self._next_id), protocol, context)

    def close(
        self,
        error_code: int = CloseCode.NO_ERROR,
        reason: str = "",
        *,
        transport_error: bool = False,
    ) -> None:
        if self.closed is not None:
            return
        self._ended(SessionClosed(error_code, reason, transport_error, local=True))
        peer = self._peer
        if peer is not None:
            closed = SessionClosed(error_code, reason, transport_error, local=False)
            asyncio.get_running_loop().call_soon(peer._ended, closed)

    def abort(self) -> None:
        self.close(CloseCode.NO_ERROR, "")

    @property
    def peer_address(self) -> tuple[str, int] | None:
        peer = self._peer
        return peer._address if peer is not None else None

    def rebind(self, address: tuple[str, int]) -> None:
        """Send from ``address`` from now on, as after a NAT rebinding: the
        peer's handler hears of it (``address_changed``) and the connection goes on."""
        self._address = address
        peer = self._peer
        if peer is not None and peer.closed is None and peer.handshake_done:
            peer.handler.address_changed(peer, address)

    def peer_certificate(self) -> x509.Certificate | None:
        peer = self._peer
        return peer._certificate if peer is not None else None

    def peer_certificate_chain(self) -> list[x509.Certificate]:
        return []

    def transport_stats(self) -> list[dict[str, int]]:
        return [
            {
                "stream_id": t.stream_id,
                "bytes_sent": t.counters.bytes_sent,
                "bytes_received": t.counters.bytes_received,
                "send_buffer": 0,
                "peak_send_buffer": t.counters.peak_send_buffer,
                "pauses": t.counters.pauses,
                "read_pauses": t.counters.read_pauses,
                "peak_held": t.counters.peak_held,
            }
            for t in self._streams.values()
        ]

    # -- StreamHost ------------------------------------------------------------------

    def send_stream_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        self.bytes_written += len(data)
        self._to_peer("_stream_data", stream_id, bytes(data), end_stream)

    def reset_stream(self, stream_id: int, error_code: int = 0) -> None:
        self._to_peer("_stream_reset", stream_id, error_code)

    def stop_stream(self, stream_id: int, error_code: int = 0) -> None:
        self._to_peer("_stop_sending", stream_id, error_code)

    def send_buffer_size(self, stream_id: int) -> int:
        return 0

    def watch_paused(self, transport: StreamTransport) -> None:
        """Never paused: nothing stays unacknowledged in memory."""

    def credit_paused(self, stream_id: int, paused: bool) -> None:
        """No flow-control credit in memory: a paused transport only holds data."""

    def credit_held(self, delta: int) -> bool:
        """See :meth:`credit_paused` (an in-memory peer's writes are bounded by its
        transport's high-water mark, so nothing here grows without bound)."""
        return False

    def forget_stream(self, transport: StreamTransport) -> None:
        if self._streams.get(transport.stream_id) is transport:
            del self._streams[transport.stream_id]

    def prove_peer_certificate(
        self, certificate: x509.Certificate, chain: list[x509.Certificate]
    ) -> None:
        if self._peer is not None and self._peer._certificate is None:
            self._peer._certificate = certificate

    def exporter_secret(self, label: bytes, length: int) -> bytes:
        """A secret both ends of this pair share (no TLS in memory)."""
        return hashlib.shake_256(self._exporter_master + label).digest(length)

    def extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return self.peer_address or default
        if name == "sockname":
            return self._address
        return default

    # -- the wire --------------------------------------------------------------------

    def _connect(self, peer: MemorySession) -> None:
        self._peer = peer

    def _to_peer(self, method: str, *args: Any) -> None:
        peer = self._peer
        if self.closed is None and peer is not None:
            asyncio.get_running_loop().call_soon(getattr(peer, method), *args)

    def _attach(
        self, stream_id: int, protocol: asyncio.Protocol, context: contextvars.Context | None
    ) -> StreamTransport:
        transport = StreamTransport(
            self,
            stream_id,
            protocol,
            context=context,
            high_water=self._options.write_high_water,
            low_water=self._options.write_low_water,
        )
        self._streams[stream_id] = transport
        transport.start()
        return transport

    def _stream_data(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        if self.closed is not None:
            return
        transport = self._streams.get(stream_id)
        if transport is None:
            if (stream_id % 2 == 0) != self._is_client and stream_id >= self._next_peer_stream:
                self._next_peer_stream = stream_id + 4
                accepted = self.handler.stream_opened(self, stream_id)
                if accepted is None:
                    self._to_peer("_stream_reset", stream_id, 0)
                    return
                transport = self._attach(stream_id, *accepted)
            else:
                return  # late data for a stream we are done with
        transport.data_received(data, end_stream)

    def _stream_reset(self, stream_id: int, error_code: int) -> None:
        transport = self._streams.get(stream_id)
        if transport is not None and self.closed is None:
            transport.reset_received(error_code)

    def _stop_sending(self, stream_id: int, error_code: int) -> None:
        transport = self._streams.get(stream_id)
        if transport is not None and self.closed is None:
            transport.stop_sending_received(error_code)

    def _ended(self, closed: SessionClosed) -> None:
        if self.closed is not None:
            return
        self.closed = closed
        error = ConnectionError(closed.describe())
        for transport in list(self._streams.values()):
            transport.connection_terminated(error)
        self._streams.clear()
        self.handler.session_closed(self, closed)


def session_pair(
    client_handler: SessionHandler,
    server_handler: SessionHandler,
    *,
    options: Options = DEFAULT_OPTIONS,
    client_address: tuple[str, int] = ("192.0.2.1", 50000),
    server_address: tuple[str, int] = ("192.0.2.2", 4433),
    client_certificate: x509.Certificate | None = None,
) -> tuple[MemorySession, MemorySession]:
    """A connected (client, server) pair whose handshakes completed (server's first)."""
    client = MemorySession(
        is_client=True,
        handler=client_handler,
        options=options,
        address=client_address,
        certificate=client_certificate,
    )
    server = MemorySession(
        is_client=False, handler=server_handler, options=options, address=server_address
    )
    client._connect(server)
    server._connect(client)
    client._exporter_master = server._exporter_master = os.urandom(32)
    for session in (server, client):
        session.handshake_done = True
        session.handler.handshake_completed(session)
    return client, server

"""Two aioquic connections wired together in memory, for adapter tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from aioquic.buffer import Buffer
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import QuicEvent
from aioquic.quic.packet import pull_quic_header

CLIENT_ADDR = ("1.2.3.4", 1234)
SERVER_ADDR = ("2.3.4.5", 4433)


class QuicPair:
    """A client and a server QuicConnection exchanging datagrams in memory."""

    def __init__(
        self,
        ca: Path,
        certfile: Path,
        keyfile: Path,
        *,
        peer_limit: int | None = None,
        server_hook: Callable[[QuicConnection], None] | None = None,
    ):
        from brpc._session.quic import _aioquic

        self.now = 0.0
        client_cfg = QuicConfiguration(is_client=True, alpn_protocols=["brpc/1"])
        client_cfg.server_name = "localhost"
        client_cfg.load_verify_locations(cafile=str(ca))
        self.server_cfg = QuicConfiguration(is_client=False, alpn_protocols=["brpc/1"])
        self.server_cfg.load_cert_chain(str(certfile), str(keyfile))
        self.client = QuicConnection(configuration=client_cfg)
        self.server: QuicConnection | None = None
        self.peer_limit = peer_limit
        self.server_hook = server_hook
        self._limit = _aioquic.set_peer_bidi_stream_limit
        self.client_events: list[QuicEvent] = []
        self.server_events: list[QuicEvent] = []
        self.client.connect(SERVER_ADDR, now=self.now)
        self.pump()

    def pump(self, rounds: int = 50) -> None:
        for _ in range(rounds):
            self.now += 0.001
            moved = False
            for data, _ in self.client.datagrams_to_send(now=self.now):
                moved = True
                if self.server is None:
                    header = pull_quic_header(Buffer(data=data), host_cid_length=8)
                    self.server = QuicConnection(
                        configuration=self.server_cfg,
                        original_destination_connection_id=header.destination_cid,
                    )
                    if self.peer_limit is not None:
                        self._limit(self.server, self.peer_limit)
                    if self.server_hook is not None:
                        self.server_hook(self.server)
                self.server.receive_datagram(data, CLIENT_ADDR, now=self.now)
            if self.server is not None:
                for data, _ in self.server.datagrams_to_send(now=self.now):
                    moved = True
                    self.client.receive_datagram(data, SERVER_ADDR, now=self.now)
            self._drain()
            if not moved:
                return

    def _drain(self) -> None:
        while (event := self.client.next_event()) is not None:
            self.client_events.append(event)
        if self.server is not None:
            while (event := self.server.next_event()) is not None:
                self.server_events.append(event)

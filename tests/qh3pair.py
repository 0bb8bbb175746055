"""Two qh3 connections wired together in memory, for adapter tests (the qh3
twin of quicpair.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from qh3._hazmat import pull_quic_header
from qh3.quic.configuration import QuicConfiguration
from qh3.quic.connection import QuicConnection
from qh3.quic.events import QuicEvent

CLIENT_ADDR = ("1.2.3.4", 1234)
SERVER_ADDR = ("2.3.4.5", 4433)

ServerHook = Callable[[QuicConnection], None]


class Qh3Pair:
    """A client and a server qh3 QuicConnection exchanging datagrams in memory.

    ``server_hook`` runs on the server connection right after it is made (before
    it sees the first datagram), ``client_hook`` on the client before ``connect``.
    Every datagram moved is recorded in ``sent`` as (sender, size).
    """

    def __init__(
        self,
        ca: Path,
        certfile: Path,
        keyfile: Path,
        *,
        client_hook: ServerHook | None = None,
        server_hook: ServerHook | None = None,
        max_datagram_size: int | None = None,
        probe_datagram_size: bool = False,
        client_cert: tuple[Path, Path] | None = None,
        connect: bool = True,
    ) -> None:
        self.now = 0.0
        client_cfg = QuicConfiguration(is_client=True, alpn_protocols=["brpc/1"])
        client_cfg.server_name = "localhost"
        client_cfg.load_verify_locations(cafile=str(ca))
        client_cfg.probe_datagram_size = probe_datagram_size
        if client_cert is not None:
            client_cfg.load_cert_chain(str(client_cert[0]), str(client_cert[1]))
        self.server_cfg = QuicConfiguration(is_client=False, alpn_protocols=["brpc/1"])
        self.server_cfg.load_cert_chain(str(certfile), str(keyfile))
        self.server_cfg.probe_datagram_size = probe_datagram_size
        if max_datagram_size is not None:
            client_cfg.max_datagram_size = max_datagram_size
            self.server_cfg.max_datagram_size = max_datagram_size
        self.client = QuicConnection(configuration=client_cfg)
        self.server: QuicConnection | None = None
        self.server_hook = server_hook
        self.client_events: list[QuicEvent] = []
        self.server_events: list[QuicEvent] = []
        self.sent: list[tuple[str, int]] = []
        if client_hook is not None:
            client_hook(self.client)
        if connect:
            self.client.connect(SERVER_ADDR, now=self.now)
            self.pump()

    def pump(self, rounds: int = 50, step: float = 0.001) -> None:
        for _ in range(rounds):
            self.now += step
            if self._due(self.client):
                self.client.handle_timer(self.now)
            moved = False
            for data, _ in self.client.datagrams_to_send(now=self.now):
                moved = True
                self.sent.append(("client", len(data)))
                if self.server is None:
                    header = pull_quic_header(data, 0, 8)
                    self.server = QuicConnection(
                        configuration=self.server_cfg,
                        original_destination_connection_id=header[3],
                    )
                    if self.server_hook is not None:
                        self.server_hook(self.server)
                self.server.receive_datagram(data, CLIENT_ADDR, now=self.now)
            if self.server is not None:
                if self._due(self.server):
                    self.server.handle_timer(self.now)
                for data, _ in self.server.datagrams_to_send(now=self.now):
                    moved = True
                    self.sent.append(("server", len(data)))
                    self.client.receive_datagram(data, SERVER_ADDR, now=self.now)
            self._drain()
            if not moved:
                return

    def _due(self, quic: QuicConnection) -> bool:
        timer = quic.get_timer()
        return timer is not None and timer <= self.now

    def _drain(self) -> None:
        while (event := self.client.next_event()) is not None:
            self.client_events.append(event)
        if self.server is not None:
            while (event := self.server.next_event()) is not None:
                self.server_events.append(event)

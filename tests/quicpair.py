"""Two aioquic connections wired together in memory, for adapter tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

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
        client_hook: Callable[[QuicConnection], None] | None = None,
        settings: dict[str, Any] | None = None,
    ):
        from brpc._session.quic import _aioquic

        self.now = 0.0
        client_cfg = QuicConfiguration(is_client=True, alpn_protocols=["brpc/1"])
        client_cfg.server_name = "localhost"
        client_cfg.load_verify_locations(cafile=str(ca))
        self.server_cfg = QuicConfiguration(is_client=False, alpn_protocols=["brpc/1"])
        self.server_cfg.load_cert_chain(str(certfile), str(keyfile))
        for name, value in (settings or {}).items():
            setattr(client_cfg, name, value)
            setattr(self.server_cfg, name, value)
        self.client = QuicConnection(configuration=client_cfg)
        if client_hook is not None:
            client_hook(self.client)
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

    def pump_until(
        self,
        done: Callable[[], bool],
        *,
        drop_to_server: Callable[[int], bool] = lambda n: False,
        drop_to_client: Callable[[int], bool] = lambda n: False,
        rounds: int = 20_000,
    ) -> None:
        """Exchange datagrams 1 ms apart, firing both sides' timers (ACK delay,
        loss detection), until ``done()``. ``drop_to_server(n)`` and
        ``drop_to_client(n)`` say whether the n-th datagram (from 1) sent that
        way is lost. Raises AssertionError if not done after ``rounds``."""
        assert self.server is not None
        to_server = to_client = 0
        for _ in range(rounds):
            self.now += 0.001
            for connection in (self.client, self.server):
                timer = connection.get_timer()
                if timer is not None and timer <= self.now:
                    connection.handle_timer(self.now)
            for data, _ in self.client.datagrams_to_send(now=self.now):
                to_server += 1
                if not drop_to_server(to_server):
                    self.server.receive_datagram(data, CLIENT_ADDR, now=self.now)
            for data, _ in self.server.datagrams_to_send(now=self.now):
                to_client += 1
                if not drop_to_client(to_client):
                    self.client.receive_datagram(data, SERVER_ADDR, now=self.now)
            self._drain()
            if done():
                return
        raise AssertionError(f"not done after {rounds} rounds")

    def settle(self, rounds: int = 200) -> None:
        """Exchange datagrams (and fire timers) for ``rounds`` ms, lossless."""
        left = [rounds]

        def done() -> bool:
            left[0] -= 1
            return left[0] <= 0

        self.pump_until(done, rounds=rounds)

    def _drain(self) -> None:
        while (event := self.client.next_event()) is not None:
            self.client_events.append(event)
        if self.server is not None:
            while (event := self.server.next_event()) is not None:
                self.server_events.append(event)

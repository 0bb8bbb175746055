"""Datagram sizes: 1,200 bytes at first, raised by path MTU probes where the engine allows."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import wait_for

from brpc._session.quic import _qh3
from brpc.testing import EchoService
from brpc.testing.v1.echo_grpc import EchoStub
from brpc.testing.v1.echo_pb2 import EchoRequest


async def test_aioquic_sessions_probe_up_to_16383_bytes_on_loopback(
    make_server: Any, connect: Any
) -> None:
    server = await make_server([EchoService()], engine="aioquic")
    conn = await connect(server, engine="aioquic")
    session = conn._link.session
    assert session.quic_options.max_datagram_size == 1200
    await wait_for(lambda: session.datagram_size == 16383)
    (server_session,) = server._listener.sessions
    await wait_for(lambda: server_session.datagram_size == 16383)
    text = "x" * 200_000  # now carried in datagrams of up to 16,383 bytes
    assert (await EchoStub(conn).Unary(EchoRequest(text=text))).text == text


async def test_qh3_clients_start_big_towards_loopback(make_server: Any, connect: Any) -> None:
    """qh3 fixes the datagram size when its connection starts and cannot probe:
    towards a loopback address brpc starts it at the route's size (capped)."""
    server = await make_server([EchoService()], engine="aioquic")
    conn = await connect(server, engine="qh3")
    text = "x" * 200_000
    assert (await EchoStub(conn).Unary(EchoRequest(text=text))).text == text
    assert conn._link.session.datagram_size == 16383


@pytest.mark.parametrize("client_engine", ["qh3", "aioquic"])
async def test_qh3_servers_send_big_datagrams_to_loopback_clients(
    make_server: Any, connect: Any, client_engine: str
) -> None:
    """A qh3 server cannot probe either: towards a loopback client it starts at
    the route's size (capped), and the client receives 1 MiB in big datagrams."""
    server = await make_server([EchoService()], engine="qh3")
    conn = await connect(server, engine=client_engine)
    text = "x" * (1 << 20)
    assert (await EchoStub(conn).Unary(EchoRequest(text=text))).text == text
    (server_session,) = server._listener.sessions
    assert server_session.datagram_size == 16383
    assert _qh3.path_datagram_size(server_session.quic) == 16383

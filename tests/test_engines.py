"""Choosing the QUIC engine: names, defaults per side, and what each cannot do."""

from __future__ import annotations

from typing import Any

import pytest

import brpc
from brpc._session.quic import engine as engines
from brpc._session.quic.engine import resolve_engine
from brpc.testing import EchoService
from brpc.testing.v1.echo_grpc import EchoStub
from brpc.testing.v1.echo_pb2 import EchoRequest


def test_auto_is_aioquic_and_qh3_is_opt_in(monkeypatch: Any) -> None:
    monkeypatch.delenv(engines.ENGINE_ENV, raising=False)
    assert resolve_engine("auto", server=False).name == "aioquic"
    assert resolve_engine("auto", server=True).name == "aioquic"
    assert resolve_engine("qh3", server=False).name == "qh3"
    assert resolve_engine("qh3", server=True).name == "qh3"


def test_brpc_engine_says_what_auto_means(monkeypatch: Any) -> None:
    monkeypatch.setenv("BRPC_ENGINE", "qh3")
    assert resolve_engine("auto", server=True).name == "qh3"
    assert resolve_engine("aioquic", server=True).name == "aioquic"  # a choice in code wins
    monkeypatch.setenv("BRPC_ENGINE", "quiche")
    with pytest.raises(ValueError, match="BRPC_ENGINE='quiche': give 'aioquic' or 'qh3'"):
        resolve_engine("auto", server=False)


def test_auto_falls_back_to_aioquic_and_qh3_names_its_extra(monkeypatch: Any) -> None:
    monkeypatch.delenv(engines.ENGINE_ENV, raising=False)
    monkeypatch.setattr(engines, "qh3_installed", lambda: False)
    assert resolve_engine("auto", server=False).name == "aioquic"
    with pytest.raises(ImportError, match=r"pip install 'brpc\[fast\]'"):
        resolve_engine("qh3", server=False)


async def test_unknown_engines_are_refused(certs: Any) -> None:
    with pytest.raises(ValueError, match="engine must be one of 'auto', 'aioquic', 'qh3'"):
        brpc.dial("127.0.0.1:1", engine="quiche")
    with pytest.raises(ValueError, match="engine must be one of"):
        brpc.Server([], certfile=certs.server_cert, keyfile=certs.server_key, engine="msquic")


async def test_what_qh3_cannot_do_is_said_when_the_server_is_built(certs: Any) -> None:
    with pytest.raises(NotImplementedError, match="0-RTT"):
        brpc.Server(
            [],
            certfile=certs.server_cert,
            keyfile=certs.server_key,
            engine="qh3",
            session_tickets=True,
        )
    # Client certificates work on qh3 servers, proven above TLS (see test_security).
    brpc.Server(
        [], certfile=certs.server_cert, keyfile=certs.server_key, engine="qh3", client_ca=certs.ca
    )


async def test_an_aioquic_client_gets_through_to_a_qh3_server(
    make_server: Any, connect: Any, caplog: Any
) -> None:
    """qh3's server raises instead of waiting when its anti-amplification allowance
    cannot fit its first flight (aioquic's 1,200-byte Initial is too little); brpc
    takes that as "nothing to send yet" and the handshake completes after the
    client's next datagram. This is why engine="auto" keeps servers on aioquic."""
    server = await make_server([EchoService()], engine="qh3")
    conn = await connect(server, engine="aioquic", timeout=5)
    assert (await EchoStub(conn).Unary(EchoRequest(text="x"))).text == "x"
    assert not [r for r in caplog.records if r.levelname == "ERROR"]

"""The TLS exporter secret on both engines: the same on both ends of a connection,
the same across engines (aioquic against qh3), different for every TLS session."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from aioquic.buffer import Buffer
from aioquic.quic.configuration import QuicConfiguration as AioquicConfiguration
from aioquic.quic.connection import QuicConnection as AioquicConnection
from aioquic.quic.packet import pull_quic_header
from qh3.quic.configuration import QuicConfiguration as Qh3Configuration
from qh3.quic.connection import QuicConnection as Qh3Connection

from brpc._session.quic import _aioquic_exporter, _qh3
from brpc._session.quic._exporter import tls_exporter

CLIENT_ADDR = ("1.2.3.4", 1234)
SERVER_ADDR = ("2.3.4.5", 4433)
LABEL = b"EXPORTER-brpc-client-proof"

Export = Callable[[Any, bytes, int], bytes]
EXPORT: dict[str, Export] = {
    "aioquic": _aioquic_exporter.exporter_secret,
    "qh3": _qh3.exporter_secret,
}
INSTALL: dict[str, Callable[[Any], None]] = {
    "aioquic": _aioquic_exporter.install_exporter,
    "qh3": _qh3.install_exporter,
}


def connection(
    engine: str, certs: Any, *, is_client: bool, odcid: bytes = b"", client_cert: bool = False
) -> Any:
    config: Any
    if engine == "aioquic":
        config = AioquicConfiguration(is_client=is_client, alpn_protocols=["brpc/1"])
    else:
        config = Qh3Configuration(is_client=is_client, alpn_protocols=["brpc/1"])
    if is_client:
        config.server_name = "localhost"
        config.load_verify_locations(cafile=str(certs.ca))
        if client_cert:
            config.load_cert_chain(str(certs.client_cert), str(certs.client_key))
        if engine == "aioquic":
            return AioquicConnection(configuration=config)
        return Qh3Connection(configuration=config)
    config.load_cert_chain(str(certs.server_cert), str(certs.server_key))
    if engine == "aioquic":
        return AioquicConnection(configuration=config, original_destination_connection_id=odcid)
    return Qh3Connection(configuration=config, original_destination_connection_id=odcid)


def handshake(
    certs: Any,
    client_engine: str,
    server_engine: str,
    *,
    client_cert: bool = False,
    server_hook: Callable[[Any], None] | None = None,
) -> tuple[Any, Any]:
    """A completed handshake between two engines, pumped in memory."""
    now = 0.0
    client = connection(client_engine, certs, is_client=True, client_cert=client_cert)
    INSTALL[client_engine](client)
    client.connect(SERVER_ADDR, now=now)
    server: Any = None
    for _ in range(50):
        now += 0.001
        moved = False
        for data, _ in client.datagrams_to_send(now=now):
            moved = True
            if server is None:
                odcid = pull_quic_header(Buffer(data=data), host_cid_length=8).destination_cid
                server = connection(server_engine, certs, is_client=False, odcid=odcid)
                INSTALL[server_engine](server)
                if server_hook is not None:
                    server_hook(server)
            server.receive_datagram(data, CLIENT_ADDR, now=now)
        for data, _ in server.datagrams_to_send(now=now) if server is not None else []:
            moved = True
            client.receive_datagram(data, SERVER_ADDR, now=now)
        if not moved:
            break
    assert server is not None
    return client, server


ENGINE_PAIRS = [("aioquic", "aioquic"), ("qh3", "qh3"), ("qh3", "aioquic")]


@pytest.mark.parametrize(("client_engine", "server_engine"), ENGINE_PAIRS)
def test_both_ends_derive_the_same_secret(
    certs: Any, client_engine: str, server_engine: str
) -> None:
    client, server = handshake(certs, client_engine, server_engine)
    client_secret = EXPORT[client_engine](client, LABEL, 32)
    assert client_secret == EXPORT[server_engine](server, LABEL, 32)
    assert len(client_secret) == 32
    assert EXPORT[client_engine](client, b"other label", 32) != client_secret
    assert EXPORT[client_engine](client, LABEL, 48)[:32] != client_secret


def test_an_aioquic_client_cannot_reach_a_qh3_server(certs: Any) -> None:
    """qh3 2.1.0's server fails its first flight to an aioquic client: aioquic pads
    its Initial datagram (1,200 bytes) with bytes after the 522-byte packet, qh3
    counts only the packet toward the anti-amplification budget (3 x 522), and its
    packet builder raises instead of waiting. When this passes, add the pair above."""
    from qh3.quic.connection import QuicConnectionError

    with pytest.raises(QuicConnectionError, match="packet builder capacity exhausted"):
        handshake(certs, "aioquic", "qh3")


@pytest.mark.parametrize("engine", ["aioquic", "qh3"])
def test_every_session_has_its_own_secret(certs: Any, engine: str) -> None:
    first, _ = handshake(certs, engine, engine)
    second, _ = handshake(certs, engine, engine)
    assert EXPORT[engine](first, LABEL, 32) != EXPORT[engine](second, LABEL, 32)


@pytest.mark.parametrize("engine", ["aioquic", "qh3"])
def test_export_needs_the_hook_before_the_handshake(certs: Any, engine: str) -> None:
    client = connection(engine, certs, is_client=True)
    with pytest.raises(RuntimeError, match="install_exporter"):
        EXPORT[engine](client, LABEL, 32)


def test_exporter_expansion_follows_rfc_8446() -> None:
    """TLS-Exporter with an all-zero SHA-256 master, against the formula written out."""
    import hashlib
    import hmac

    def expand_label(secret: bytes, label: bytes, context: bytes, length: int) -> bytes:
        full = b"tls13 " + label
        info = length.to_bytes(2, "big") + bytes([len(full)]) + full
        info += bytes([len(context)]) + context
        block, out = b"", b""
        for i in range(1, 10):
            block = hmac.new(secret, block + info + bytes([i]), hashlib.sha256).digest()
            out += block
        return out[:length]

    master = bytes(32)
    derived = expand_label(master, b"label", hashlib.sha256(b"").digest(), 32)
    expected = expand_label(derived, b"exporter", hashlib.sha256(b"ctx").digest(), 40)
    assert tls_exporter(master, b"label", b"ctx", 40) == expected
    with pytest.raises(ValueError):
        tls_exporter(bytes(20), b"label", b"", 32)


def test_a_qh3_client_answers_a_certificate_request(certs: Any) -> None:
    """qh3's TLS client does send a certificate when asked (only its server never asks):
    a qh3 client has mutual TLS with an aioquic server, bound to the same exporter."""
    from brpc._session.quic import _aioquic

    client, server = handshake(
        certs, "qh3", "aioquic", client_cert=True, server_hook=_aioquic.request_client_certificate
    )
    certificate = _aioquic.peer_certificate(server)
    assert certificate is not None
    assert "CN=client" in certificate.subject.rfc4514_string()
    assert _qh3.exporter_secret(client, LABEL, 32) == _aioquic_exporter.exporter_secret(
        server, LABEL, 32
    )


def test_why_an_aioquic_client_fails_on_qh3(certs: Any) -> None:
    from qh3._hazmat import pull_quic_header as qh3_pull_header

    client = connection("aioquic", certs, is_client=True)
    client.connect(SERVER_ADDR, now=0.0)
    datagram = client.datagrams_to_send(now=0.0)[0][0]
    header = qh3_pull_header(datagram, 0, 8)
    assert len(datagram) == 1200 and header[9] < 1200  # padding after the packet
    server = connection("qh3", certs, is_client=False, odcid=header[3])
    server.receive_datagram(datagram, CLIENT_ADDR, 0.0)
    assert server._core.active_path[4] == header[9]  # bytes received: the packet only

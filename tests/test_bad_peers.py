"""Bad peers are closed with a code and a reason; everyone else keeps being served."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aioquic.quic.packet import QuicErrorCode
from conftest import wait_for
from probes import Probe
from rawquic import port_of, raw_client, raw_server

import brpc
from brpc._wire.control import encode_envelope
from brpc.certs import generate_ca, issue_certificate
from brpc.testing.v1.echo_grpc import EchoStub
from brpc.testing.v1.echo_pb2 import EchoRequest
from brpc.v1 import control_pb2 as pb

NO_COMMON_ALPN = QuicErrorCode.CRYPTO_ERROR + 120


async def _still_serves(server: brpc.Server[Any], connect: Any) -> None:
    conn = await connect(server)
    assert (await EchoStub(conn).Unary(EchoRequest(text="ok"))).text == "ok"


def _hello(**fields: Any) -> bytes:
    fields.setdefault("protocol_version", 1)
    return encode_envelope(pb.Envelope(client_hello=pb.ClientHello(**fields)))


async def test_client_with_another_alpn_is_refused(
    make_server: Any, connect: Any, certs: Any
) -> None:
    server = await make_server([Probe()])
    with pytest.raises(ConnectionError):
        async with raw_client(server.port, ca=certs.ca, alpn="h3"):
            pass
    await _still_serves(server, connect)


async def test_server_with_another_alpn_is_refused(certs: Any) -> None:
    async with raw_server(certfile=certs.server_cert, keyfile=certs.server_key, alpn=["h3"]) as raw:
        with pytest.raises(brpc.HandshakeError) as caught:
            await brpc.dial(f"127.0.0.1:{port_of(raw)}", ca=certs.ca, timeout=5)
    message = str(caught.value)
    assert "No common ALPN" in message and "brpc/1" in message


async def test_server_without_alpn_is_refused(certs: Any) -> None:
    async with raw_server(certfile=certs.server_cert, keyfile=certs.server_key, alpn=None) as raw:
        with pytest.raises(brpc.HandshakeError) as caught:
            await brpc.dial(f"127.0.0.1:{port_of(raw)}", ca=certs.ca, timeout=5)
    assert "ALPN" in str(caught.value)


async def test_wrong_server_name_says_which_name_failed(make_server: Any, connect: Any) -> None:
    server = await make_server([Probe()])
    with pytest.raises(brpc.HandshakeError) as caught:
        await connect(server, server_name="api.example.com", timeout=5)
    message = str(caught.value)
    assert "'api.example.com'" in message and "did not verify" in message
    await _still_serves(server, connect)


async def test_untrusted_server_certificate(make_server: Any, connect: Any, tmp_path: Any) -> None:
    other_ca = generate_ca("some other CA")
    (tmp_path / "other-ca.pem").write_bytes(other_ca.certificate_pem())
    server = await make_server([Probe()])
    with pytest.raises(brpc.HandshakeError) as caught:
        await connect(server, ca=tmp_path / "other-ca.pem", timeout=5)
    assert "issuer" in str(caught.value)
    await _still_serves(server, connect)


async def test_expired_server_certificate(
    make_server: Any, connect: Any, certs: Any, tmp_path: Any
) -> None:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from brpc.certs import IssuedCertificate

    ca_key = serialization.load_pem_private_key(certs.ca_key.read_bytes(), password=None)
    ca = IssuedCertificate(x509.load_pem_x509_certificate(certs.ca.read_bytes()), ca_key)  # type: ignore[arg-type]
    old = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=30)
    expired = issue_certificate(ca, "old server", hosts=["127.0.0.1"], days=1, not_before=old)
    (tmp_path / "old.pem").write_bytes(expired.certificate_pem())
    (tmp_path / "old.key").write_bytes(expired.private_key_pem())
    server = await make_server(
        [Probe()], certfile=tmp_path / "old.pem", keyfile=tmp_path / "old.key"
    )
    # aioquic's verifier says why; qh3's says only "unacceptable".
    with pytest.raises(brpc.HandshakeError) as caught:
        await connect(server, timeout=5, engine="aioquic")
    assert "no longer valid" in str(caught.value)


async def test_malformed_hello_closes_with_reason(
    make_server: Any, connect: Any, certs: Any
) -> None:
    server = await make_server([Probe()])
    async with raw_client(server.port, ca=certs.ca) as peer:
        peer.send(0, b"\x05garbage-that-is-not-protobuf"[:6] + b"\xff\xff\xff\xff\xff")
        ended = await peer.wait_ended()
    assert ended.error_code == brpc.CloseCode.PROTOCOL_VIOLATION
    assert "not a valid Envelope" in ended.reason_phrase or "varint" in ended.reason_phrase
    await _still_serves(server, connect)


async def test_oversized_hello_closes_before_reading_it(
    make_server: Any, connect: Any, certs: Any
) -> None:
    server = await make_server([Probe()])
    async with raw_client(server.port, ca=certs.ca) as peer:
        peer.send(0, b"\xff\xff\xff\x7f")  # announces a 268 MB control message
        ended = await peer.wait_ended()
    assert ended.error_code == brpc.CloseCode.PROTOCOL_VIOLATION
    assert "exceeds the limit" in ended.reason_phrase
    await _still_serves(server, connect)


async def test_message_other_than_hello_first(make_server: Any, connect: Any, certs: Any) -> None:
    server = await make_server([Probe()])
    async with raw_client(server.port, ca=certs.ca) as peer:
        peer.send(0, encode_envelope(pb.Envelope(ping=pb.Ping(nonce=1))))
        ended = await peer.wait_ended()
    assert ended.error_code == brpc.CloseCode.PROTOCOL_VIOLATION
    assert "expected a ClientHello, got ping" in ended.reason_phrase
    await _still_serves(server, connect)


async def test_unsupported_version_is_refused(make_server: Any, connect: Any, certs: Any) -> None:
    server = await make_server([Probe()])
    async with raw_client(server.port, ca=certs.ca) as peer:
        peer.send(0, _hello(protocol_version=99))
        ended = await peer.wait_ended()
        refusal = pb.Envelope()
        refusal.ParseFromString(peer.received[0][1:])
    # The close carries the refusal code as data: 0x100 + Refusal.Code.
    assert ended.error_code == 0x100 + pb.Refusal.UNSUPPORTED_VERSION
    assert ended.reason_phrase == refusal.refusal.reason
    assert refusal.refusal.code == pb.Refusal.UNSUPPORTED_VERSION
    assert "version 99" in refusal.refusal.reason
    await _still_serves(server, connect)


async def test_invalid_hello_fields_are_refused(make_server: Any, connect: Any) -> None:
    server = await make_server([Probe()])
    with pytest.raises(brpc.RefusedError) as caught:
        await connect(server, name="n" * 1000, timeout=5)
    assert caught.value.code == "INVALID_HELLO"
    assert "name is longer" in caught.value.reason
    with pytest.raises(brpc.RefusedError):
        await connect(server, labels={"bad\nkey": "v"}, timeout=5)
    await _still_serves(server, connect)


async def test_stream_before_hello_is_a_violation(
    make_server: Any, connect: Any, certs: Any
) -> None:
    server = await make_server([Probe()])
    async with raw_client(server.port, ca=certs.ca) as peer:
        peer.send(4, b"PRI * HTTP/2.0\r\n")  # a lane before the control stream
        ended = await peer.wait_ended()
    assert ended.error_code == brpc.CloseCode.PROTOCOL_VIOLATION
    assert "before the hello" in ended.reason_phrase
    await _still_serves(server, connect)


async def test_unidirectional_stream_is_a_violation(
    make_server: Any, connect: Any, certs: Any
) -> None:
    server = await make_server([Probe()])
    async with raw_client(server.port, ca=certs.ca) as peer:
        peer.send(peer.next_stream(unidirectional=True), b"hello")
        ended = await peer.wait_ended()
    assert ended.error_code == brpc.CloseCode.PROTOCOL_VIOLATION
    assert "unidirectional" in ended.reason_phrase
    await _still_serves(server, connect)


async def test_silent_client_hits_the_hello_timeout(
    make_server: Any, connect: Any, certs: Any
) -> None:
    server = await make_server([Probe()], hello_timeout=0.3)
    async with raw_client(server.port, ca=certs.ca) as peer:
        ended = await peer.wait_ended()
    assert ended.error_code == brpc.CloseCode.HELLO_TIMEOUT
    assert "no hello within 0.3 s" in ended.reason_phrase
    await _still_serves(server, connect)


async def test_many_bad_peers_at_once_do_not_disturb_a_good_one(
    make_server: Any, connect: Any, certs: Any
) -> None:
    server = await make_server([Probe()])
    good = await connect(server)

    async def bad(index: int) -> None:
        async with raw_client(server.port, ca=certs.ca) as peer:
            peer.send(0, bytes([index % 256]) * 40)
            await peer.wait_ended()

    async def steady() -> None:
        for i in range(50):
            assert (await EchoStub(good).Unary(EchoRequest(text=str(i)))).text == str(i)

    await asyncio.gather(steady(), *(bad(i) for i in range(20)))
    assert len(server.clients_snapshot()) == 1


async def test_a_peer_that_never_reads_its_pongs_is_closed(
    make_server: Any, connect: Any, certs: Any
) -> None:
    """A client that grants no flow-control credit on its control stream and
    keeps sending pings is closed once the unsent pongs pass the bound,
    instead of having them queued without limit."""
    from brpc._core.control_stream import MAX_UNSENT_CONTROL_BYTES

    server = await make_server([Probe()])
    honest = await connect(server)
    async with raw_client(server.port, ca=certs.ca, max_stream_data=4096) as raw:
        control = raw.next_stream()
        raw.send(control, _hello(name="hoarder"))
        await wait_for(lambda: bool(raw.received.get(control)), timeout=5)  # the server hello
        raw.stop_granting_credit()
        # the largest nonce makes the largest pong; each pong is as long as its ping
        ping = encode_envelope(pb.Envelope(ping=pb.Ping(nonce=(1 << 64) - 1)))
        # send up to four times the bound
        batch = ping * 500
        for _ in range(4 * MAX_UNSENT_CONTROL_BYTES // len(batch)):
            if raw.ended.done():
                break
            raw.send(control, batch)
            await asyncio.sleep(0.002)  # the hostile peer's sending rate
        ended = await raw.wait_ended(timeout=10)
    assert ended.error_code == brpc.CloseCode.PROTOCOL_VIOLATION
    assert "control messages unread" in ended.reason_phrase
    assert (await EchoStub(honest).Unary(EchoRequest(text="still here"))).text == "still here"
    await _still_serves(server, connect)

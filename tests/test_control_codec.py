"""The control-stream codec: framing, limits, validation, and fuzzing of the parser."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from brpc._wire.control import ControlDecoder, HelloLimits, check_client_hello, encode_envelope
from brpc.errors import ProtocolViolation
from brpc.v1 import control_pb2 as pb


def hello(**fields: object) -> pb.Envelope:
    return pb.Envelope(client_hello=pb.ClientHello(protocol_version=1, **fields))  # type: ignore[arg-type]


def test_round_trip_byte_by_byte() -> None:
    messages = [hello(name="a", labels={"k": "v"}), pb.Envelope(ping=pb.Ping(nonce=7))]
    wire = b"".join(encode_envelope(m) for m in messages)
    decoder = ControlDecoder(1024)
    out = []
    for i in range(len(wire)):
        out += decoder.feed(wire[i : i + 1])
    assert out == messages
    assert decoder.buffered == 0


def test_several_messages_in_one_chunk() -> None:
    messages = [pb.Envelope(ping=pb.Ping(nonce=n)) for n in range(5)]
    assert ControlDecoder(1024).feed(b"".join(map(encode_envelope, messages))) == messages


def test_oversized_length_is_rejected_before_the_body() -> None:
    decoder = ControlDecoder(100)
    with pytest.raises(ProtocolViolation, match="exceeds the limit of 100"):
        decoder.feed(b"\xe5\x00")  # 101
    # a long length prefix is rejected as soon as it passes the limit
    with pytest.raises(ProtocolViolation):
        ControlDecoder(100).feed(b"\xff\xff")


def test_overlong_varint_is_rejected() -> None:
    with pytest.raises(ProtocolViolation):
        ControlDecoder(1 << 70).feed(b"\x80" * 11)


def test_garbage_body_is_rejected() -> None:
    with pytest.raises(ProtocolViolation, match="not a valid Envelope"):
        ControlDecoder(100).feed(b"\x03\xff\xff\xff")


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"name": "x" * 300}, "name is longer"),
        ({"name": "tab\there"}, "non-printable"),
        ({"labels": {str(i): "v" for i in range(65)}}, "more than 64 labels"),
        ({"labels": {"": "v"}}, "label key"),
        ({"labels": {"k": "v" * 2000}}, "value of label"),
        ({"services": ["not a service"]}, "not a fully-qualified"),
        ({"services": [f"s{i}.S" for i in range(300)]}, "more than 256 services"),
        ({"token": "t" * 20000}, "token is longer"),
    ],
)
def test_hello_checks(fields: dict[str, object], problem: str) -> None:
    reason = check_client_hello(hello(**fields).client_hello, HelloLimits())
    assert reason is not None and problem in reason


def test_good_hello_passes() -> None:
    good = hello(name="agent-7", labels={"region": "eu"}, services=["greeter.v1.Namer"])
    assert check_client_hello(good.client_hello, HelloLimits()) is None


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=64), max_size=8))
def test_random_bytes_never_crash_the_decoder(chunks: list[bytes]) -> None:
    decoder = ControlDecoder(256)
    try:
        for chunk in chunks:
            for envelope in decoder.feed(chunk):
                assert isinstance(envelope, pb.Envelope)
    except ProtocolViolation:
        pass


@settings(max_examples=400)
@given(
    st.builds(
        lambda name, labels, services, token: hello(
            name=name, labels=labels, services=services, token=token
        ),
        st.text(max_size=40),
        st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=4),
        st.lists(st.text(max_size=20), max_size=4),
        st.text(max_size=40),
    ),
    st.data(),
)
def test_mutated_valid_messages(envelope: pb.Envelope, data: st.DataObject) -> None:
    """Flip, drop and insert bytes in valid messages: the decoder either yields
    envelopes or raises ProtocolViolation, and the hello check never crashes."""
    wire = bytearray(encode_envelope(envelope))
    for _ in range(data.draw(st.integers(0, 4))):
        position = data.draw(st.integers(0, len(wire)))
        action = data.draw(st.sampled_from(["flip", "drop", "insert"]))
        if action == "flip" and position < len(wire):
            wire[position] ^= data.draw(st.integers(1, 255))
        elif action == "drop" and position < len(wire):
            del wire[position]
        else:
            wire.insert(position, data.draw(st.integers(0, 255)))
    try:
        envelopes = ControlDecoder(1024).feed(bytes(wire))
    except ProtocolViolation:
        return
    for decoded in envelopes:
        if decoded.WhichOneof("message") == "client_hello":
            check_client_hello(decoded.client_hello, HelloLimits())

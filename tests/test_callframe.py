"""The per-call stream wire format: frames, metadata, limits, ordering, and fuzzing."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from google.rpc import code_pb2, status_pb2
from grpclib.const import Status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import MultiDict

import brpc
from brpc._wire.callframe import (
    FRAME_PREFIX_SIZE,
    CallStreamError,
    FrameDecoder,
    FrameEvent,
    FrameType,
    MessageReceived,
    MessageTooLarge,
    RequestHeadersReceived,
    ResponseHeadersReceived,
    StreamError,
    TrailersReceived,
    encode_message,
    encode_request_headers,
    encode_response_headers,
    encode_trailers,
    message_prefix,
    peer_error,
    peer_error_status,
    refused_before_start,
)
from brpc._wire.calllayer import CallLayerMismatch, accepted_call_layer, choose_call_layer
from brpc._wire.callstate import (
    CalleeReceiveState,
    CallerReceiveState,
    EndedWithoutStatus,
    EndOfStream,
    ReceiveState,
)
from brpc._wire.metadata import (
    MAX_TIMEOUT_US,
    MetadataError,
    check_metadata_key,
    timeout_from_us,
    timeout_to_us,
)
from brpc.v1 import call_pb2 as pb

LIMIT = 1 << 17


def decode_all(wire: bytes, max_message: int = LIMIT, max_header: int = LIMIT) -> list[FrameEvent]:
    decoder = FrameDecoder(max_message, max_header)
    events = decoder.feed(wire)
    decoder.end_of_stream()
    assert decoder.buffered == 0
    return events


def frame(kind: int, body: bytes) -> bytes:
    return struct.pack(">BI", kind, len(body)) + body


METADATA_SHAPES: list[Any] = [
    None,
    [],
    {},
    [("k", "v")],
    {"user-id": "42", "trace-bin": b"\x00\xff\x01"},
    [("dup", "1"), ("x-bin", b""), ("dup", "2"), ("dup", "3")],
    MultiDict([("a", "1"), ("a", "2"), ("b-bin", b"\xfe")]),
    [("k.with_all-chars.0-9", " ~printable~ ")],
]


def expected_pairs(metadata: Any) -> list[tuple[str, str | bytes]]:
    if not metadata:
        return []
    items = metadata.items() if hasattr(metadata, "items") else metadata
    return list(items)


# -- round trips -------------------------------------------------------------------------


@pytest.mark.parametrize("metadata", METADATA_SHAPES)
def test_request_headers_round_trip(metadata: Any) -> None:
    wire = encode_request_headers("/pkg.Service/Method", metadata, 2.5, "brpc/0.1")
    assert wire[0] == FrameType.REQUEST_HEADERS
    assert decode_all(wire) == [
        RequestHeadersReceived("/pkg.Service/Method", expected_pairs(metadata), 2.5, "brpc/0.1")
    ]


def test_request_headers_without_timeout_or_user_agent() -> None:
    [event] = decode_all(encode_request_headers("/a.B/C"))
    assert event == RequestHeadersReceived("/a.B/C", [], None, "")


def test_repeated_request_headers_decode_alike_whatever_else_came_between() -> None:
    """Blocks are remembered by their bytes on both sides: the same call again, and
    the same method with metadata or a timeout, still encode and decode exactly."""
    plain = encode_request_headers("/a.B/C", None, None, "ua")
    timed = encode_request_headers("/a.B/C", [("k", "v")], 0.5, "ua")
    first, again = decode_all(plain), decode_all(plain)
    assert first == again == [RequestHeadersReceived("/a.B/C", [], None, "ua")]
    assert first[0].metadata is not again[0].metadata  # each event its own list
    assert decode_all(timed) == [RequestHeadersReceived("/a.B/C", [("k", "v")], 0.5, "ua")]
    assert encode_request_headers("/a.B/C", None, None, "ua") == plain
    assert decode_all(encode_request_headers("/a.B/D", None, None, "ua")) == [
        RequestHeadersReceived("/a.B/D", [], None, "ua")
    ]


@pytest.mark.parametrize("metadata", METADATA_SHAPES)
def test_response_headers_round_trip(metadata: Any) -> None:
    wire = encode_response_headers(metadata)
    assert wire[0] == FrameType.RESPONSE_HEADERS
    assert decode_all(wire) == [ResponseHeadersReceived(expected_pairs(metadata))]


@pytest.mark.parametrize("metadata", METADATA_SHAPES)
def test_trailers_round_trip(metadata: Any) -> None:
    details = status_pb2.Status(
        code=code_pb2.NOT_FOUND, message="no such thing"
    ).SerializeToString()
    wire = encode_trailers(Status.NOT_FOUND, "no such thing: ü", details, metadata)
    assert wire[0] == FrameType.TRAILERS
    assert decode_all(wire) == [
        TrailersReceived(5, "no such thing: ü", details, expected_pairs(metadata))
    ]


def test_details_are_passed_through_byte_for_byte() -> None:
    # Not a valid google.rpc.Status: the layer never parses or re-encodes details.
    details = b"\xff\x00arbitrary"
    [event] = decode_all(encode_trailers(13, None, details))
    assert event == TrailersReceived(13, "", details, [])


def test_ok_trailers_only_response_is_five_bytes() -> None:
    assert encode_trailers(Status.OK) == b"\x42\x00\x00\x00\x00"
    assert decode_all(encode_trailers(Status.OK)) == [TrailersReceived(0, "", None, [])]


@pytest.mark.parametrize("data", [b"", b"x", bytes(range(256)) * 300])
def test_message_round_trip(data: bytes) -> None:
    wire = encode_message(data)
    assert wire == message_prefix(len(data)) + data
    assert wire[:FRAME_PREFIX_SIZE] == b"\x00" + len(data).to_bytes(4, "big")
    assert decode_all(wire) == [MessageReceived(data)]


def test_encode_message_accepts_views() -> None:
    assert encode_message(memoryview(b"abc")) == encode_message(bytearray(b"abc"))


def test_message_prefix_rejects_what_does_not_fit() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        message_prefix(1 << 32)


# -- chunking ------------------------------------------------------------------------------

STREAM = (
    encode_request_headers("/s.S/M", [("a", "b"), ("c-bin", b"\x01")], 0.25, "ua")
    + encode_message(b"")
    + encode_message(b"first message")
    + encode_response_headers({"h": "v"})
    + encode_message(bytes(range(40)))
    + encode_trailers(3, "bad", b"\x08\x03", [("t", "1")])
)
STREAM_EVENTS = decode_all(STREAM)


def test_stream_decodes_to_every_frame() -> None:
    assert [type(e) for e in STREAM_EVENTS] == [
        RequestHeadersReceived,
        MessageReceived,
        MessageReceived,
        ResponseHeadersReceived,
        MessageReceived,
        TrailersReceived,
    ]


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview])
def test_split_at_every_byte_boundary(wrap: Any) -> None:
    for cut in range(len(STREAM) + 1):
        decoder = FrameDecoder(LIMIT, LIMIT)
        events = decoder.feed(wrap(STREAM[:cut])) + decoder.feed(wrap(STREAM[cut:]))
        assert events == STREAM_EVENTS, cut
        assert not decoder.mid_frame


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview])
def test_byte_by_byte(wrap: Any) -> None:
    decoder = FrameDecoder(LIMIT, LIMIT)
    events: list[FrameEvent] = []
    for i in range(len(STREAM)):
        events += decoder.feed(wrap(STREAM[i : i + 1]))
        assert decoder.buffered <= 64
    assert events == STREAM_EVENTS


def test_three_way_splits() -> None:
    for first in range(0, len(STREAM), 3):
        for second in range(first, len(STREAM), 7):
            decoder = FrameDecoder(LIMIT, LIMIT)
            events = (
                decoder.feed(STREAM[:first])
                + decoder.feed(STREAM[first:second])
                + decoder.feed(STREAM[second:])
            )
            assert events == STREAM_EVENTS, (first, second)


def test_reused_buffers_do_not_corrupt_a_pending_body() -> None:
    body = bytes(range(200))
    wire = encode_message(body)
    buffer = bytearray(wire[:100])
    decoder = FrameDecoder(LIMIT, LIMIT)
    assert decoder.feed(buffer) == []
    buffer[:] = b"\xee" * 100  # the caller reuses its buffer
    assert decoder.feed(memoryview(bytearray(wire[100:]))) == [MessageReceived(body)]


def test_large_message_over_many_chunks() -> None:
    body = bytes(range(256)) * 4096  # 1 MiB
    wire = encode_message(body) + encode_trailers(0)
    decoder = FrameDecoder(len(body), 1024)
    events: list[FrameEvent] = []
    for start in range(0, len(wire), 1350):
        events += decoder.feed(wire[start : start + 1350])
        assert decoder.buffered <= len(body)
    assert events == [MessageReceived(body), TrailersReceived(0, "", None, [])]
    assert isinstance(events[0], MessageReceived)
    assert type(events[0].data) is bytes


def test_end_of_stream_inside_a_frame() -> None:
    for cut in (1, 4, 5, 7):
        decoder = FrameDecoder(LIMIT, LIMIT)
        decoder.feed(encode_message(b"abcdef")[:cut])
        assert decoder.mid_frame
        with pytest.raises(CallStreamError, match="ended inside a frame") as info:
            decoder.end_of_stream()
        assert info.value.code == StreamError.PROTOCOL_ERROR


# -- limits ---------------------------------------------------------------------------------


def test_oversized_message_is_refused_from_its_prefix_alone() -> None:
    decoder = FrameDecoder(max_message_size=100, max_header_size=1000)
    assert decoder.feed(encode_message(b"x" * 100)) == [MessageReceived(b"x" * 100)]
    with pytest.raises(MessageTooLarge) as info:
        decoder.feed(message_prefix(101))  # no body at all
    error = info.value
    assert str(error) == (
        "received message of 101 bytes exceeds the limit of 100 bytes (max_message_size)"
    )
    assert error.code == StreamError.MESSAGE_TOO_LARGE
    assert error.status == Status.RESOURCE_EXHAUSTED
    assert error.grpc_error().status == Status.RESOURCE_EXHAUSTED
    assert decoder.buffered == 0


def test_oversized_message_prefix_split_over_chunks() -> None:
    decoder = FrameDecoder(max_message_size=10, max_header_size=10)
    prefix = message_prefix(1 << 31)
    assert decoder.feed(prefix[:3]) == []
    with pytest.raises(MessageTooLarge, match=f"message of {1 << 31} bytes"):
        decoder.feed(prefix[3:])
    assert decoder.buffered == 0


@pytest.mark.parametrize(
    "kind", [FrameType.REQUEST_HEADERS, FrameType.RESPONSE_HEADERS, FrameType.TRAILERS]
)
def test_oversized_block_is_refused_from_its_prefix(kind: FrameType) -> None:
    decoder = FrameDecoder(max_message_size=1 << 20, max_header_size=64)
    with pytest.raises(MessageTooLarge, match=r"block of 65 bytes .* 64 bytes \(max_header_size\)"):
        decoder.feed(struct.pack(">BI", kind, 65))


def test_a_failed_decoder_stays_failed() -> None:
    decoder = FrameDecoder(10, 10)
    with pytest.raises(MessageTooLarge) as first:
        decoder.feed(message_prefix(11))
    with pytest.raises(MessageTooLarge) as again:
        decoder.feed(encode_message(b"ok"))
    assert again.value is first.value
    with pytest.raises(MessageTooLarge):
        decoder.end_of_stream()


# -- malformed frames -------------------------------------------------------------------------


def test_compressed_messages_are_not_supported() -> None:
    with pytest.raises(CallStreamError, match="compressed messages are not supported") as info:
        FrameDecoder(LIMIT, LIMIT).feed(struct.pack(">BI", 1, 3))
    assert info.value.code == StreamError.INTERNAL
    assert info.value.status == Status.INTERNAL


@pytest.mark.parametrize("kind", [0x02, 0x3F, 0x43, 0x80, 0xFF])
def test_unknown_frame_types_are_protocol_errors(kind: int) -> None:
    with pytest.raises(CallStreamError, match=f"unknown type {kind:#04x}") as info:
        FrameDecoder(LIMIT, LIMIT).feed(frame(kind, b""))
    assert info.value.code == StreamError.PROTOCOL_ERROR
    assert info.value.status == Status.INTERNAL


def entry(key: str, **value: Any) -> pb.Metadata:
    return pb.Metadata(key=key, **value)


@pytest.mark.parametrize(
    ("wire", "problem"),
    [
        (frame(0x40, b"\xff\xff\xff"), "not valid protobuf"),
        (frame(0x41, b"\x0a\x05ab"), "not valid protobuf"),  # truncated field
        (frame(0x42, b"\x12\x02\xc3\x28"), "not valid protobuf"),  # message: invalid UTF-8
        (frame(0x40, b""), "not '/package.Service/Method'"),  # no path
        (frame(0x40, pb.RequestHeaders(path="no/slash").SerializeToString()), "no/slash"),
        (
            frame(
                0x41, pb.ResponseHeaders(metadata=[entry("Upper", text="v")]).SerializeToString()
            ),
            "invalid metadata key 'Upper'",
        ),
        (
            frame(
                0x41, pb.ResponseHeaders(metadata=[entry("k-bin", text="v")]).SerializeToString()
            ),
            "must be bytes",
        ),
        (
            frame(0x42, pb.Trailers(metadata=[entry("k", binary=b"v")]).SerializeToString()),
            "must be str",
        ),
        (
            frame(0x42, pb.Trailers(metadata=[entry("k", text="tab\t")]).SerializeToString()),
            "printable ASCII",
        ),
        (frame(0x42, pb.Trailers(metadata=[entry("k")]).SerializeToString()), "has no value"),
        (
            frame(
                0x41, pb.ResponseHeaders(metadata=[entry(":path", text="/")]).SerializeToString()
            ),
            "invalid metadata key ':path'",
        ),
        (
            frame(
                0x41,
                pb.ResponseHeaders(metadata=[entry("grpc-status", text="0")]).SerializeToString(),
            ),
            "reserved by gRPC",
        ),
    ],
)
def test_malformed_blocks_are_protocol_errors(wire: bytes, problem: str) -> None:
    with pytest.raises(CallStreamError, match=problem) as info:
        FrameDecoder(LIMIT, LIMIT).feed(wire)
    assert info.value.code == StreamError.PROTOCOL_ERROR


def test_unknown_block_fields_are_ignored() -> None:
    future = pb.Trailers(status=2).SerializeToString() + b"\xa8\x06\x01"  # field 101 = 1
    assert decode_all(frame(0x42, future)) == [TrailersReceived(2, "", None, [])]


# -- metadata and timeouts ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("metadata", "problem"),
    [
        ([("Key", "v")], "invalid metadata key"),
        ([("", "v")], "invalid metadata key"),
        ([("a b", "v")], "invalid metadata key"),
        ([(":authority", "v")], "invalid metadata key"),
        ([("grpc-timeout", "1S")], "reserved"),
        ([("user-agent", "x")], "reserved"),
        ([("te", "trailers")], "reserved"),
        ([("content-type", "application/grpc")], "reserved"),
        ([("k-bin", "text")], "must be bytes"),
        ([("k", b"bytes")], "must be str"),
        ([("k", "")], "printable ASCII"),
        ([("k", "line\nbreak")], "printable ASCII"),
        ([("k", "é")], "printable ASCII"),
    ],
)
def test_metadata_that_may_not_be_sent(metadata: Any, problem: str) -> None:
    with pytest.raises(MetadataError, match=problem):
        encode_request_headers("/a.B/C", metadata)
    with pytest.raises(MetadataError, match=problem):
        encode_trailers(0, metadata=metadata)


def test_retry_keys_are_allowed() -> None:
    check_metadata_key("grpc-previous-rpc-attempts")
    check_metadata_key("grpc-retry-pushback-ms")
    with pytest.raises(MetadataError):
        check_metadata_key("grpc-message")


@pytest.mark.parametrize(
    ("timeout", "us"),
    [
        (None, 0),
        (1.0, 1_000_000),
        (0.0000001, 1),  # rounds up: a timeout is never "none"
        (0.0, 1),
        (-5.0, 1),  # already expired: expires at once on the callee
        (1.5e-6, 2),
        (float("inf"), MAX_TIMEOUT_US),
        (1e30, MAX_TIMEOUT_US),
    ],
)
def test_timeout_to_us(timeout: float | None, us: int) -> None:
    assert timeout_to_us(timeout) == us


def test_timeout_nan_is_rejected() -> None:
    with pytest.raises(ValueError, match="NaN"):
        timeout_to_us(float("nan"))


def test_timeout_from_us() -> None:
    assert timeout_from_us(0) is None
    assert timeout_from_us(1_500_000) == 1.5
    assert timeout_from_us(1) == 1e-6


def test_timeout_travels_in_microseconds() -> None:
    block = pb.RequestHeaders()
    block.ParseFromString(encode_request_headers("/a.B/C", timeout=0.001)[FRAME_PREFIX_SIZE:])
    assert block.timeout_us == 1000


# -- stream error codes -----------------------------------------------------------------------


def test_stream_error_codes_are_the_documented_values() -> None:
    assert {code.name: code.value for code in StreamError} == {
        "NO_ERROR": 0x00,
        "CANCELLED": 0x10,
        "DEADLINE_EXCEEDED": 0x11,
        "MESSAGE_TOO_LARGE": 0x12,
        "REFUSED": 0x13,
        "PROTOCOL_ERROR": 0x14,
        "INTERNAL": 0x15,
        "CONNECTION_CLOSING": 0x16,
        "RECEIVE_OVERFLOW": 0x17,
    }


@pytest.mark.parametrize(
    ("code", "status", "refused"),
    [
        (StreamError.NO_ERROR, Status.INTERNAL, False),
        (StreamError.CANCELLED, Status.CANCELLED, False),
        (StreamError.DEADLINE_EXCEEDED, Status.DEADLINE_EXCEEDED, False),
        (StreamError.MESSAGE_TOO_LARGE, Status.RESOURCE_EXHAUSTED, False),
        (StreamError.REFUSED, Status.UNAVAILABLE, True),
        (StreamError.PROTOCOL_ERROR, Status.INTERNAL, False),
        (StreamError.INTERNAL, Status.INTERNAL, False),
        (StreamError.CONNECTION_CLOSING, Status.UNAVAILABLE, True),
        (StreamError.RECEIVE_OVERFLOW, Status.RESOURCE_EXHAUSTED, False),
        (0x99, Status.INTERNAL, False),
        (0x0, Status.INTERNAL, False),
    ],
)
def test_peer_error_status(code: int, status: Status, refused: bool) -> None:
    reported, message = peer_error_status(code)
    assert reported == status
    assert message
    assert refused_before_start(code) is refused
    error = peer_error(code)
    assert (error.status, error.message) == (status, message)
    # Only the codes that prove the callee never ran the call say so.
    assert isinstance(error, brpc.CallNotStartedError) is refused
    if refused:
        assert "before starting it" in message and "safe to retry" in message


def test_unknown_peer_error_code_is_named() -> None:
    assert "0x99" in peer_error_status(0x99)[1]


# -- receive state machines -------------------------------------------------------------------

HEADERS = RequestHeadersReceived("/a.B/C", [], None, "")
RESPONSE = ResponseHeadersReceived([])
MESSAGE = MessageReceived(b"")
TRAILERS = TrailersReceived(0, "", None, [])
FIN = EndOfStream()
INPUTS: dict[str, Any] = {"Q": HEADERS, "R": RESPONSE, "M": MESSAGE, "T": TRAILERS, "F": FIN}


def run(machine: CalleeReceiveState | CallerReceiveState, sequence: str) -> None:
    for name in sequence:
        item = INPUTS[name]
        if isinstance(item, EndOfStream):
            machine.end_of_stream()
        else:
            machine.receive(item)


@pytest.mark.parametrize("sequence", ["QF", "QMF", "QMMMF"])
def test_callee_accepts(sequence: str) -> None:
    machine = CalleeReceiveState()
    assert machine.state is ReceiveState.AWAITING_REQUEST_HEADERS
    run(machine, sequence)
    assert machine.state is ReceiveState.CLOSED


@pytest.mark.parametrize(
    "sequence", ["M", "R", "T", "QQ", "QR", "QT", "QMQ", "QMR", "QMT", "QFM", "QFQ", "QFF"]
)
def test_callee_refuses(sequence: str) -> None:
    machine = CalleeReceiveState()
    run(machine, sequence[:-1])
    with pytest.raises(CallStreamError) as info:
        run(machine, sequence[-1])
    assert info.value.code == StreamError.PROTOCOL_ERROR
    assert not isinstance(info.value, EndedWithoutStatus)


def test_callee_end_before_headers() -> None:
    with pytest.raises(CallStreamError, match="before its request headers"):
        CalleeReceiveState().end_of_stream()


@pytest.mark.parametrize("sequence", ["TF", "RTF", "MTF", "RMMTF", "MMTF"])
def test_caller_accepts(sequence: str) -> None:
    machine = CallerReceiveState()
    assert machine.state is ReceiveState.AWAITING_RESPONSE
    run(machine, sequence)
    assert machine.state is ReceiveState.CLOSED


@pytest.mark.parametrize(
    "sequence", ["Q", "RR", "RQ", "MR", "MQ", "TT", "TM", "TR", "TQ", "RMR", "TFT", "TFM", "TFF"]
)
def test_caller_refuses(sequence: str) -> None:
    machine = CallerReceiveState()
    run(machine, sequence[:-1])
    with pytest.raises(CallStreamError) as info:
        run(machine, sequence[-1])
    assert info.value.code == StreamError.PROTOCOL_ERROR
    assert not isinstance(info.value, EndedWithoutStatus)


@pytest.mark.parametrize("sequence", ["F", "RF", "MF", "RMMF"])
def test_caller_end_without_trailers(sequence: str) -> None:
    machine = CallerReceiveState()
    with pytest.raises(EndedWithoutStatus, match="without sending a status") as info:
        run(machine, sequence)
    assert info.value.status == Status.INTERNAL


def test_state_machine_follows_decoded_stream() -> None:
    wire = encode_response_headers() + encode_message(b"a") + encode_trailers(0)
    machine = CallerReceiveState()
    for event in decode_all(wire):
        machine.receive(event)
    machine.end_of_stream()
    assert machine.state is ReceiveState.CLOSED


# -- fuzzing ----------------------------------------------------------------------------------


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=48), max_size=10), st.integers(0, 40), st.integers(0, 40))
def test_decoder_fuzz_raises_only_its_own_errors(
    chunks: list[bytes], max_message: int, max_header: int
) -> None:
    decoder = FrameDecoder(max_message, max_header)
    try:
        for chunk in chunks:
            for event in decoder.feed(chunk):
                if isinstance(event, MessageReceived):
                    assert len(event.data) <= max_message
            assert decoder.buffered <= max(max_message, max_header) + FRAME_PREFIX_SIZE
        decoder.end_of_stream()
    except CallStreamError as exc:
        assert isinstance(exc.code, StreamError)


_texts = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=8)
_keys = st.text("abcxyz019-_.", min_size=1, max_size=8).filter(
    lambda k: not k.startswith("grpc-") and k not in {"te"}
)
_metadata = st.lists(
    st.one_of(
        st.tuples(_keys.map(lambda k: k + "-bin"), st.binary(max_size=8)),
        st.tuples(_keys.filter(lambda k: not k.endswith("-bin")), _texts),
    ),
    max_size=4,
)
_frames = st.lists(
    st.one_of(
        st.builds(lambda d: (encode_message(d), MessageReceived(d)), st.binary(max_size=40)),
        st.builds(lambda m: (encode_response_headers(m), ResponseHeadersReceived(m)), _metadata),
        st.builds(
            lambda s, t, d, m: (encode_trailers(s, t, d, m), TrailersReceived(s, t, d or None, m)),
            st.integers(0, 16),
            st.text(max_size=8),
            st.binary(max_size=8),
            _metadata,
        ),
        st.builds(
            lambda m, t: (
                encode_request_headers("/p.S/M", m, t, "ua"),
                RequestHeadersReceived("/p.S/M", m, timeout_from_us(timeout_to_us(t)), "ua"),
            ),
            _metadata,
            st.one_of(st.none(), st.integers(1, 10**6).map(lambda us: us / 1e6)),
        ),
    ),
    max_size=6,
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(_frames, st.lists(st.integers(0, 400), max_size=8))
def test_valid_frames_survive_any_chunking(
    frames: list[tuple[bytes, FrameEvent]], cuts: list[int]
) -> None:
    wire = b"".join(data for data, _ in frames)
    points = sorted({min(cut, len(wire)) for cut in cuts})
    decoder = FrameDecoder(LIMIT, LIMIT)
    events: list[FrameEvent] = []
    start = 0
    for point in [*points, len(wire)]:
        events += decoder.feed(wire[start:point])
        start = point
    decoder.end_of_stream()
    assert events == [event for _, event in frames]


# -- call-layer negotiation -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offered", "supported", "chosen"),
    [
        (["streams", "lanes"], ["streams", "lanes"], "streams"),
        (["lanes", "streams"], ["streams", "lanes"], "lanes"),  # the client's order wins
        (["streams", "lanes"], ["lanes"], "lanes"),
        ([], ["streams", "lanes"], "lanes"),  # an old client
        (["future", "streams"], ["streams"], "streams"),  # unknown names are skipped
    ],
)
def test_choose_call_layer(offered: list[str], supported: list[str], chosen: str) -> None:
    assert choose_call_layer(offered, supported) == chosen
    assert accepted_call_layer(chosen, offered) == chosen


def test_no_common_call_layer() -> None:
    with pytest.raises(CallLayerMismatch, match=r"'streams'.*accepts 'lanes'"):
        choose_call_layer(["streams"], ["lanes"])
    with pytest.raises(CallLayerMismatch, match="no common call layer"):
        choose_call_layer([], ["streams"])


def test_client_reads_the_servers_choice() -> None:
    assert accepted_call_layer("", ["streams", "lanes"]) == "lanes"  # an old server
    assert accepted_call_layer("", []) == "lanes"
    with pytest.raises(CallLayerMismatch, match="did not offer"):
        accepted_call_layer("", ["streams"])
    with pytest.raises(CallLayerMismatch, match="did not offer"):
        accepted_call_layer("streams", [])


def test_hello_fields_carry_the_negotiation() -> None:
    from brpc.v1 import control_pb2

    hello = control_pb2.ClientHello(protocol_version=1, call_layers=["streams", "lanes"])
    parsed = control_pb2.ClientHello.FromString(hello.SerializeToString())
    answer = control_pb2.ServerHello.FromString(
        control_pb2.ServerHello(
            call_layer=choose_call_layer(parsed.call_layers, ["streams"])
        ).SerializeToString()
    )
    assert accepted_call_layer(answer.call_layer, hello.call_layers) == "streams"
    # An old server's ServerHello (no field 4) reads as "lanes".
    assert control_pb2.ServerHello.FromString(b"").call_layer == ""

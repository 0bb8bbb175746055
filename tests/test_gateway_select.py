"""Target selection and the Connect conventions, as pure functions; and least-busy picking."""

from __future__ import annotations

import asyncio

import pytest
from conftest import DialFactory, ServerFactory, wait_for
from google.rpc import error_details_pb2
from grpclib.const import Status
from grpclib.server import Stream

from brpc.gateway import SelectorError, Target, parse_labels, parse_selector, pick
from brpc.gateway._connect import (
    code_name,
    decode_bin,
    details_json,
    headers_from_metadata,
    http_status,
    metadata_from_headers,
    parse_duration,
    parse_timeout,
)
from brpc.gateway._select import split_route
from brpc.testing import EchoService
from brpc.testing.v1 import echo_grpc
from brpc.testing.v1.echo_pb2 import EchoReply, EchoRequest


def test_parse_labels_and_selectors() -> None:
    assert parse_labels("role=web, zone=eu") == {"role": "web", "zone": "eu"}
    assert parse_labels("*") == {} and parse_labels("") == {}
    assert parse_selector("name:web-1") == Target(name="web-1")
    assert parse_selector("id:abc") == Target(connection_id="abc")
    assert parse_selector("role=db") == Target(labels={"role": "db"})
    for bad in ("role", "=web", "role=web,role=db", "role=w b", "name:", "id:"):
        with pytest.raises(SelectorError):
            parse_selector(bad)


def test_split_route() -> None:
    assert split_route("/pkg.S/M") == (Target(), "/pkg.S/M")
    assert split_route("/c/web-1/pkg.S/M") == (Target(name="web-1"), "/pkg.S/M")
    assert split_route("/id/abc/pkg.S/M") == (Target(connection_id="abc"), "/pkg.S/M")
    assert split_route("/l/a=1,b=2/pkg.S/M") == (Target(labels={"a": "1", "b": "2"}), "/pkg.S/M")
    with pytest.raises(SelectorError):
        split_route("/c//pkg.S/M")


def test_targets_merge_and_describe_themselves() -> None:
    merged = Target(name="a").merged(Target(labels={"role": "web"}))
    assert merged == Target(name="a", labels={"role": "web"})
    assert merged.describe("pkg.S") == "name 'a' and labels role=web"
    assert Target(labels={"role": "web"}).describe("pkg.S") == "labels role=web serving pkg.S"
    assert Target().describe("pkg.S") == "any client serving pkg.S"
    with pytest.raises(SelectorError):
        Target(name="a").merged(Target(name="b"))


def test_codes_and_http_statuses() -> None:
    assert (code_name(Status.CANCELLED), http_status(Status.CANCELLED)) == ("canceled", 499)
    expected = {
        Status.INVALID_ARGUMENT: 400,
        Status.FAILED_PRECONDITION: 400,
        Status.OUT_OF_RANGE: 400,
        Status.UNAUTHENTICATED: 401,
        Status.PERMISSION_DENIED: 403,
        Status.NOT_FOUND: 404,
        Status.ALREADY_EXISTS: 409,
        Status.ABORTED: 409,
        Status.RESOURCE_EXHAUSTED: 429,
        Status.UNIMPLEMENTED: 501,
        Status.UNAVAILABLE: 503,
        Status.DEADLINE_EXCEEDED: 504,
        Status.INTERNAL: 500,
        Status.UNKNOWN: 500,
        Status.DATA_LOSS: 500,
    }
    assert {status: http_status(status) for status in expected} == expected
    assert code_name(Status.DEADLINE_EXCEEDED) == "deadline_exceeded"


def test_timeouts_and_durations() -> None:
    assert parse_timeout(None, None) is None
    assert parse_timeout("1500", None) == 1.5
    assert parse_timeout(None, "2S") == 2.0
    assert parse_timeout("1000", "100m") == pytest.approx(0.1)
    for connect, grpc in (("-1", None), ("12345678901", None), (None, "5s"), (None, "123456789S")):
        with pytest.raises(ValueError):
            parse_timeout(connect, grpc)
    assert parse_duration("5s") == 5.0 and parse_duration("250ms") == 0.25
    assert parse_duration("2") == 2.0 and parse_duration("1m") == 60.0
    for bad in ("0s", "soon", "-1s"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_metadata_and_headers() -> None:
    headers = [
        ("Content-Type", "application/json"),
        ("Connect-Timeout-Ms", "10"),
        ("Brpc-Target", "a"),
        ("X-Trace", "t1"),
        ("X-Key-Bin", "AAE"),
        ("Authorization", "Bearer x"),
        ("Bad Name", "v"),
    ]
    assert metadata_from_headers(headers) == [
        ("x-trace", "t1"),
        ("x-key-bin", b"\x00\x01"),
        ("authorization", "Bearer x"),
    ]
    with pytest.raises(ValueError, match="X-Key-Bin"):
        metadata_from_headers([("X-Key-Bin", "!!")])
    assert decode_bin("AAE=") == decode_bin("AAE") == b"\x00\x01"
    assert headers_from_metadata([("a", "1"), ("b-bin", b"\xff")], prefix="trailer-") == [
        ("trailer-a", "1"),
        ("trailer-b-bin", "/w"),
    ]


def test_details_as_connect_details() -> None:
    info = error_details_pb2.ErrorInfo(reason="QUOTA", domain="example.com")
    (detail,) = details_json([info])
    assert detail["type"] == "google.rpc.ErrorInfo"
    assert error_details_pb2.ErrorInfo.FromString(decode_bin(detail["value"])) == info
    assert detail["debug"] == {"reason": "QUOTA", "domain": "example.com"}


class _Held(EchoService):
    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started = asyncio.Event()

    async def Unary(self, stream: Stream[EchoRequest, EchoReply]) -> None:
        request = await stream.recv_message()
        assert request is not None
        self.started.set()
        await self.release.wait()
        await stream.send_message(EchoReply(text=request.text))


async def test_pick_takes_the_least_busy_client(
    make_server: ServerFactory, connect: DialFactory
) -> None:
    server = await make_server()
    held = _Held()
    await connect(server, name="first", labels={"kind": "x"}, services=[held])
    await connect(server, name="second", labels={"kind": "x"}, services=[EchoService()])
    await wait_for(lambda: len(server.clients) == 2)
    target = Target(labels={"kind": "x"})
    service = "brpc.testing.v1.Echo"
    first = pick(server.clients, target, service)
    assert first is not None and first.name == "first"  # equals: the earliest connected
    busy = asyncio.create_task(echo_grpc.EchoStub(first.channel).Unary(EchoRequest(text="hold")))
    await held.started.wait()
    chosen = pick(server.clients, target, service)
    assert chosen is not None and chosen.name == "second"
    held.release.set()
    assert (await busy).text == "hold"
    assert pick(server.clients, Target(labels={"kind": "y"}), service) is None
    named = pick(server.clients, Target(name="second"), "other.Service")
    assert named is not None and named.name == "second"  # a named client whatever it serves

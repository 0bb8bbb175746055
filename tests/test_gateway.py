"""The HTTP gateway with real HTTP clients: aiohttp's client and curl.

Clients dial a brpc server and serve ``brpc.testing.v1.Echo``; the gateway
routes HTTP calls to them (unary, NDJSON and SSE streams, fan-out), lists them,
and answers bad input with Connect errors.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from conftest import DialFactory, ServerFactory, wait_for
from google.rpc import error_details_pb2
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.server import Stream

import brpc
from brpc.gateway import HttpGateway
from brpc.testing import EchoService
from brpc.testing.v1.echo_pb2 import EchoReply, EchoRequest

UNARY = "/brpc.testing.v1.Echo/Unary"
STREAM = "/brpc.testing.v1.Echo/ServerStream"


class NamedEcho(EchoService):
    """Echo that says who answered, fails on request, and sets metadata."""

    def __init__(
        self, who: str, *, hang: bool = False, release: asyncio.Event | None = None
    ) -> None:
        self.who = who
        #: Never answer (until the call is cancelled).
        self.hang = hang
        #: Answer once this is set.
        self.release = release

    async def Unary(self, stream: Stream[EchoRequest, EchoReply]) -> None:
        request = await stream.recv_message()
        assert request is not None
        if self.hang:
            await asyncio.Event().wait()
        if self.release is not None:
            await self.release.wait()
        if request.text == "fail":
            raise GRPCError(Status.FAILED_PRECONDITION, f"{self.who} refuses")
        if request.text == "detail":
            violation = error_details_pb2.BadRequest.FieldViolation(field="text", description="no")
            raise GRPCError(
                Status.INVALID_ARGUMENT,
                "bad text",
                [error_details_pb2.BadRequest(field_violations=[violation])],
            )
        seen = stream.metadata or {}
        await stream.send_initial_metadata(
            metadata={"answered-by": self.who, "who-bin": self.who.encode()}
        )
        await stream.send_message(
            EchoReply(
                text=f"{self.who}:{request.text}:{seen.get('x-note', '')}",
                payload=seen.get("x-blob-bin", b""),
            )
        )
        await stream.send_trailing_metadata(metadata={"took": "1"})


@pytest.fixture
async def gateway_of() -> AsyncIterator[Any]:
    gateways: list[HttpGateway] = []

    async def start(server: brpc.Server[Any], **options: Any) -> str:
        gateway = HttpGateway(server, **options)
        port = await gateway.start("127.0.0.1", 0)
        assert gateway.port == port
        gateways.append(gateway)
        return f"http://127.0.0.1:{port}"

    yield start
    for gateway in gateways:
        await gateway.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def _fleet(
    make_server: ServerFactory, connect: DialFactory, gateway_of: Any, **options: Any
) -> tuple[brpc.Server[Any], str, list[brpc.ClientConn]]:
    server = await make_server()
    conns = [
        await connect(server, name="web-1", labels={"role": "web"}, services=[NamedEcho("web-1")]),
        await connect(server, name="db-1", labels={"role": "db"}, services=[NamedEcho("db-1")]),
    ]
    await wait_for(lambda: len(server.clients) == 2)
    return server, await gateway_of(server, **options), conns


async def test_unary_json_by_name_prefix_header_and_labels(
    make_server: ServerFactory, connect: DialFactory, gateway_of: Any, http: aiohttp.ClientSession
) -> None:
    _, url, _ = await _fleet(make_server, connect, gateway_of)
    blob = base64.b64encode(b"\x00\x01").decode()
    async with http.post(
        f"{url}/c/db-1{UNARY}",
        json={"text": "hi"},
        headers={"X-Note": "n1", "X-Blob-Bin": blob, "Connect-Protocol-Version": "1"},
    ) as response:
        assert response.status == 200, await response.text()
        assert response.content_type == "application/json"
        assert await response.json() == {"text": "db-1:hi:n1", "payload": "AAE="}
        assert response.headers["answered-by"] == "db-1"
        assert base64.b64decode(response.headers["who-bin"] + "==") == b"db-1"
        assert response.headers["trailer-took"] == "1"
    async with http.post(
        f"{url}{UNARY}", json={"text": "a"}, headers={"Brpc-Target": "web-1"}
    ) as r:
        assert (await r.json())["text"] == "web-1:a:"
    async with http.post(f"{url}/l/role=db{UNARY}", json={"text": "b"}) as r:
        assert (await r.json())["text"] == "db-1:b:"
    async with http.post(
        f"{url}{UNARY}", json={"text": "c"}, headers={"Brpc-Select": "role=web"}
    ) as r:
        assert (await r.json())["text"] == "web-1:c:"


async def test_unary_binary_needs_no_descriptors_and_targets_by_id(
    make_server: ServerFactory, connect: DialFactory, gateway_of: Any, http: aiohttp.ClientSession
) -> None:
    server, url, _ = await _fleet(make_server, connect, gateway_of)
    web = server.clients.named("web-1")
    assert web is not None
    body = EchoRequest(text="bin").SerializeToString()
    async with http.post(
        f"{url}{UNARY}", json={"text": "h"}, headers={"Brpc-Target-Id": web.connection_id}
    ) as response:
        assert (await response.json())["text"] == "web-1:h:"
    async with http.post(
        f"{url}/id/{web.connection_id}{UNARY}",
        data=body,
        headers={"Content-Type": "application/proto"},
    ) as response:
        assert response.status == 200
        assert response.content_type == "application/proto"
        assert EchoReply.FromString(await response.read()).text == "web-1:bin:"
    # The same through the raw path of a method no descriptor knows: the body passes through.
    async with http.post(
        f"{url}/c/web-1/unknown.v1.Nothing/Call",
        data=body,
        headers={"Content-Type": "application/proto"},
    ) as response:
        assert response.status == 501
        assert (await response.json())["code"] == "unimplemented"


async def test_errors_are_connect_errors_with_http_status(
    make_server: ServerFactory, connect: DialFactory, gateway_of: Any, http: aiohttp.ClientSession
) -> None:
    _, url, _ = await _fleet(make_server, connect, gateway_of, max_body=1024)

    async def error(path: str, expected: int, **kwargs: Any) -> dict[str, Any]:
        async with http.post(url + path, **kwargs) as response:
            body = await response.json()
            assert response.status == expected, body
            assert response.content_type == "application/json"
            return body

    detailed = await error(f"/c/web-1{UNARY}", 400, json={"text": "detail"})
    assert detailed["code"] == "invalid_argument" and detailed["message"] == "bad text"
    (detail,) = detailed["details"]
    assert detail["type"] == "google.rpc.BadRequest"
    assert detail["debug"] == {"fieldViolations": [{"field": "text", "description": "no"}]}
    failed = await error(f"/c/web-1{UNARY}", 400, json={"text": "fail"})
    assert failed == {"code": "failed_precondition", "message": "web-1 refuses"}
    missing = await error(f"/c/nobody{UNARY}", 503, json={})
    assert missing["code"] == "unavailable" and "name 'nobody'" in missing["message"]
    missing = await error(f"/l/role=cache{UNARY}", 503, json={})
    assert "labels role=cache serving brpc.testing.v1.Echo" in missing["message"]
    unknown = await error("/brpc.testing.v1.Echo/Nope", 404, json={})
    assert unknown["code"] == "unimplemented" and "Nope" in unknown["message"]
    no_types = await error("/c/web-1/unknown.v1.Nothing/Call", 501, json={})
    assert "no message types known" in no_types["message"]
    bad_json = await error(
        UNARY, 400, data=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert bad_json["code"] == "invalid_argument" and "EchoRequest" in bad_json["message"]
    wrong_type = await error(UNARY, 400, json={"count": "many"})
    assert "count" in wrong_type["message"]
    too_big = await error(UNARY, 413, json={"text": "x" * 2000})
    assert too_big["code"] == "resource_exhausted" and "1024" in too_big["message"]
    bad_selector = await error(UNARY, 400, json={}, headers={"Brpc-Select": "role"})
    assert "key=value" in bad_selector["message"]
    bad_type = await error(UNARY, 415, data=b"x", headers={"Content-Type": "text/plain"})
    assert "application/json" in bad_type["message"]
    bad_timeout = await error(UNARY, 400, json={}, headers={"Connect-Timeout-Ms": "soon"})
    assert "Connect-Timeout-Ms" in bad_timeout["message"]
    not_a_method = await error("/nothing", 404, json={})
    assert not_a_method["code"] == "unimplemented"
    # The gateway keeps serving.
    async with http.post(f"{url}/c/web-1{UNARY}", json={"text": "ok"}) as response:
        assert response.status == 200


async def test_deadline_from_headers(
    make_server: ServerFactory, connect: DialFactory, gateway_of: Any, http: aiohttp.ClientSession
) -> None:
    server = await make_server()
    await connect(server, name="slow", services=[NamedEcho("slow", hang=True)])
    await wait_for(lambda: len(server.clients) == 1)
    url = await gateway_of(server)
    for header in ({"Connect-Timeout-Ms": "100"}, {"Grpc-Timeout": "100m"}):
        async with asyncio.timeout(10), http.post(f"{url}{UNARY}", json={}, headers=header) as r:
            assert r.status == 504
            assert (await r.json())["code"] == "deadline_exceeded"


async def test_server_stream_as_ndjson_and_sse(
    make_server: ServerFactory, connect: DialFactory, gateway_of: Any, http: aiohttp.ClientSession
) -> None:
    _, url, _ = await _fleet(make_server, connect, gateway_of)
    async with http.post(f"{url}/c/web-1{STREAM}", json={"text": "s", "count": 3}) as response:
        assert response.status == 200
        assert response.content_type == "application/x-ndjson"
        lines = [json.loads(line) async for line in response.content]
    assert [line["result"]["index"] for line in lines[1:3]] == [1, 2]
    assert lines[0]["result"] == {"text": "s", "received": 1}
    assert lines[-1] == {"end": {"code": "ok", "trailers": {}}}

    async with http.post(
        f"{url}/c/web-1{STREAM}",
        json={"text": "e", "count": 2},
        headers={"Accept": "text/event-stream"},
    ) as response:
        assert response.content_type == "text/event-stream"
        text = await response.text()
    events = [block.split("\n") for block in text.strip().split("\n\n")]
    assert [event[0] for event in events] == ["event: message", "event: message", "event: end"]
    assert json.loads(events[1][1].removeprefix("data: ")) == {
        "result": {"text": "e", "index": 1, "received": 1}
    }
    assert json.loads(events[2][1].removeprefix("data: ")) == {
        "end": {"code": "ok", "trailers": {}}
    }


async def test_fanout_streams_one_record_per_client_then_a_summary(
    make_server: ServerFactory, connect: DialFactory, gateway_of: Any, http: aiohttp.ClientSession
) -> None:
    server = await make_server()
    await connect(server, name="fast", labels={"role": "web"}, services=[NamedEcho("fast")])
    # "slow" answers once the gateway streamed "fast"'s record; "stuck" never does.
    release_slow = asyncio.Event()
    slow = NamedEcho("slow", release=release_slow)
    await connect(server, name="slow", labels={"role": "web"}, services=[slow])
    await connect(
        server, name="stuck", labels={"role": "web"}, services=[NamedEcho("stuck", hang=True)]
    )
    await connect(server, name="db", labels={"role": "db"}, services=[NamedEcho("db")])
    await wait_for(lambda: len(server.clients) == 4)
    url = await gateway_of(server)
    async with (
        asyncio.timeout(20),
        http.post(f"{url}/fanout/role=web{UNARY}?timeout=1s", json={"text": "f"}) as response,
    ):
        assert response.status == 200
        records = []
        async for line in response.content:
            records.append(json.loads(line))
            release_slow.set()
    assert [record.get("client", {}).get("name") for record in records] == [
        "fast",
        "slow",
        "stuck",
        None,
    ]
    assert records[0]["result"] == {"text": "fast:f:"}
    assert records[1]["result"] == {"text": "slow:f:"}
    assert records[2]["error"]["code"] == "deadline_exceeded"
    assert records[3]["summary"]["clients"] == 3
    assert (records[3]["summary"]["ok"], records[3]["summary"]["failed"]) == (2, 1)

    async with http.post(
        f"{url}/fanout/role=db{STREAM}", json={"text": "s", "count": 2}
    ) as response:
        streamed = [json.loads(line) async for line in response.content]
    assert streamed[0]["client"]["name"] == "db"
    assert [reply.get("index", 0) for reply in streamed[0]["result"]] == [0, 1]
    assert streamed[1]["summary"]["ok"] == 1

    async with http.post(f"{url}/fanout/role=nobody{UNARY}", json={}) as response:
        assert response.status == 503
        assert "labels role=nobody" in (await response.json())["message"]
    async with http.post(f"{url}/fanout/*{UNARY}?timeout=never", json={}) as response:
        assert response.status == 400


async def test_clients_list_and_watch(
    make_server: ServerFactory, connect: DialFactory, gateway_of: Any, http: aiohttp.ClientSession
) -> None:
    server, url, _ = await _fleet(make_server, connect, gateway_of)
    async with http.get(f"{url}/clients") as response:
        listed = await response.json()
    assert [client["name"] for client in listed] == ["web-1", "db-1"]
    assert listed[0]["labels"] == {"role": "web"}
    assert listed[0]["services"] == ["brpc.testing.v1.Echo"]
    assert listed[0]["address"].startswith("127.0.0.1:")
    assert listed[0]["connected_since"].endswith("+00:00")

    async with asyncio.timeout(20), http.get(f"{url}/clients/watch") as response:
        assert response.content_type == "text/event-stream"
        events: list[tuple[str, dict[str, Any]]] = []
        kind = ""
        joined = None
        async for raw in response.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((kind, json.loads(line.removeprefix("data: "))))
                if len(events) == 2:
                    joined = await connect(server, name="late", services=[EchoService()])
                elif len(events) == 3:
                    assert joined is not None
                    await joined.close()
                elif len(events) == 4:
                    break
    assert [(kind, data["name"], data["replayed"]) for kind, data in events] == [
        ("connected", "web-1", True),
        ("connected", "db-1", True),
        ("connected", "late", False),
        ("disconnected", "late", False),
    ]


async def test_curl(make_server: ServerFactory, connect: DialFactory, gateway_of: Any) -> None:
    assert shutil.which("curl"), "curl is missing: ./scripts/test installs it"
    _, url, _ = await _fleet(make_server, connect, gateway_of)

    async def curl(*args: str) -> tuple[str, str]:
        process = await asyncio.create_subprocess_exec(
            "curl",
            "-sS",
            "-N",
            "-D",
            "-",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 30)
        assert process.returncode == 0, err
        head, _, body = out.decode().replace("\r\n", "\n").partition("\n\n")
        return head, body

    json_header = ("-H", "Content-Type: application/json")
    head, body = await curl(*json_header, "-d", '{"text":"curl"}', f"{url}/c/web-1{UNARY}")
    assert head.startswith("HTTP/1.1 200") and "answered-by: web-1" in head.lower()
    assert json.loads(body) == {"text": "web-1:curl:"}
    head, body = await curl(*json_header, "-d", '{"text":"fail"}', f"{url}/c/db-1{UNARY}")
    assert head.startswith("HTTP/1.1 400")
    assert json.loads(body) == {"code": "failed_precondition", "message": "db-1 refuses"}
    head, body = await curl(*json_header, "-d", '{"count":2}', f"{url}/c/db-1{STREAM}")
    assert [json.loads(line) for line in body.splitlines()] == [
        {"result": {"received": 1}},
        {"result": {"index": 1, "received": 1}},
        {"end": {"code": "ok", "trailers": {}}},
    ]
    head, body = await curl(
        *json_header,
        "-H",
        "Accept: text/event-stream",
        "-d",
        '{"count":1}',
        f"{url}/c/db-1{STREAM}",
    )
    assert "content-type: text/event-stream" in head.lower()
    assert body.startswith('event: message\ndata: {"result":{"received":1}}\n\nevent: end\n')
    head, body = await curl(*json_header, "-d", '{"text":"x"}', f"{url}/fanout/*{UNARY}?timeout=5s")
    records = [json.loads(line) for line in body.splitlines()]
    assert sorted(record["client"]["name"] for record in records[:2]) == ["db-1", "web-1"]
    assert records[2]["summary"]["ok"] == 2
    head, body = await curl(
        *json_header, "-H", "Accept: text/event-stream", "-d", "{}", f"{url}/fanout/role=db{UNARY}"
    )
    assert "content-type: text/event-stream" in head.lower()
    events = [block.split("\n")[0] for block in body.strip().split("\n\n")]
    assert events == ["event: client", "event: summary"]
    head, body = await curl(f"{url}/no/such/page")
    assert head.startswith("HTTP/1.1 405") and json.loads(body)["code"] == "unimplemented"
    head, body = await curl(f"{url}/clients")
    assert [client["name"] for client in json.loads(body)] == ["web-1", "db-1"]


async def test_close_ends_presence_streams_and_a_gone_http_client_cancels_its_call(
    make_server: ServerFactory, connect: DialFactory, http: aiohttp.ClientSession
) -> None:
    server = await make_server()
    cancelled = asyncio.Event()

    class Hang(EchoService):
        async def Unary(self, stream: Stream[EchoRequest, EchoReply]) -> None:
            await stream.recv_message()
            try:
                await asyncio.Event().wait()  # hangs until the call is cancelled
            except asyncio.CancelledError:
                cancelled.set()
                raise

    await connect(server, name="hang", services=[Hang()])
    await wait_for(lambda: len(server.clients) == 1)
    gateway = HttpGateway(server)
    url = f"http://127.0.0.1:{await gateway.start('127.0.0.1', 0)}"
    call = asyncio.create_task(http.post(f"{url}{UNARY}", json={}))
    await wait_for(lambda: server.clients.named("hang").outgoing_calls_in_flight == 1)  # type: ignore[union-attr]
    call.cancel()
    async with asyncio.timeout(10):
        await cancelled.wait()

    async with asyncio.timeout(10), http.get(f"{url}/clients/watch") as response:
        first = await response.content.readline()
        assert first.startswith(b":")
        await gateway.close()
        rest = await response.content.read()
    assert b"event: connected" in rest

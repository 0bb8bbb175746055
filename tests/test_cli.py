"""The ``brpc`` command run as users run it: a subprocess against a server in this process.

One server per module (in a thread with its own event loop) serves the greeter,
brpc.testing.v1.Echo, health, reflection and the admin service; a named client
serving greeter.v1.Namer stays connected to it for ``brpc clients``.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import selectors
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for
from google.protobuf.descriptor_pb2 import DescriptorProto
from google.rpc import error_details_pb2
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.health.service import Health
from grpclib.reflection.service import ServerReflection

import brpc
import brpc.testing
from brpc.admin import AdminService
from brpc.admin.v1 import admin_pb2
from brpc.certs import DevCertificates
from brpc.cli import build_parser, main
from brpc.cli._common import CommandError, _progress, status_details
from brpc.cli._reflection import ReflectionClient
from brpc.cli.call import JsonValueSplitter, call_metadata, parse_json_values
from brpc.cli.describe import render_message
from brpc.testing import EchoService
from examples.greeter import greeter_grpc
from examples.greeter.client import Namer
from examples.greeter.server import Greeter

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(sys.executable).parent / "brpc"


@dataclass(frozen=True)
class Served:
    address: str
    ca: Path
    agent_id: str


@pytest.fixture(scope="module")
def served(certs: DevCertificates) -> Iterator[Served]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="brpc-cli-test-server", daemon=True)
    thread.start()

    async def start() -> tuple[brpc.Server[Any], brpc.ClientConn]:
        greeter = Greeter()
        admin = AdminService()
        handlers = ServerReflection.extend([greeter, EchoService(), admin, Health()])
        server: brpc.Server[Any] = brpc.Server(
            handlers,
            client_stub=greeter_grpc.NamerStub,
            certfile=certs.server_cert,
            keyfile=certs.server_key,
        )
        greeter.server = server
        admin.bind(server)
        await server.start("127.0.0.1", 0)
        agent = await brpc.dial(
            server.address,
            services=[Namer("agent-1")],
            name="agent-1",
            labels={"site": "lab"},
            ca=certs.ca,
        )
        return server, agent

    async def stop(server: brpc.Server[Any], agent: brpc.ClientConn) -> None:
        await agent.close()
        server.close()
        await server.wait_closed()

    server, agent = asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=20)
    try:
        yield Served(server.address, certs.ca, agent.connection_id)
    finally:
        asyncio.run_coroutine_threadsafe(stop(server, agent), loop).result(timeout=20)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def run(
    *args: str, stdin: str = "", script: bool = False, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    command = [str(SCRIPT)] if script else [sys.executable, "-m", "brpc.cli"]
    return subprocess.run(
        [*command, *args], input=stdin, capture_output=True, text=True, timeout=60, cwd=cwd
    )


def dialled(served: Served, *args: str, **options: Any) -> subprocess.CompletedProcess[str]:
    """``brpc <args[0]> TARGET <args[1:]> --ca CA``."""
    return run(args[0], served.address, *args[1:], "--ca", str(served.ca), **options)


def _bidi_command(served: Served) -> list[str]:
    method = "brpc.testing.v1.Echo/Bidi"
    return [
        sys.executable,
        "-m",
        "brpc.cli",
        "call",
        served.address,
        method,
        "--ca",
        str(served.ca),
    ]


def json_lines(text: str) -> list[Any]:
    return [json.loads(line) for line in text.splitlines()]


# -- the command itself ------------------------------------------------------------------


def test_subcommand_help(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("call", "list", "describe", "clients", "ping"):
        with pytest.raises(SystemExit) as exited:
            main([command, "--help"])
        assert exited.value.code == 0
        assert f"usage: brpc {command} " in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["call", "--help"])
    call_help = capsys.readouterr().out
    assert "--client NAME" in call_help and "exit status" in call_help


def test_the_installed_script_and_help() -> None:
    assert SCRIPT.exists(), f"{SCRIPT} is missing: reinstall the project (./scripts/test)"
    result = run("--help", script=True)
    assert result.returncode == 0, result.stderr
    for command in ("call", "list", "describe", "clients", "ping", "certs"):
        assert command in result.stdout
    certs_help = run("certs", "--help")
    assert certs_help.returncode == 0 and certs_help.stdout.startswith("usage: brpc certs")


# -- call --------------------------------------------------------------------------------


def test_call_unary(served: Served) -> None:
    result = dialled(
        served, "call", "brpc.testing.v1.Echo/Unary", "-d", '{"text": "hi", "payload": "AAE="}'
    )
    assert result.returncode == 0, result.stderr
    assert json_lines(result.stdout) == [{"text": "hi", "payload": "AAE=", "received": 1}]


def test_call_server_streaming_prints_json_lines(served: Served) -> None:
    result = run(
        "call",
        served.address,
        "brpc.testing.v1.Echo/ServerStream",
        "-d",
        '{"text": "s", "count": 3}',
        "--ca",
        str(served.ca),
        "--emit-defaults",
        script=True,
    )
    assert result.returncode == 0, result.stderr
    replies = json_lines(result.stdout)
    assert [reply["index"] for reply in replies] == [0, 1, 2]
    assert {reply["text"] for reply in replies} == {"s"}


def test_call_client_streaming_from_stdin(served: Served) -> None:
    lines = '{"text": "a"}\n{"text": "b"}\n{"text": "c"}\n'
    result = dialled(served, "call", "brpc.testing.v1.Echo/ClientStream", stdin=lines)
    assert result.returncode == 0, result.stderr
    assert json_lines(result.stdout) == [{"text": "c", "received": 3}]


def test_call_bidi_with_an_array_from_a_file(served: Served, tmp_path: Path) -> None:
    requests = tmp_path / "requests.json"
    requests.write_text('[{"text": "x"}, {"text": "y"}]')
    result = dialled(served, "call", "brpc.testing.v1.Echo/Bidi", "-d", f"@{requests}")
    assert result.returncode == 0, result.stderr
    assert [reply["text"] for reply in json_lines(result.stdout)] == ["x", "y"]
    # The same file as standard input (a regular file: read whole, not streamed).
    with requests.open() as stdin:
        redirected = subprocess.run(
            _bidi_command(served),
            stdin=stdin,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert redirected.returncode == 0, redirected.stderr
    assert [reply["text"] for reply in json_lines(redirected.stdout)] == ["x", "y"]


def _read_line(process: subprocess.Popen[str], timeout: float = 20.0) -> str:
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        assert selector.select(timeout), "no reply within the time allowed"
    return process.stdout.readline()


def test_call_bidi_replies_while_the_input_goes_on(served: Served) -> None:
    process = subprocess.Popen(
        _bidi_command(served),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
    )
    assert process.stdin is not None
    try:
        process.stdin.write('{"text": "first"}\n')
        process.stdin.flush()
        assert json.loads(_read_line(process)) == {"text": "first", "received": 1}
        process.stdin.write('{"text":\n "second"}\n')
        process.stdin.flush()
        assert json.loads(_read_line(process)) == {"text": "second", "index": 1, "received": 2}
        process.stdin.close()
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for pipe in (process.stdout, process.stderr):
            assert pipe is not None
            pipe.close()


def test_call_error_status_sets_the_exit_code(served: Served) -> None:
    result = dialled(served, "call", "grpc.health.v1.Health/Check", "-d", '{"service": "nope"}')
    assert result.returncode == Status.NOT_FOUND.value
    assert result.stdout == ""
    assert result.stderr.startswith("ERROR: NOT_FOUND")

    as_json = dialled(
        served, "call", "grpc.health.v1.Health/Check", "-d", '{"service": "nope"}', "--json"
    )
    assert as_json.returncode == Status.NOT_FOUND.value
    assert json.loads(as_json.stderr) == {
        "code": "NOT_FOUND",
        "code_number": 5,
        "message": "",
        "details": [],
    }


def test_call_input_and_connection_errors(served: Served) -> None:
    bad_field = dialled(served, "call", "brpc.testing.v1.Echo/Unary", "-d", '{"nope": 1}')
    assert bad_field.returncode == 1
    assert "not a valid brpc.testing.v1.EchoRequest" in bad_field.stderr

    unknown = dialled(served, "call", "brpc.testing.v1.Nope/Unary", "-d", "{}")
    assert unknown.returncode == Status.NOT_FOUND.value
    assert "brpc.testing.v1.Nope" in unknown.stderr

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    refused = run(
        "call",
        f"127.0.0.1:{closed_port}",
        "brpc.testing.v1.Echo/Unary",
        "-d",
        "{}",
        "--ca",
        str(served.ca),
        "--connect-timeout",
        "3",
    )
    assert refused.returncode == 1
    assert refused.stderr.startswith("error: could not connect to 127.0.0.1:")


# -- list, describe, clients, ping, certs -----------------------------------------------------


def test_list_services_and_methods(served: Served) -> None:
    table = dialled(served, "list")
    assert table.returncode == 0, table.stderr
    assert table.stdout.split() == [
        "brpc.admin.v1.Admin",
        "brpc.testing.v1.Echo",
        "greeter.v1.Greeter",
        "grpc.health.v1.Health",
    ]
    methods = dialled(served, "list", "brpc.testing.v1.Echo", "--json")
    assert methods.returncode == 0, methods.stderr
    document = json.loads(methods.stdout)
    assert document["service"] == "brpc.testing.v1.Echo"
    assert {m["name"]: m["kind"] for m in document["methods"]} == {
        "Unary": "unary",
        "ServerStream": "server-streaming",
        "ClientStream": "client-streaming",
        "Bidi": "bidi-streaming",
    }
    assert document["methods"][0]["request"] == "brpc.testing.v1.EchoRequest"


def test_describe(served: Served) -> None:
    service = dialled(served, "describe", "brpc.testing.v1.Echo")
    assert service.returncode == 0, service.stderr
    assert (
        "  rpc ServerStream(.brpc.testing.v1.EchoRequest) returns "
        "(stream .brpc.testing.v1.EchoReply);" in service.stdout.splitlines()
    )
    method = dialled(served, "describe", "brpc.testing.v1.Echo/Bidi")
    assert method.returncode == 0, method.stderr
    assert method.stdout.splitlines()[1] == (
        "rpc Bidi(stream .brpc.testing.v1.EchoRequest) returns (stream .brpc.testing.v1.EchoReply);"
    )
    message = dialled(served, "describe", "brpc.admin.v1.Client", "--json")
    assert message.returncode == 0, message.stderr
    document = json.loads(message.stdout)
    assert (document["kind"], document["file"]) == ("message", "brpc/admin/v1/admin.proto")
    assert document["descriptor"]["name"] == "Client"


def test_clients(served: Served) -> None:
    table = dialled(served, "clients", script=True)
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split()[:3] == ["CONNECTION", "NAME", "LABELS"]
    assert len(rows) == 1
    assert rows[0].split()[:4] == [served.agent_id, "agent-1", "site=lab", "greeter.v1.Namer"]

    as_json = dialled(served, "clients", "--json", "--label", "site=lab")
    assert as_json.returncode == 0, as_json.stderr
    (client,) = json.loads(as_json.stdout)["clients"]
    assert client["name"] == "agent-1" and client["labels"] == {"site": "lab"}
    assert client["address"].startswith("127.0.0.1:")
    assert client["connectedAt"].endswith("Z")


def test_ping(served: Served) -> None:
    result = dialled(served, "ping", "--count", "3", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["peer_address"] == served.address
    assert len(report["connection_id"]) == 32
    assert report["connect_ms"] > 0
    rtt = report["rtt_ms"]
    assert rtt["samples"] == 3 and 0 < rtt["min"] <= rtt["median"] <= rtt["max"]
    table = dialled(served, "ping", "--count", "1")
    assert table.returncode == 0, table.stderr
    assert "handshake + hello" in table.stdout


def test_certs_into_a_directory(tmp_path: Path) -> None:
    result = run("certs", "--out", str(tmp_path / "out"), "--client-name", "alice", script=True)
    assert result.returncode == 0, result.stderr
    made = sorted(path.name for path in (tmp_path / "out").iterdir())
    assert made == [
        "alice.key",
        "alice.pem",
        "ca.key",
        "ca.pem",
        "server.key",
        "server.pem",
    ]


# -- pieces, in process ------------------------------------------------------------------------


def test_relay_flags_become_metadata() -> None:
    args = build_parser().parse_args(
        [
            "call",
            "h:1",
            "a.B/C",
            "-H",
            "x-trace: 7",
            "-H",
            "blob-bin:AAE=",
            "--client",
            "agent-1",
            "--select",
            "site=lab, rack=4",
        ]
    )
    assert call_metadata(args) == [
        ("x-trace", "7"),
        ("blob-bin", b"\x00\x01"),
        ("brpc-target", "agent-1"),
        ("brpc-select", "site=lab,rack=4"),
    ]
    bad = build_parser().parse_args(["call", "h:1", "a.B/C", "--select", "lab"])
    with pytest.raises(Exception, match="key=value"):
        call_metadata(bad)


def test_message_rendering() -> None:
    proto = DescriptorProto()
    admin_pb2.Client.DESCRIPTOR.CopyToProto(proto)
    lines = render_message(proto)
    assert lines[0] == "message Client {"
    assert "  map<string, string> labels = 3;" in lines
    assert "  repeated string services = 4;" in lines
    assert "  .google.protobuf.Timestamp connected_at = 6;" in lines


def test_json_values_split_however_the_text_arrives() -> None:
    text = '{"a": 1}\n[{"b": [2, 3]}]  "s" 12 true\n{"c": {"d": null}}'
    whole = JsonValueSplitter()
    expected = [{"a": 1}, [{"b": [2, 3]}], "s", 12, True, {"c": {"d": None}}]
    assert [*whole.feed(text), *whole.finish()] == expected
    for size in (1, 2, 5):
        splitter = JsonValueSplitter()
        values: list[Any] = []
        for start in range(0, len(text), size):
            values.extend(splitter.feed(text[start : start + size]))
        values.extend(splitter.finish())
        assert values == expected, size
    typed = JsonValueSplitter()
    assert typed.feed('{"a":') == []
    assert typed.feed(" 1}\n") == [{"a": 1}]
    broken = JsonValueSplitter()
    assert broken.feed('{"a": 1} {"b"') == [{"a": 1}]
    with pytest.raises(CommandError, match="not JSON"):
        broken.finish()


def test_json_input_forms() -> None:
    assert parse_json_values('{"a": 1}') == [{"a": 1}]
    assert parse_json_values('[{"a": 1}, {"a": 2}]') == [{"a": 1}, {"a": 2}]
    assert parse_json_values('{"a": 1}\n{\n "a": 2\n}\n') == [{"a": 1}, {"a": 2}]
    assert parse_json_values("  \n") == []


def test_status_details_are_decoded() -> None:
    detail = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field="text", description="empty")
        ]
    )
    error = GRPCError(Status.INVALID_ARGUMENT, "bad", [detail])
    assert status_details(error) == [
        {
            "@type": "google.rpc.BadRequest",
            "fieldViolations": [{"field": "text", "description": "empty"}],
        }
    ]
    assert isinstance(build_parser().parse_args(["ping", "h:1"]), argparse.Namespace)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


async def test_progress_shows_on_a_terminal_only() -> None:
    terminal, pipe = _Terminal(), io.StringIO()
    async with _progress("connecting to h:1", terminal), _progress("connecting", pipe):
        await wait_for(lambda: "connecting to h:1 " in terminal.getvalue())
    assert terminal.getvalue().startswith("\rconnecting to h:1 0.")
    assert terminal.getvalue().endswith("\r\033[K")
    assert pipe.getvalue() == ""


async def test_reflection_client_without_reflection_and_with_v1alpha_only() -> None:
    from grpclib.reflection._deprecated import ServerReflection as V1AlphaReflection

    async with brpc.testing.connected([EchoService()]) as (_server, conn):
        with pytest.raises(GRPCError) as raised:
            await ReflectionClient(conn, timeout=5).list_services()
        assert raised.value.status is Status.UNIMPLEMENTED
        assert "no reflection service" in (raised.value.message or "")

    only_v1alpha = V1AlphaReflection(_service_names=["brpc.testing.v1.Echo"])
    async with brpc.testing.connected([EchoService(), only_v1alpha]) as (_server, conn):
        reflection = ReflectionClient(conn, timeout=5)
        assert await reflection.list_services() == ["brpc.testing.v1.Echo"]
        schema = await reflection.schema_for(["brpc.testing.v1.Echo"])
        method = schema.method("brpc.testing.v1.Echo", "ServerStream")
        assert (method.path, method.kind) == (
            "/brpc.testing.v1.Echo/ServerStream",
            "server-streaming",
        )
        with pytest.raises(GRPCError) as unknown:
            await reflection.schema_for(["no.Such"])
        assert unknown.value.status is Status.NOT_FOUND

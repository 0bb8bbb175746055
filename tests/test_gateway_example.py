"""The gateway example end to end: a server process, processor processes, curl and gRPC."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from brpc.certs import DevCertificates
from examples.gateway import gateway_grpc, gateway_pb2

ROOT = Path(__file__).resolve().parents[1]


def _python(*args: str, **options: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **options,
    )


def _curl(url: str, body: str) -> tuple[int, Any]:
    out = subprocess.run(
        ["curl", "-sS", "-w", "\n%{http_code}", "-d", body, url],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    text, _, code = out.rpartition("\n")
    return int(code), json.loads(text)


async def test_actions_over_http_and_grpc(certs: DevCertificates) -> None:
    server = _python(
        "examples.gateway.server",
        *("--certs", str(certs.directory), "--port", "0", "--http-port", "0", "--grpc-port", "0"),
    )
    processors: list[subprocess.Popen[str]] = []
    try:
        assert server.stdout is not None
        first = server.stdout.readline()
        assert first.startswith("gateway server: brpc "), first + (
            server.stderr.read() if server.stderr else ""
        )
        words = first.split()
        brpc_address, http_url, grpc_address = words[3], words[5], words[7]
        for extra in (
            ["--name", "echo-1", "--handles", "echo,upper"],
            ["--name", "echo-2", "--handles", "echo"],
            ["--name", "audit-1", "--handles", "audit", "--fail"],
        ):
            processor = _python(
                "examples.gateway.processor",
                *("--ca", str(certs.ca), "--target", brpc_address, *extra),
            )
            processors.append(processor)
            assert processor.stdout is not None
            assert processor.stdout.readline().startswith(f"processor {extra[1]} (")

        assert _curl(f"{http_url}/action", '{"type": "upper", "payload": "hi"}') == (
            200,
            {"results": [{"processor": "echo-1", "payload": "HI"}]},
        )
        status, body = _curl(
            f"{http_url}/action", '{"type": "echo", "payload": "x", "broadcast": true}'
        )
        assert status == 200
        assert sorted(r["processor"] for r in body["results"]) == ["echo-1", "echo-2"]
        assert _curl(f"{http_url}/action", '{"type": "audit", "payload": "x"}') == (
            400,
            {"code": "failed_precondition", "message": "audit-1 fails every action, on purpose"},
        )
        assert _curl(f"{http_url}/action", '{"type": "print"}') == (
            503,
            {"code": "unavailable", "message": "no processor of 'print' actions is connected"},
        )
        status, body = _curl(f"{http_url}/action", '{"payload": 1}')
        assert status == 400 and body["code"] == "invalid_argument"

        host, port = grpc_address.rsplit(":", 1)
        channel = Channel(host, int(port))
        try:
            stub = gateway_grpc.GatewayStub(channel)
            reply = await stub.ProcessAction(
                gateway_pb2.ActionRequest(action=gateway_pb2.Action(type="echo", payload=b"g")),
                timeout=10,
            )
            assert [r.payload for r in reply.results] == [b"g"]
            try:
                await stub.ProcessAction(
                    gateway_pb2.ActionRequest(action=gateway_pb2.Action(type="none")), timeout=10
                )
            except GRPCError as exc:
                assert exc.status is Status.UNAVAILABLE
            else:
                raise AssertionError("an action nobody handles must fail")
        finally:
            channel.close()

        server.send_signal(signal.SIGTERM)
        out, err = server.communicate(timeout=30)
        assert server.returncode == 0, err
        assert out.splitlines()[-1] == "gateway server stopped"
    finally:
        for process in [server, *processors]:
            if process.poll() is None:
                process.kill()
            process.communicate(timeout=30)


def test_gateway_example_commands_have_help() -> None:
    for module in ("examples.gateway.server", "examples.gateway.processor"):
        process = _python(module, "--help")
        out, err = process.communicate(timeout=30)
        assert process.returncode == 0, err
        assert "--certs" in out or "--handles" in out

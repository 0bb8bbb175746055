"""The greeter example as users run it: server and client as two processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _start_server(certs: Any) -> tuple[subprocess.Popen[str], str]:
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "examples.greeter.server",
            "--port",
            "0",
            "--certs",
            str(certs.directory),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert server.stdout is not None
    line = server.stdout.readline()
    assert line.startswith("greeter server listening on "), line
    return server, line.rsplit(" ", 1)[1].strip()


def test_greeter_two_processes(certs: Any) -> None:
    server, address = _start_server(certs)
    try:
        client = subprocess.run(
            [
                sys.executable,
                "-m",
                "examples.greeter.client",
                "--target",
                address,
                "--ca",
                str(certs.ca),
                "--name",
                "Ada",
                "--greeting",
                "Hi",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert client.returncode == 0, client.stderr
        assert client.stdout.strip() == "Hi Ada"
    finally:
        server.terminate()
        out, _ = server.communicate(timeout=30)
    assert server.returncode == 0, out
    assert "greeter server stopped" in out


def test_client_explains_a_missing_server(certs: Any) -> None:
    client = subprocess.run(
        [
            sys.executable,
            "-m",
            "examples.greeter.client",
            "--target",
            "127.0.0.1:9",
            "--ca",
            str(certs.ca),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert client.returncode == 1
    assert "error:" in client.stderr and "127.0.0.1:9" in client.stderr


def test_help() -> None:
    for module in ("examples.greeter.server", "examples.greeter.client"):
        result = subprocess.run(
            [sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True
        )
        assert result.returncode == 0 and "usage:" in result.stdout

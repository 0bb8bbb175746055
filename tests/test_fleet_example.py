"""The fleet example end to end: one server process and three agent processes."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from brpc.certs import DevCertificates

ROOT = Path(__file__).resolve().parents[1]


def _python(*args: str, **options: Any) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", *args], cwd=ROOT, text=True, **options)


def test_fleet_server_lists_agents_and_fans_out(certs: DevCertificates, tmp_path: Path) -> None:
    server = _python(
        "examples.fleet.server",
        *("--certs", str(certs.directory), "--port", "0", "--once", "3"),
        *("--timeout", "1", "--run", "count 3", "--wait", "60"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    agents: list[subprocess.Popen[str]] = []
    logs = contextlib.ExitStack()
    try:
        assert server.stdout is not None
        first = server.stdout.readline()
        assert first.startswith("fleet server listening on "), first
        address = first.split()[-1]
        for i, extra in enumerate(
            [
                ["--name", "web-1", "--label", "role=web", "--label", "zone=eu"],
                ["--name", "db-1", "--label", "role=db", "--broken", "disk full"],
                ["--name", "web-2", "--label", "role=web", "--delay", "60"],
            ]
        ):
            log = logs.enter_context((tmp_path / f"agent-{i}.log").open("w"))
            agents.append(
                _python(
                    "examples.fleet.agent",
                    *("--ca", str(certs.ca), "--target", address, *extra),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        out, err = server.communicate(timeout=60)
    finally:
        for process in [server, *agents]:
            if process.poll() is None:
                process.kill()
            process.wait()
        logs.close()
    assert server.returncode == 0, f"{out}\n{err}"

    table = out[out.index("3 agent(s) connected:") : out.index("Status of 3 agent(s)")]
    for name, labels in (("web-1", "role=web zone=eu"), ("db-1", "role=db"), ("web-2", "role=web")):
        (row,) = [line for line in table.splitlines() if line.startswith(name)]
        assert row.endswith(labels) and "127.0.0.1:" in row
        assert f"+ {name} connected from 127.0.0.1:" in out

    status = out[out.index("Status of 3 agent(s)") : out.index("Run 'count 3'")]
    lines = {line.split()[0]: line for line in status.splitlines() if line.startswith("  ")}
    assert set(lines) == {"web-1", "db-1", "web-2"}
    assert lines["web-1"].split()[1] == "OK" and "pid=" in lines["web-1"]
    assert lines["db-1"].split()[1:4] == ["FAILED_PRECONDITION", "disk", "full"]
    assert lines["web-2"].split()[1] == "DEADLINE_EXCEEDED"
    assert "1 ok, 2 failed" in status

    run = [line for line in out[out.index("Run 'count 3'") :].splitlines() if line.startswith("  ")]
    assert sorted(line.split()[0] for line in run) == ["db-1", "web-1", "web-2"]
    assert all("OK" in line and "1 | 2 | 3" in line for line in run)


def test_fleet_commands_have_help() -> None:
    for module in ("examples.fleet.server", "examples.fleet.agent"):
        process = _python(module, "--help", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = process.communicate(timeout=30)
        assert process.returncode == 0, err
        assert "--certs" in out or "--ca" in out


def test_live_server_stops_on_sigterm(certs: DevCertificates) -> None:
    """The live mode shows agents coming and going, and stops cleanly on SIGTERM."""
    server = _python(
        "examples.fleet.server",
        *("--certs", str(certs.directory), "--port", "0", "--interval", "3600"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    agent: subprocess.Popen[str] | None = None
    try:
        assert server.stdout is not None
        address = server.stdout.readline().split()[-1]
        agent = _python(
            "examples.fleet.agent",
            *("--ca", str(certs.ca), "--target", address, "--name", "solo"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert agent.stdout is not None
        assert agent.stdout.readline() == f"agent solo connected to {address}\n"
        seen = []
        for line in server.stdout:
            seen.append(line)
            if line.startswith("solo "):  # the table's row for the agent
                break
        agent.send_signal(signal.SIGTERM)
        agent_out, agent_err = agent.communicate(timeout=30)
        assert agent.returncode == 0, agent_err
        assert agent_out == "agent solo stopped\n"
        for line in server.stdout:
            seen.append(line)
            if line.startswith("- solo left"):
                break
        server.send_signal(signal.SIGTERM)
        out, err = server.communicate(timeout=30)
    finally:
        for process in (server, agent):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
    assert server.returncode == 0, err
    assert out.splitlines()[-1] == "fleet server stopped"
    text = "".join(seen)
    assert "+ solo connected from 127.0.0.1:" in text
    assert "- solo left: connection closed by peer (NO_ERROR)" in text

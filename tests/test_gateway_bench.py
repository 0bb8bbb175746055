"""The gateway benchmark runs end to end (tiny window); no timing checks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(120)
def test_gateway_bench_reports_both_modes(tmp_path: Path) -> None:
    report = tmp_path / "gateway.json"
    done = subprocess.run(
        [
            sys.executable,
            *("-m", "brpc.bench.gateway", "--concurrency", "1", "4"),
            *("--warmup", "0.2", "--window", "0.3", "--json", str(report)),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "c=4: gateway throughput = " in done.stdout
    results = json.loads(report.read_text())["results"]
    assert {(r["mode"], r["concurrency"]) for r in results} == {
        ("direct", 1),
        ("gateway", 1),
        ("direct", 4),
        ("gateway", 4),
    }
    assert all(r["calls"] > 0 and r["errors"] == 0 for r in results)

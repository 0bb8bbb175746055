"""The benchmark harness runs end to end (tiny window, one workload); no timing checks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(90)
def test_quick_bench_writes_table_and_json(tmp_path: Path) -> None:
    report = tmp_path / "bench.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "brpc.bench",
            "--quick",
            "--warmup",
            "0.2",
            "--window",
            "0.2",
            "--only",
            "unary_c1",
            "--targets",
            "brpc-c2s,brpc-lanes-s2c,brpc-qh3-c2s,grpclib,grpcio,relay",
            "--json",
            str(report),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=80,
        check=False,
    )
    assert done.returncode == 0, done.stderr

    for label in (
        "brpc c→s",
        "brpc lanes s→c",
        "brpc qh3 c→s",
        "grpclib/TCP",
        "grpcio/TCP",
        "relay",
        "calls/s",
    ):
        assert label in done.stdout

    data = json.loads(report.read_text())
    assert data["schema"] == "brpc-bench/1"
    assert {"cpu_model", "cpu_count", "python", "versions"} <= data["machine"].keys()
    assert data["machine"]["versions"]["grpcio"]
    assert data["baselines"] == ["grpclib", "grpcio"]
    targets = data["results"]["unary_c1"]
    assert set(targets) == {
        "brpc-c2s",
        "brpc-lanes-s2c",
        "brpc-qh3-c2s",
        "grpclib",
        "grpcio",
        "relay",
    }
    for metrics in targets.values():
        assert {"calls_per_s", "p50_ms", "p99_ms"} <= metrics.keys()
        assert metrics["calls_per_s"]["median"] > 0
    ratios = data["ratios"]["unary_c1"]["calls_per_s"]
    assert set(ratios) == {
        "brpc-c2s/grpclib",
        "brpc-lanes-s2c/grpclib",
        "brpc-qh3-c2s/grpclib",
        "brpc-c2s/grpcio",
        "brpc-lanes-s2c/grpcio",
        "brpc-qh3-c2s/grpcio",
        "relay/grpclib",
        "relay/grpcio",
    }

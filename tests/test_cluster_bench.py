"""The many-servers benchmark runs end to end (tiny windows) and writes its JSON; no timing."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(90)
def test_cluster_bench_reports_every_part_with_ratios(tmp_path: Path) -> None:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed: ./scripts/test installs it")
    report = tmp_path / "cluster.json"
    done = subprocess.run(
        [
            sys.executable,
            *("-m", "brpc.bench", "cluster", "--quick"),
            # The window must outlast one round of 64 forwarded calls on the slowest
            # engine and call layer on a loaded machine (~0.2 s quiet), or it holds none.
            *("--warmup", "0.3", "--window", "1.0", "--storm-clients", "60"),
            *("--load-connections", "3", "--load-concurrency", "2", "--json", str(report)),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=80,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    for text in ("forwarded / local", "workers=2 / workers=1", "directory ops / Redis SETs"):
        assert text in done.stdout

    data = json.loads(report.read_text())
    assert data["schema"] == "brpc-bench-cluster/1"
    assert data["command"][:2] == ["scripts/bench cluster", "--quick"]
    assert {"cpu_model", "cpu_count", "python"} <= data["machine"].keys()
    assert len(data["load_average"]["before"]) == 3
    assert data["settings"]["storm_clients"] == 60

    forwarding = data["forwarding"]
    assert set(forwarding) == {"unary_c1", "unary_c64"}
    for row in forwarding.values():
        for path in ("local", "forwarded"):
            assert row[path]["calls_per_s"]["median"] > 0
            assert {"p50_ms", "p99_ms", "cpu_cores", "foreign_cores"} <= row[path].keys()
        assert set(row["ratios"]) == {
            "forwarded/local calls_per_s",
            "forwarded/local p50_ms",
            "forwarded/local cpu_us_per_call",
        }
        assert all(_is_ratio(value) for value in row["ratios"].values())

    workers = data["workers"]
    for count in (1, 2):
        row = workers[f"workers_{count}"]
        assert row["calls_per_s"]["median"] > 0 and row["errors"] == 0
        assert [sum(spread) for spread in row["connections_per_worker"]] == [6]
        assert len(row["connections_per_worker"][0]) <= count
    assert set(workers["ratios"]) == {
        "workers_2/workers_1 calls_per_s",
        "workers_2/workers_1 calls_per_worker_core",
        "workers_2/workers_1 worker_cores",
    }
    assert all(_is_ratio(value) for value in workers["ratios"].values())

    storm = data["storm"]
    assert storm["clients"] == 60
    assert storm["directory"]["connect_ops_per_s"]["median"] > 0
    assert storm["redis_set_per_s"]["median"] > 0
    assert _is_ratio(storm["ratios"]["connect_ops_per_s/redis_set_per_s"])


def _is_ratio(value: object) -> bool:
    """A ratio, or null where a tiny window left one side without a figure."""
    return value is None or (isinstance(value, int | float) and value >= 0)

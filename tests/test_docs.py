"""The guide and API reference build with warnings as errors (what scripts/docs runs)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(120)
def test_docs_build_strictly(tmp_path: Path) -> None:
    site = tmp_path / "site"
    done = subprocess.run(
        [str(ROOT / "scripts" / "docs"), str(site)],
        cwd=ROOT,
        env={**os.environ, "NO_COLOR": "1"},
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"scripts/docs failed:\n{output}"
    assert "WARNING" not in output, output
    reference = (site / "reference" / "brpc" / "index.html").read_text()
    for name in ("brpc.dial", "brpc.Server", "brpc.ClientConn", "brpc.fanout.CallSucceeded"):
        assert name in reference, f"the API reference lacks {name}"
    assert not re.search(r":(class|func|meth|attr):<code>", reference), "a Sphinx role shows"
    assert "instrument" in (site / "reference" / "otel" / "index.html").read_text()
    assert (site / "guide" / "codegen" / "index.html").is_file()
    assert not (ROOT / "site").exists(), "the build must not write into the tree"

"""What a user installing brpc gets: the wheel's contents, the import graph, types, extras."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from pathlib import Path, PurePosixPath

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of what a distribution is built from (so nothing is built in the tree)."""
    copy = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, copy / name)
    shutil.copytree(ROOT / "brpc", copy / "brpc", ignore=shutil.ignore_patterns("__pycache__"))
    return copy


@pytest.fixture(scope="module")
def wheel_names(source: Path, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The file names inside a wheel built from the source copy."""
    out = tmp_path_factory.mktemp("wheel")
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    done = subprocess.run(
        [*pip_wheel, "-q", "-w", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"building the wheel failed:\n{done.stdout}\n{done.stderr}"
    (wheel,) = out.glob("brpc-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist()


def test_license_is_mit_in_the_repository() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License")
    assert "Copyright (c) 2026 the brpc authors" in text


def test_wheel_ships_license_types_and_stubs(wheel_names: list[str]) -> None:
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in wheel_names), wheel_names
    assert "brpc/py.typed" in wheel_names
    assert "brpc/v1/control_pb2.pyi" in wheel_names
    assert "brpc/gateway/static/console.html" in wheel_names


def test_sdist_ships_the_license(source: Path, tmp_path: Path) -> None:
    build = [sys.executable, "-m", "build", "--sdist", "--no-isolation"]
    done = subprocess.run(
        [*build, "-o", str(tmp_path), str(source)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"building the sdist failed:\n{done.stdout}\n{done.stderr}"
    (sdist,) = tmp_path.glob("brpc-*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = archive.getnames()
    assert any(name.endswith("/LICENSE") for name in names), names
    assert any(name.endswith("/brpc/py.typed") for name in names), names


def test_wheel_holds_only_the_brpc_package(wheel_names: list[str]) -> None:
    tops = {PurePosixPath(name).parts[0] for name in wheel_names}
    outside = {top for top in tops if top != "brpc" and not top.endswith(".dist-info")}
    assert not outside, f"the wheel carries more than brpc: {sorted(outside)}"
    assert not [name for name in wheel_names if "__pycache__" in name]


def _modules_after(code: str) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys\nprint('\\n'.join(sys.modules))"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return set(done.stdout.split())


def test_import_brpc_leaves_optional_dependencies_alone() -> None:
    modules = _modules_after("import brpc")
    optional = ("opentelemetry", "psutil", "grpc", "brpc.bench", "brpc.otel", "pytest")
    for heavy in (*optional, "aiohttp", "brpc.gateway"):
        assert not {m for m in modules if m == heavy or m.startswith(heavy + ".")}, heavy


def test_import_brpc_imports_no_test_services() -> None:
    modules = _modules_after("import brpc")
    assert not {m for m in modules if m.startswith("brpc.testing")}


def test_user_project_type_checks_against_brpc(tmp_path: Path) -> None:
    """mypy --strict on a user's file sees brpc's types from the installed package."""
    (tmp_path / "app.py").write_text(
        textwrap.dedent(
            """
            import brpc


            async def main() -> None:
                conn: brpc.ClientConn = await brpc.dial("localhost:4433", ca="ca.pem")
                state: brpc.ConnState = conn.state
                print(state, conn.connection_id)
                await conn.close()
            """
        )
    )
    (tmp_path / "wrong.py").write_text("import brpc\n\nx: int = brpc.dial\n")
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "app.py", "wrong.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    errors = [line for line in done.stdout.splitlines() if ": error:" in line]
    assert not [line for line in errors if line.startswith("app.py")], (
        "mypy does not see brpc's types; an editable install needs "
        f"`--config-settings editable_mode=compat` (see scripts/_venv.sh):\n{done.stdout}"
    )
    # and it really checks against brpc's annotations:
    assert len(errors) == 1 and errors[0].startswith("wrong.py:3:"), done.stdout
    assert "Incompatible types in assignment" in errors[0]


def test_bench_names_its_extra_when_psutil_is_missing() -> None:
    code = (
        "import sys, runpy\n"
        "sys.modules['psutil'] = None\n"
        "import importlib.util\n"
        "real = importlib.util.find_spec\n"
        "importlib.util.find_spec = lambda name, *a: None if name == 'psutil' else real(name, *a)\n"
        "runpy.run_module('brpc.bench', run_name='__main__')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2, done.stderr
    assert "pip install 'brpc[bench]'" in done.stderr
    assert "psutil" in done.stderr
    assert "Traceback" not in done.stderr

"""Every code block in README.md and docs/ is checked: Python is type-checked, shell
commands are run or checked to exist, files the guide shows are written and used.

How a block is treated is said by an HTML comment right before it (invisible when
rendered), or by its language:

- ``python``: wrapped in an ``async def`` (so top-level ``await``, ``async with`` and
  ``async for`` are valid), preceded by :data:`SHARED_PRELUDE` and by the block's own
  ``<!-- prelude: CODE -->`` if any, and type-checked with mypy (one run for all).
- ``sh``/``bash``/``shell``: every command is checked: ``python -m MODULE``,
  ``python PATH`` and ``./scripts/NAME`` must exist and accept each ``--flag`` used
  (by their ``--help``); ``pip install`` may only name extras brpc declares. A block
  marked ``<!-- run -->`` is run for real (in a scratch project directory).
- ``<!-- file: PATH -->``: the block's text is written to PATH in the scratch
  project before anything runs (the guide's .proto file, for example); Python
  blocks can import what the run blocks generate from it.
- ``<!-- skip: REASON -->``: not checked (say why).
- any other language (``text``, ``proto`` without ``file:``): not checked.

Failures name the file and line of the block.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import subprocess
import sys
import textwrap
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]

#: Names the README's and the guide's snippets use without defining them.
SHARED_PRELUDE = """\
from __future__ import annotations

import asyncio
from typing import Any

import brpc
from grpclib.server import Stream
from examples.fleet import fleet_grpc, fleet_pb2
from examples.greeter import greeter_grpc, greeter_pb2

connection_id: str
handlers: list[Any]
target: str
stream: Stream[Any, Any]
server: brpc.Server[Any]
conn: brpc.ClientConn
"""

#: Errors known and accepted for now: a part of mypy's message -> why. Each must
#: still occur (remove the entry once the block is fixed).
KNOWN_ERRORS: dict[str, str] = {}

_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>```+|~~~+)(?P<info>[^\n`]*)$")
_DIRECTIVE = re.compile(r"<!--\s*(?P<kind>prelude|file|run|skip)\b:?(?P<arg>.*?)-->", re.S)
_PYTHON = {"python", "py", "python3"}
_SHELL = {"sh", "bash", "shell", "console"}


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the block's first code line
    language: str
    code: str
    directives: dict[str, str]

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def module(self) -> str:
        stem = re.sub(r"\W", "_", str(self.path.relative_to(ROOT)))
        return f"doc_{stem}_L{self.line}"


def extract_blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a Markdown file, with the directives before each."""
    lines = path.read_text().splitlines()
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        match = _FENCE.match(lines[index])
        if not match:
            index += 1
            continue
        fence, start = match["fence"], index + 1
        end = start
        while end < len(lines) and not lines[end].strip().startswith(fence):
            end += 1
        code = textwrap.dedent("\n".join(lines[start:end])) + "\n"
        language = match["info"].strip().split(" ")[0].lower()
        directives = _directives_before(lines, index)
        blocks.append(Block(path, start + 1, language, code, directives))
        index = end + 1
    return blocks


def _directives_before(lines: list[str], fence_index: int) -> dict[str, str]:
    """``<!-- kind: arg -->`` comments directly above a fence (blank lines allowed)."""
    comments: list[str] = []
    index = fence_index - 1
    while True:
        while index >= 0 and not lines[index].strip():
            index -= 1
        if index < 0 or not lines[index].rstrip().endswith("-->"):
            break
        first = index
        while first > 0 and "<!--" not in lines[first]:
            first -= 1
        comments.insert(0, "\n".join(lines[first : index + 1]))
        index = first - 1
    found: dict[str, str] = {}
    for match in _DIRECTIVE.finditer("\n".join(comments)):
        found[match["kind"]] = textwrap.dedent(match["arg"].strip("\n")).strip()
    return found


def _all_blocks() -> list[Block]:
    return [block for path in DOCUMENTS for block in extract_blocks(path)]


# -- the scratch project: files written, run blocks run -------------------------------


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the guide's files and what its run blocks produced."""
    directory = tmp_path_factory.mktemp("project")
    blocks = _all_blocks()
    for block in blocks:
        if "file" in block.directives:
            target = directory / block.directives["file"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(block.code)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for block in blocks:
        if "run" in block.directives:
            done = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", block.code],
                cwd=directory,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert done.returncode == 0, (
                f"{block.where}: the shell block failed (exit {done.returncode}):\n"
                f"{block.code}\n{done.stdout}\n{done.stderr}"
            )
    return directory


# -- Python: type-checked with mypy ---------------------------------------------------

_MYPY_CONFIG = """\
[mypy]
python_version = 3.11
check_untyped_defs = True
warn_unused_ignores = True
strict_equality = True
# `server = brpc.Server(handlers, ...)` without client_stub leaves C open; fine in a
# snippet. A block's prelude may declare a shared prelude's name with a closer type.
disable_error_code = var-annotated, no-redef
namespace_packages = True
explicit_package_bases = True

[mypy-brpc.v1.*,brpc.testing.v1.*]
ignore_errors = True
"""


def _wrap(block: Block) -> tuple[str, int]:
    """The module mypy checks for a block, and the line the block's code starts on."""
    prelude = SHARED_PRELUDE + block.directives.get("prelude", "") + "\n\n"
    header = "async def __doc_example__() -> None:\n"
    body = textwrap.indent(block.code, "    ") if block.code.strip() else "    pass\n"
    offset = prelude.count("\n") + header.count("\n")
    return prelude + header + body, offset


def test_python_blocks_type_check(project: Path, tmp_path: Path) -> None:
    blocks = [b for b in _all_blocks() if b.language in _PYTHON and "skip" not in b.directives]
    assert blocks, "no Python blocks found"
    offsets: dict[str, tuple[Block, int]] = {}
    for block in blocks:
        source, offset = _wrap(block)
        (tmp_path / f"{block.module}.py").write_text(source)
        offsets[block.module] = (block, offset)
    (tmp_path / "mypy.ini").write_text(_MYPY_CONFIG)
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", "mypy.ini", "--no-error-summary"]
        + [f"{module}.py" for module in offsets],
        cwd=tmp_path,
        env={**os.environ, "MYPYPATH": os.pathsep.join([str(project), str(ROOT)])},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    problems = []
    seen_known: set[str] = set()
    for line in done.stdout.splitlines():
        match = re.match(r"(?P<module>doc_\w+)\.py:(?P<line>\d+): (?P<message>.*)", line)
        if not match:
            problems.append(line)
            continue
        block, offset = offsets[match["module"]]
        code_line = int(match["line"]) - offset
        message = f"{block.path.relative_to(ROOT)}: {match['message']}"
        known = [key for key in KNOWN_ERRORS if key in message]
        if known:
            seen_known.update(known)
        elif code_line >= 1:
            where = f"{block.path.relative_to(ROOT)}:{block.line + code_line - 1}"
            problems.append(f"{where}: {match['message']}")
        else:
            problems.append(f"{block.where} (in its prelude): {match['message']}")
    assert not problems and not done.stderr.strip(), (
        "code blocks in the documentation do not type-check:\n"
        + "\n".join(problems or [done.stderr])
    )
    fixed = set(KNOWN_ERRORS) - seen_known
    assert not fixed, f"fixed, remove from KNOWN_ERRORS in {__name__}: {sorted(fixed)}"


# -- shell: commands exist and accept their flags -------------------------------------


@functools.cache
def _help_text(command: tuple[str, ...]) -> str:
    done = subprocess.run(
        [*command, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, f"`{' '.join(command)} --help` failed:\n{done.stderr}"
    return done.stdout


def _pyproject() -> dict[str, Any]:
    project: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return project


def _extras() -> set[str]:
    return set(_pyproject()["optional-dependencies"])


def _console_scripts() -> set[str]:
    return set(_pyproject().get("scripts", {}))


def _commands(code: str, *, console: bool = False) -> Iterator[list[str]]:
    """Each command of a shell block as words (comments and continuations handled).

    In a ``console`` block only lines starting with ``$ `` are commands; the
    others are their output. A ``;`` ends a command (``cmd; echo "exit $?"``).
    """
    joined = code.replace("\\\n", " ")
    for line in joined.splitlines():
        if console and not line.lstrip().startswith("$ "):
            continue
        raw = line.split(";")[0]
        words = shlex.split(raw, comments=True)
        if raw.lstrip().startswith("$ "):
            words = words[1:]
        while words and "=" in words[0] and not words[0].startswith("-"):
            words = words[1:]  # VAR=value prefixes
        if words:
            yield words


def _flags(words: list[str]) -> list[str]:
    return [w.split("=")[0] for w in words if w.startswith("--")]


def _check_command(words: list[str]) -> str | None:
    """None if the command is known and accepts its flags, else what is wrong."""
    head = words[0]
    python = head in {"python", "python3"} or head.endswith("/python")
    if python and words[1:2] == ["-m"]:
        module, args = words[2], words[3:]
        if module == "grpc_tools.protoc":
            return None  # run for real by the guide's run block
        if module == "pip":
            return _check_command(["pip", *args])
        if not module.startswith(("brpc", "examples")):
            return f"unknown module {module}"
        help_text = _help_text((sys.executable, "-m", module))
    elif python and len(words) > 1 and words[1].endswith(".py"):
        script, args = ROOT / words[1], words[2:]
        if not script.is_file():
            return f"no such script {words[1]}"
        help_text = _help_text((sys.executable, str(script)))
    elif head.startswith(("./scripts/", "scripts/")):
        script, args = ROOT / head.removeprefix("./"), words[1:]
        if not (script.is_file() and os.access(script, os.X_OK)):
            return f"no executable {head}"
        if script.name != "bench":
            return None
        help_text = _help_text((sys.executable, "-m", "brpc.bench"))
    elif head == "pip":
        named = re.findall(r"brpc\[([^\]]*)\]", " ".join(words))
        unknown = {e.strip() for group in named for e in group.split(",")} - _extras()
        return f"pip install names unknown extras {sorted(unknown)}" if unknown else None
    elif head in _console_scripts():
        executable = Path(sys.executable).parent / head
        if not executable.exists():
            return f"the console script {head} is not installed (rerun ./scripts/test)"
        args = words[1:]
        subcommand = tuple(args[:1]) if args and not args[0].startswith("-") else ()
        help_text = _help_text((str(executable),))
        if subcommand:
            help_text += _help_text((str(executable), *subcommand))
    elif head in {"cd", "export", "mkdir", "ls", "source", "."}:
        return None
    else:
        return f"unknown command {head!r} (teach tests/test_doc_examples.py about it)"
    missing = [flag for flag in _flags(args) if flag not in help_text]
    return f"{' '.join(words[:3])} has no option {', '.join(missing)}" if missing else None


def test_shell_blocks_use_commands_that_exist() -> None:
    problems = []
    for block in _all_blocks():
        if block.language not in _SHELL or {"skip", "run"} & set(block.directives):
            continue
        for words in _commands(block.code, console=block.language == "console"):
            problem = _check_command(words)
            if problem:
                problems.append(f"{block.where}: `{' '.join(words)}`: {problem}")
    assert not problems, "shell blocks in the documentation:\n" + "\n".join(problems)


def test_run_blocks_ran(project: Path) -> None:
    """The guide's code generation produced the modules its Python blocks import."""
    ran = [b for b in _all_blocks() if "run" in b.directives]
    assert ran, "the guide has no run block (the code generation command)"
    assert list(project.rglob("*_grpc.py")), "the run blocks generated no *_grpc.py"


def test_skips_say_why() -> None:
    vague = [b.where for b in _all_blocks() if b.directives.get("skip", "x") == ""]
    assert not vague, f"<!-- skip: REASON --> without a reason at {vague}"


def test_extraction_finds_blocks_and_directives(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "text\n\n<!-- prelude: x = 1 -->\n\n```python\nprint(x)\n```\n\n"
        "```sh\necho hi\n```\n<!--\nfile: a/b.proto\n-->\n```proto\nsyntax = 1;\n```\n"
    )
    blocks = extract_blocks(page)
    assert [(b.line, b.language) for b in blocks] == [(6, "python"), (10, "sh"), (16, "proto")]
    assert blocks[0].directives == {"prelude": "x = 1"}
    assert blocks[1].directives == {}
    assert blocks[2].directives == {"file": "a/b.proto"}


def test_command_checks_catch_unknown_options_extras_and_commands() -> None:
    assert _check_command(["python", "-m", "brpc.certs", "--out", "certs"]) is None
    problem = _check_command(["python", "-m", "brpc.certs", "--nope"])
    assert "has no option --nope" in (problem or "")
    assert _check_command(["pip", "install", "brpc[otel,bench]"]) is None
    assert "unknown extras ['nope']" in (_check_command(["pip", "install", "brpc[nope]"]) or "")
    assert "unknown command" in (_check_command(["frobnicate"]) or "")
    assert "no executable" in (_check_command(["./scripts/nothing-here"]) or "")

"""What the benchmark needs beyond brpc itself, and the message when it is missing.

The benchmark's own dependencies (``psutil`` for CPU and memory probes, ``grpcio``
for the grpcio baseline) live in the ``bench`` extra, not in brpc's required
dependencies; :func:`missing_requirements` lets ``python -m brpc.bench`` say what to
install instead of failing with an import error.
"""

from __future__ import annotations

import importlib.util

__all__ = ["INSTALL_HINT", "REQUIRED_MODULES", "missing_message", "missing_requirements"]

#: Importable module -> the distribution that provides it.
REQUIRED_MODULES: dict[str, str] = {"psutil": "psutil", "grpc": "grpcio"}

INSTALL_HINT = "pip install 'brpc[bench]'"


def missing_requirements(modules: dict[str, str] | None = None) -> list[str]:
    """Distributions (by name) whose modules cannot be imported, in a stable order."""
    wanted = REQUIRED_MODULES if modules is None else modules
    return [dist for module, dist in wanted.items() if importlib.util.find_spec(module) is None]


def missing_message(missing: list[str]) -> str:
    """The message printed when the benchmark cannot run for lack of ``missing``."""
    return (
        f"the benchmark needs {', '.join(missing)}, which brpc does not install by default; "
        f"install the bench extra: {INSTALL_HINT}"
    )

"""Command-line parsing of ``key=value`` labels, shared by the fleet server and agent."""

from __future__ import annotations

import argparse


def parse_label(text: str) -> tuple[str, str]:
    """``"role=web"`` -> ``("role", "web")``; an argparse ``type=``."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    return key, value

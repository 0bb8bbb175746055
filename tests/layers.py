"""Running a test module on both call layers.

``pytestmark = on_both_call_layers`` runs every test of a module that uses the
``call_layer`` fixture (through ``make_server`` and ``connect``, tests/conftest.py)
once per call layer; its other tests run once.
"""

from __future__ import annotations

import pytest

CALL_LAYERS = ["streams", "lanes"]

on_both_call_layers = pytest.mark.both_call_layers

"""Choosing a connection's call layer in the hello exchange, without I/O.

The client lists the call layers it supports in ``ClientHello.call_layers``,
most preferred first (empty: only ``"lanes"``); the server answers the first
one it supports in ``ServerHello.call_layer`` (empty: ``"lanes"``). This module
owns the layer names and both sides of that rule (docs/protocol.md §3).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..options import CALL_LAYER_NAMES

__all__ = [
    "LANES",
    "STREAMS",
    "SUPPORTED_CALL_LAYERS",
    "CallLayerMismatch",
    "accepted_call_layer",
    "call_layer_list",
    "choose_call_layer",
    "offered_call_layers",
]

#: One QUIC stream per call (``brpc._wire.callframe``).
STREAMS = "streams"
#: HTTP/2 connections inside long-lived QUIC streams.
LANES = "lanes"


#: The layers this version implements, in its order of preference.
SUPPORTED_CALL_LAYERS = CALL_LAYER_NAMES


def call_layer_list(call_layer: str | Sequence[str]) -> tuple[str, ...]:
    """A ``call_layer=`` setting (one name, or names in preference order) as a tuple.

    Raises ``ValueError`` for an empty setting, an unknown name or a repeated one.
    """
    names = (call_layer,) if isinstance(call_layer, str) else tuple(call_layer)
    if not names:
        raise ValueError(f"call_layer needs at least one of {', '.join(SUPPORTED_CALL_LAYERS)}")
    for name in names:
        if name not in SUPPORTED_CALL_LAYERS:
            known = " or ".join(map(repr, SUPPORTED_CALL_LAYERS))
            raise ValueError(f"unknown call layer {name!r} in call_layer: use {known}")
    if len(set(names)) != len(names):
        raise ValueError(f"call_layer names a layer twice: {names!r}")
    return names


class CallLayerMismatch(Exception):
    """The two sides have no call layer in common, or the server chose one not offered."""


def offered_call_layers(call_layers: Sequence[str]) -> list[str]:
    """The layers a ``ClientHello.call_layers`` offers, in preference order."""
    return list(call_layers) if call_layers else [LANES]


def choose_call_layer(call_layers: Sequence[str], supported: Sequence[str]) -> str:
    """The server's choice: the first of the client's ``call_layers`` in ``supported``.

    Raises :class:`CallLayerMismatch` (refuse the hello with INVALID_HELLO) if
    there is none.
    """
    offered = offered_call_layers(call_layers)
    for name in offered:
        if name in supported:
            return name
    raise CallLayerMismatch(
        f"no common call layer: the client offers {', '.join(map(repr, offered[:8]))}; "
        f"this server accepts {', '.join(map(repr, supported))}"
    )


def accepted_call_layer(call_layer: str, call_layers: Sequence[str]) -> str:
    """The client's reading of ``ServerHello.call_layer`` after offering ``call_layers``.

    Raises :class:`CallLayerMismatch` (a protocol violation) if the server
    chose a layer the client did not offer.
    """
    chosen = call_layer or LANES
    if chosen not in offered_call_layers(call_layers):
        raise CallLayerMismatch(
            f"the server chose call layer {chosen[:64]!r}, which the client did not offer"
        )
    return chosen

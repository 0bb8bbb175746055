"""The protocol-neutral settings of one side of brpc connections, each default defined once.

:class:`Options` is validated when it is made (like grpclib's
``Configuration``): a bad value raises ``ValueError`` naming the setting.
:func:`brpc.dial` and :class:`brpc.Server` take the same settings as keyword
arguments and build one of these; their defaults come from here. Settings of
the QUIC engine (datagram size, read batching) are in
:class:`brpc.QuicOptions`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields

__all__ = ["CALL_LAYER_ENV", "CALL_LAYER_NAMES", "DEFAULT_OPTIONS", "Options", "peer_stream_limit"]

#: Environment variable that sets the default ``call_layer`` of a process
#: (names separated by commas, most preferred first), read when brpc is
#: imported; ``call_layer=`` given in code wins. For running a whole program or
#: test suite on one call layer without editing it.
CALL_LAYER_ENV = "BRPC_CALL_LAYER"
#: The call layers this version implements, in its order of preference
#: (``brpc._wire.calllayer`` names them).
CALL_LAYER_NAMES = ("streams", "lanes")


def _default_call_layers() -> tuple[str, ...]:
    setting = os.environ.get(CALL_LAYER_ENV, "").strip()
    if not setting:
        return CALL_LAYER_NAMES
    names = tuple(name.strip() for name in setting.split(","))
    if (
        not names
        or any(name not in CALL_LAYER_NAMES for name in names)
        or len(set(names)) != len(names)
    ):
        raise ValueError(
            f"{CALL_LAYER_ENV}={setting!r}: give 'streams', 'lanes' or both separated by "
            "a comma (most preferred first), or unset it"
        )
    return names


@dataclass(frozen=True)
class Options:
    """Limits, timers and tuning that do not depend on the transport."""

    #: Largest gRPC message sent or received, in bytes.
    max_message_size: int = 4 << 20
    #: Calls from the peer handled at once on one connection.
    max_concurrent_calls: int = 1000
    #: HTTP/2 lanes (streams) for this side's calls, with the lanes call layer.
    lanes: int = 1
    #: Call layers this side accepts, most preferred first (``"streams"``: one
    #: QUIC stream per call; ``"lanes"``: HTTP/2 inside QUIC streams).
    #: Default: ``("streams", "lanes")``, or what ``BRPC_CALL_LAYER`` says.
    call_layers: tuple[str, ...] = field(default_factory=_default_call_layers)
    #: Seconds between keepalive pings; ``None`` sends none.
    keepalive_interval: float | None = 5.0
    #: Seconds without any packet from the peer after which it is declared dead.
    dead_peer_timeout: float = 15.0
    #: Seconds the transport handshake (TLS) may take.
    handshake_timeout: float = 10.0
    #: Seconds a server waits for a client's hello after the handshake.
    hello_timeout: float = 10.0
    #: Unacknowledged bytes per stream above which writers are paused ...
    write_high_water: int = 1 << 20
    #: ... and below which they are resumed.
    write_low_water: int = 256 << 10

    def __post_init__(self) -> None:
        for name in ("max_message_size", "max_concurrent_calls", "lanes", "write_high_water"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, not {getattr(self, name)!r}")
        for name in ("dead_peer_timeout", "handshake_timeout", "hello_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be a positive number of seconds")
        interval = self.keepalive_interval
        if interval is not None and not 0 < interval < self.dead_peer_timeout:
            raise ValueError(
                f"keepalive_interval ({interval}) must be positive and below dead_peer_timeout "
                f"({self.dead_peer_timeout})"
            )
        if not self.call_layers:
            raise ValueError("call_layers needs at least one call layer")
        if not 0 <= self.write_low_water <= self.write_high_water:
            raise ValueError("need 0 <= write_low_water <= write_high_water")

    @classmethod
    def names(cls) -> frozenset[str]:
        """The settings' names (the keyword arguments that map onto them)."""
        return frozenset(f.name for f in fields(cls))


#: The defaults, for signatures that repeat them as keyword arguments.
DEFAULT_OPTIONS = Options()


def peer_stream_limit(options: Options) -> int:
    """Bidirectional streams the peer may have open towards this side at once.

    QUIC fixes it in the handshake, before the hello chose a call layer, so it
    suits both: twice ``max_concurrent_calls`` (calls over the limit reach
    admission and fail with a clear RESOURCE_EXHAUSTED; a closed stream returns
    its credit only once its last frames are acknowledged) plus room for the
    control stream and lanes.
    """
    return 2 * options.max_concurrent_calls + 16

"""Settings of the QUIC engine, each default defined once, validated when made."""

from __future__ import annotations

from dataclasses import dataclass

from .engine import ENGINE_NAMES
from .impair import NetworkConditions
from .pmtu import AIOQUIC_MAX_DATAGRAM_SIZE

__all__ = ["DEFAULT_QUIC_OPTIONS", "QuicOptions"]


@dataclass(frozen=True)
class QuicOptions:
    """How brpc uses QUIC on one side; protocol-neutral settings are in :class:`brpc.Options`."""

    #: QUIC datagram payload size; 1200 fits any path that carries QUIC.
    max_datagram_size: int = 1200
    #: Datagrams read from the socket per wake-up before one transmit (1: one at a time).
    #: With UDP GRO a wake-up reads whole coalesced buffers (up to 64 datagrams each)
    #: until it has at least that many.
    read_batch: int = 8
    #: Simulated loss and reordering, for tests.
    network_conditions: NetworkConditions | None = None
    #: QUIC engine: "auto" (aioquic, or what BRPC_ENGINE says; qh3 is opt-in),
    #: "aioquic", or "qh3" (``pip install 'brpc[fast]'``).
    engine: str = "auto"
    #: Largest datagram size path MTU probes try (aioquic only; equal to
    #: ``max_datagram_size`` turns probing off).
    max_probed_datagram_size: int = AIOQUIC_MAX_DATAGRAM_SIZE
    #: Send a flight of datagrams with one UDP GSO system call where the kernel allows.
    gso: bool = True
    #: Receive several datagrams with one UDP GRO system call where the kernel
    #: allows (Linux, on asyncio's own event loop; uvloop's transports read by themselves).
    gro: bool = True

    def __post_init__(self) -> None:
        if not 1200 <= self.max_datagram_size <= 16383:
            raise ValueError(
                "max_datagram_size must be between 1200 (the QUIC minimum) and 16383 "
                f"(aioquic's frame encoding limit), not {self.max_datagram_size!r}"
            )
        if self.engine not in ENGINE_NAMES:
            raise ValueError(
                f"engine must be one of {', '.join(map(repr, ENGINE_NAMES))}, not {self.engine!r}"
            )
        if not self.max_datagram_size <= self.max_probed_datagram_size <= 16383:
            raise ValueError(
                "max_probed_datagram_size must be between max_datagram_size and 16383, "
                f"not {self.max_probed_datagram_size!r}"
            )
        if self.read_batch < 1:
            raise ValueError(f"read_batch must be positive, not {self.read_batch!r}")


DEFAULT_QUIC_OPTIONS = QuicOptions()

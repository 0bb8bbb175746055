"""What a benchmark run measures: targets, workloads, their metrics, brpc's knobs.

Plain data only, shared by the orchestrating process and the worker
processes (everything here pickles).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

__all__ = [
    "BASELINES",
    "BRPC_TARGETS",
    "FANOUT_CLIENTS",
    "RELAY_TARGETS",
    "TARGETS",
    "WORKLOADS",
    "BrpcTuning",
    "Direction",
    "Metric",
    "Target",
    "Transport",
    "TransportSpec",
    "Workload",
    "workload_by_key",
]

#: Loopback address every server listens on.
HOST = "127.0.0.1"


class Transport(enum.Enum):
    BRPC = "brpc"
    GRPCLIB = "grpclib"
    GRPCIO = "grpcio"
    #: A grpclib caller over TCP, through a brpc server's gRPC front and relay,
    #: to a brpc client that serves Echo (in the server's worker process).
    RELAY = "relay"


class Direction(enum.Enum):
    #: The dialing client calls the server (the only direction plain gRPC has).
    CLIENT_TO_SERVER = "c2s"
    #: The server calls the client that dialed it, over the same connection.
    SERVER_TO_CLIENT = "s2c"


@dataclass(frozen=True)
class Target:
    """One column of the results: a transport and the direction calls go."""

    key: str
    label: str
    transport: Transport
    direction: Direction
    #: brpc's call layer (``call_layer=`` on both sides); None for the baselines.
    call_layer: str | None = None
    #: brpc's QUIC engine (``engine=`` on both sides).
    engine: str = "aioquic"

    @property
    def is_brpc(self) -> bool:
        """brpc (or its relay) is what this column measures: compared with the baselines."""
        return self.transport in (Transport.BRPC, Transport.RELAY)


BRPC_TARGETS = (
    Target("brpc-c2s", "brpc c→s", Transport.BRPC, Direction.CLIENT_TO_SERVER, "streams"),
    Target("brpc-s2c", "brpc s→c", Transport.BRPC, Direction.SERVER_TO_CLIENT, "streams"),
    Target("brpc-lanes-c2s", "brpc lanes c→s", Transport.BRPC, Direction.CLIENT_TO_SERVER, "lanes"),
    Target("brpc-lanes-s2c", "brpc lanes s→c", Transport.BRPC, Direction.SERVER_TO_CLIENT, "lanes"),
    Target(
        "brpc-qh3-c2s", "brpc qh3 c→s", Transport.BRPC, Direction.CLIENT_TO_SERVER, "streams", "qh3"
    ),
    Target(
        "brpc-qh3-s2c", "brpc qh3 s→c", Transport.BRPC, Direction.SERVER_TO_CLIENT, "streams", "qh3"
    ),
    Target(
        "brpc-qh3-lanes-c2s",
        "brpc qh3 lanes c→s",
        Transport.BRPC,
        Direction.CLIENT_TO_SERVER,
        "lanes",
        "qh3",
    ),
    Target(
        "brpc-qh3-lanes-s2c",
        "brpc qh3 lanes s→c",
        Transport.BRPC,
        Direction.SERVER_TO_CLIENT,
        "lanes",
        "qh3",
    ),
)
BASELINES = (
    Target("grpclib", "grpclib/TCP", Transport.GRPCLIB, Direction.CLIENT_TO_SERVER),
    Target("grpcio", "grpcio/TCP", Transport.GRPCIO, Direction.CLIENT_TO_SERVER),
)
RELAY_TARGETS = (Target("relay", "brpc relay", Transport.RELAY, Direction.CLIENT_TO_SERVER),)
TARGETS = BRPC_TARGETS + BASELINES + RELAY_TARGETS
#: Clients a relay_fanout broadcast goes to.
FANOUT_CLIENTS = 100


@dataclass(frozen=True)
class BrpcTuning:
    """brpc's tuning knobs, as passed to both ``brpc.Server`` and ``brpc.dial``.

    The defaults are the library's own defaults.
    """

    lanes: int = 1
    max_datagram_size: int = 1200
    #: Datagrams read from the socket per wake-up before one transmit (1: off).
    read_batch: int = 8

    def describe(self) -> str:
        return (
            f"lanes={self.lanes} max_datagram_size={self.max_datagram_size} "
            f"read_batch={self.read_batch}"
        )


@dataclass(frozen=True)
class TransportSpec:
    """Everything a worker needs to start a server or dial one."""

    transport: Transport
    ca: str
    certfile: str
    keyfile: str
    tuning: BrpcTuning = field(default_factory=BrpcTuning)
    #: brpc's call layer, on both sides.
    call_layer: str = "streams"
    #: brpc's QUIC engine, on both sides.
    engine: str = "aioquic"


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    #: Whether a bigger number is better (rates) or worse (times, memory).
    higher_is_better: bool
    #: Digits after the decimal point in the table.
    decimals: int = 0


CALLS_PER_S = Metric("calls_per_s", "calls/s", True)
P50_MS = Metric("p50_ms", "p50 ms", False, 2)
P99_MS = Metric("p99_ms", "p99 ms", False, 2)


@dataclass(frozen=True)
class Workload:
    """One kind of measurement and the metrics it reports."""

    key: str
    title: str
    metrics: tuple[Metric, ...]
    #: Runs as load over an established connection (the others make their own).
    is_load: bool = True


WORKLOADS = (
    Workload("unary_c1", "unary, 1 in flight", (CALLS_PER_S, P50_MS, P99_MS)),
    Workload("unary_c64", "unary, 64 in flight", (CALLS_PER_S, P50_MS, P99_MS)),
    Workload("server_stream", "server stream", (Metric("messages_per_s", "msgs/s", True),)),
    Workload("upload_1mib", "1 MiB uploads", (Metric("mib_per_s", "MiB/s", True, 1),)),
    Workload(
        "connect",
        "connect + first call",
        (Metric("p50_ms", "p50 ms", False, 2), Metric("p99_ms", "p99 ms", False, 2)),
        is_load=False,
    ),
    Workload(
        "relay_fanout",
        f"relay fan-out to {FANOUT_CLIENTS} clients, time to last result (relay only)",
        (
            Metric("p50_ms", "p50 ms", False, 2),
            Metric("p99_ms", "p99 ms", False, 2),
        ),
        is_load=False,
    ),
    Workload(
        "idle_memory",
        "server memory per idle client",
        (Metric("kib_per_client", "KiB/client", False, 1),),
        is_load=False,
    ),
)


def workload_by_key(key: str) -> Workload:
    for workload in WORKLOADS:
        if workload.key == key:
            return workload
    raise KeyError(key)

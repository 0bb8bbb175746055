"""Helpers for testing and benchmarking brpc: an echo service with one method of
each gRPC cardinality (``brpc.testing.v1.echo``) and its plain implementation,
and :func:`connected`, a server and a client connected over loopback for unit
tests of one's own services (its pytest fixture: ``brpc.testing.pytest_plugin``)."""

from typing import TYPE_CHECKING, Any

from .echo import EchoService

if TYPE_CHECKING:
    from .kit import connected

__all__ = ["EchoService", "connected"]


def __getattr__(name: str) -> Any:
    # brpc's client and server import brpc.testing.network, so brpc.testing.kit
    # (which imports them) loads on first use rather than with this package.
    if name == "connected":
        from .kit import connected  # noqa: PLC0415

        return connected
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

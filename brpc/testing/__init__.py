"""Helpers for testing and benchmarking brpc: an echo service with one method of
each gRPC cardinality (``brpc.testing.v1.echo``) and its plain implementation,
:func:`connected`, a server and a client connected over loopback for unit tests
of one's own services (its pytest fixture: ``brpc.testing.pytest_plugin``),
simulated bad networks (:class:`NetworkConditions`) and an in-memory pair of
connected sessions (:func:`session_pair`) for tests below the QUIC layer."""

from .._session.memory import MemorySession, session_pair
from .._session.quic.impair import NetworkConditions
from .echo import EchoService
from .kit import connected

__all__ = ["EchoService", "MemorySession", "NetworkConditions", "connected", "session_pair"]

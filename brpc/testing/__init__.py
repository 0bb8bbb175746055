"""Helpers for testing and benchmarking brpc: an echo service with one method of
each gRPC cardinality (``brpc.testing.v1.echo``) and its plain implementation."""

from .echo import EchoService

__all__ = ["EchoService"]

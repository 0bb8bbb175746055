"""brpc's benchmark suite: ``python -m brpc.bench`` (or ``scripts/bench``).

Measures brpc in both directions (client to server, server to client) next to
grpclib and grpcio over TCP loopback, in separate pinned processes, and
reports medians and spreads as a table and as JSON. ``--help`` lists the
options; the README's "Performance" section has the latest figures.
"""

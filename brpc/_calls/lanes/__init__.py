"""The HTTP/2 lanes call layer: grpclib HTTP/2 connections, each in one QUIC stream."""

"""Call layers: how gRPC calls ride on a session's streams, both ways."""

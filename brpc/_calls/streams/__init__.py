"""The streams call layer: one QUIC stream per call (docs/protocol.md §4)."""

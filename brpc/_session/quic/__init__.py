"""The QUIC session: aioquic or qh3 behind one adapter each."""

"""Sessions: authenticated stream multiplexers."""

"""Wire formats and parsers with no I/O."""

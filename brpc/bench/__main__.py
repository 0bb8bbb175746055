"""``python -m brpc.bench``: see :mod:`brpc.bench.cli`."""

from brpc.bench.cli import main

if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python3
"""Make development certificates into certs/ (see ``python -m brpc.certs --help``)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from brpc.certs import main

if __name__ == "__main__":
    raise SystemExit(main())

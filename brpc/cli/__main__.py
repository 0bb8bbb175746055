"""``python -m brpc.cli``: the ``brpc`` command."""

from . import main

raise SystemExit(main())

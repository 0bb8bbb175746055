"""``python -m brpc.bench``: see :mod:`brpc.bench.cli`.

Checks for the ``bench`` extra's packages first, so a missing one gives a message
saying what to install rather than an import error.
"""

import sys

from brpc.bench.requirements import missing_message, missing_requirements


def _main() -> int:
    missing = missing_requirements()
    if missing:
        print(f"python -m brpc.bench: {missing_message(missing)}", file=sys.stderr)
        return 2
    from brpc.bench.cli import main  # noqa: PLC0415 (needs the extra checked above)

    return main()


if __name__ == "__main__":
    raise SystemExit(_main())

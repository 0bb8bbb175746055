# Sourced by the scripts in this folder: finds Python >= 3.11 and makes sure the
# project's virtual environment (.venv) exists and has the project installed
# with its dev extra. Reinstalls when pyproject.toml changes.

VENV="${BRPC_VENV:-$PWD/.venv}"

_find_python() {
  for candidate in python3.11 python3.12 python3.13 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
      "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      command -v "$candidate"
      return 0
    fi
  done
  echo "brpc needs Python 3.11 or newer on PATH" >&2
  return 1
}

ensure_venv() {
  local stamp="$VENV/.brpc-install-stamp"
  local want
  want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
  if [ ! -x "$VENV/bin/python" ]; then
    local python
    python="$(_find_python)"
    echo "creating virtual environment in $VENV" >&2
    "$python" -m venv "$VENV"
  fi
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "installing brpc and its dev dependencies into $VENV" >&2
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip >&2
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e ".[dev]" >&2
    echo "$want" >"$stamp"
  fi
}

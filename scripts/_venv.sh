# Sourced by the scripts in this folder: finds Python >= 3.11 and makes sure the
# project's virtual environment (.venv) exists and has the project installed
# with its dev extra. Reinstalls when pyproject.toml (or this file) changes.
#
# The editable install uses setuptools' "compat" mode (a path entry in a .pth
# file) rather than its default import hook: type checkers such as mypy follow
# path entries but not import hooks, so only this way does `mypy --strict` on
# code that imports brpc see brpc's types (py.typed).

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
  want="$(cat pyproject.toml scripts/_venv.sh | sha256sum | cut -d' ' -f1)"
  if [ ! -x "$VENV/bin/python" ]; then
    local python
    python="$(_find_python)"
    echo "creating virtual environment in $VENV" >&2
    "$python" -m venv "$VENV"
  fi
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "installing brpc and its dev dependencies into $VENV" >&2
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip >&2
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
      --config-settings editable_mode=compat -e ".[dev]" >&2
    echo "$want" >"$stamp"
  fi
}

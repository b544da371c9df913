# Sourced by scripts/run and scripts/test: find Python >= 3.12, make .venv,
# install requirements/local.txt when it changed. Sets $PY to the venv python.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"

python_ok() {
  "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1
}

find_python() {
  local candidate
  if [ -n "${PYTHON:-}" ]; then
    python_ok "$PYTHON" && { echo "$PYTHON"; return 0; }
    echo "PYTHON=$PYTHON is not Python 3.12 or newer." >&2
    return 1
  fi
  for candidate in python3.14 python3.13 python3.12 python3; do
    if command -v "$candidate" >/dev/null 2>&1 && python_ok "$(command -v "$candidate")"; then
      command -v "$candidate"; return 0
    fi
  done
  # pyenv keeps versions that are installed but not active.
  local root="${PYENV_ROOT:-$HOME/.pyenv}"
  for candidate in $(ls -d "$root"/versions/3.1[2-9]* 2>/dev/null | sort -rV); do
    if python_ok "$candidate/bin/python3"; then
      echo "$candidate/bin/python3"; return 0
    fi
  done
  return 1
}

bootstrap() {
  if [ ! -x "$VENV/bin/python" ] || ! python_ok "$VENV/bin/python"; then
    local base
    if ! base="$(find_python)"; then
      echo "error: this project needs Python 3.12 or newer and none was found." >&2
      echo "       Install one (e.g. 'pyenv install 3.13') or set PYTHON=/path/to/python3.12+." >&2
      exit 1
    fi
    echo "Creating .venv with $base ($("$base" --version))"
    rm -rf "$VENV"
    "$base" -m venv "$VENV"
  fi
  local stamp="$VENV/.requirements.sha256" want
  want="$(cat "$ROOT"/requirements/*.txt | sha256sum | cut -d' ' -f1)"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "Installing requirements/local.txt into .venv"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
      -r "$ROOT/requirements/local.txt"
    echo "$want" >"$stamp"
  fi
  PY="$VENV/bin/python"
}

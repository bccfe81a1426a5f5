#!/usr/bin/env bash
# Prepares a (possibly brand-new) Debian machine for this project. Idempotent, quiet on success.
#  - apt-get installs only what is missing: java (openjdk-17-jre-headless), mvn (maven),
#    PostgreSQL server (postgresql), make, python3 venv support
#  - creates .venv and runs `pip install -e '.[dev]'`, skipped while .venv/.installed is newer
#    than pyproject.toml
# Env: PYTHON (interpreter for the venv; default python3.11 if present, else python3)
set -euo pipefail
# shellcheck source=deploy/local/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

ensure_java
ensure_maven
ensure_postgres
ensure_cmd make make
ensure_cmd promtool prometheus  # alert rules are validated with promtool in the tests
ensure_cmd chromium chromium    # headless rendering check of the demo's HTML report

# --- Python venv ---------------------------------------------------------------------------------
VENV="$ROOT/.venv"
MARKER="$VENV/.installed"

pick_python() {
  if [ -n "${PYTHON:-}" ]; then printf '%s\n' "$PYTHON"; return; fi
  if command -v python3.11 >/dev/null 2>&1; then command -v python3.11; return; fi
  ensure_cmd python3 python3 >&2
  command -v python3
}

# A venv whose interpreter no longer runs (moved checkout, removed pyenv version) is rebuilt.
if [ -e "$VENV" ] && ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
  warn "bootstrap: $VENV is broken, recreating it"
  rm -rf "$VENV"
fi

if [ ! -x "$VENV/bin/python" ]; then
  PY="$(pick_python)"
  "$PY" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' \
    || die "bootstrap: $PY is $("$PY" -V 2>&1); pyproject.toml requires Python 3.11 (set PYTHON=...)"
  mkdir -p "$STATE"
  if ! "$PY" -m venv "$VENV" >"$STATE/venv.log" 2>&1; then
    # Debian's python3 ships venv/ensurepip separately
    rm -rf "$VENV"
    apt_install python3-venv
    "$PY" -m venv "$VENV" >"$STATE/venv.log" 2>&1 || { cat "$STATE/venv.log" >&2; die "bootstrap: python -m venv failed"; }
  fi
fi

if [ ! -f "$MARKER" ] || [ "$ROOT/pyproject.toml" -nt "$MARKER" ]; then
  mkdir -p "$STATE"
  plog="$STATE/pip.log"
  log "bootstrap: pip install -e '.[dev]' (log: .state/pip.log)"
  if ! { "$VENV/bin/python" -m pip install -q --upgrade pip \
         && "$VENV/bin/python" -m pip install -q -e '.[dev]'; } >"$plog" 2>&1; then
    tail -n 40 "$plog" >&2
    die "bootstrap: pip install failed (full log: $plog)"
  fi
  touch "$MARKER"
fi

#!/usr/bin/env bash
# The three services as separate local processes (pids and logs under .state/services/).
#
# Usage: deploy/local/services.sh {start|stop|status}
#   start   migrate each service's database, start it, wait until /readyz answers 200
#   stop    SIGTERM, wait, then SIGKILL
# Env: ENROLLMENT_HTTP_PORT (8001), ASSESSMENT_HTTP_PORT (8002), SUBSIDY_HTTP_PORT (8003) and
#      every setting the services read (see README "Configuration"). Without API_TOKENS the
#      services get local tokens (tools/local_tokens.py: .state/tokens/local-tokens.json).
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
DIR="$STATE/services"
PY="$ROOT/.venv/bin/python"
SERVICES=(enrollment assessment subsidy)
mkdir -p "$DIR"
# The services default to production; this local stack runs them in development explicitly.
export ENVIRONMENT="${ENVIRONMENT:-development}"

port_of() {
  case "$1" in
    enrollment) echo "${ENROLLMENT_HTTP_PORT:-8001}" ;;
    assessment) echo "${ASSESSMENT_HTTP_PORT:-8002}" ;;
    subsidy)    echo "${SUBSIDY_HTTP_PORT:-8003}" ;;
  esac
}

running() { [ -f "$DIR/$1.pid" ] && kill -0 "$(cat "$DIR/$1.pid")" 2>/dev/null; }

ready() { "$PY" - "$1" <<'PY'
import sys, urllib.request
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/readyz", timeout=2) as r:
        sys.exit(0 if r.status == 200 else 1)
except Exception:
    sys.exit(1)
PY
}

start() {
  if [ -z "${API_TOKENS:-}" ]; then
    # Local tokens (an auditor, a reviewer per agency for the review console), made once.
    API_TOKENS="$(cd "$ROOT" && "$PY" -m tools.local_tokens "$STATE/tokens")"
    export API_TOKENS
    log "API tokens: $STATE/tokens/local-tokens.json (review console: http://127.0.0.1:$(port_of subsidy)/console/)"
  fi
  for s in "${SERVICES[@]}"; do
    if running "$s"; then log "$s: already running (pid $(cat "$DIR/$s.pid"))"; continue; fi
    (cd "$ROOT" && "$PY" -m "services.$s" migrate >>"$DIR/$s.log" 2>&1) \
      || { tail -n 20 "$DIR/$s.log" >&2; die "$s: migration failed (log: $DIR/$s.log)"; }
    # No subshell around the background job: it would keep the caller's stdout open.
    cd "$ROOT"
    nohup "$PY" -m "services.$s" run >>"$DIR/$s.log" 2>&1 </dev/null &
    echo $! >"$DIR/$s.pid"
  done
  local deadline=$((SECONDS + 90))
  for s in "${SERVICES[@]}"; do
    local port; port="$(port_of "$s")"
    until ready "$port"; do
      running "$s" || { tail -n 20 "$DIR/$s.log" >&2; die "$s: exited during start (log: $DIR/$s.log)"; }
      [ $SECONDS -lt $deadline ] || die "$s: not ready on :$port after 90 s (log: $DIR/$s.log)"
      sleep 0.5
    done
    log "$s: ready on http://127.0.0.1:$port (pid $(cat "$DIR/$s.pid"), log $DIR/$s.log)"
  done
}

stop() {
  for s in "${SERVICES[@]}"; do
    if ! running "$s"; then rm -f "$DIR/$s.pid"; continue; fi
    local pid; pid="$(cat "$DIR/$s.pid")"
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + 20))
    while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$DIR/$s.pid"
    log "$s: stopped"
  done
}

status() {
  local rc=0
  for s in "${SERVICES[@]}"; do
    if running "$s"; then
      if ready "$(port_of "$s")"; then log "$s: ready (pid $(cat "$DIR/$s.pid"))"
      else log "$s: running, not ready (pid $(cat "$DIR/$s.pid"))"; rc=1; fi
    else log "$s: stopped"; rc=1; fi
  done
  return $rc
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 {start|stop|status}" >&2; exit 2 ;;
esac

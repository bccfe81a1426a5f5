# shellcheck shell=bash
# Shared helpers for deploy/local/*.sh. Sourced, never executed.
# Sets ROOT (repo root), STATE (.state), and helpers for logging, deadlines and apt installs.
# STACK_STATE overrides STATE, so a second, private Kafka and PostgreSQL (with their own
# KAFKA_PORT, KAFKA_CONTROLLER_PORT and PGPORT) can run beside the default ones, e.g. for the
# fault tests: STACK_STATE=/tmp/x KAFKA_PORT=19092 KAFKA_CONTROLLER_PORT=19093 PGPORT=15432.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)"
STATE="${STACK_STATE:-$ROOT/.state}"
LOCAL_DIR="$ROOT/deploy/local"

log()  { printf '%s\n' "$*"; }
warn() { printf '%s\n' "$*" >&2; }
die()  { printf 'ERROR: %s\n' "$*" >&2; exit 1; }

is_root() { [ "$(id -u)" -eq 0 ]; }

# Is something listening on 127.0.0.1:$1? (bash /dev/tcp, no extra tools needed)
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# apt-get install the given packages (runs `apt-get update` once per process).
# Fails clearly when not root or apt-get is unavailable. Output goes to a log, shown on failure.
_APT_UPDATED=0
apt_install() {
  command -v apt-get >/dev/null 2>&1 || die "need packages [$*] but apt-get is not available; install them manually"
  is_root || die "need packages [$*] but not running as root; install them (e.g. sudo apt-get install -y $*) and retry"
  mkdir -p "$STATE"
  local alog="$STATE/apt.log"
  if [ "$_APT_UPDATED" -eq 0 ]; then
    log "apt: apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update >>"$alog" 2>&1 \
      || { tail -n 30 "$alog" >&2; die "apt-get update failed (full log: $alog)"; }
    _APT_UPDATED=1
  fi
  log "apt: installing $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >>"$alog" 2>&1 \
    || { tail -n 30 "$alog" >&2; die "apt-get install $* failed (full log: $alog)"; }
}

# ensure_cmd <command> <debian package>: install the package when the command is missing.
ensure_cmd() {
  command -v "$1" >/dev/null 2>&1 && return 0
  apt_install "$2"
  hash -r
  command -v "$1" >/dev/null 2>&1 || die "'$1' still missing after installing $2"
}

ensure_java()  { ensure_cmd java openjdk-17-jre-headless; }
ensure_maven() { ensure_java; ensure_cmd mvn maven; }

# Directory with PostgreSQL server binaries (initdb, pg_ctl, ...): $PG_BIN, else the newest
# /usr/lib/postgresql/<ver>/bin. Empty output if none.
pg_bindir() {
  if [ -n "${PG_BIN:-}" ]; then printf '%s\n' "$PG_BIN"; return; fi
  local d best
  # highest numeric version wins (glob order is lexical: 9 > 15)
  best="$(for d in /usr/lib/postgresql/*/bin; do [ -x "$d/initdb" ] && echo "$d"; done | sort -t/ -k5,5n | tail -n1)"
  printf '%s\n' "$best"
}

ensure_postgres() {
  [ -n "$(pg_bindir)" ] && return 0
  apt_install postgresql
  [ -n "$(pg_bindir)" ] || die "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin after install (set PG_BIN)"
}

#!/usr/bin/env bash
# The whole local dev/test stack: PostgreSQL + Kafka (see postgres.sh and kafka.sh).
#
# Usage: deploy/local/stack.sh {up|down|status}
#   up      fetch Kafka jars if needed, start PostgreSQL and Kafka, wait until both are ready
#   down    stop both
#   status  one line each; exit 0 only when both are running
# Env: everything postgres.sh and kafka.sh honour (PGPORT, KAFKA_PORT, KAFKA_CONTROLLER_PORT,
#      KAFKA_PARTITIONS, ...).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"

case "${1:-}" in
  up)
    "$HERE/kafka.sh" fetch
    "$HERE/postgres.sh" start
    "$HERE/kafka.sh" start
    ;;
  down)
    rc=0
    "$HERE/kafka.sh" stop || rc=$?
    "$HERE/postgres.sh" stop || rc=$?
    exit "$rc"
    ;;
  status)
    rc=0
    "$HERE/postgres.sh" status || rc=1
    "$HERE/kafka.sh" status || rc=1
    exit "$rc"
    ;;
  *) echo "usage: $0 {up|down|status}" >&2; exit 2 ;;
esac

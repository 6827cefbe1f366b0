#!/usr/bin/env bash
# Where the relay's CPU goes while draining, from a sampling profile: a private Postgres
# (initdb on a free port, autovacuum off), the shared RabbitMQ, `perf` sampling the relay
# and the Postgres backend of its leading session.
#
#   bench/profile_drain.sh <itrelay binary> [events] [rows per transaction]
#
# Build the binary with line tables so the profile names functions:
#   CARGO_PROFILE_RELEASE_DEBUG=line-tables-only cargo build --release
# Writes `events` tickets (one it_ticket_created event each) with the relay stopped, then
# runs `<binary> run` under `perf record` until nothing is pending, and prints the relay's
# CPU per event, its share by shared object, its top functions (self time) and who calls
# memmove (call graphs from DWARF), then the same for its Postgres backend (the session
# holding the leader lock). The PF-10 copies go to the relay's own dead-letter queue
# (capped at one message), as in storage_wal.sh. ITRELAY_PROFILE_KEEP=<dir> keeps the
# perf data files there.
set -euo pipefail

bin=$(realpath "$1")
events=${2:-100000}
per_tx=${3:-500}
here=$(cd "$(dirname "$0")/.." && pwd)
perf_pids=()
stop_more() { for pid in "${perf_pids[@]}"; do kill -INT "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true; done; }
. "$here/bench/private_postgres.sh" itrelay-profile-bench
start_postgres -c autovacuum=off
relay_env "$url"
install_itrelay "$bin"
n=0
while [ "$n" -lt "$events" ]; do
    sql "INSERT INTO it_tickets (organization_id, ticket_number, category, priority, subject, description, requester_id)
         SELECT '7f1c1c4e-8a2b-4d53-9a55-2a1e7b0c9d11', 'P-' || ($n + g), 'software', 'low', 'S', 'D',
                '22222222-2222-4222-8222-222222222222'
         FROM generate_series(1, $per_tx) AS g"
    n=$((n + per_tx))
done
sql "CHECKPOINT" >/dev/null

pending() { sql "SELECT count(*) FROM itrelay.pending"; }
"$bin" run & relay_pid=$!
perf record -q -e cpu-clock -F 1999 --call-graph dwarf,16384 -p "$relay_pid" -o "$dir/relay.data" 2>/dev/null & perf_pids+=($!)
backend=
while [ -z "$backend" ]; do
    # The leading session: the one holding the leader lock.
    backend=$(sql "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1
                   AND ((classid::bigint << 32) | objid::bigint) = hashtextextended('itrelay leader', 0)")
    [ -z "$backend" ] && sleep 0.05
done
perf record -q -e cpu-clock -F 1999 -p "$backend" -o "$dir/backend.data" 2>/dev/null & perf_pids+=($!)
ticks=$(getconf CLK_TCK)
cpu() { awk -v t="$ticks" '{ print ($14 + $15) / t }' "/proc/$1/stat"; }
started=$(date +%s.%N); relay_cpu0=$(cpu "$relay_pid"); backend_cpu0=$(cpu "$backend")
while [ "$(pending)" != 0 ]; do sleep 0.1; done
ended=$(date +%s.%N); relay_cpu=$(cpu "$relay_pid"); backend_cpu=$(cpu "$backend")
for pid in "${perf_pids[@]}"; do kill -INT "$pid"; wait "$pid" 2>/dev/null || true; done
perf_pids=()
kill "$relay_pid"; wait "$relay_pid" || true; relay_pid=

awk -v e="$events" -v s="$started" -v f="$ended" -v r0="$relay_cpu0" -v r="$relay_cpu" \
    -v b0="$backend_cpu0" -v b="$backend_cpu" 'BEGIN {
    printf "drain of %d events (%d per transaction): %.0f ev/s; CPU per event: relay %.1f us, its Postgres backend %.1f us\n",
        e, '"$per_tx"', e / (f - s), (r - r0) / e * 1e6, (b - b0) / e * 1e6 }'
report() { # $1: data file, $2: what
    echo; echo "## $2: share by shared object"
    perf report -i "$1" --stdio --no-children -g none --sort dso 2>/dev/null | grep -E '^ +[0-9]' | head -8 || true
    echo; echo "## $2: top functions (self)"
    perf report -i "$1" --stdio --no-children -g none --sort sym 2>/dev/null | grep -E '^ +[0-9]' | head -25 || true
}
report "$dir/relay.data" "relay"
echo; echo "## relay: who copies memory (callers of memmove)"
perf report -i "$dir/relay.data" --stdio --no-children --sort sym -S __memmove_avx512_unaligned_erms \
    -g caller,0.5,callee,function,percent --percent-limit 1 2>/dev/null | grep -v '^#' | grep -v '^$' | head -60 || true
report "$dir/backend.data" "its Postgres backend"
if [ -n "${ITRELAY_PROFILE_KEEP:-}" ]; then cp "$dir"/*.data "$ITRELAY_PROFILE_KEEP"/; fi

#!/usr/bin/env bash
# What delivering events costs the database's storage, measured alone: a private Postgres
# (initdb on a free port, autovacuum off, nobody else's WAL), the shared RabbitMQ.
#
#   bench/storage_wal.sh <itrelay binary> [events] [rows per transaction]
#
# Writes `events` tickets (one it_ticket_created event each) with the relay stopped, then
# runs `<binary> run` until nothing is pending, and prints, per event: the WAL the
# business transactions wrote, the WAL the relay wrote while draining; then the heap of
# the itrelay tables and their live and dead rows. Then writes as many again with the
# relay running (sustained), and prints the same. The PF-10 copies go to the relay's own
# dead-letter queue (capped at one message), so no subscriber queue is needed; that queue
# is deleted at the end, the three exchanges under `itrelay-storage-bench.` stay for the
# next run.
set -euo pipefail

bin=$(realpath "$1")
events=${2:-50000}
per_tx=${3:-500}
here=$(cd "$(dirname "$0")/.." && pwd)
. "$here/bench/private_postgres.sh" itrelay-storage-bench
start_postgres -c autovacuum=off
relay_env "$url"
install_itrelay "$bin"

lsn() { sql "SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint"; }
write() { # $1: tag
    local n=0
    while [ "$n" -lt "$events" ]; do
        sql "INSERT INTO it_tickets (organization_id, ticket_number, category, priority, subject, description, requester_id)
             SELECT '7f1c1c4e-8a2b-4d53-9a55-2a1e7b0c9d11', '$1-' || ($n + g), 'software', 'low', 'S', 'D',
                    '22222222-2222-4222-8222-222222222222'
             FROM generate_series(1, $per_tx) AS g"
        n=$((n + per_tx))
    done
}
pending() { sql "SELECT count(*) FROM itrelay.outbox WHERE state = 'pending'"; }
wait_drained() { while [ "$(pending)" != 0 ]; do sleep 0.2; done; }
tables() {
    sql "SELECT pg_stat_clear_snapshot()" >/dev/null
    sql "SELECT round(sum(pg_relation_size(c.oid)) / 1e6, 1) || ' MB heap, '
                || coalesce(sum(s.n_live_tup), 0) || ' live rows, ' || coalesce(sum(s.n_dead_tup), 0) || ' dead rows'
         FROM pg_class AS c LEFT JOIN pg_stat_user_tables AS s ON s.relid = c.oid
         WHERE c.relnamespace = 'itrelay'::regnamespace AND c.relkind = 'r'"
}
per_event() { awk -v a="$1" -v b="$2" -v n="$events" 'BEGIN { printf "%.1f", (b - a) / n }'; }

start=$(lsn); write PRE; written=$(lsn)
"$bin" run & relay_pid=$!
wait_drained; drained=$(lsn)
kill "$relay_pid"; wait "$relay_pid" || true; relay_pid=
sql "CHECKPOINT" >/dev/null
echo "drain of $events events ($per_tx per transaction), $("$bin" --version 2>/dev/null || echo itrelay):"
echo "  WAL writing: $(per_event "$start" "$written") B/event; draining: $(per_event "$written" "$drained") B/event"
echo "  itrelay tables after: $(tables)"
"$bin" run & relay_pid=$!
sleep 2
start=$(lsn); write LIVE; wait_drained; done_at=$(lsn)
kill "$relay_pid"; wait "$relay_pid" || true; relay_pid=
echo "the same again with the relay running:"
echo "  WAL writing and delivering: $(per_event "$start" "$done_at") B/event"
echo "  itrelay tables after: $(tables)"

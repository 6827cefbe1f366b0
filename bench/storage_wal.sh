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
pg_bin=${ITRELAY_TEST_PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)}
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
dir=$(mktemp -d /tmp/itrelay-storage-bench.XXXXXX)
prefix=itrelay-storage-bench.
chown postgres "$dir" 2>/dev/null || true
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
relay_pid=
cleanup() {
    [ -n "$relay_pid" ] && kill "$relay_pid" 2>/dev/null && wait "$relay_pid" 2>/dev/null
    as_pg "$pg_bin/pg_ctl" -D "$dir/data" stop -m immediate >/dev/null 2>&1 || true
    rm -rf "$dir"
    timeout 60 rabbitmqctl delete_queue "${prefix}dead-letter" >/dev/null 2>&1 || true
}
trap cleanup EXIT
as_pg "$pg_bin/initdb" -D "$dir/data" -U postgres -A trust >/dev/null
as_pg "$pg_bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c autovacuum=off" start >/dev/null
url="postgres://postgres@127.0.0.1:$port/postgres"
sql() { psql -X -q -At -v ON_ERROR_STOP=1 "$url" -c "$1"; }
psql -X -q -v ON_ERROR_STOP=1 "$url" -f "$here/sql/reference_schema.sql" >/dev/null
export ITRELAY__POSTGRES__URL=$url
export ITRELAY__AMQP__URL='amqp://guest:guest@127.0.0.1:5672/%2f'
export ITRELAY__AMQP__EXCHANGE_PREFIX=$prefix
export ITRELAY__AMQP__EXCHANGES__PF_10=${prefix}dead-letter
export ITRELAY__AMQP__DEAD_LETTER_QUEUE_TYPE=classic
export ITRELAY__AMQP__DEAD_LETTER_MAX_LENGTH=1
export ITRELAY__HTTP__ENABLED=false ITRELAY__CANARY__ENABLED=false ITRELAY__SCAN__ENABLED=false
export RUST_LOG=warn
"$bin" install >/dev/null
sql "INSERT INTO employees (employee_id, organization_id, employee_name, email) VALUES
     ('22222222-2222-4222-8222-222222222222', '7f1c1c4e-8a2b-4d53-9a55-2a1e7b0c9d11', 'Dana', 'd@example.com')"

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

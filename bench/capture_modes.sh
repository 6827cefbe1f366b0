#!/usr/bin/env bash
# The two capture modes side by side on one private Postgres with wal_level = logical
# (initdb on a free port, nobody else's load), the shared RabbitMQ.
#
#   bench/capture_modes.sh <itrelay binary> [events] [seconds]
#
# For each mode (outbox, wal), in a database of its own:
# - business writes: `pgbench -c 4 -j 2 -T seconds` committing one ticket per transaction
#   (one it_ticket_created event each) with the relay stopped, against the same with the
#   triggers disabled (no trigger); tx/s and the ratio;
# - drain: `events` tickets written in transactions of 500 with the relay stopped, then
#   `<binary> run` until every event is delivered; events/s, and the WAL written per
#   event while writing and while draining.
# The PF-10 copies go to the relay's own dead-letter queue (capped at one message), so
# no subscriber queue is needed; that queue is deleted at the end.
set -euo pipefail

bin=$(realpath "$1")
events=${2:-20000}
seconds=${3:-10}
here=$(cd "$(dirname "$0")/.." && pwd)
. "$here/bench/private_postgres.sh" itrelay-capture-bench
start_postgres -c wal_level=logical
relay_env ""
export ITRELAY__RETENTION__ENABLED=false
cat > "$dir/ticket.sql" <<EOF
INSERT INTO it_tickets (organization_id, ticket_number, category, priority, subject, description, requester_id)
VALUES ('$org', 'B-' || :client_id || '-' || random(), 'software', 'low', 'S', 'D', '$employee');
EOF

for mode in outbox wal; do
    db=bench_$mode
    psql -X -q "postgres://postgres@127.0.0.1:$port/postgres" -c "CREATE DATABASE $db"
    url="postgres://postgres@127.0.0.1:$port/$db"
    export ITRELAY__POSTGRES__URL=$url ITRELAY__POSTGRES__CAPTURE=$mode
    install_itrelay "$bin"
    tps() { as_pg "$pg_bin/pgbench" -n -c 4 -j 2 -T "$seconds" -f "$dir/ticket.sql" -h 127.0.0.1 -p "$port" -U postgres "$db" 2>/dev/null \
              | awk '/^tps/ { printf "%d", $3 }'; }
    ticket_count() { sql "SELECT count(*) FROM it_tickets"; }
    sql "ALTER TABLE it_tickets DISABLE TRIGGER USER"
    bare=$(tps)
    sql "ALTER TABLE it_tickets ENABLE TRIGGER USER"
    untriggered=$(ticket_count)
    with=$(tps)
    # The relay moves and delivers what pgbench wrote before the drain starts.
    before=$(( $(ticket_count) - untriggered ))
    "$bin" run & relay_pid=$!
    delivered() { sql "SELECT count(*) FROM itrelay.outbox WHERE state = 'delivered'"; }
    while [ "$(delivered)" -lt "$before" ]; do sleep 0.2; done
    kill "$relay_pid"; wait "$relay_pid" || true; relay_pid=
    sql "CHECKPOINT"
    lsn() { sql "SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint"; }
    start=$(lsn)
    n=0
    while [ "$n" -lt "$events" ]; do
        sql "INSERT INTO it_tickets (organization_id, ticket_number, category, priority, subject, description, requester_id)
             SELECT '$org', 'D-' || ($n + g), 'software', 'low', 'S', 'D', '$employee'
             FROM generate_series(1, 500) AS g"
        n=$((n + 500))
    done
    written=$(lsn)
    began=$(date +%s.%N)
    "$bin" run & relay_pid=$!
    while [ "$(delivered)" -lt "$((before + events))" ]; do sleep 0.05; done
    ended=$(date +%s.%N)
    drained=$(lsn)
    kill "$relay_pid"; wait "$relay_pid" || true; relay_pid=
    awk -v mode="$mode" -v bare="$bare" -v with="$with" -v n="$events" -v began="$began" -v ended="$ended" \
        -v start="$start" -v written="$written" -v drained="$drained" 'BEGIN {
        printf "%-6s business tx/s %d (no trigger %d: %.2f x) | drain %d events in %.2f s: %d ev/s | WAL/event writing %.0f B, draining %.0f B\n",
            mode, with, bare, with / bare, n, ended - began, n / (ended - began), (written - start) / n, (drained - written) / n }'
done

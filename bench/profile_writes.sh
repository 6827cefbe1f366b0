#!/usr/bin/env bash
# Where the business writes' time goes with itrelay's trigger: a private Postgres (initdb
# on a free port, autovacuum off, nobody else's load), one ticket inserted per
# transaction, the relay stopped.
#
#   bench/profile_writes.sh <itrelay binary> [seconds per run] [rounds]
#
# 1. As the e2e benchmark's database-cost phase (`pgbench -c 4 -j 2`): without the
#    trigger and with it, alternately, `rounds` times each: transactions per second, CPU
#    per transaction of the Postgres server (backends and background processes) and of
#    pgbench, the machine's busy share, WAL per transaction.
# 2. The trigger taken apart (`pgbench -c 1`, prepared, synchronous_commit off so that
#    the WAL flush at commit does not blur the CPU): latency per transaction without the
#    trigger; with the trigger function emptied (the statement trigger and its
#    transition table alone); with itrelay.enqueue_events emptied (the query over the
#    new rows, the payload, the call); whole; and the outbox INSERT on its own against
#    `SELECT 1`. The functions are replaced on the private server and restored.
# 3. A `perf record -a` profile of one more run of each configuration of 1., by process
#    and by function (self).
set -euo pipefail

bin=$(realpath "$1")
seconds=${2:-10}
rounds=${3:-3}
here=$(cd "$(dirname "$0")/.." && pwd)
perf_pids=()
stop_more() { for pid in "${perf_pids[@]}"; do kill -INT "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true; done; }
. "$here/bench/private_postgres.sh" itrelay-profile-writes
start_postgres -c autovacuum=off
relay_env "$url"
install_itrelay "$bin"
cat > "$dir/ticket.sql" <<EOF
\set n random(1, 1000000000)
INSERT INTO it_tickets (organization_id, ticket_number, category, subcategory, priority, subject, description, requester_id)
VALUES ('$org', 'PGB-' || :n, 'network', 'vpn', 'medium', 'VPN drops after the update on the laptop',
        'The VPN client disconnects every few minutes since the last update; reconnecting works for a while.',
        '$employee');
EOF

ticks=$(getconf CLK_TCK)
# CPU seconds (user + system) of the processes whose command matches $1, living ones.
cpu_of() {
    local total=0 pid
    for pid in $(pgrep -f "$1" || true); do
        [ -r "/proc/$pid/stat" ] || continue
        total=$(awk -v t="$total" -v k="$ticks" '{ print t + ($14 + $15) / k }' "/proc/$pid/stat" 2>/dev/null || echo "$total")
    done
    echo "$total"
}
busy() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8, $2 + $3 + $4 + $5 + $6 + $7 + $8 }' /proc/stat; }
wal() { sql "SELECT pg_current_wal_lsn() - '0/0'::pg_lsn"; }
postmaster=$(head -1 "$dir/data/postmaster.pid")

# One run: prints "tps cpu_pg_per_tx_us cpu_pgbench_per_tx_us busy wal_per_tx"
run() {
    sql "TRUNCATE it_tickets, itrelay.events, itrelay.copies; CHECKPOINT"
    local w0 b0 p0 out tps txs w1 b1 p1 pg
    w0=$(wal); read -r b0 t0 < <(busy)
    # The server's CPU: the postmaster's children, those living at the end (the
    # backends of pgbench's connections end with it, so their CPU is counted by the
    # postmaster's children-time fields: cutime and cstime).
    p0=$(awk -v k="$ticks" '{ print ($14 + $15 + $16 + $17) / k }' "/proc/$postmaster/stat")
    bg0=$(for pid in $(pgrep -P "$postmaster"); do awk -v k="$ticks" '{ print ($14 + $15) / k }' "/proc/$pid/stat" 2>/dev/null; done | paste -sd+ | bc)
    out=$(/usr/bin/time -f "pgbench_cpu %U %S" pgbench -n -c 4 -j 2 -T "$seconds" -f "$dir/ticket.sql" "$url" 2>&1)
    w1=$(wal); read -r b1 t1 < <(busy)
    p1=$(awk -v k="$ticks" '{ print ($14 + $15 + $16 + $17) / k }' "/proc/$postmaster/stat")
    bg1=$(for pid in $(pgrep -P "$postmaster"); do awk -v k="$ticks" '{ print ($14 + $15) / k }' "/proc/$pid/stat" 2>/dev/null; done | paste -sd+ | bc)
    tps=$(awk '/^tps/ { print $3; exit }' <<<"$out")
    txs=$(awk '/^number of transactions actually processed/ { print $6 }' <<<"$out")
    read -r pu ps < <(awk '/^pgbench_cpu/ { print $2, $3 }' <<<"$out")
    awk -v tps="$tps" -v n="$txs" -v p0="$p0" -v p1="$p1" -v g0="$bg0" -v g1="$bg1" \
        -v pu="$pu" -v ps="$ps" -v b0="$b0" -v b1="$b1" -v t0="$t0" -v t1="$t1" -v w0="$w0" -v w1="$w1" \
        'BEGIN { printf "%.0f %.1f %.1f %.0f %.0f\n", tps, ((p1 - p0) + (g1 - g0)) / n * 1e6,
                 (pu + ps) / n * 1e6, (b1 - b0) / (t1 - t0) * 100, (w1 - w0) / n }'
}

echo "| configuration | tx/s | Postgres CPU per tx | pgbench CPU per tx | machine busy | WAL per tx |"
echo "|---|---|---|---|---|---|"
for round in $(seq "$rounds"); do
    sql "ALTER TABLE it_tickets DISABLE TRIGGER USER"
    read -r tps pg pb b w < <(run)
    echo "| no trigger (round $round) | $tps | $pg µs | $pb µs | $b % | $w B |"
    sql "ALTER TABLE it_tickets ENABLE TRIGGER USER"
    read -r tps pg pb b w < <(run)
    echo "| itrelay's trigger (round $round) | $tps | $pg µs | $pb µs | $b % | $w B |"
done

echo
echo "| one client, one-row transactions (µs per transaction, round) | $(seq -s ' | ' "$rounds") |"
echo "|---|$(printf -- '---|%.0s' $(seq "$rounds"))"
one() { # $1: pgbench script; prints µs per transaction
    sql "TRUNCATE it_tickets, itrelay.events, itrelay.copies; CHECKPOINT"
    PGOPTIONS="-c synchronous_commit=off" pgbench -n -c 1 -T "$seconds" -M prepared -f "$1" "$url" 2>/dev/null |
        awk '/^latency average/ { printf "%.0f", $4 * 1000 }'
}
trigger_fn=$(sql "SELECT pg_get_functiondef('itrelay.itrelay_notify_ticket_created'::regproc)")
enqueue_fn=$(sql "SELECT pg_get_functiondef('itrelay.enqueue_events'::regproc)")
restore() { psql -X -q -v ON_ERROR_STOP=1 "$url" <<<"$trigger_fn;
$enqueue_fn;" >/dev/null; }
payload=$(sql "SELECT jsonb_build_object('event_type', 'it_ticket_created', 'ticket_id', gen_random_uuid(),
                   'ticket_number', 'T-1', 'category', 'network', 'priority', 'medium',
                   'subject', 'VPN drops after the update on the laptop',
                   'description', 'The VPN client disconnects every few minutes since the last update.',
                   'requester_id', '$employee', 'organization_id', '$org')")
echo "SELECT 1;" > "$dir/select.sql"
echo "INSERT INTO itrelay.events (event_type, payload, source_table, entity)
      VALUES ('it_ticket_created', '$payload', 'it_tickets', 'ticket_id:1');" > "$dir/outbox.sql"
declare -A rows
for round in $(seq "$rounds"); do
    sql "ALTER TABLE it_tickets DISABLE TRIGGER USER"
    rows[none]+=" | $(one "$dir/ticket.sql")"
    sql "ALTER TABLE it_tickets ENABLE TRIGGER USER"
    sql "CREATE OR REPLACE FUNCTION itrelay.itrelay_notify_ticket_created() RETURNS trigger
         LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
         AS \$\$ BEGIN RETURN NULL; END \$\$"
    rows[empty_trigger]+=" | $(one "$dir/ticket.sql")"
    restore
    sql "CREATE OR REPLACE FUNCTION itrelay.enqueue_events(p_source_table text, p_events itrelay.new_event[])
         RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
         SET plan_cache_mode = force_generic_plan AS \$\$ BEGIN RETURN; END \$\$"
    rows[empty_enqueue]+=" | $(one "$dir/ticket.sql")"
    restore
    rows[whole]+=" | $(one "$dir/ticket.sql")"
    rows[select]+=" | $(one "$dir/select.sql")"
    rows[outbox]+=" | $(one "$dir/outbox.sql")"
done
echo "| INSERT of a ticket, no trigger${rows[none]} |"
echo "| the trigger function emptied: the statement trigger, its transition table${rows[empty_trigger]} |"
echo "| itrelay.enqueue_events emptied: the query over the new rows, the payload, the call${rows[empty_enqueue]} |"
echo "| itrelay's trigger, whole${rows[whole]} |"
echo "| \`SELECT 1\`${rows[select]} |"
echo "| an itrelay.events INSERT on its own${rows[outbox]} |"

profile() { # $1: label
    sql "TRUNCATE it_tickets, itrelay.events, itrelay.copies; CHECKPOINT"
    perf record -q -a -e cpu-clock -F 999 -g -o "$dir/$1.data" 2>/dev/null & perf_pids+=($!)
    sleep 0.5
    pgbench -n -c 4 -j 2 -T "$seconds" -f "$dir/ticket.sql" "$url" 2>/dev/null | awk '/^number of transactions actually processed/ { print $6 }' > "$dir/$1.txs"
    kill -INT "${perf_pids[-1]}"; wait "${perf_pids[-1]}" 2>/dev/null || true
    perf_pids=()
    echo; echo "## $1: $(cat "$dir/$1.txs") transactions; samples by command"
    perf report -i "$dir/$1.data" --stdio --no-children -g none --sort comm 2>/dev/null | grep -E '^ +[0-9]' | head -8 || true
    echo; echo "## $1: top functions of postgres (self)"
    perf report -i "$dir/$1.data" --stdio --no-children -g none --comm postgres --sort sym 2>/dev/null | grep -E '^ +[0-9]' | head -30 || true
}
sql "ALTER TABLE it_tickets DISABLE TRIGGER USER"
profile no-trigger
sql "ALTER TABLE it_tickets ENABLE TRIGGER USER"
profile trigger

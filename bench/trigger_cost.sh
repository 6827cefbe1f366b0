#!/usr/bin/env bash
# Where a business transaction's time goes in itrelay's trigger, on a private Postgres
# (initdb on a free port, nobody else's load), outbox capture.
#
#   bench/trigger_cost.sh <itrelay binary> [transactions]
#
# - per row, in transactions of one 500-ticket INSERT (`pgbench -c 1`, `transactions` of
#   them): the insert with the trigger against the same with the trigger disabled;
# - per statement, in a loop of 20,000 one-row INSERTs inside one transaction, with the
#   trigger and without it;
# - per call, in the same loop: the trigger's payload, `itrelay.enqueue` (one event, as a
#   DBA's trigger calls it), and the steps of recording an event on their own (the outbox
#   row's INSERT, the redaction), with the loop's own cost taken off.
# Prints a Markdown table.
set -euo pipefail

bin=$(realpath "$1")
transactions=${2:-60}
here=$(cd "$(dirname "$0")/.." && pwd)
. "$here/bench/private_postgres.sh" itrelay-trigger-cost
start_postgres
relay_env "$url"
install_itrelay "$bin"
cat > "$dir/tickets.sql" <<EOF
INSERT INTO it_tickets (organization_id, ticket_number, category, priority, subject, description, requester_id)
SELECT '$org', 'T-' || n, 'network', 'medium', 'VPN drops after the update on the laptop',
       'The VPN client disconnects every few minutes since the last update; reconnecting works for a while.',
       '$employee'
FROM generate_series(1, 500) AS n;
EOF

# Microseconds per row of `transactions` transactions of 500 tickets.
per_row() {
    sql "TRUNCATE it_tickets, itrelay.events, itrelay.copies; CHECKPOINT"
    pgbench -n -c 1 -t "$transactions" -f "$dir/tickets.sql" "$url" 2>/dev/null |
        awk '/^latency average/ { printf "%.1f", $4 * 1000 / 500 }'
}
with_trigger=$(per_row)
sql "ALTER TABLE it_tickets DISABLE TRIGGER itrelay_ticket_created_trigger"
without_trigger=$(per_row)
sql "ALTER TABLE it_tickets ENABLE TRIGGER itrelay_ticket_created_trigger"

payload="jsonb_strip_nulls(jsonb_build_object('event_type', 'it_ticket_created',
    'ticket_id', gen_random_uuid(), 'ticket_number', 'T-1', 'category', 'network',
    'priority', 'medium', 'subject', 'VPN drops after the update on the laptop',
    'description', 'The VPN client disconnects every few minutes since the last update; reconnecting works for a while.',
    'requester_id', '$employee', 'organization_id', '$org'))"
# Microseconds per iteration of `body` (v: the payload), less the empty loop's.
per_call() {
    psql -X -q -At -v ON_ERROR_STOP=1 "$url" <<EOF | tail -1
BEGIN;
CREATE TEMP TABLE payload AS SELECT $payload AS p;
CREATE FUNCTION pg_temp.loop(body text) RETURNS float8 LANGUAGE plpgsql AS \$\$
DECLARE
    started timestamptz := clock_timestamp();
BEGIN
    EXECUTE format('DO \$do\$ DECLARE v jsonb := (SELECT p FROM payload); x text; y boolean;
                    BEGIN FOR i IN 1..20000 LOOP %s; END LOOP; END \$do\$', body);
    RETURN extract(epoch FROM clock_timestamp() - started) * 1e6 / 20000;
END \$\$;
SELECT round((pg_temp.loop('$1') - pg_temp.loop('x := NULL'))::numeric, 1);
ROLLBACK;
EOF
}
one_row="INSERT INTO it_tickets (organization_id, ticket_number, category, priority, subject, description, requester_id)
    VALUES (''$org'', ''T-'' || i, ''network'', ''medium'', ''VPN drops'', ''The VPN client disconnects.'', ''$employee'')"
one_with=$(per_call "$one_row")
sql "ALTER TABLE it_tickets DISABLE TRIGGER itrelay_ticket_created_trigger"
one_without=$(per_call "$one_row")
sql "ALTER TABLE it_tickets ENABLE TRIGGER itrelay_ticket_created_trigger"
enqueue=$(per_call "PERFORM itrelay.enqueue(''it_ticket_created'', ''it_tickets'', v)")
insert=$(per_call "INSERT INTO itrelay.events (event_type, payload, source_table, entity) VALUES (''it_ticket_created'', v, ''it_tickets'', ''ticket_id:x'')")
redact=$(per_call "v := itrelay.redact(v)")
build=$(per_call "v := ${payload//\'/\'\'}")

cat <<EOF
| step | µs |
|---|---|
| a ticket in one INSERT of 500, with itrelay's trigger | $with_trigger |
| the same, trigger disabled | $without_trigger |
| a one-row INSERT, with itrelay's trigger | $one_with |
| the same, trigger disabled | $one_without |
| the trigger's payload (\`jsonb_build_object\` of a ticket) | $build |
| \`itrelay.enqueue\`, one event | $enqueue |
| an outbox row's INSERT on its own | $insert |
| \`itrelay.redact\` on its own | $redact |
EOF

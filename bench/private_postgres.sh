# Sourced by the benchmark scripts: a private Postgres (initdb on a free port, nobody
# else's load) and the relay's environment for it, against the shared RabbitMQ.
#
#   . "$here/bench/private_postgres.sh" <name>      # sets dir, port, prefix, url; traps EXIT
#   start_postgres [-c setting=value ...]            # initdb and start
#   relay_env <database url>                         # exports the relay's ITRELAY__* variables
#   install_itrelay <itrelay binary>                 # reference schema, itrelay, requester
#   sql <statement>                                  # runs it on $url, unaligned output
#
# The relay's PF-10 copies go to its own dead-letter queue (capped at one message), so no
# subscriber queue is needed; that queue is deleted at exit with the server. A script
# that starts more processes defines `stop_more` to end them first; `relay_pid`, if set,
# is ended too.

pg_bin=${ITRELAY_TEST_PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)}
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
dir=$(mktemp -d "/tmp/$1.XXXXXX")
prefix=$1.
chown postgres "$dir" 2>/dev/null || true
relay_pid=
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
cleanup() {
    if declare -F stop_more >/dev/null; then stop_more; fi
    [ -n "$relay_pid" ] && kill "$relay_pid" 2>/dev/null && wait "$relay_pid" 2>/dev/null
    as_pg "$pg_bin/pg_ctl" -D "$dir/data" stop -m immediate >/dev/null 2>&1 || true
    rm -rf "$dir"
    timeout 60 rabbitmqctl delete_queue "${prefix}dead-letter" >/dev/null 2>&1 || true
}
trap cleanup EXIT

start_postgres() {
    as_pg "$pg_bin/initdb" -D "$dir/data" -U postgres -A trust >/dev/null
    as_pg "$pg_bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w \
        -o "-p $port -k $dir -c listen_addresses=127.0.0.1 $*" start >/dev/null
}

# The database the script works in (a script may point it elsewhere), and the sample
# tickets' organization and requester.
url="postgres://postgres@127.0.0.1:$port/postgres"
org=7f1c1c4e-8a2b-4d53-9a55-2a1e7b0c9d11
employee=22222222-2222-4222-8222-222222222222
sql() { psql -X -q -At -v ON_ERROR_STOP=1 "$url" -c "$1"; }

# Into $url: the reference schema, itrelay installed by the binary $1 (with the relay's
# environment, which the caller exports first) and the requester of the sample tickets.
install_itrelay() {
    psql -X -q -v ON_ERROR_STOP=1 "$url" -f "$here/sql/reference_schema.sql" >/dev/null
    "$1" install >/dev/null
    sql "INSERT INTO employees (employee_id, organization_id, employee_name, email)
         VALUES ('$employee', '$org', 'Ana', 'ana@example.com')"
}

relay_env() {
    export ITRELAY__POSTGRES__URL=$1
    export ITRELAY__AMQP__URL='amqp://guest:guest@127.0.0.1:5672/%2f'
    export ITRELAY__AMQP__EXCHANGE_PREFIX=$prefix
    export ITRELAY__AMQP__EXCHANGES__PF_10=${prefix}dead-letter
    export ITRELAY__AMQP__DEAD_LETTER_QUEUE_TYPE=classic
    export ITRELAY__AMQP__DEAD_LETTER_MAX_LENGTH=1
    export ITRELAY__HTTP__ENABLED=false ITRELAY__CANARY__ENABLED=false ITRELAY__SCAN__ENABLED=false
    export RUST_LOG=warn
}

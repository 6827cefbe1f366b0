-- itrelay install, schema version 2.
--
-- Creates the relay's own schema `itrelay` (the outbox and its bookkeeping) and one
-- trigger per event on the IT module's tables, each named itrelay_..._trigger so that it
-- never replaces a trigger of the IT module's own. Each trigger writes the event to the
-- outbox in the business transaction and wakes the relay with NOTIFY on the channel
-- stored in `itrelay.settings`: the event commits with the business write or not at all.
--
-- Idempotent: applying it again changes nothing. `itrelay install` applies this very file,
-- storing its `postgres.channel` (`it_events` by default); with psql, the channel is
-- `it_events` on a first install and is kept afterwards, unless set for the session:
--   psql -v ON_ERROR_STOP=1 -f sql/install.sql
--   psql -v ON_ERROR_STOP=1 -c 'SET itrelay.channel = my_events' -f sql/install.sql
-- The triggers go on the IT tables found on the search_path (see sql/reference_schema.sql
-- for the columns each reads). A table that does not exist gets no trigger, with a NOTICE
-- saying so; `itrelay check` lists the triggers installed and missing.
--
-- Upgrades: this file also brings any earlier version of the schema to this one, in
-- place (each step below is idempotent and says which install it upgrades), keeping
-- every outbox row; it refuses to downgrade a newer schema. Needs PostgreSQL 14 or later.

BEGIN;

-- One installer at a time.
DO $$ BEGIN PERFORM pg_advisory_xact_lock(hashtext('itrelay install')); END $$;

-- PostgreSQL 14 or later (CREATE OR REPLACE TRIGGER; the relay's session settings), and
-- never over a newer itrelay's schema.
DO $$
DECLARE
    installed integer;
BEGIN
    IF current_setting('server_version_num')::integer < 140000 THEN
        RAISE EXCEPTION 'itrelay needs PostgreSQL 14 or later; this server is %',
            current_setting('server_version');
    END IF;
    IF to_regclass('itrelay.schema_version') IS NOT NULL THEN
        SELECT max(version) INTO installed FROM itrelay.schema_version;
        IF installed > 2 THEN
            RAISE EXCEPTION 'itrelay schema version % is installed, newer than this install (version 2): not downgrading', installed
                USING HINT = 'Install with the itrelay release that installed it, or a newer one.';
        END IF;
    END IF;
END;
$$;

CREATE SCHEMA IF NOT EXISTS itrelay;

-- Everything itrelay puts on the IT tables is named itrelay_...: the IT module names its
-- own triggers it_..._trigger. Installs before this one used such names too; their
-- triggers go (only those whose function is itrelay's), then their trigger functions.
DO $$
DECLARE
    old record;
BEGIN
    FOR old IN
        SELECT t.tgname, t.tgrelid::regclass AS on_table
        FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid
        WHERE p.pronamespace = 'itrelay'::regnamespace AND NOT t.tgisinternal
          AND t.tgname NOT LIKE 'itrelay\_%'
        ORDER BY 2, 1
    LOOP
        EXECUTE format('DROP TRIGGER %I ON %s', old.tgname, old.on_table);
    END LOOP;
    FOR old IN
        SELECT p.oid::regprocedure AS function
        FROM pg_proc p
        WHERE p.pronamespace = 'itrelay'::regnamespace AND p.prorettype = 'trigger'::regtype
          AND p.proname LIKE 'it\_notify\_%'
    LOOP
        EXECUTE format('DROP FUNCTION %s', old.function);
    END LOOP;
END;
$$;

CREATE TABLE IF NOT EXISTS itrelay.schema_version (
    version      integer PRIMARY KEY,
    installed_at timestamptz NOT NULL DEFAULT now()
);

-- ==== Storage: the events, what the relay has settled, and the outbox view ====
--
-- Every event is written once, by itrelay.enqueue, and on the common path never written
-- again: delivery is recorded per batch in itrelay.progress (a floor below which every
-- id is settled, and the ids above it settled since), not by rewriting the event. Only
-- the rare cases are written to the event's own row (failed, held, replayed). The
-- events are partitioned by id range, so retention removes whole settled partitions
-- (itrelay.retire_partitions) and the table stays small whether or not autovacuum runs.
-- itrelay.outbox is a view over them with each event's state, for DBAs and tools.

-- Every event, in commit order of its id (docs/ordering.md).
CREATE TABLE IF NOT EXISTS itrelay.events (
    id           bigint GENERATED ALWAYS AS IDENTITY,
    -- Fixed at insert: the AMQP message_id of every copy, so consumers can de-duplicate.
    event_id     uuid NOT NULL DEFAULT gen_random_uuid(),
    event_type   text NOT NULL,
    payload      jsonb NOT NULL,
    -- The business table the trigger fired on, or 'notify' for events that arrived as
    -- a whole JSON notification.
    source_table text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    -- pending: what became of it is in itrelay.progress (pending until settled there,
    -- then delivered). The rest are recorded on the row itself: queued: put back to
    -- pending by a replay or a DBA, whatever itrelay.progress says; held: confirmed on
    -- some subscriber exchanges, its other copies wait in itrelay.copies for a retry;
    -- delivered: every copy confirmed after a hold or a replay; failed: the event itself
    -- was dead-lettered with last_error, kept for inspection and replay.
    state        text NOT NULL DEFAULT 'pending'
                 CHECK (state IN ('pending', 'queued', 'held', 'delivered', 'failed')),
    -- Attempts and error of a row whose publication failed or that was recorded on
    -- its row; 0 and NULL for events delivered at the first try.
    attempts     integer NOT NULL DEFAULT 0,
    last_error   text,
    delivered_at timestamptz,
    -- The entity the event is about, as `<key field>:<value>` (`ticket_id:…`): events of
    -- one entity reach each subscriber in the order of their ids.
    entity       text,
    PRIMARY KEY (id)
) PARTITION BY RANGE (id);

-- Ids no range partition covers land here, so an insert never fails for want of a
-- partition (the relay down for long, a jump in ids). itrelay.extend_partitions creates
-- the next partitions above whatever this holds; retention empties it once settled.
CREATE TABLE IF NOT EXISTS itrelay.events_default PARTITION OF itrelay.events DEFAULT;

-- The rows recorded on their own (queued, held, delivered after a hold, failed): few.
-- No entry for a pending row, so an event's insert writes none.
CREATE INDEX IF NOT EXISTS events_recorded ON itrelay.events (id) WHERE state <> 'pending';

-- What the relay has settled, updated once per batch. Every id below floor is settled:
-- delivered, unless its row records otherwise. Ids in settled (all at or above floor)
-- are settled too, as ranges [id, id + 1) of numeric, which hold the last possible id
-- too. The floor is the relay's claim floor (src/floor.rs): it passes an id
-- only once no transaction that could still commit a row below it is running.
-- recorded_at: when the relay last recorded a batch.
-- partition_span: how many ids each partition of itrelay.events holds.
CREATE TABLE IF NOT EXISTS itrelay.progress (
    singleton         boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    floor             bigint NOT NULL DEFAULT 0,
    settled           nummultirange NOT NULL DEFAULT '{}',
    recorded_at       timestamptz,
    partition_span    bigint NOT NULL DEFAULT 100000 CHECK (partition_span > 0)
) WITH (fillfactor = 20);
INSERT INTO itrelay.progress DEFAULT VALUES ON CONFLICT DO NOTHING;

-- Creates the range partitions of itrelay.events up to p_ahead spans above the next id,
-- each ending on a multiple of the span: the first above every id already in the default
-- partition (on a first call, from p_from's span, or the next id's). Each is created
-- empty and attached, which does not block inserts. Returns how many it created.
-- Attaching locks the default partition exclusively, so it waits for every statement
-- reading itrelay.events (a DBA's long query), and while it waits, the relay's claims and
-- any reader queue behind it. So it waits at most a moment for each lock (lock_timeout),
-- and what it cannot lock now is left to the next call: until then new ids land in the
-- default partition, which loses nothing.
CREATE OR REPLACE FUNCTION itrelay.extend_partitions(p_ahead integer DEFAULT 2,
    p_from bigint DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET lock_timeout = '100ms'
AS $$
DECLARE
    v_span    numeric := (SELECT partition_span FROM itrelay.progress);
    v_next    numeric;
    v_lo      numeric;
    v_hi      numeric;
    v_created integer := 0;
    v_name    text;
BEGIN
    -- Another call (or itrelay.retire_partitions) is at work: it is left to that one.
    IF NOT pg_try_advisory_xact_lock(hashtext('itrelay partitions')) THEN
        RETURN 0;
    END IF;
    -- Writers into the default partition wait for this call: no row lands in the range
    -- of a partition being attached.
    BEGIN
        LOCK TABLE itrelay.events_default IN EXCLUSIVE MODE;
    EXCEPTION WHEN lock_not_available THEN
        RETURN 0;
    END;
    SELECT coalesce(s.last_value, s.start_value - 1) + 1 INTO v_next
    FROM pg_sequences AS s
    WHERE s.schemaname || '.' || s.sequencename = pg_get_serial_sequence('itrelay.events', 'id');
    SELECT max((regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \(''?(-?\d+)''?\)'))[1]::numeric)
    INTO v_lo
    FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid
    WHERE i.inhparent = 'itrelay.events'::regclass AND c.oid <> 'itrelay.events_default'::regclass;
    v_lo := coalesce(v_lo, floor(coalesce(p_from, v_next) / v_span) * v_span);
    v_lo := greatest(v_lo, (SELECT max(id) + 1 FROM itrelay.events_default));
    WHILE v_lo < v_next + p_ahead * v_span LOOP
        v_hi := least((floor(v_lo / v_span) + 1) * v_span, 9223372036854775807);
        EXIT WHEN v_hi <= v_lo;
        v_name := 'events_' || v_lo;
        BEGIN
            EXECUTE format('CREATE TABLE itrelay.%I (LIKE itrelay.events INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', v_name);
            EXECUTE format('ALTER TABLE itrelay.events ATTACH PARTITION itrelay.%I FOR VALUES FROM (%s) TO (%s)',
                           v_name, v_lo, v_hi);
        EXCEPTION WHEN lock_not_available THEN
            RETURN v_created; -- this one's table is rolled back with its attachment
        END;
        v_created := v_created + 1;
        v_lo := v_hi;
    END LOOP;
    RETURN v_created;
END;
$$;

-- Removes the partitions of itrelay.events whose every event is settled and delivered
-- (none failed, held or queued, none with a copy in itrelay.copies) and older than
-- p_max_age, at most p_limit of them: truncated, which frees their space at once and
-- leaves no dead rows, then dropped. The default partition is emptied, never dropped.
-- Waits at most a moment for each lock: what it cannot lock now is left to the next
-- call. Returns how many events it removed.
CREATE OR REPLACE FUNCTION itrelay.retire_partitions(p_max_age interval, p_limit integer)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_floor   bigint := (SELECT floor FROM itrelay.progress);
    v_part    record;
    v_rows    bigint;
    v_ready   boolean;
    v_removed bigint := 0;
    v_done    integer := 0;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('itrelay partitions'));
    PERFORM set_config('lock_timeout', '100ms', true);
    FOR v_part IN
        SELECT c.oid::regclass AS part, c.oid = 'itrelay.events_default'::regclass AS is_default,
               (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \(''?(-?\d+)''?\)'))[1]::numeric AS upper
        FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'itrelay.events'::regclass
        ORDER BY 3 NULLS LAST
    LOOP
        EXIT WHEN v_done >= p_limit;
        CONTINUE WHEN v_part.upper > v_floor;
        v_rows := -1;
        BEGIN
            -- Locked first: no insert into it (the default partition) commits after the
            -- check and before the truncation.
            EXECUTE format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', v_part.part);
            EXECUTE format(
                'SELECT count(*), coalesce(bool_and(e.id < $1 AND e.state IN (''pending'', ''delivered'')
                        AND coalesce(e.delivered_at, e.created_at) < now() - $2
                        AND NOT EXISTS (SELECT 1 FROM itrelay.copies AS c WHERE c.outbox_id = e.id)), true)
                 FROM %s AS e', v_part.part)
            INTO v_rows, v_ready USING v_floor, p_max_age;
            IF v_ready AND v_rows > 0 THEN
                EXECUTE format('TRUNCATE %s', v_part.part);
                v_removed := v_removed + v_rows;
            END IF;
        EXCEPTION WHEN lock_not_available THEN
            v_ready := false; -- busy: the next call tries again
        END;
        CONTINUE WHEN NOT v_ready OR v_part.is_default;
        BEGIN
            EXECUTE format('DROP TABLE %s', v_part.part);
            v_done := v_done + 1;
        EXCEPTION WHEN lock_not_available THEN
            NULL; -- emptied already; dropped by a later call
        END;
    END LOOP;
    RETURN v_removed;
END;
$$;

-- ==== Upgrade: the storage of installs before issue 17 ====
-- Those kept every event in a table itrelay.outbox and rewrote its row to record
-- delivery. Its rows move to itrelay.events as they are, ids, states and all, behind a
-- lock that holds writers until the new layout is in place; the floor goes to the first
-- pending event. So nothing pending is lost or sent twice, and nothing settled is sent
-- again. Stop the relay before, and start the new one after.
DO $$
DECLARE
    v_first bigint;
    v_last  bigint;
BEGIN
    IF (SELECT relkind FROM pg_class WHERE oid = to_regclass('itrelay.outbox')) IS DISTINCT FROM 'r' THEN
        RETURN;
    END IF;
    LOCK TABLE itrelay.outbox IN ACCESS EXCLUSIVE MODE;
    -- Version 1 had no entity column: its events were not ordered by entity.
    ALTER TABLE itrelay.outbox ADD COLUMN IF NOT EXISTS entity text;
    SELECT min(id), max(id) INTO v_first, v_last FROM itrelay.outbox;
    IF v_last IS NOT NULL THEN
        PERFORM setval(pg_get_serial_sequence('itrelay.events', 'id'), v_last);
        PERFORM itrelay.extend_partitions(2, v_first);
        INSERT INTO itrelay.events (id, event_id, event_type, payload, source_table, created_at,
                                    state, attempts, last_error, delivered_at, entity)
        OVERRIDING SYSTEM VALUE
        SELECT id, event_id, event_type, payload, source_table, created_at, state, attempts,
               last_error, delivered_at, entity
        FROM itrelay.outbox;
    END IF;
    UPDATE itrelay.progress
    SET floor = coalesce((SELECT min(id) FROM itrelay.outbox WHERE state = 'pending'), v_last + 1, 0),
        settled = '{}';
    -- Also drops the copies' foreign key to it.
    DROP TABLE itrelay.outbox CASCADE;
END;
$$;
-- ==== End of the upgrade ====

-- Partitions for the ids to come; the relay extends them as ids are used.
SELECT itrelay.extend_partitions();

-- Every event with its state (pending, held, delivered, failed): itrelay.events seen
-- through itrelay.progress. delivered_at is set for events recorded on their row only;
-- itrelay.progress.recorded_at says when the relay last recorded a batch.
CREATE OR REPLACE VIEW itrelay.outbox AS
SELECT e.id, e.event_id, e.event_type, e.payload, e.source_table, e.created_at,
       CASE WHEN e.state = 'queued' THEN 'pending'
            WHEN e.state <> 'pending' THEN e.state
            WHEN e.id < (SELECT floor FROM itrelay.progress)
                 OR (SELECT settled FROM itrelay.progress) @> e.id::numeric THEN 'delivered'
            ELSE 'pending' END AS state,
       -- Delivered at the first try: one attempt, not recorded on the row.
       CASE WHEN e.state = 'pending' AND e.attempts = 0
                 AND (e.id < (SELECT floor FROM itrelay.progress)
                      OR (SELECT settled FROM itrelay.progress) @> e.id::numeric) THEN 1
            ELSE e.attempts END AS attempts,
       e.last_error, e.delivered_at, e.entity
FROM itrelay.events AS e;

-- The pending events alone, found without reading the settled ones: the ranges of ids
-- at or above the floor not settled, and the rows queued again.
CREATE OR REPLACE VIEW itrelay.pending AS
SELECT e.*
FROM itrelay.progress AS p,
     unnest(nummultirange(numrange(p.floor, 9223372036854775808)) - p.settled) AS g(ids),
     LATERAL (SELECT * FROM itrelay.events AS e
              WHERE e.id >= lower(g.ids)::bigint
                AND e.id <= (upper(g.ids) - 1)::bigint
                AND e.state = 'pending') AS e
UNION ALL
SELECT * FROM itrelay.events WHERE state = 'queued';

-- Rows written into the view (by a DBA, or a tool) go to itrelay.events.
CREATE OR REPLACE FUNCTION itrelay.outbox_insert()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    INSERT INTO itrelay.events (event_id, event_type, payload, source_table, created_at, state,
                                attempts, last_error, delivered_at, entity)
    VALUES (coalesce(NEW.event_id, gen_random_uuid()), NEW.event_type, NEW.payload,
            NEW.source_table, coalesce(NEW.created_at, now()), coalesce(NEW.state, 'pending'),
            coalesce(NEW.attempts, 0), NEW.last_error, NEW.delivered_at, NEW.entity)
    RETURNING id, event_id, created_at, state INTO NEW.id, NEW.event_id, NEW.created_at, NEW.state;
    RETURN NEW;
END;
$$;
-- (On the view itself, not an IT table: not one of the triggers `itrelay check` lists.)
CREATE OR REPLACE
    TRIGGER itrelay_outbox_insert INSTEAD OF INSERT ON itrelay.outbox
    FOR EACH ROW EXECUTE FUNCTION itrelay.outbox_insert();

-- ==== End of storage ====
-- The copies (event x subscriber module) that were not confirmed at the first try:
-- waiting: nacked by the broker (a full queue, ...) or held behind an earlier waiting
-- copy of the same entity for the same module, sent again at next_attempt_at;
-- failed: dead-lettered for this destination alone (returned: no queue bound), kept for
-- inspection and replay. A confirmed copy leaves no row here.
CREATE TABLE IF NOT EXISTS itrelay.copies (
    -- The event's id in itrelay.events (no foreign key: retention drops whole partitions,
    -- and keeps every partition that still has a copy here).
    outbox_id       bigint NOT NULL,
    module          text NOT NULL,
    entity          text,
    state           text NOT NULL CHECK (state IN ('waiting', 'failed')),
    attempts        integer NOT NULL DEFAULT 0,
    last_error      text,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (outbox_id, module)
);
CREATE INDEX IF NOT EXISTS copies_waiting ON itrelay.copies (outbox_id) WHERE state = 'waiting';

-- Which payload field names the entity of each event type (the catalog's entity_key),
-- and whether itrelay.enqueue must lock the entity: true where the business write does
-- not lock the entity's own row (an assignment's asset, a time-based scan's subject).
CREATE TABLE IF NOT EXISTS itrelay.event_entities (
    event_type   text PRIMARY KEY,
    entity_field text NOT NULL,
    lock_entity  boolean NOT NULL DEFAULT false
);
ALTER TABLE itrelay.event_entities ADD COLUMN IF NOT EXISTS lock_entity boolean NOT NULL DEFAULT false;
-- generated from catalog/ (entity_key, lock_entity): begin
INSERT INTO itrelay.event_entities (event_type, entity_field, lock_entity) VALUES
    ('it_account_deactivated', 'account_id', false),
    ('it_account_provisioned', 'account_id', false),
    ('it_asset_assigned', 'asset_id', true),
    ('it_asset_disposed', 'asset_id', false),
    ('it_asset_maintenance_required', 'asset_id', true),
    ('it_asset_purchased', 'asset_id', false),
    ('it_cab_review_required', 'change_id', false),
    ('it_change_approved', 'change_id', false),
    ('it_change_implemented', 'change_id', false),
    ('it_change_rejected', 'change_id', false),
    ('it_change_rolled_back', 'change_id', false),
    ('it_change_scheduled', 'change_id', false),
    ('it_change_submitted', 'change_id', false),
    ('it_contract_expiring', 'contract_id', true),
    ('it_critical_vulnerability_detected', 'vulnerability_id', false),
    ('it_license_compliance_alert', 'license_id', true),
    ('it_license_created', 'license_id', false),
    ('it_license_expiring', 'license_id', true),
    ('it_license_renewed', 'license_id', false),
    ('it_patch_deployment_overdue', 'patch_id', true),
    ('it_provisioning_completed', 'onboarding_instance_id', false),
    ('it_provisioning_started', 'onboarding_instance_id', false),
    ('it_purchase_request_approved', 'request_id', false),
    ('it_purchase_request_received', 'request_id', false),
    ('it_purchase_request_submitted', 'request_id', false),
    ('it_report_failed', 'run_id', false),
    ('it_report_generated', 'run_id', false),
    ('it_security_incident_created', 'incident_id', false),
    ('it_sla_breached', 'ticket_id', true),
    ('it_ticket_created', 'ticket_id', false),
    ('it_ticket_status_changed', 'ticket_id', false)
ON CONFLICT (event_type) DO UPDATE
SET entity_field = excluded.entity_field, lock_entity = excluded.lock_entity;
-- generated from catalog/: end

-- One row per entity whose events itrelay.enqueue orders with a row lock (see there).
CREATE TABLE IF NOT EXISTS itrelay.entity_locks (
    entity text PRIMARY KEY
);

-- Whether the relay is idle, waiting for a notification: the leader then holds the
-- advisory lock `itrelay idle` (src/outbox.rs). While it drains (under load) it does not,
-- and triggers skip NOTIFY: NOTIFY takes a database-wide lock at commit that would
-- serialise every business transaction. A trigger that finds the relay busy holds that
-- lock shared until its transaction ends, so the relay goes idle only once every such
-- transaction has ended, and the claim it sends next sees their events: no event waits
-- for a NOTIFY nobody sent. Lock state, unlike a row, reads the same under every
-- isolation level, and ends with the relay's session.

-- Schema version 1 before the idle lock kept the flag in a table.
DROP TABLE IF EXISTS itrelay.relay_state;

-- Settings fixed at install. channel: the NOTIFY channel the triggers wake the relay
-- on; a relay configured for another channel refuses to start.
CREATE TABLE IF NOT EXISTS itrelay.settings (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    channel   text NOT NULL CHECK (channel ~ '^[a-z_][a-z0-9_]{0,62}$')
);
INSERT INTO itrelay.settings (channel)
VALUES (coalesce(nullif(current_setting('itrelay.channel', true), ''), 'it_events'))
ON CONFLICT (singleton) DO UPDATE SET channel = excluded.channel
    WHERE nullif(current_setting('itrelay.channel', true), '') IS NOT NULL;

-- capture: how itrelay.enqueue records an event: 'outbox' (a row in itrelay.events, the
-- default) or 'wal' (a transactional logical message; see WAL capture below). Changed
-- only by itrelay.set_capture.
ALTER TABLE itrelay.settings ADD COLUMN IF NOT EXISTS capture text NOT NULL DEFAULT 'outbox'
    CHECK (capture IN ('outbox', 'wal'));

-- The leader's lease (src/lease.rs): the leading relay's backend, renewed through that
-- backend every third of relay.lease_secs. A standby that finds it older than
-- relay.lease_secs ends that backend, which releases the leader lock, and takes over.
CREATE UNLOGGED TABLE IF NOT EXISTS itrelay.leader (
    singleton     boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    pid           integer NOT NULL,
    backend_start timestamptz NOT NULL,
    channel       text NOT NULL,
    renewed_at    timestamptz NOT NULL
);

-- The catalog's sensitive fields ([[sensitive]] in catalog/*.toml): a regular expression
-- matching any of their names, and the reference replacing one in an object.
-- generated from catalog/ (sensitive): begin
CREATE OR REPLACE FUNCTION itrelay.sensitive_names()
RETURNS text
LANGUAGE sql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT '(license_key)' $$;

CREATE OR REPLACE FUNCTION itrelay.sensitive_reference(p_field text, p_object jsonb)
RETURNS text
LANGUAGE sql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE lower(p_field)
        WHEN 'license_key' THEN 'it_licenses/'
            || CASE WHEN p_object->>'license_id' ~ '^[A-Za-z0-9_-]{1,64}$'
                    THEN p_object->>'license_id' ELSE 'unknown' END
            || '/license_key'
    END
$$;
-- generated from catalog/ (sensitive): end

-- Secrets never enter the outbox: a sensitive field (license_key), in any case, is
-- removed at any depth and replaced by <field>_ref (it_licenses/<license_id>/license_key);
-- a string that is itself JSON is redacted the same way; other text that uses the name as
-- a key (followed by : or =, escapes of letters, digits and _ decoded) is cut there and
-- ends in ***. The relay applies the same rules again (src/redact.rs). Payloads that
-- cannot hold a name (none in their text, and no \u00 escape) are returned as they are.
CREATE OR REPLACE FUNCTION itrelay.redact(p_value jsonb)
RETURNS jsonb
LANGUAGE plpgsql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_result jsonb;
    v_key text;
    v_item jsonb;
    v_text text;
    v_hex text;
    v_at integer;
    v_reference text;
BEGIN
    IF p_value::text !~* (itrelay.sensitive_names() || '|\\u00') THEN
        RETURN p_value;
    END IF;
    CASE jsonb_typeof(p_value)
    WHEN 'object' THEN
        v_result := '{}';
        FOR v_key, v_item IN SELECT key, value FROM jsonb_each(p_value) LOOP
            v_reference := itrelay.sensitive_reference(v_key, p_value);
            IF v_reference IS NOT NULL THEN
                v_result := v_result || jsonb_build_object(lower(v_key) || '_ref', v_reference);
            ELSE
                v_result := v_result || jsonb_build_object(v_key, itrelay.redact(v_item));
            END IF;
        END LOOP;
        RETURN v_result;
    WHEN 'array' THEN
        RETURN (SELECT coalesce(jsonb_agg(itrelay.redact(a.value) ORDER BY a.n), '[]'::jsonb)
                FROM jsonb_array_elements(p_value) WITH ORDINALITY AS a(value, n));
    WHEN 'string' THEN
        v_text := p_value #>> '{}';
        IF ltrim(v_text) ~ '^[{\["]' THEN
            BEGIN
                v_item := v_text::jsonb;
                v_result := itrelay.redact(v_item);
                RETURN CASE WHEN v_result = v_item THEN p_value ELSE to_jsonb(v_result::text) END;
            EXCEPTION WHEN invalid_text_representation THEN
                NULL; -- not JSON: masked as text below
            END;
        END IF;
        FOR v_hex IN SELECT DISTINCT m[1] FROM regexp_matches(v_text, '\\u00([0-9A-Fa-f]{2})', 'g') AS m LOOP
            IF chr(('x' || v_hex)::bit(8)::integer) ~ '^[A-Za-z0-9_]$' THEN
                v_text := replace(v_text, '\u00' || v_hex, chr(('x' || v_hex)::bit(8)::integer));
            END IF;
        END LOOP;
        v_at := regexp_instr(v_text, itrelay.sensitive_names() || '["''\\[:space:]]*[:=]', 1, 1, 0, 'i');
        RETURN CASE WHEN v_at > 0 THEN to_jsonb(left(v_text, v_at - 1) || '***') ELSE p_value END;
    ELSE
        RETURN p_value;
    END CASE;
END;
$$;

-- ==== WAL capture (capture 'wal'; docs/wal-capture.md) ====
--
-- With `wal_level = logical`, itrelay.enqueue can record an event as a transactional
-- logical message instead of a row: it costs the business transaction far less, and it
-- commits (or rolls back) with it all the same. The relay moves the messages of committed
-- transactions from a logical replication slot into itrelay.events, in commit order
-- (itrelay.wal_ingest), and relays them from there as any other event: dead letters,
-- retries, replay and status work the same in both modes. Switching modes:
-- itrelay.set_capture (and, from 'wal' back to 'outbox', itrelay.wal_retire).

-- The slot the messages are read from: one per database (a slot belongs to the cluster).
CREATE OR REPLACE FUNCTION itrelay.wal_slot()
RETURNS name
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT format('itrelay_%s', oid)::name FROM pg_database WHERE datname = current_database() $$;

-- The message prefix carries a key only the installing role can read: anyone may call
-- pg_logical_emit_message, so a message counts as an event only with this key. No role
-- is granted this table; itrelay.enqueue and itrelay.wal_ingest read it as its owner.
CREATE TABLE IF NOT EXISTS itrelay.wal_key (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    key       uuid NOT NULL DEFAULT gen_random_uuid()
);
INSERT INTO itrelay.wal_key DEFAULT VALUES ON CONFLICT DO NOTHING;

-- How far the slot has been moved into itrelay.events: every transaction whose commit
-- ends at or below lsn is there. Written in the same transaction as the events, so a
-- relay that dies before the slot is advanced takes nothing twice; the slot itself is
-- advanced to lsn afterwards (it can never pass an event not yet in itrelay.events).
CREATE TABLE IF NOT EXISTS itrelay.wal_progress (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    lsn         pg_lsn NOT NULL DEFAULT '0/0',
    ingested_at timestamptz
);
INSERT INTO itrelay.wal_progress DEFAULT VALUES ON CONFLICT DO NOTHING;

-- Moves the events of committed transactions from the slot into itrelay.events, in
-- commit order, at most about p_limit decoded changes (whole transactions; NULL: all),
-- and advances the slot to what was moved before. Returns the events taken, and the
-- messages with itrelay's prefix but not its key (refused: not itrelay's). One caller
-- at a time: the others wait on itrelay.wal_progress. Does nothing without the slot.
CREATE OR REPLACE FUNCTION itrelay.wal_ingest(p_limit integer, OUT taken bigint, OUT refused bigint)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_slot    name := itrelay.wal_slot();
    v_prefix  bytea := convert_to('itrelay:' || (SELECT key FROM itrelay.wal_key), 'UTF8') || '\x00'::bytea;
    v_from    pg_lsn;
    v_upto    pg_lsn;
    v_changes bigint;
    v_last    pg_lsn;
BEGIN
    taken := 0;
    refused := 0;
    SELECT lsn INTO v_from FROM itrelay.wal_progress FOR UPDATE;
    IF NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = v_slot) THEN
        RETURN;
    END IF;
    -- What the last call moved (committed) can go: the slot retains only the rest.
    PERFORM pg_replication_slot_advance(v_slot, v_from)
    FROM pg_replication_slots
    WHERE slot_name = v_slot AND confirmed_flush_lsn < v_from;
    v_upto := pg_current_wal_flush_lsn();
    -- pgoutput, version 1, messages only (the publication holds no table). A message is
    -- 'M', flags (1), its lsn (8), the prefix ending in a zero byte, the content's length
    -- (4), the content; each transaction's messages come between its 'B' and its 'C',
    -- whose lsn is where its commit ends, in commit order.
    WITH changes AS MATERIALIZED (
        SELECT c.lsn, c.n, get_byte(c.data, 0) AS kind, c.data,
               min(c.lsn) FILTER (WHERE get_byte(c.data, 0) = 67)
                   OVER (ORDER BY c.n DESC ROWS UNBOUNDED PRECEDING) AS commit_end
        FROM pg_logical_slot_peek_binary_changes(v_slot, v_upto, p_limit,
                 'proto_version', '1', 'publication_names', 'itrelay', 'messages', 'true')
             WITH ORDINALITY AS c(lsn, xid, data, n)
    ), events AS (
        SELECT c.n, convert_from(substring(c.data FROM 11 + length(v_prefix) + 4), 'UTF8')::jsonb AS m
        FROM changes AS c
        WHERE c.kind = 77 AND substring(c.data FROM 11 FOR length(v_prefix)) = v_prefix
          AND c.commit_end > v_from
    ), inserted AS (
        INSERT INTO itrelay.events (event_id, event_type, payload, source_table, created_at, entity)
        SELECT (m ->> 'event_id')::uuid, m ->> 'event_type', m -> 'payload', m ->> 'source_table',
               (m ->> 'created_at')::timestamptz, m ->> 'entity'
        FROM events
        ORDER BY n
        RETURNING 1
    )
    SELECT count(*),
           max(c.lsn) FILTER (WHERE c.kind = 67),
           count(*) FILTER (WHERE c.kind = 77 AND c.commit_end > v_from
                              AND substring(c.data FROM 11 FOR 8) = '\x697472656c61793a'::bytea -- 'itrelay:'
                              AND substring(c.data FROM 11 FOR length(v_prefix)) <> v_prefix),
           (SELECT count(*) FROM inserted)
    INTO v_changes, v_last, refused, taken
    FROM changes AS c;
    -- Every commit up to v_upto was decoded unless the limit cut the peek short.
    UPDATE itrelay.wal_progress
    SET lsn = greatest(v_from, v_last, CASE WHEN p_limit IS NULL OR v_changes < p_limit THEN v_upto END),
        ingested_at = now();
END;
$$;

-- Switches how events are recorded. To 'wal': the server must run with
-- wal_level = logical and the slot must exist (create it first, outside a transaction
-- that wrote anything: SELECT pg_create_logical_replication_slot(itrelay.wal_slot(),
-- 'pgoutput')); events already in the outbox are relayed first, as their ids come first.
-- To 'outbox': waits for every transaction that recorded events as messages to end, then
-- moves their events into itrelay.events before any event is recorded as a row; then
-- call itrelay.wal_retire(). Returns the mode before.
CREATE OR REPLACE FUNCTION itrelay.set_capture(p_capture text)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_before text := (SELECT capture FROM itrelay.settings);
BEGIN
    IF p_capture IS NULL OR p_capture NOT IN ('outbox', 'wal') THEN
        RAISE EXCEPTION 'capture %: valid: outbox, wal', coalesce(p_capture, 'NULL');
    END IF;
    IF p_capture = 'wal' THEN
        IF current_setting('wal_level') <> 'logical' THEN
            RAISE EXCEPTION 'capture wal needs wal_level = logical; this server runs with wal_level = %',
                current_setting('wal_level')
                USING HINT = 'Set wal_level = logical in postgresql.conf and restart the server, or keep capture outbox.';
        END IF;
        IF NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = itrelay.wal_slot()) THEN
            RAISE EXCEPTION 'capture wal needs the replication slot %, which does not exist', itrelay.wal_slot()
                USING HINT = format('Create it first, in a transaction of its own: SELECT pg_create_logical_replication_slot(%L, %L);',
                                    itrelay.wal_slot(), 'pgoutput');
        END IF;
        IF NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = 'itrelay') THEN
            -- Empty: pgoutput needs a publication; itrelay's messages need no table.
            CREATE PUBLICATION itrelay;
        END IF;
    ELSIF v_before = 'wal' THEN
        PERFORM pg_advisory_xact_lock(hashtextextended('itrelay capture', 0));
    END IF;
    UPDATE itrelay.settings SET capture = p_capture WHERE capture <> p_capture;
    IF p_capture = 'outbox' AND v_before = 'wal' THEN
        PERFORM itrelay.wal_ingest(NULL);
    END IF;
    RETURN v_before;
END;
$$;

-- After a switch back to 'outbox', once no transaction that began before it is running
-- (`itrelay install` waits for that): moves what is left in the slot into itrelay.events,
-- then drops the slot and the publication, so that the server no longer keeps WAL for
-- them. Returns the events moved.
CREATE OR REPLACE FUNCTION itrelay.wal_retire()
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_taken bigint;
BEGIN
    IF (SELECT capture FROM itrelay.settings) <> 'outbox' THEN
        RAISE EXCEPTION 'capture is wal: the slot is still in use'
            USING HINT = 'Switch to outbox first: SELECT itrelay.set_capture(''outbox'');';
    END IF;
    SELECT taken INTO v_taken FROM itrelay.wal_ingest(NULL);
    PERFORM pg_drop_replication_slot(slot_name) FROM pg_replication_slots
    WHERE slot_name = itrelay.wal_slot();
    DROP PUBLICATION IF EXISTS itrelay;
    RETURN v_taken;
END;
$$;

-- ==== End of WAL capture ====

-- One event, as the triggers collect them: its type and its payload.
DO $$
BEGIN
    CREATE TYPE itrelay.new_event AS (event_type text, payload jsonb);
EXCEPTION WHEN duplicate_object THEN
    NULL;
END;
$$;

-- Records events, in the order given, and wakes the relay if it is idle. At most one
-- NOTIFY per transaction: identical notifications in a transaction are folded into one.
-- The row-change triggers call it once per statement with the events of every row the
-- statement changed, so a statement of many rows pays for these statements once.
--
-- Per-entity order: the relay publishes in id order, so of two transactions writing
-- events of one entity, the second must take its ids after the first has committed or
-- rolled back. Where the business write locks the entity's row (a ticket's UPDATE) the
-- row lock does that. Where it does not (an assignment's asset, a scan's subject), this
-- takes a row lock on the entity's row in itrelay.entity_locks, before the events take
-- their ids, held until the transaction ends: in the entities' order, so two
-- transactions locking the same entities never wait for each other in a cycle. A row
-- lock, not an advisory lock: a transaction of a million events takes no shared lock
-- memory.
--
-- Under capture 'wal' each event is a transactional logical message instead of a row
-- (see WAL capture above), which the relay moves into itrelay.events in commit order.
-- The entities' locks are taken all the same, so that events of one entity keep their
-- order across a switch of mode. A transaction recording to WAL holds the lock
-- `itrelay capture` shared until it ends: a switch back to the outbox waits for it.
--
-- plan_cache_mode: planned once per session, whatever the number of events (a plan made
-- for each call's array would cost more than the call).
CREATE OR REPLACE FUNCTION itrelay.enqueue_events(p_source_table text, p_events itrelay.new_event[])
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_wal     boolean := false;
    v_event   record;
    v_wal_key text;
BEGIN
    IF coalesce(cardinality(p_events), 0) = 0 THEN
        RETURN;
    END IF;
    -- Locks each row, inserting it first if need be; never rewrites it.
    INSERT INTO itrelay.entity_locks (entity)
    SELECT DISTINCT e.entity_field || ':' || (u.payload ->> e.entity_field)
    FROM unnest(p_events) AS u
    JOIN itrelay.event_entities AS e ON e.event_type = u.event_type
    WHERE e.lock_entity AND u.payload ->> e.entity_field IS NOT NULL
    ORDER BY 1
    ON CONFLICT (entity) DO UPDATE SET entity = excluded.entity WHERE false;
    IF (SELECT capture FROM itrelay.settings) = 'wal' THEN
        PERFORM pg_advisory_xact_lock_shared(hashtextextended('itrelay capture', 0));
        -- Read again under the lock: a switch to the outbox may have committed meanwhile.
        v_wal := (SELECT capture FROM itrelay.settings) = 'wal';
    END IF;
    IF v_wal THEN
        v_wal_key := 'itrelay:' || (SELECT key FROM itrelay.wal_key);
        FOR v_event IN
            SELECT u.event_type, u.payload,
                   (SELECT e.entity_field || ':' || (u.payload ->> e.entity_field)
                    FROM itrelay.event_entities AS e WHERE e.event_type = u.event_type) AS entity
            FROM unnest(p_events) WITH ORDINALITY AS u (event_type, payload, n)
            ORDER BY u.n
        LOOP
            PERFORM pg_logical_emit_message(true, v_wal_key,
                jsonb_build_object('event_id', gen_random_uuid(), 'event_type', v_event.event_type,
                                   'source_table', p_source_table, 'entity', v_event.entity,
                                   'created_at', now(),
                                   'payload', itrelay.redact(v_event.payload))::text);
        END LOOP;
    ELSE
        -- Ids are taken in the order the rows are inserted: the events' order.
        INSERT INTO itrelay.events (event_type, payload, source_table, entity)
        SELECT u.event_type, itrelay.redact(u.payload), p_source_table,
               (SELECT e.entity_field || ':' || (u.payload ->> e.entity_field)
                FROM itrelay.event_entities AS e WHERE e.event_type = u.event_type)
        FROM unnest(p_events) WITH ORDINALITY AS u (event_type, payload, n)
        ORDER BY u.n;
    END IF;
    IF NOT pg_try_advisory_xact_lock_shared(hashtextextended('itrelay idle', 0)) THEN
        PERFORM pg_notify((SELECT channel FROM itrelay.settings), '');
    END IF;
END;
$$;

-- Records one event (see itrelay.enqueue_events).
CREATE OR REPLACE FUNCTION itrelay.enqueue(p_event_type text, p_source_table text, p_payload jsonb)
RETURNS void
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT itrelay.enqueue_events(p_source_table, ARRAY[ROW(p_event_type, p_payload)::itrelay.new_event]);
$$;

-- The durable API for a DBA's own triggers and producers: records one event, with
-- source_table 'enqueue'. Nobody may call it until a DBA grants it to a producing role:
--   GRANT USAGE ON SCHEMA itrelay TO app_writer;
--   GRANT EXECUTE ON FUNCTION itrelay.enqueue(text, jsonb) TO app_writer;
-- Events come only from the installed triggers and the roles granted this (or the
-- three-argument form above, which also names the source table).
CREATE OR REPLACE FUNCTION itrelay.enqueue(p_event_type text, p_payload jsonb)
RETURNS void
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT itrelay.enqueue(p_event_type, 'enqueue', p_payload);
$$;

-- ==== Row-change events: generated from catalog/ by src/catalog/render.rs, do not edit ====

-- itrelay's triggers on tables that are no longer the mapped ones go (not those on
-- itrelay's own relations, such as the outbox view).
DO $$
DECLARE
    old record;
BEGIN
    FOR old IN
        SELECT t.tgname, t.tgrelid::regclass AS on_table
        FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid
        JOIN pg_class c ON c.oid = t.tgrelid
        WHERE p.pronamespace = 'itrelay'::regnamespace AND NOT t.tgisinternal
          AND c.relnamespace <> 'itrelay'::regnamespace
          AND t.tgrelid <> ALL (array_remove(ARRAY[
              to_regclass('it_access_accounts'),
              to_regclass('it_asset_assignments'),
              to_regclass('it_assets'),
              to_regclass('it_changes'),
              to_regclass('it_licenses'),
              to_regclass('it_maintenance_requests'),
              to_regclass('it_onboarding_instances'),
              to_regclass('it_purchase_requests'),
              to_regclass('it_report_runs'),
              to_regclass('it_security_incidents'),
              to_regclass('it_tickets'),
              to_regclass('it_vulnerabilities')]::regclass[], NULL))
    LOOP
        EXECUTE format('DROP TRIGGER %I ON %s', old.tgname, old.on_table);
    END LOOP;
END;
$$;

-- it_account_deactivated (it_access_accounts): update where status becomes 'deactivated'.
-- it_account_provisioned (it_access_accounts): update where status becomes 'active'.
CREATE OR REPLACE FUNCTION itrelay.itrelay_notify_account_status()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    events itrelay.new_event[] := '{}';
    changed_rows refcursor;
    changed record;
BEGIN
    IF TG_OP = 'UPDATE' THEN
        OPEN changed_rows FOR SELECT n.r AS new, o.r AS old
            FROM (SELECT itrelay_row, row_number() OVER () FROM new_rows AS itrelay_row) AS n (r, i)
            JOIN (SELECT itrelay_row, row_number() OVER () FROM old_rows AS itrelay_row) AS o (r, i) USING (i)
            WHERE (n.r).status IN ('active', 'deactivated') AND (n.r).status IS DISTINCT FROM (o.r).status
            ORDER BY i;
    END IF;
    LOOP
        FETCH changed_rows INTO changed;
        EXIT WHEN NOT FOUND;
        NEW := changed.new;
        OLD := changed.old;
        DECLARE
            event_type text := CASE NEW.status WHEN 'active' THEN 'it_account_provisioned'
                                               ELSE 'it_account_deactivated' END;
        BEGIN
            events := events || ROW(event_type, jsonb_strip_nulls(jsonb_build_object(
                'event_type', event_type,
                'organization_id', NEW.organization_id,
                'account_id', NEW.account_id,
                'employee_id', NEW.employee_id,
                'system_name', NEW.system_name,
                'account_username', NEW.account_username,
                'previous_status', OLD.status,
                'new_status', NEW.status,
                'changed_by', NEW.updated_by,
                'reason', CASE WHEN NEW.status = 'deactivated' THEN NEW.deactivation_reason END)))::itrelay.new_event;
        END;
    END LOOP;
    CLOSE changed_rows;
    PERFORM itrelay.enqueue_events('it_access_accounts', events);
    RETURN NULL;
END;
$$;

DO $$
BEGIN
    IF to_regclass('it_access_accounts') IS NULL THEN
        RAISE NOTICE 'itrelay: no table it_access_accounts, so no trigger itrelay_account_status_trigger';
    ELSE
        CREATE OR REPLACE TRIGGER itrelay_account_status_trigger
            AFTER UPDATE ON it_access_accounts
            REFERENCING NEW TABLE AS new_rows OLD TABLE AS old_rows
            FOR EACH STATEMENT
            EXECUTE FUNCTION itrelay.itrelay_notify_account_status();
    END IF;
END;
$$;

-- it_asset_assigned (it_asset_assignments): insert.
CREATE OR REPLACE FUNCTION itrelay.itrelay_notify_asset_assigned()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    events itrelay.new_event[] := '{}';
    changed_rows refcursor;
    changed record;
BEGIN
    IF TG_OP = 'INSERT' THEN
        OPEN changed_rows FOR SELECT n.r AS new, o.r AS old
            FROM (SELECT itrelay_row, row_number() OVER () FROM new_rows AS itrelay_row) AS n (r, i)
            CROSS JOIN (SELECT itrelay_row FROM (SELECT o.* FROM (SELECT) AS one LEFT JOIN new_rows AS o ON false)
                AS itrelay_row) AS o (r)
            ORDER BY i;
    END IF;
    LOOP
        FETCH changed_rows INTO changed;
        EXIT WHEN NOT FOUND;
        NEW := changed.new;
        OLD := changed.old;
        BEGIN
            events := events || ROW('it_asset_assigned', jsonb_strip_nulls(jsonb_build_object(
                'event_type', 'it_asset_assigned',
                'asset_id', NEW.asset_id,
                'employee_id', NEW.employee_id,
                'assignment_date', NEW.assignment_date,
                'previous_assignee_id', NEW.previous_assignee_id,
                'location', CASE WHEN NEW.site_id IS NOT NULL THEN jsonb_build_object(
                    'site_id', NEW.site_id,
                    'building', NEW.building,
                    'room', NEW.room) END,
                'organization_id', NEW.organization_id,
                'assigned_by', NEW.assigned_by)))::itrelay.new_event;
        END;
    END LOOP;
    CLOSE changed_rows;
    PERFORM itrelay.enqueue_events('it_asset_assignments', events);
    RETURN NULL;
END;
$$;

DO $$
BEGIN
    IF to_regclass('it_asset_assignments') IS NULL THEN
        RAISE NOTICE 'itrelay: no table it_asset_assignments, so no trigger itrelay_asset_assigned_trigger';
    ELSE
        CREATE OR REPLACE TRIGGER itrelay_asset_assigned_trigger
            AFTER INSERT ON it_asset_assignments
            REFERENCING NEW TABLE AS new_rows
            FOR EACH STATEMENT
            EXECUTE FUNCTION itrelay.itrelay_notify_asset_assigned();
    END IF;
END;
$$;

-- it_asset_disposed (it_assets): update where status becomes 'disposed'.
CREATE OR REPLACE FUNCTION itrelay.itrelay_notify_asset_disposed()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    events itrelay.new_event[] := '{}';
    changed_rows refcursor;
    changed record;
BEGIN
    IF TG_OP = 'UPDATE' THEN
        OPEN changed_rows FOR SELECT n.r AS new, o.r AS old
            FROM (SELECT itrelay_row, row_number() OVER () FROM new_rows AS itrelay_row) AS n (r, i)
            JOIN (SELECT itrelay_row, row_number() OVER () FROM old_rows AS itrelay_row) AS o (r, i) USING (i)
            WHERE (n.r).status = 'disposed' AND (o.r).status IS DISTINCT FROM 'disposed'
            ORDER BY i;
    END IF;
    LOOP
        FETCH changed_rows INTO changed;
        EXIT WHEN NOT FOUND;
        NEW := changed.new;
        OLD := changed.old;
        BEGIN
            events := events || ROW('it_asset_disposed', jsonb_strip_nulls(jsonb_build_object(
                'event_type', 'it_asset_disposed',
                'asset_id', NEW.asset_id,
                'asset_tag', NEW.asset_tag,
                'asset_name', NEW.asset_name,
                'disposal_method', NEW.disposal_method,
                'disposal_date', NEW.disposal_date,
                'disposal_value', NEW.disposal_value,
                'data_sanitization_method', NEW.data_sanitization_method,
                'certificate_of_destruction', NEW.certificate_of_destruction,
                'disposed_by', NEW.updated_by,
                'organization_id', NEW.organization_id)))::itrelay.new_event;
        END;
    END LOOP;
    CLOSE changed_rows;
    PERFORM itrelay.enqueue_events('it_assets', events);
    RETURN NULL;
END;
$$;

DO $$
BEGIN
    IF to_regclass('it_assets') IS NULL THEN
        RAISE NOTICE 'itrelay: no table it_assets, so no trigger itrelay_asset_disposed_trigger';
    ELSE
        CREATE OR REPLACE TRIGGER itrelay_asset_disposed_trigger
            AFTER UPDATE ON it_assets
            REFERENCING NEW TABLE AS new_rows OLD TABLE AS old_rows
            FOR EACH STATEMENT
            EXECUTE FUNCTION itrelay.itrelay_notify_asset_disposed();
    END IF;
END;
$$;

-- it_asset_maintenance_required (it_maintenance_requests): insert.
CREATE OR REPLACE FUNCTION itrelay.itrelay_notify_asset_maintenance_required()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    events itrelay.new_event[] := '{}';
    changed_rows refcursor;
    changed record;
BEGIN
    IF TG_OP = 'INSERT' THEN
        OPEN changed_rows FOR SELECT n.r AS new, o.r AS old
            FROM (SELECT itrelay_row, row_number() OVER () FROM new_rows AS itrelay_row) AS n (r, i)
            CROSS JOIN (SELECT itrelay_row FROM (SELECT o.* FROM (SELECT) AS one LEFT JOIN new_rows AS o ON false)
                AS itrelay_row) AS o (r)
            ORDER BY i;
    END IF;
    LOOP
        FETCH changed_rows INTO changed;
        EXIT WHEN NOT FOUND;
        NEW := changed.new;
        OLD := changed.old;
        BEGIN
            events := events || ROW('it_asset_maintenance_required', jsonb_strip_nulls(jsonb_build_object(
                'event_type', 'it_asset_maintenance_required',
                'asset_id', NEW.asset_id,
                'maintenance_type', NEW.maintenance_type,
                'description', NEW.description,
                'priority', NEW.priority,
                'requested_by', NEW.requested_by,
                'organization_id', NEW.organization_id)))::itrelay.new_event;
        END;
    END LOOP;
    CLOSE changed_rows;
    PERFORM itrelay.enqueue_events('it_maintenance_requests', events);
    RETURN NULL;
END;
$$;

DO $$
BEGIN
    IF to_regclass('it_maintenance_requests') IS NULL THEN
        RAISE NOTICE 'itrelay: no table it_maintenance_requests, so no trigger itrelay_asset_maintenance_required_trigger';
    ELSE
        CREATE OR REPLACE TRIGGER itrelay_asset_maintenance_required_trigger
            AFTER INSERT ON it_maintenance_requests
            REFERENCING NEW TABLE AS new_rows
            FOR EACH STATEMENT
            EXECUTE FUNCTION itrelay.itrelay_notify_asset_maintenance_required();
    END IF;
END;
$$;

-- it_asset_purchased (it_assets): insert or update where purchase_cost and purchase_date are first both set.
CREATE OR REPLACE FUNCTION itrelay.itrelay_notify_asset_purchased()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    events itrelay.new_event[] := '{}';
    changed_rows refcursor;
    changed record;
BEGIN
    IF TG_OP = 'INSERT' THEN
        OPEN changed_rows FOR SELECT n.r AS new, o.r AS old
            FROM (SELECT itrelay_row, row_number() OVER () FROM new_rows AS itrelay_row) AS n (r, i)
            CROSS JOIN (SELECT itrelay_row FROM (SELECT o.* FROM (SELECT) AS one LEFT JOIN new_rows AS o ON false)
                AS itrelay_row) AS o (r)
            WHERE (n.r).purchase_cost IS NOT NULL AND (n.r).purchase_date IS NOT NULL
            ORDER BY i;
    ELSIF TG_OP = 'UPDATE' THEN
        OPEN changed_rows FOR SELECT n.r AS new, o.r AS old
            FROM (SELECT itrelay_row, row_number() OVER () FROM new_rows AS itrelay_row) AS n (r, i)
            JOIN (SELECT itrelay_row, row_number() OVER () FROM old_rows AS itrelay_row) AS o (r, i) USING (i)
            WHERE (n.r).purchase_cost IS NOT NULL AND (n.r).purchase_date IS NOT NULL AND ((o.r).purchase_cost IS NULL OR (o.r).purchase_date IS NULL)
            ORDER BY i;
    END IF;
    LOOP
        FETCH changed_rows INTO changed;
        EXIT WHEN NOT FOUND;
        NEW := changed.new;
        OLD := changed.old;
        BEGIN
            -- Once per asset, ever: clearing purchase_cost or purchase_date and setting it again
            -- does not capitalise the asset a second time.
            IF itrelay.claim_due('it_asset_purchased', NEW.asset_id, 'first set', 0) THEN
                events := events || ROW('it_asset_purchased', jsonb_strip_nulls(jsonb_build_object(
                    'event_type', 'it_asset_purchased',
                    'asset_id', NEW.asset_id,
                    'asset_tag', NEW.asset_tag,
                    'asset_type', NEW.asset_type,
                    'asset_name', NEW.asset_name,
                    'purchase_cost', NEW.purchase_cost,
                    'purchase_date', NEW.purchase_date,
                    'vendor_id', NEW.vendor_id,
                    'po_number', NEW.po_number,
                    'serial_number', NEW.serial_number,
                    'warranty_months', NEW.warranty_months,
                    'organization_id', NEW.organization_id,
                    'site_id', NEW.site_id)))::itrelay.new_event;
            END IF;
        END;
    END LOOP;
    CLOSE changed_rows;
    PERFORM itrelay.enqueue_events('it_assets', events);
    RETURN NULL;
END;
$$;

DO $$
BEGIN
    IF to_regclass('it_assets') IS NULL THEN
        RAISE NOTICE 'itrelay: no table it_assets, so no trigger itrelay_asset_purchased_insert_trigger';
    ELSE
        CREATE OR REPLACE TRIGGER itrelay_asset_purchased_insert_trigger
            AFTER INSERT ON it_assets
            REFERENCING NEW TABLE AS new_rows
            FOR EACH STATEMENT
            EXECUTE FUNCTION itrelay.itrelay_notify_asset_purchased();
    END IF;
END;
$$;

DO $$
BEGIN
    IF to_regclass('it_assets') IS NULL THEN
        RAISE NOTICE 'itrelay: no table it_assets, so no trigger itrelay_asset_purchased_trigger';
    ELSE
        CREATE OR REPLACE TRIGGER itrelay_asset_purchased_trigger
            AFTER UPDATE ON it_assets
            REFERENCING NEW TABLE AS new_rows OLD TABLE AS old_rows
            FOR EACH STATEMENT
            EXECUTE FUNCTION itrelay.itrelay_notify_asset_purchased();
    END IF;
END;
$$;

-- it_cab_review_required (it_changes): status becomes 'submitted' with risk_level high or critical, or cab_review_required set.
-- it_change_approved (it_changes): update where status becomes 'approved'.
-- it_change_implemented (it_changes): update where status becomes 'implemented'.
-- it_change_rejected (it_changes): update where status becomes 'rejected'.
-- it_change_rolled_back (it_changes): update where status becomes 'rolled_back'.
-- it_change_scheduled (it_changes): update where status becomes 'scheduled'.
-- it_change_submitted (it_changes): insert or update where status becomes 'submitted'.
CREATE OR REPLACE FUNCTION itrelay.itrelay_notify_change_status()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    events itrelay.new_event[] := '{}';
    changed_rows refcursor;
    changed record;
BEGIN
    IF TG_OP = 'INSERT' THEN
        OPEN changed_rows FOR SELECT n.r AS new, o.r AS old
            FROM (SELECT itrelay_row, row_number() OVER () FROM new_rows AS itrelay_row) AS n (r, i)
            CROSS JOIN (SELECT itrelay_row FROM (SELECT o.* FROM (SELECT) AS one LEFT JOIN new_rows AS o ON false)
                AS itrelay_row) AS o (r)
            WHERE (n.r).status = 'submitted'
            ORDER BY i;
    ELSIF TG_OP = 'UPDATE' THEN
        OPEN changed_rows FOR SELECT n.r AS new, o.r AS old
            FROM (SELECT itrelay_row, row_number() OVER () FROM new_rows AS itrelay_row) AS n (r, i)
            JOIN (SELECT itrelay_row, row_number() OVER () FROM old_rows AS itrelay_row) AS o (r, i) USING (i)
            WHERE (n.r).status IN ('submitted', 'approved', 'rejected', 'scheduled', 'implemented', 'rolled_back') AND (n.r).status IS DISTINCT FROM (o.r).status
            ORDER BY i;
    END IF;
    LOOP
        FETCH changed_rows INTO changed;
        EXIT WHEN NOT FOUND;
        NEW := changed.new;
        OLD := changed.old;
        DECLARE
            event_type text := 'it_change_' || NEW.status;
            actor_field text := CASE NEW.status WHEN 'submitted' THEN 'submitted_by'
                                                WHEN 'approved' THEN 'approved_by'
                                                WHEN 'rejected' THEN 'rejected_by'
                                                WHEN 'scheduled' THEN 'scheduled_by'
                                                WHEN 'implemented' THEN 'implemented_by'
                                                ELSE 'rolled_back_by' END;
            change jsonb := jsonb_build_object(
                'organization_id', NEW.organization_id,
                'change_id', NEW.change_id,
                'change_number', NEW.change_number,
                'title', NEW.title,
                'change_type', NEW.change_type,
                'risk_level', NEW.risk_level,
                'scheduled_start', NEW.scheduled_start,
                'scheduled_end', NEW.scheduled_end);
        BEGIN
            events := events || ROW(event_type, jsonb_strip_nulls(change || jsonb_build_object(
                'event_type', event_type,
                -- OLD is NULL on insert: no previous status.
                'previous_status', CASE WHEN TG_OP = 'UPDATE' THEN OLD.status END,
                'new_status', NEW.status,
                actor_field, NEW.updated_by,
                'approval_notes', CASE WHEN NEW.status = 'approved' THEN NEW.approval_notes END,
                'reason', CASE WHEN NEW.status IN ('rejected', 'rolled_back') THEN NEW.status_reason END)))::itrelay.new_event;
            IF NEW.status = 'submitted'
               AND (NEW.risk_level IN ('high', 'critical') OR NEW.cab_review_required) THEN
                events := events || ROW('it_cab_review_required', jsonb_strip_nulls(change || jsonb_build_object(
                    'event_type', 'it_cab_review_required',
                    'requested_by', NEW.updated_by,
                    'reason', CASE WHEN NEW.cab_review_required THEN NEW.cab_review_reason
                                   ELSE 'risk level ' || NEW.risk_level END)))::itrelay.new_event;
            END IF;
        END;
    END LOOP;
    CLOSE changed_rows;
    PERFORM itrelay.enqueue_events('it_changes', events);
    RETURN NULL;
END;
$$;

DO $$
BEGIN
    IF to_regclass('it_changes') IS NULL THEN
        RAISE NOTICE 'itrelay: no table it_changes, so no trigger itrelay_change_status_insert_trigger';
    ELSE
        CREATE OR REPLACE TRIGGER itrelay_change_status_insert_trigger
            AFTER INSERT ON it_changes
            REFERENCING NEW TABLE AS new_rows
            FOR EACH STATEMENT
            EXECUTE FUNCTION itrelay.itrelay_notify_change_status();
    END IF;
END;
$$;

DO $$
BEGIN
    IF to_regclass('it_changes') IS NULL THEN
        RAISE NOTICE 'itrelay: no table it_changes, so no trigger itrelay_change_status_trigger';
    ELSE
        CREATE OR REPLACE TRIGGER itrelay_change_status_trigger
            AFTER UPDATE ON it_changes
            REFERENCING NEW TABLE AS new_rows OLD TABLE AS old_rows
            FOR EACH STATEMENT
            EXECUTE FUNCTION itrelay.itrelay_notify_change_status();
    END IF;
END;
$$;

-- it_critical_vulnerability_detected (it_vulnerabilities): insert as critical, or update where severity becomes 'critical'.
CREATE OR REPLACE FUNCTION itrelay.itrelay_notify_critical_vulnerability_detected()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    events itrelay.new_event[] := '{}';
    changed_rows refcursor;
    changed record;
BEGIN
    IF TG_OP = 'INSERT' THEN
        OPEN changed_rows FOR SELECT n.r AS new, o.r AS old
            FROM (SELECT itrelay_row, row_number() OVER () FROM new_rows AS itrelay_row) AS n (r, i)
            CROSS JOIN (SELECT itrelay_row FROM (SELECT o.* FROM (SELECT) AS one LEFT JOIN new_rows AS o ON false)
                AS itrelay_row) AS o (r)
            WHERE (n.r).severity = 'critical'
            ORDER BY i;
    ELSIF TG_OP = 'UPDATE' THEN
        OPEN changed_rows FOR SELECT n.r AS new, o.r AS old
            FROM (SELECT itrelay_row, row_number() OVER () FROM new_rows AS itrelay_row) AS n (r, i)
            JOIN (SELECT itrelay_row, row_number() OVER () FROM old_rows AS itrelay_row) AS o (r, i) USING (i)
            WHERE (n.r).severity = 'critical' AND (o.r).severity IS DISTINCT FROM 'critical'
            ORDER BY i;
    END IF;
    LOOP
        FETCH changed_rows INTO changed;
        EXIT WHEN NOT FOUND;
        NEW := changed.new;
        OLD := changed.old;
        BEGIN
            events := events || ROW('it_critical_vulnerability_detected', jsonb_strip_nulls(jsonb_build_object(
                'event_type', 'it_critical_vulnerability_detected',
                'vulnerability_id', NEW.vulnerability_id,
                'cve_id', NEW.cve_id,
                'vulnerability_name', NEW.vulnerability_name,
                'severity', NEW.severity,
                'cvss_score', NEW.cvss_score,
                'affected_asset_ids', NEW.affected_asset_ids,
                'affected_asset_count', cardinality(NEW.affected_asset_ids),
                'remediation_available', NEW.remediation_available,
                'patch_id', NEW.patch_id,
                'organization_id', NEW.organization_id)))::itrelay.new_event;
        END;
    END LOOP;
    CLOSE changed_rows;
    PERFORM itrelay.enqueue_events('it_vulnerabilities', events);
    RETURN NULL;
END;
$$;

DO $$
BEGIN
    IF to_regclass('it_vulnerabilities') IS NULL THEN
        RAISE NOTICE 'itrelay: no table it_vulnerabilities, so no trigger itrelay_critical_vulnerability_detected_insert_trigger';
    ELSE
        CREATE OR REPLACE TRIGGER itrelay_critical_vulnerability_detected_insert_trigger
            AFTER INSERT ON it_vulnerabilities
            REFERENCING NEW TABLE AS new_rows
            FOR EACH STATEMENT
            EXECUTE FUNCTION itrelay.itrelay_notify_critical_vulnerability_detected();
    END IF;
END;
$$;

DO $$
BEGIN
    IF to_regclass('it_vulnerabilities') IS NULL THEN
        RAISE NOTICE 'itrelay: no table it_vulnerabilities, so no trigger itrelay_critical_vulnerability_detected_trigger';
    ELSE
        CREATE OR REPLACE TRIGGER itrelay_critical_vulnerability_detected_trigger
            AFTER UPDATE ON it_vulnerabilities
            REFERENCING NEW TABLE AS new_rows OLD TABLE AS old_rows
            FOR EACH STATEMENT
            EXECUTE FUNCTION itrelay.itrelay_notify_critical_vulnerability_detected();
    END IF;
END;
$$;

-- it_license_created (it_licenses): insert.
CREATE OR REPLACE FUNCTION itrelay.itrelay_notify_license_created()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    events itrelay.new_event[] := '{}';
    changed_rows refcursor;
    changed record;
BEGIN
    IF TG_OP = 'INSERT' THEN
        OPEN changed_rows FOR SELECT n.r AS new, o.r AS old
            FROM (SELECT itrelay_row, row_number() OVER () FROM new_rows AS itrelay_row) AS n (r, i)
            CROSS JOIN (SELECT itrelay_row FROM (SELECT o.* FROM (SELECT) AS one LEFT JOIN new_rows AS o ON false)
                AS itrelay_row) AS o (r)
            ORDER BY i;
    END IF;
    LOOP
        FETCH changed_rows INTO changed;
        EXIT WHEN NOT FOUND;
        NEW := changed.new;
        OLD := changed.old;
        BEGIN
            events := events || ROW('it_license_created', jsonb_strip_nulls(jsonb_build_object(
                'event_type', 'it_license_created',
                'license_id', NEW.license_id,
                'software_name', NEW.software_name,
                'software_vendor', NEW.software_vendor,
                'license_type', NEW.license_type,
                'license_key_ref', CASE WHEN NEW.license_key <> ''
                    THEN 'it_licenses/' || NEW.license_id || '/license_key' END,
                'license_count', NEW.license_count,
                'cost_per_license', NEW.cost_per_license,
                'total_cost', NEW.license_count * NEW.cost_per_license,
                'purchase_date', NEW.purchase_date,
                'expiration_date', NEW.expiration_date,
                'vendor_id', NEW.vendor_id,
                'organization_id', NEW.organization_id)))::itrelay.new_event;
        END;
    END LOOP;
    CLOSE changed_rows;
    PERFORM itrelay.enqueue_events('it_licenses', events);
    RETURN NULL;
END;
$$;

DO $$
BEGIN
    IF to_regclass('it_licenses') IS NULL THEN
        RAISE NOTICE 'itrelay: no table it_licenses, so no trigger itrelay_license_created_trigger';
    ELSE
        CREATE OR REPLACE TRIGGER itrelay_license_created_trigger
            AFTER INSERT ON it_licenses
            REFERENCING NEW TABLE AS new_rows
            FOR EACH STATEMENT
            EXECUTE FUNCTION itrelay.itrelay_notify_license_created();
    END IF;
END;
$$;

-- it_license_renewed (it_licenses): update where expiration_date is extended (new > old).
CREATE OR REPLACE FUNCTION itrelay.itrelay_notify_license_renewed()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    events itrelay.new_event[] := '{}';
    changed_rows refcursor;
    changed record;
BEGIN
    IF TG_OP = 'UPDATE' THEN
        OPEN changed_rows FOR SELECT n.r AS new, o.r AS old
            FROM (SELECT itrelay_row, row_number() OVER () FROM new_rows AS itrelay_row) AS n (r, i)
            JOIN (SELECT itrelay_row, row_number() OVER () FROM old_rows AS itrelay_row) AS o (r, i) USING (i)
            WHERE (n.r).expiration_date > (o.r).expiration_date
            ORDER BY i;
    END IF;
    LOOP
        FETCH changed_rows INTO changed;
        EXIT WHEN NOT FOUND;
        NEW := changed.new;
        OLD := changed.old;
        BEGIN
            events := events || ROW('it_license_renewed', jsonb_strip_nulls(jsonb_build_object(
                'event_type', 'it_license_renewed',
                'license_id', NEW.license_id,
                'software_name', NEW.software_name,
                'software_vendor', NEW.software_vendor,
                'old_expiration_date', OLD.expiration_date,
                'new_expiration_date', NEW.expiration_date,
                'renewal_date', current_date,
                'renewal_cost', NEW.renewal_cost,
                'renewed_by', NEW.updated_by,
                'organization_id', NEW.organization_id)))::itrelay.new_event;
        END;
    END LOOP;
    CLOSE changed_rows;
    PERFORM itrelay.enqueue_events('it_licenses', events);
    RETURN NULL;
END;
$$;

DO $$
BEGIN
    IF to_regclass('it_licenses') IS NULL THEN
        RAISE NOTICE 'itrelay: no table it_licenses, so no trigger itrelay_license_renewed_trigger';
    ELSE
        CREATE OR REPLACE TRIGGER itrelay_license_renewed_trigger
            AFTER UPDATE ON it_licenses
            REFERENCING NEW TABLE AS new_rows OLD TABLE AS old_rows
            FOR EACH STATEMENT
            EXECUTE FUNCTION itrelay.itrelay_notify_license_renewed();
    END IF;
END;
$$;

-- it_provisioning_completed (it_onboarding_instances): update where status becomes 'completed'.
-- it_provisioning_started (it_onboarding_instances): update where status becomes 'in_progress'.
CREATE OR REPLACE FUNCTION itrelay.itrelay_notify_provisioning_status()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    events itrelay.new_event[] := '{}';
    changed_rows refcursor;
    changed record;
BEGIN
    IF TG_OP = 'UPDATE' THEN
        OPEN changed_rows FOR SELECT n.r AS new, o.r AS old
            FROM (SELECT itrelay_row, row_number() OVER () FROM new_rows AS itrelay_row) AS n (r, i)
            JOIN (SELECT itrelay_row, row_number() OVER () FROM old_rows AS itrelay_row) AS o (r, i) USING (i)
            WHERE (n.r).status IN ('in_progress', 'completed') AND (n.r).status IS DISTINCT FROM (o.r).status
            ORDER BY i;
    END IF;
    LOOP
        FETCH changed_rows INTO changed;
        EXIT WHEN NOT FOUND;
        NEW := changed.new;
        OLD := changed.old;
        DECLARE
            event_type text := CASE NEW.status WHEN 'in_progress' THEN 'it_provisioning_started'
                                               ELSE 'it_provisioning_completed' END;
        BEGIN
            events := events || ROW(event_type, jsonb_strip_nulls(jsonb_build_object(
                'event_type', event_type,
                'organization_id', NEW.organization_id,
                'onboarding_instance_id', NEW.onboarding_instance_id,
                'employee_id', NEW.employee_id,
                'previous_status', OLD.status,
                'new_status', NEW.status,
                'changed_by', NEW.updated_by,
                'completed_at', CASE WHEN NEW.status = 'completed' THEN NEW.completed_at END)))::itrelay.new_event;
        END;
    END LOOP;
    CLOSE changed_rows;
    PERFORM itrelay.enqueue_events('it_onboarding_instances', events);
    RETURN NULL;
END;
$$;

DO $$
BEGIN
    IF to_regclass('it_onboarding_instances') IS NULL THEN
        RAISE NOTICE 'itrelay: no table it_onboarding_instances, so no trigger itrelay_provisioning_status_trigger';
    ELSE
        CREATE OR REPLACE TRIGGER itrelay_provisioning_status_trigger
            AFTER UPDATE ON it_onboarding_instances
            REFERENCING NEW TABLE AS new_rows OLD TABLE AS old_rows
            FOR EACH STATEMENT
            EXECUTE FUNCTION itrelay.itrelay_notify_provisioning_status();
    END IF;
END;
$$;

-- it_purchase_request_approved (it_purchase_requests): insert or update where approval_status becomes 'approved'.
CREATE OR REPLACE FUNCTION itrelay.itrelay_notify_purchase_request_approved()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    events itrelay.new_event[] := '{}';
    changed_rows refcursor;
    changed record;
BEGIN
    IF TG_OP = 'INSERT' THEN
        OPEN changed_rows FOR SELECT n.r AS new, o.r AS old
            FROM (SELECT itrelay_row, row_number() OVER () FROM new_rows AS itrelay_row) AS n (r, i)
            CROSS JOIN (SELECT itrelay_row FROM (SELECT o.* FROM (SELECT) AS one LEFT JOIN new_rows AS o ON false)
                AS itrelay_row) AS o (r)
            WHERE (n.r).approval_status = 'approved'
            ORDER BY i;
    ELSIF TG_OP = 'UPDATE' THEN
        OPEN changed_rows FOR SELECT n.r AS new, o.r AS old
            FROM (SELECT itrelay_row, row_number() OVER () FROM new_rows AS itrelay_row) AS n (r, i)
            JOIN (SELECT itrelay_row, row_number() OVER () FROM old_rows AS itrelay_row) AS o (r, i) USING (i)
            WHERE (n.r).approval_status = 'approved' AND (o.r).approval_status IS DISTINCT FROM 'approved'
            ORDER BY i;
    END IF;
    LOOP
        FETCH changed_rows INTO changed;
        EXIT WHEN NOT FOUND;
        NEW := changed.new;
        OLD := changed.old;
        BEGIN
            events := events || ROW('it_purchase_request_approved', jsonb_strip_nulls(jsonb_build_object(
                'event_type', 'it_purchase_request_approved',
                'request_id', NEW.request_id,
                'request_number', NEW.request_number,
                'requester_id', NEW.requester_id,
                'request_type', NEW.request_type,
                'estimated_cost', NEW.estimated_cost,
                'vendor_id', NEW.vendor_id,
                'approved_by', NEW.updated_by,
                'approved_at', now(),
                'approval_notes', NEW.approval_notes,
                'organization_id', NEW.organization_id)))::itrelay.new_event;
        END;
    END LOOP;
    CLOSE changed_rows;
    PERFORM itrelay.enqueue_events('it_purchase_requests', events);
    RETURN NULL;
END;
$$;

DO $$
BEGIN
    IF to_regclass('it_purchase_requests') IS NULL THEN
        RAISE NOTICE 'itrelay: no table it_purchase_requests, so no trigger itrelay_purchase_request_approved_insert_trigger';
    ELSE
        CREATE OR REPLACE TRIGGER itrelay_purchase_request_approved_insert_trigger
            AFTER INSERT ON it_purchase_requests
            REFERENCING NEW TABLE AS new_rows
            FOR EACH STATEMENT
            EXECUTE FUNCTION itrelay.itrelay_notify_purchase_request_approved();
    END IF;
END;
$$;

DO $$
BEGIN
    IF to_regclass('it_purchase_requests') IS NULL THEN
        RAISE NOTICE 'itrelay: no table it_purchase_requests, so no trigger itrelay_purchase_request_approved_trigger';
    ELSE
        CREATE OR REPLACE TRIGGER itrelay_purchase_request_approved_trigger
            AFTER UPDATE ON it_purchase_requests
            REFERENCING NEW TABLE AS new_rows OLD TABLE AS old_rows
            FOR EACH STATEMENT
            EXECUTE FUNCTION itrelay.itrelay_notify_purchase_request_approved();
    END IF;
END;
$$;

-- it_purchase_request_received (it_purchase_requests): update where received_date is first set (items from it_purchase_request_items).
CREATE OR REPLACE FUNCTION itrelay.itrelay_notify_purchase_request_received()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    events itrelay.new_event[] := '{}';
    changed_rows refcursor;
    changed record;
BEGIN
    IF TG_OP = 'UPDATE' THEN
        OPEN changed_rows FOR SELECT n.r AS new, o.r AS old
            FROM (SELECT itrelay_row, row_number() OVER () FROM new_rows AS itrelay_row) AS n (r, i)
            JOIN (SELECT itrelay_row, row_number() OVER () FROM old_rows AS itrelay_row) AS o (r, i) USING (i)
            WHERE (n.r).received_date IS NOT NULL AND (o.r).received_date IS NULL
            ORDER BY i;
    END IF;
    LOOP
        FETCH changed_rows INTO changed;
        EXIT WHEN NOT FOUND;
        NEW := changed.new;
        OLD := changed.old;
        DECLARE
            items jsonb;
        BEGIN
            -- The request's items, from their table: beside the trigger's table unless mapped.
            EXECUTE format(
                'SELECT coalesce(jsonb_agg(jsonb_build_object(
                             ''item_description'', item_description,
                             ''quantity'', quantity_received,
                             ''serial_numbers'', serial_numbers)
                             ORDER BY line_number), ''[]'')
                 FROM %s
                 WHERE request_id = $1
                   AND quantity_received > 0', format('%I.%I', TG_TABLE_SCHEMA, 'it_purchase_request_items'))
            INTO items
            USING NEW.request_id;
            events := events || ROW('it_purchase_request_received', jsonb_strip_nulls(jsonb_build_object(
                'event_type', 'it_purchase_request_received',
                'request_id', NEW.request_id,
                'request_number', NEW.request_number,
                'po_number', NEW.po_number,
                'items_received', items,
                'received_by', NEW.updated_by,
                'received_date', NEW.received_date,
                'vendor_id', NEW.vendor_id,
                'organization_id', NEW.organization_id)))::itrelay.new_event;
        END;
    END LOOP;
    CLOSE changed_rows;
    PERFORM itrelay.enqueue_events('it_purchase_requests', events);
    RETURN NULL;
END;
$$;

DO $$
BEGIN
    IF to_regclass('it_purchase_requests') IS NULL THEN
        RAISE NOTICE 'itrelay: no table it_purchase_requests, so no trigger itrelay_purchase_request_received_trigger';
    ELSE
        CREATE OR REPLACE TRIGGER itrelay_purchase_request_received_trigger
            AFTER UPDATE ON it_purchase_requests
            REFERENCING NEW TABLE AS new_rows OLD TABLE AS old_rows
            FOR EACH STATEMENT
            EXECUTE FUNCTION itrelay.itrelay_notify_purchase_request_received();
    END IF;
END;
$$;

-- it_purchase_request_submitted (it_purchase_requests): insert or update where approval_status becomes 'submitted'.
CREATE OR REPLACE FUNCTION itrelay.itrelay_notify_purchase_request_submitted()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    events itrelay.new_event[] := '{}';
    changed_rows refcursor;
    changed record;
BEGIN
    IF TG_OP = 'INSERT' THEN
        OPEN changed_rows FOR SELECT n.r AS new, o.r AS old
            FROM (SELECT itrelay_row, row_number() OVER () FROM new_rows AS itrelay_row) AS n (r, i)
            CROSS JOIN (SELECT itrelay_row FROM (SELECT o.* FROM (SELECT) AS one LEFT JOIN new_rows AS o ON false)
                AS itrelay_row) AS o (r)
            WHERE (n.r).approval_status = 'submitted'
            ORDER BY i;
    ELSIF TG_OP = 'UPDATE' THEN
        OPEN changed_rows FOR SELECT n.r AS new, o.r AS old
            FROM (SELECT itrelay_row, row_number() OVER () FROM new_rows AS itrelay_row) AS n (r, i)
            JOIN (SELECT itrelay_row, row_number() OVER () FROM old_rows AS itrelay_row) AS o (r, i) USING (i)
            WHERE (n.r).approval_status = 'submitted' AND (o.r).approval_status IS DISTINCT FROM 'submitted'
            ORDER BY i;
    END IF;
    LOOP
        FETCH changed_rows INTO changed;
        EXIT WHEN NOT FOUND;
        NEW := changed.new;
        OLD := changed.old;
        BEGIN
            events := events || ROW('it_purchase_request_submitted', jsonb_strip_nulls(jsonb_build_object(
                'event_type', 'it_purchase_request_submitted',
                'request_id', NEW.request_id,
                'request_number', NEW.request_number,
                'requester_id', NEW.requester_id,
                'request_type', NEW.request_type,
                'estimated_cost', NEW.estimated_cost,
                'justification', NEW.justification,
                'vendor_id', NEW.vendor_id,
                'organization_id', NEW.organization_id,
                'site_id', NEW.site_id)))::itrelay.new_event;
        END;
    END LOOP;
    CLOSE changed_rows;
    PERFORM itrelay.enqueue_events('it_purchase_requests', events);
    RETURN NULL;
END;
$$;

DO $$
BEGIN
    IF to_regclass('it_purchase_requests') IS NULL THEN
        RAISE NOTICE 'itrelay: no table it_purchase_requests, so no trigger itrelay_purchase_request_submitted_insert_trigger';
    ELSE
        CREATE OR REPLACE TRIGGER itrelay_purchase_request_submitted_insert_trigger
            AFTER INSERT ON it_purchase_requests
            REFERENCING NEW TABLE AS new_rows
            FOR EACH STATEMENT
            EXECUTE FUNCTION itrelay.itrelay_notify_purchase_request_submitted();
    END IF;
END;
$$;

DO $$
BEGIN
    IF to_regclass('it_purchase_requests') IS NULL THEN
        RAISE NOTICE 'itrelay: no table it_purchase_requests, so no trigger itrelay_purchase_request_submitted_trigger';
    ELSE
        CREATE OR REPLACE TRIGGER itrelay_purchase_request_submitted_trigger
            AFTER UPDATE ON it_purchase_requests
            REFERENCING NEW TABLE AS new_rows OLD TABLE AS old_rows
            FOR EACH STATEMENT
            EXECUTE FUNCTION itrelay.itrelay_notify_purchase_request_submitted();
    END IF;
END;
$$;

-- it_report_failed (it_report_runs): insert or update where status becomes 'failed'.
-- it_report_generated (it_report_runs): insert or update where status becomes 'completed'.
CREATE OR REPLACE FUNCTION itrelay.itrelay_notify_report_run_status()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    events itrelay.new_event[] := '{}';
    changed_rows refcursor;
    changed record;
BEGIN
    IF TG_OP = 'INSERT' THEN
        OPEN changed_rows FOR SELECT n.r AS new, o.r AS old
            FROM (SELECT itrelay_row, row_number() OVER () FROM new_rows AS itrelay_row) AS n (r, i)
            CROSS JOIN (SELECT itrelay_row FROM (SELECT o.* FROM (SELECT) AS one LEFT JOIN new_rows AS o ON false)
                AS itrelay_row) AS o (r)
            WHERE (n.r).status IN ('completed', 'failed')
            ORDER BY i;
    ELSIF TG_OP = 'UPDATE' THEN
        OPEN changed_rows FOR SELECT n.r AS new, o.r AS old
            FROM (SELECT itrelay_row, row_number() OVER () FROM new_rows AS itrelay_row) AS n (r, i)
            JOIN (SELECT itrelay_row, row_number() OVER () FROM old_rows AS itrelay_row) AS o (r, i) USING (i)
            WHERE (n.r).status IN ('completed', 'failed') AND (n.r).status IS DISTINCT FROM (o.r).status
            ORDER BY i;
    END IF;
    LOOP
        FETCH changed_rows INTO changed;
        EXIT WHEN NOT FOUND;
        NEW := changed.new;
        OLD := changed.old;
        DECLARE
            failed boolean := NEW.status = 'failed';
            event_type text := CASE WHEN failed THEN 'it_report_failed' ELSE 'it_report_generated' END;
        BEGIN
            events := events || ROW(event_type, jsonb_strip_nulls(jsonb_build_object(
                'event_type', event_type,
                'organization_id', NEW.organization_id,
                'report_id', NEW.report_id,
                'report_name', NEW.report_name,
                'run_id', NEW.run_id,
                'format', NEW.format,
                'document_id', CASE WHEN NOT failed THEN NEW.document_id END,
                'error_code', CASE WHEN failed THEN NEW.error_code END,
                'error_message', CASE WHEN failed THEN NEW.error_message END,
                'retryable', CASE WHEN failed THEN NEW.retryable END,
                'requested_by', NEW.requested_by)))::itrelay.new_event;
        END;
    END LOOP;
    CLOSE changed_rows;
    PERFORM itrelay.enqueue_events('it_report_runs', events);
    RETURN NULL;
END;
$$;

DO $$
BEGIN
    IF to_regclass('it_report_runs') IS NULL THEN
        RAISE NOTICE 'itrelay: no table it_report_runs, so no trigger itrelay_report_run_status_insert_trigger';
    ELSE
        CREATE OR REPLACE TRIGGER itrelay_report_run_status_insert_trigger
            AFTER INSERT ON it_report_runs
            REFERENCING NEW TABLE AS new_rows
            FOR EACH STATEMENT
            EXECUTE FUNCTION itrelay.itrelay_notify_report_run_status();
    END IF;
END;
$$;

DO $$
BEGIN
    IF to_regclass('it_report_runs') IS NULL THEN
        RAISE NOTICE 'itrelay: no table it_report_runs, so no trigger itrelay_report_run_status_trigger';
    ELSE
        CREATE OR REPLACE TRIGGER itrelay_report_run_status_trigger
            AFTER UPDATE ON it_report_runs
            REFERENCING NEW TABLE AS new_rows OLD TABLE AS old_rows
            FOR EACH STATEMENT
            EXECUTE FUNCTION itrelay.itrelay_notify_report_run_status();
    END IF;
END;
$$;

-- it_security_incident_created (it_security_incidents): insert.
CREATE OR REPLACE FUNCTION itrelay.itrelay_notify_security_incident_created()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    events itrelay.new_event[] := '{}';
    changed_rows refcursor;
    changed record;
BEGIN
    IF TG_OP = 'INSERT' THEN
        OPEN changed_rows FOR SELECT n.r AS new, o.r AS old
            FROM (SELECT itrelay_row, row_number() OVER () FROM new_rows AS itrelay_row) AS n (r, i)
            CROSS JOIN (SELECT itrelay_row FROM (SELECT o.* FROM (SELECT) AS one LEFT JOIN new_rows AS o ON false)
                AS itrelay_row) AS o (r)
            ORDER BY i;
    END IF;
    LOOP
        FETCH changed_rows INTO changed;
        EXIT WHEN NOT FOUND;
        NEW := changed.new;
        OLD := changed.old;
        BEGIN
            events := events || ROW('it_security_incident_created', jsonb_strip_nulls(jsonb_build_object(
                'event_type', 'it_security_incident_created',
                'incident_id', NEW.incident_id,
                'incident_number', NEW.incident_number,
                'incident_type', NEW.incident_type,
                'severity', NEW.severity,
                'description', NEW.description,
                'affected_asset_ids', NEW.affected_asset_ids,
                'affected_user_ids', NEW.affected_user_ids,
                'detected_at', NEW.detected_at,
                'reported_by', NEW.reported_by,
                'organization_id', NEW.organization_id,
                'site_id', NEW.site_id)))::itrelay.new_event;
        END;
    END LOOP;
    CLOSE changed_rows;
    PERFORM itrelay.enqueue_events('it_security_incidents', events);
    RETURN NULL;
END;
$$;

DO $$
BEGIN
    IF to_regclass('it_security_incidents') IS NULL THEN
        RAISE NOTICE 'itrelay: no table it_security_incidents, so no trigger itrelay_security_incident_created_trigger';
    ELSE
        CREATE OR REPLACE TRIGGER itrelay_security_incident_created_trigger
            AFTER INSERT ON it_security_incidents
            REFERENCING NEW TABLE AS new_rows
            FOR EACH STATEMENT
            EXECUTE FUNCTION itrelay.itrelay_notify_security_incident_created();
    END IF;
END;
$$;

-- it_ticket_created (it_tickets): insert.
CREATE OR REPLACE FUNCTION itrelay.itrelay_notify_ticket_created()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    events itrelay.new_event[] := '{}';
    changed_rows refcursor;
    changed record;
BEGIN
    IF TG_OP = 'INSERT' THEN
        OPEN changed_rows FOR SELECT n.r AS new, o.r AS old
            FROM (SELECT itrelay_row, row_number() OVER () FROM new_rows AS itrelay_row) AS n (r, i)
            CROSS JOIN (SELECT itrelay_row FROM (SELECT o.* FROM (SELECT) AS one LEFT JOIN new_rows AS o ON false)
                AS itrelay_row) AS o (r)
            ORDER BY i;
    END IF;
    LOOP
        FETCH changed_rows INTO changed;
        EXIT WHEN NOT FOUND;
        NEW := changed.new;
        OLD := changed.old;
        BEGIN
            events := events || ROW('it_ticket_created', jsonb_strip_nulls(jsonb_build_object(
                'event_type', 'it_ticket_created',
                'ticket_id', NEW.ticket_id,
                'ticket_number', NEW.ticket_number,
                'category', NEW.category,
                'subcategory', NEW.subcategory,
                'priority', NEW.priority,
                'subject', NEW.subject,
                'description', NEW.description,
                'requester_id', NEW.requester_id,
                'affected_asset_id', NEW.affected_asset_id,
                'organization_id', NEW.organization_id,
                'site_id', NEW.site_id)))::itrelay.new_event;
        END;
    END LOOP;
    CLOSE changed_rows;
    PERFORM itrelay.enqueue_events('it_tickets', events);
    RETURN NULL;
END;
$$;

DO $$
BEGIN
    IF to_regclass('it_tickets') IS NULL THEN
        RAISE NOTICE 'itrelay: no table it_tickets, so no trigger itrelay_ticket_created_trigger';
    ELSE
        CREATE OR REPLACE TRIGGER itrelay_ticket_created_trigger
            AFTER INSERT ON it_tickets
            REFERENCING NEW TABLE AS new_rows
            FOR EACH STATEMENT
            EXECUTE FUNCTION itrelay.itrelay_notify_ticket_created();
    END IF;
END;
$$;

-- it_ticket_status_changed (it_tickets): update where status changes.
CREATE OR REPLACE FUNCTION itrelay.itrelay_notify_ticket_status_changed()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    events itrelay.new_event[] := '{}';
    changed_rows refcursor;
    changed record;
BEGIN
    IF TG_OP = 'UPDATE' THEN
        OPEN changed_rows FOR SELECT n.r AS new, o.r AS old
            FROM (SELECT itrelay_row, row_number() OVER () FROM new_rows AS itrelay_row) AS n (r, i)
            JOIN (SELECT itrelay_row, row_number() OVER () FROM old_rows AS itrelay_row) AS o (r, i) USING (i)
            WHERE (n.r).status IS DISTINCT FROM (o.r).status
            ORDER BY i;
    END IF;
    LOOP
        FETCH changed_rows INTO changed;
        EXIT WHEN NOT FOUND;
        NEW := changed.new;
        OLD := changed.old;
        BEGIN
            events := events || ROW('it_ticket_status_changed', jsonb_strip_nulls(jsonb_build_object(
                'event_type', 'it_ticket_status_changed',
                'ticket_id', NEW.ticket_id,
                'ticket_number', NEW.ticket_number,
                'old_status', OLD.status,
                'new_status', NEW.status,
                'requester_id', NEW.requester_id,
                'assigned_to_id', NEW.assigned_to_id,
                'changed_by', NEW.updated_by,
                'resolution_notes', NEW.resolution_notes,
                'organization_id', NEW.organization_id)))::itrelay.new_event;
        END;
    END LOOP;
    CLOSE changed_rows;
    PERFORM itrelay.enqueue_events('it_tickets', events);
    RETURN NULL;
END;
$$;

DO $$
BEGIN
    IF to_regclass('it_tickets') IS NULL THEN
        RAISE NOTICE 'itrelay: no table it_tickets, so no trigger itrelay_ticket_status_changed_trigger';
    ELSE
        CREATE OR REPLACE TRIGGER itrelay_ticket_status_changed_trigger
            AFTER UPDATE ON it_tickets
            REFERENCING NEW TABLE AS new_rows OLD TABLE AS old_rows
            FOR EACH STATEMENT
            EXECUTE FUNCTION itrelay.itrelay_notify_ticket_status_changed();
    END IF;
END;
$$;
-- ==== End of the row-change events ====

-- ==== Time-based events ====

-- Events caused by time passing, not by a row change. Each scan function takes the
-- current time as a parameter and returns how many events it recorded; the daemon runs
-- itrelay.scan_due_events() every scan.interval_secs, and a DBA can run it from pg_cron
-- instead. They run with the caller's rights and find the IT tables on the caller's
-- search_path, as the triggers' tables are found at install. Days are counted in UTC.
--
-- Each event fires once per threshold per subject: itrelay.due_events remembers what
-- was recorded under a unique key, and an event is enqueued only by the scan whose
-- insert of that key succeeded, so neither a restart nor two concurrent scans repeat it.

-- What the scans have recorded, and the row events that fire once per subject ever
-- (it_asset_purchased, basis 'first set'). basis is what the due time derives from (an expiration
-- or target date, an SLA type, a compliance status): a new basis re-arms the event.
-- threshold orders the thresholds of one basis, the tightest lowest (days before
-- expiration; 0 critical, 1 warning): a threshold fires only while no tighter or equal
-- one has been recorded, so catching up after downtime fires the tightest one only.
CREATE TABLE IF NOT EXISTS itrelay.due_events (
    event_type  text NOT NULL,
    subject_id  uuid NOT NULL,
    basis       text NOT NULL,
    threshold   integer NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (event_type, subject_id, basis, threshold)
);

-- Records that a due event fires, unless this or a tighter threshold of the same basis
-- was recorded before. True when it was recorded: the caller then enqueues the event.
CREATE OR REPLACE FUNCTION itrelay.claim_due(p_event_type text, p_subject_id uuid, p_basis text,
    p_threshold integer)
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_inserted integer;
BEGIN
    IF EXISTS (SELECT 1 FROM itrelay.due_events
               WHERE event_type = p_event_type AND subject_id = p_subject_id
                 AND basis = p_basis AND threshold <= p_threshold) THEN
        RETURN false;
    END IF;
    -- A concurrent scan inserting the same key makes this wait for it, then do nothing.
    INSERT INTO itrelay.due_events (event_type, subject_id, basis, threshold)
    VALUES (p_event_type, p_subject_id, p_basis, p_threshold)
    ON CONFLICT DO NOTHING;
    GET DIAGNOSTICS v_inserted = ROW_COUNT;
    RETURN v_inserted > 0;
END;
$$;

-- Records a due event and enqueues it (see itrelay.claim_due). True when it enqueued.
CREATE OR REPLACE FUNCTION itrelay.record_due(p_event_type text, p_subject_id uuid, p_basis text,
    p_threshold integer, p_source_table text, p_payload jsonb)
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT itrelay.claim_due(p_event_type, p_subject_id, p_basis, p_threshold) THEN
        RETURN false;
    END IF;
    PERFORM itrelay.enqueue(p_event_type, p_source_table, p_payload);
    RETURN true;
END;
$$;

-- The tightest of the 90/60/30/14/7-day thresholds that p_days_remaining has reached,
-- or NULL (not within 90 days, or already expired).
CREATE OR REPLACE FUNCTION itrelay.expiry_threshold(p_days_remaining integer)
RETURNS integer
LANGUAGE sql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT min(threshold) FROM unnest(ARRAY[90, 60, 30, 14, 7]) AS threshold
    WHERE p_days_remaining BETWEEN 0 AND threshold;
$$;

-- it_contract_expiring: reads it_vendor_contracts.contract_id, contract_number,
-- vendor_id, contract_type, expiration_date, contract_value, auto_renew,
-- organization_id of contracts whose status is 'active'. The relay adds vendor_name
-- from it_vendors. Basis: the expiration date.
CREATE OR REPLACE FUNCTION itrelay.scan_contracts_expiring(p_now timestamptz DEFAULT now())
RETURNS integer
LANGUAGE plpgsql
AS $$
BEGIN
    RETURN (
        SELECT count(*) FILTER (WHERE itrelay.record_due('it_contract_expiring', c.contract_id,
            c.expiration_date::text, itrelay.expiry_threshold(d.days_remaining), 'it_vendor_contracts',
            jsonb_strip_nulls(jsonb_build_object(
                'event_type', 'it_contract_expiring',
                'contract_id', c.contract_id,
                'contract_number', c.contract_number,
                'vendor_id', c.vendor_id,
                'contract_type', c.contract_type,
                'expiration_date', c.expiration_date,
                'days_remaining', d.days_remaining,
                'contract_value', c.contract_value,
                'auto_renew', c.auto_renew,
                'organization_id', c.organization_id,
                'timestamp', p_now))))
        FROM it_vendor_contracts c
        CROSS JOIN LATERAL (SELECT c.expiration_date - (p_now AT TIME ZONE 'UTC')::date AS days_remaining) d
        WHERE c.status = 'active' AND itrelay.expiry_threshold(d.days_remaining) IS NOT NULL);
END;
$$;

-- it_license_expiring: reads it_licenses.license_id, software_name, software_vendor,
-- license_type, expiration_date, license_count, renewal_cost, organization_id.
-- Basis: the expiration date.
CREATE OR REPLACE FUNCTION itrelay.scan_licenses_expiring(p_now timestamptz DEFAULT now())
RETURNS integer
LANGUAGE plpgsql
AS $$
BEGIN
    RETURN (
        SELECT count(*) FILTER (WHERE itrelay.record_due('it_license_expiring', l.license_id,
            l.expiration_date::text, itrelay.expiry_threshold(d.days_remaining), 'it_licenses',
            jsonb_strip_nulls(jsonb_build_object(
                'event_type', 'it_license_expiring',
                'license_id', l.license_id,
                'software_name', l.software_name,
                'software_vendor', l.software_vendor,
                'license_type', l.license_type,
                'expiration_date', l.expiration_date,
                'days_remaining', d.days_remaining,
                'license_count', l.license_count,
                'renewal_cost', l.renewal_cost,
                'organization_id', l.organization_id,
                'timestamp', p_now))))
        FROM it_licenses l
        CROSS JOIN LATERAL (SELECT l.expiration_date - (p_now AT TIME ZONE 'UTC')::date AS days_remaining) d
        WHERE itrelay.expiry_threshold(d.days_remaining) IS NOT NULL);
END;
$$;

-- it_sla_breached: reads it_tickets.ticket_id, ticket_number, priority, assigned_to_id,
-- organization_id, created_at, first_response_at, resolved_at, and the ticket's
-- it_sla_policies row (organization_id, priority): response_hours, resolution_hours.
-- A target is breached once created_at + its hours has passed without a response
-- (resolution) by then; a late response (resolution) counts, so a scan that was not
-- running at the time catches up. The response is met at the earlier of
-- first_response_at and resolved_at: resolving a ticket answers it. A ticket whose status
-- is 'resolved' or 'closed' without the time it was met has no measurable breach and
-- fires nothing (actual_hours would otherwise run to the scan time). Basis: the SLA
-- type; fires once per ticket and type.
CREATE OR REPLACE FUNCTION itrelay.scan_sla_breaches(p_now timestamptz DEFAULT now())
RETURNS integer
LANGUAGE plpgsql
AS $$
BEGIN
    RETURN (
        SELECT count(*) FILTER (WHERE itrelay.record_due('it_sla_breached', t.ticket_id,
            s.sla_type, 0, 'it_tickets',
            jsonb_strip_nulls(jsonb_build_object(
                'event_type', 'it_sla_breached',
                'ticket_id', t.ticket_id,
                'ticket_number', t.ticket_number,
                'sla_type', s.sla_type,
                'sla_target_hours', s.target_hours,
                'actual_hours', round((extract(epoch FROM least(s.met_at, p_now) - t.created_at) / 3600)::numeric, 2),
                'breach_time', b.breach_time,
                'priority', t.priority,
                'assigned_to_id', t.assigned_to_id,
                'organization_id', t.organization_id,
                'timestamp', p_now))))
        FROM it_tickets t
        JOIN it_sla_policies p ON p.organization_id = t.organization_id AND p.priority = t.priority
        CROSS JOIN LATERAL (VALUES
            ('response', p.response_hours, least(t.first_response_at, t.resolved_at)),
            ('resolution', p.resolution_hours, t.resolved_at)) AS s(sla_type, target_hours, met_at)
        CROSS JOIN LATERAL (
            SELECT t.created_at + s.target_hours::double precision * interval '1 hour' AS breach_time) b
        WHERE b.breach_time < p_now AND (s.met_at IS NULL OR s.met_at > b.breach_time)
          AND NOT (s.met_at IS NULL AND t.status IN ('resolved', 'closed')));
END;
$$;

-- it_patch_deployment_overdue: reads it_patches.patch_id, patch_name, severity,
-- target_date, affected_asset_ids, organization_id of patches not deployed
-- (deployed_at NULL) nor cancelled (status 'cancelled') after their target date.
-- Basis: the target date; fires once per target date.
CREATE OR REPLACE FUNCTION itrelay.scan_patches_overdue(p_now timestamptz DEFAULT now())
RETURNS integer
LANGUAGE plpgsql
AS $$
BEGIN
    RETURN (
        SELECT count(*) FILTER (WHERE itrelay.record_due('it_patch_deployment_overdue', p.patch_id,
            p.target_date::text, 0, 'it_patches',
            jsonb_strip_nulls(jsonb_build_object(
                'event_type', 'it_patch_deployment_overdue',
                'patch_id', p.patch_id,
                'patch_name', p.patch_name,
                'severity', p.severity,
                'target_date', p.target_date,
                'days_overdue', d.days_overdue,
                'affected_asset_ids', to_jsonb(p.affected_asset_ids),
                'affected_asset_count', cardinality(p.affected_asset_ids),
                'organization_id', p.organization_id,
                'timestamp', p_now))))
        FROM it_patches p
        CROSS JOIN LATERAL (SELECT (p_now AT TIME ZONE 'UTC')::date - p.target_date AS days_overdue) d
        WHERE p.deployed_at IS NULL AND p.status <> 'cancelled' AND d.days_overdue > 0);
END;
$$;

-- The alert level of a compliance result: 'critical' when more than 10 % over-deployed,
-- 'warning' when over-deployed by up to 10 % or under-utilized (at most half in use),
-- NULL when compliant.
CREATE OR REPLACE FUNCTION itrelay.compliance_threshold(p_compliance_status text, p_variance_percent numeric)
RETURNS text
LANGUAGE sql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE
        WHEN p_compliance_status = 'over_deployed' AND p_variance_percent > 10 THEN 'critical'
        WHEN p_compliance_status IN ('over_deployed', 'under_utilized') THEN 'warning'
    END;
$$;

-- it_license_compliance_alert: reads it_check_license_compliance(organization_id) for
-- every organization in it_licenses. Basis: the compliance status; critical (0) is
-- tighter than warning (1), so a warning escalates once to critical. A license found
-- compliant again re-arms its alerts.
-- Forgets what was recorded for a subject, so that its events can fire again.
CREATE OR REPLACE FUNCTION itrelay.rearm_due(p_event_type text, p_subject_id uuid)
RETURNS void
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    DELETE FROM itrelay.due_events WHERE event_type = p_event_type AND subject_id = p_subject_id;
$$;

-- A new license has no seats assigned yet: for p_grace_days after its purchase_date it
-- is not reported under-utilized (over-deployment is reported at any age).
-- Earlier versions had no grace parameter.
DROP FUNCTION IF EXISTS itrelay.scan_due_events(timestamptz);
DROP FUNCTION IF EXISTS itrelay.scan_license_compliance(timestamptz);

CREATE OR REPLACE FUNCTION itrelay.scan_license_compliance(p_now timestamptz DEFAULT now(),
    p_grace_days integer DEFAULT 30)
RETURNS integer
LANGUAGE plpgsql
AS $$
DECLARE
    r record;
    v_recorded integer := 0;
BEGIN
    FOR r IN
        SELECT o.organization_id, c.license_id, c.software_name, c.license_count, c.usage_count,
               c.compliance_status, c.variance, c.variance_percent,
               itrelay.compliance_threshold(c.compliance_status, c.variance_percent) AS level
        FROM (SELECT DISTINCT organization_id FROM it_licenses) o
        CROSS JOIN LATERAL it_check_license_compliance(o.organization_id) c
        JOIN it_licenses l ON l.license_id = c.license_id
        WHERE NOT (c.compliance_status = 'under_utilized'
                   AND (p_now AT TIME ZONE 'UTC')::date - l.purchase_date < p_grace_days)
    LOOP
        IF r.level IS NULL THEN
            PERFORM itrelay.rearm_due('it_license_compliance_alert', r.license_id);
        ELSIF itrelay.record_due('it_license_compliance_alert', r.license_id, r.compliance_status,
            CASE r.level WHEN 'critical' THEN 0 ELSE 1 END, 'it_licenses',
            jsonb_build_object(
                'event_type', 'it_license_compliance_alert',
                'license_id', r.license_id,
                'software_name', r.software_name,
                'compliance_status', r.compliance_status,
                'license_count', r.license_count,
                'usage_count', r.usage_count,
                'variance', r.variance,
                'variance_percent', r.variance_percent,
                'threshold_breached', r.level,
                'organization_id', r.organization_id,
                'timestamp', p_now)) THEN
            v_recorded := v_recorded + 1;
        END IF;
    END LOOP;
    RETURN v_recorded;
END;
$$;

-- Every scan above, as of p_now, with p_license_grace_days for new licenses (the
-- daemon passes scan.license_grace_days); how many events they recorded. From pg_cron:
--   SELECT cron.schedule('itrelay-due-events', '* * * * *', 'SELECT itrelay.scan_due_events()');
CREATE OR REPLACE FUNCTION itrelay.scan_due_events(p_now timestamptz DEFAULT now(),
    p_license_grace_days integer DEFAULT 30)
RETURNS integer
LANGUAGE sql
AS $$
    SELECT itrelay.scan_contracts_expiring(p_now)
         + itrelay.scan_licenses_expiring(p_now)
         + itrelay.scan_sla_breaches(p_now)
         + itrelay.scan_patches_overdue(p_now)
         + itrelay.scan_license_compliance(p_now, p_license_grace_days);
$$;

-- ==== Privileges ====

-- Only the owner, and the roles sql/role.sql grants, may call these functions directly
-- (triggers call them as the owner). itrelay.enqueue in particular is granted by a DBA
-- to named producing roles only.
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA itrelay FROM PUBLIC;

-- The roles named in the relay's `[install] enqueue_roles` (none when applied with psql:
-- grant them as below) may call the durable API, itrelay.enqueue(event_type, payload).
-- generated from [install] enqueue_roles: begin
-- generated from [install] enqueue_roles: end

-- ==== Version ====

INSERT INTO itrelay.schema_version (version) VALUES (2) ON CONFLICT DO NOTHING;

COMMIT;

-- itrelay: the least-privileged role the relay runs as.
--
-- Apply it after sql/install.sql, in the database the relay serves, as a superuser (or
-- the owner of the itrelay schema and the IT tables, holding CREATEROLE):
--
--   psql -v ON_ERROR_STOP=1 -d itdb -v relay_role=itrelay_relay -f sql/role.sql
--   itrelay sql role | psql -v ON_ERROR_STOP=1 -d itdb -v relay_role=itrelay_relay   # with a [mapping]
--   psql -d itdb -c '\password itrelay_relay'     -- or: ALTER ROLE itrelay_relay PASSWORD '...'
--
-- relay_role defaults to itrelay_relay. Idempotent: applying it again changes nothing, and
-- applying it again after an upgrade of install.sql grants what new scan functions need.
-- The password is never in this file; the relay reads it from postgres.password_file
-- (or ITRELAY__POSTGRES__PASSWORD) and the URL names only the user:
--   postgres://itrelay_relay@db:5432/itdb?sslmode=verify-full
--
-- What the role can do, and why:
--   itrelay.events          SELECT, UPDATE: claim pending rows, record failed or held ones;
--                           INSERT: store whole-event notifications.
--   itrelay.progress        SELECT, UPDATE of floor, settled, recorded_at: record what was
--                           delivered, per batch.
--   itrelay.outbox, itrelay.pending
--                           SELECT: status, dead letters, replay and the gauges.
--   itrelay.schema_version  SELECT: `itrelay check` compares the installed version.
--   itrelay.settings        SELECT: the NOTIFY channel stored at install.
--   itrelay.leader          SELECT, INSERT, UPDATE: the leader's lease.
--   it_vendors, employees, it_assets
--                           SELECT: the names the relay adds to events (vendor, employee, asset).
--   itrelay functions       EXECUTE on those that are not triggers: the time-based scans
--                           (itrelay.scan_due_events and what it calls) run with the caller's
--                           rights, so the role also reads the tables they scan, if present,
--                           and executes it_check_license_compliance; itrelay.enqueue is
--                           what the canary writes its synthetic events with.
-- What it cannot do: superuser, create roles or databases, replicate, bypass row security,
-- own or create anything, write a business table, change the outbox's definition. LISTEN
-- and the advisory locks (leader, idle) need no grant. A standby ends the backend of a leader
-- whose lease expired (pg_terminate_backend): allowed because every relay of a database
-- runs as this same role; relays under different roles need pg_signal_backend. The triggers are SECURITY DEFINER
-- functions of the installer, so business writes need nothing from this role.

\set ON_ERROR_STOP on
\if :{?relay_role}
\else
    \set relay_role itrelay_relay
\endif

BEGIN;

SELECT format('CREATE ROLE %I LOGIN', :'relay_role')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'relay_role')
\gexec

ALTER ROLE :"relay_role" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;

GRANT CONNECT ON DATABASE :"DBNAME" TO :"relay_role";
GRANT USAGE ON SCHEMA itrelay TO :"relay_role";

-- Retention removes whole partitions through itrelay.retire_partitions, as the owner.
GRANT SELECT, INSERT, UPDATE ON itrelay.events TO :"relay_role";
GRANT SELECT, UPDATE (floor, settled, recorded_at) ON itrelay.progress TO :"relay_role";
GRANT SELECT ON itrelay.outbox, itrelay.pending TO :"relay_role";
GRANT SELECT, INSERT, UPDATE, DELETE ON itrelay.copies TO :"relay_role";
GRANT SELECT ON itrelay.event_entities TO :"relay_role";
GRANT SELECT ON itrelay.schema_version TO :"relay_role";
GRANT SELECT ON itrelay.settings TO :"relay_role";
-- WAL capture's progress, for `status` and the retained-WAL gauge; the relay moves the
-- slot's events with itrelay.wal_ingest (granted below with every function).
GRANT SELECT ON itrelay.wal_progress TO :"relay_role";
GRANT SELECT, INSERT, UPDATE ON itrelay.leader TO :"relay_role";

-- Enrichment lookups (src/outbox.rs), on the tables this database has (`itrelay sql role`
-- names the tables of the relay's [mapping] here) ...
-- generated from [mapping]: begin
SELECT format('GRANT SELECT ON %s TO %I', to_regclass(name), :'relay_role')
FROM unnest(ARRAY['it_vendors', 'employees', 'it_assets']) AS name
WHERE to_regclass(name) IS NOT NULL
\gexec
-- generated from [mapping]: end

-- The time-based scans: the tables they read, where this database has them ...
SELECT format('GRANT SELECT ON %s TO %I', to_regclass(name), :'relay_role')
FROM unnest(ARRAY['it_vendor_contracts', 'it_licenses', 'it_tickets', 'it_sla_policies',
                  'it_patches']) AS name
WHERE to_regclass(name) IS NOT NULL
\gexec

-- ... the IT module's compliance check, which the compliance scan calls ...
SELECT format('GRANT EXECUTE ON FUNCTION %s TO %I', to_regprocedure('it_check_license_compliance(uuid, uuid)'), :'relay_role')
WHERE to_regprocedure('it_check_license_compliance(uuid, uuid)') IS NOT NULL
\gexec

-- ... and the itrelay functions, trigger functions excepted.
SELECT format('GRANT EXECUTE ON FUNCTION %s TO %I', p.oid::regprocedure, :'relay_role')
FROM pg_proc AS p
WHERE p.pronamespace = 'itrelay'::regnamespace
  AND p.prokind = 'f'
  AND p.prorettype <> 'trigger'::regtype
ORDER BY p.oid
\gexec

COMMIT;

-- itrelay uninstall: removes exactly what sql/install.sql created.
--
-- Refuses while the outbox holds undelivered events, which would be lost. To drop them
-- anyway, run `SET itrelay.force_uninstall = on;` first in the same session
-- (`itrelay uninstall --force` does that).
--   psql -v ON_ERROR_STOP=1 -f sql/uninstall.sql

BEGIN;

DO $$ BEGIN PERFORM pg_advisory_xact_lock(hashtext('itrelay install')); END $$;

DO $$
BEGIN
    IF to_regclass('itrelay.outbox') IS NOT NULL
       AND coalesce(current_setting('itrelay.force_uninstall', true), '') <> 'on'
       AND EXISTS (SELECT 1 FROM itrelay.outbox WHERE state = 'pending') THEN
        RAISE EXCEPTION 'itrelay.outbox still holds undelivered events'
            USING HINT = 'Let the relay deliver them, or SET itrelay.force_uninstall = on to drop them.';
    END IF;
END;
$$;

DROP TRIGGER IF EXISTS it_asset_purchased_insert_trigger ON it_assets;
DROP TRIGGER IF EXISTS it_asset_purchased_trigger ON it_assets;
DROP TRIGGER IF EXISTS it_asset_disposed_trigger ON it_assets;
DROP TRIGGER IF EXISTS it_asset_assigned_trigger ON it_asset_assignments;
DROP TRIGGER IF EXISTS it_ticket_created_trigger ON it_tickets;
DROP TRIGGER IF EXISTS it_ticket_status_changed_trigger ON it_tickets;
DROP TRIGGER IF EXISTS it_license_renewed_trigger ON it_licenses;

-- The functions, the outbox and the version table.
DROP SCHEMA IF EXISTS itrelay CASCADE;

COMMIT;

-- itrelay uninstall: removes exactly what sql/install.sql created.
--
-- Refuses while the outbox holds undelivered events, which would be lost. To drop them
-- anyway, run `SET itrelay.force_uninstall = on;` first in the same session
-- (`itrelay uninstall --force` does that).
--   psql -v ON_ERROR_STOP=1 -f sql/uninstall.sql
--
-- Atomic: in one transaction it drops itrelay's triggers (which waits for the business
-- transactions writing those tables, and holds off new ones until it commits; they then
-- run without the triggers), locks out every other writer of the outbox
-- (itrelay.enqueue's callers), and only then checks for pending events. An event committed
-- during the call is seen by that check, so nothing committed is dropped unless forced.
-- Triggers of the IT module's own, whatever their name, are never touched: only those
-- whose function is in schema itrelay go.

BEGIN;

DO $$ BEGIN PERFORM pg_advisory_xact_lock(hashtext('itrelay install')); END $$;

DO $$
DECLARE
    installed record;
BEGIN
    IF to_regnamespace('itrelay') IS NULL THEN
        RETURN;
    END IF;
    FOR installed IN
        SELECT t.tgname, t.tgrelid::regclass AS on_table
        FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid
        WHERE p.pronamespace = 'itrelay'::regnamespace AND NOT t.tgisinternal
        ORDER BY 2, 1
    LOOP
        EXECUTE format('DROP TRIGGER %I ON %s', installed.tgname, installed.on_table);
    END LOOP;
    IF to_regprocedure('itrelay.set_capture(text)') IS NOT NULL
       AND (SELECT capture FROM itrelay.settings) = 'wal' THEN
        -- Events recorded to WAL are moved into the outbox first, so that the check
        -- below sees them.
        PERFORM itrelay.set_capture('outbox');
    END IF;
    IF to_regclass('itrelay.outbox') IS NOT NULL THEN
        -- Readers (the relay) go on; writers wait, and fail once the schema is gone.
        LOCK TABLE itrelay.outbox IN EXCLUSIVE MODE;
        IF coalesce(current_setting('itrelay.force_uninstall', true), '') <> 'on'
           AND EXISTS (SELECT 1 FROM itrelay.outbox WHERE state IN ('pending', 'held')) THEN
            RAISE EXCEPTION 'itrelay.outbox still holds undelivered events'
                USING HINT = 'Let the relay deliver them, or SET itrelay.force_uninstall = on to drop them.';
        END IF;
    END IF;
    -- Only once nothing undelivered is left (or forced): the slot and the publication
    -- of WAL capture, which no longer hold back WAL. Dropping a slot is not undone by
    -- a rollback, hence after the check.
    IF to_regprocedure('itrelay.wal_retire()') IS NOT NULL THEN
        PERFORM itrelay.wal_retire();
    END IF;
END;
$$;

-- The functions, the outbox and the version table.
DROP SCHEMA IF EXISTS itrelay CASCADE;

COMMIT;

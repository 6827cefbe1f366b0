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
       AND EXISTS (SELECT 1 FROM itrelay.outbox WHERE state IN ('pending', 'held')) THEN
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
DROP TRIGGER IF EXISTS it_asset_maintenance_required_trigger ON it_maintenance_requests;
DROP TRIGGER IF EXISTS it_license_created_trigger ON it_licenses;
DROP TRIGGER IF EXISTS it_security_incident_created_trigger ON it_security_incidents;
DROP TRIGGER IF EXISTS it_critical_vulnerability_detected_insert_trigger ON it_vulnerabilities;
DROP TRIGGER IF EXISTS it_critical_vulnerability_detected_trigger ON it_vulnerabilities;
DROP TRIGGER IF EXISTS it_purchase_request_submitted_insert_trigger ON it_purchase_requests;
DROP TRIGGER IF EXISTS it_purchase_request_submitted_trigger ON it_purchase_requests;
DROP TRIGGER IF EXISTS it_purchase_request_approved_insert_trigger ON it_purchase_requests;
DROP TRIGGER IF EXISTS it_purchase_request_approved_trigger ON it_purchase_requests;
DROP TRIGGER IF EXISTS it_purchase_request_received_trigger ON it_purchase_requests;
DROP TRIGGER IF EXISTS it_provisioning_status_trigger ON it_onboarding_instances;
DROP TRIGGER IF EXISTS it_account_status_trigger ON it_access_accounts;
DROP TRIGGER IF EXISTS it_report_run_status_insert_trigger ON it_report_runs;
DROP TRIGGER IF EXISTS it_report_run_status_trigger ON it_report_runs;
DROP TRIGGER IF EXISTS it_change_status_insert_trigger ON it_changes;
DROP TRIGGER IF EXISTS it_change_status_trigger ON it_changes;

-- The functions, the outbox and the version table.
DROP SCHEMA IF EXISTS itrelay CASCADE;

COMMIT;

-- itrelay install, schema version 1.
--
-- Creates the relay's own schema `itrelay` (the outbox and its bookkeeping) and one
-- trigger per event on the IT module's tables. Each trigger writes the event to the
-- outbox in the business transaction and wakes the relay with NOTIFY on `it_events`:
-- the event commits with the business write or not at all.
--
-- Idempotent: applying it again changes nothing. `itrelay install` applies this very file.
--   psql -v ON_ERROR_STOP=1 -f sql/install.sql
-- The IT tables (it_assets, it_asset_assignments, it_tickets, it_licenses) must exist
-- and be on the search_path; see sql/reference_schema.sql for the columns each trigger reads.

BEGIN;

-- One installer at a time.
DO $$ BEGIN PERFORM pg_advisory_xact_lock(hashtext('itrelay install')); END $$;

CREATE SCHEMA IF NOT EXISTS itrelay;

CREATE TABLE IF NOT EXISTS itrelay.schema_version (
    version      integer PRIMARY KEY,
    installed_at timestamptz NOT NULL DEFAULT now()
);

-- Every event, in commit order of its id, until the relay has delivered it.
CREATE TABLE IF NOT EXISTS itrelay.outbox (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- Fixed at insert: the AMQP message_id of every copy, so consumers can de-duplicate.
    event_id     uuid NOT NULL DEFAULT gen_random_uuid() UNIQUE,
    event_type   text NOT NULL,
    payload      jsonb NOT NULL,
    -- The business table the trigger fired on, or 'notify' for events that arrived as
    -- a whole JSON notification.
    source_table text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    -- pending: waiting; delivered: confirmed by the broker on every subscriber exchange;
    -- failed: dead-lettered with last_error, kept for inspection and replay.
    state        text NOT NULL DEFAULT 'pending'
                 CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts     integer NOT NULL DEFAULT 0,
    last_error   text,
    delivered_at timestamptz
);

-- The relay reads only pending rows, in id order.
CREATE INDEX IF NOT EXISTS outbox_pending ON itrelay.outbox (id) WHERE state = 'pending';

-- Whether the relay is idle, waiting for a notification. While it drains (under load)
-- it is not, and triggers skip NOTIFY: NOTIFY takes a database-wide lock at commit
-- that would serialise every business transaction. Unlogged: after a crash the table is
-- empty, triggers skip NOTIFY, and the relay sets the flag again when it starts.
CREATE UNLOGGED TABLE IF NOT EXISTS itrelay.relay_state (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    idle      boolean NOT NULL
);

-- Records one event, and wakes the relay if it is idle. At most one NOTIFY per
-- transaction: identical notifications in a transaction are folded into one.
CREATE OR REPLACE FUNCTION itrelay.enqueue(p_event_type text, p_source_table text, p_payload jsonb)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    INSERT INTO itrelay.outbox (event_type, payload, source_table)
    VALUES (p_event_type, p_payload, p_source_table);
    IF (SELECT idle FROM itrelay.relay_state) THEN
        PERFORM pg_notify('it_events', '');
    END IF;
END;
$$;

-- ==== Row-change events: one trigger function and trigger(s) per event ====

-- it_asset_purchased: reads it_assets.asset_id, asset_tag, asset_type, asset_name,
-- purchase_cost, purchase_date, vendor_id, po_number, serial_number, warranty_months,
-- organization_id, site_id. The relay adds vendor_name from it_vendors.
CREATE OR REPLACE FUNCTION itrelay.it_notify_asset_purchased()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM itrelay.enqueue('it_asset_purchased', TG_TABLE_NAME, jsonb_strip_nulls(jsonb_build_object(
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
        'site_id', NEW.site_id)));
    RETURN NULL;
END;
$$;

-- Fires when purchase_cost and purchase_date are first both set: on insert with both,
-- or on the update that sets the second of them.
CREATE OR REPLACE TRIGGER it_asset_purchased_insert_trigger
    AFTER INSERT ON it_assets
    FOR EACH ROW
    WHEN (NEW.purchase_cost IS NOT NULL AND NEW.purchase_date IS NOT NULL)
    EXECUTE FUNCTION itrelay.it_notify_asset_purchased();

CREATE OR REPLACE TRIGGER it_asset_purchased_trigger
    AFTER UPDATE ON it_assets
    FOR EACH ROW
    WHEN (NEW.purchase_cost IS NOT NULL AND NEW.purchase_date IS NOT NULL
          AND (OLD.purchase_cost IS NULL OR OLD.purchase_date IS NULL))
    EXECUTE FUNCTION itrelay.it_notify_asset_purchased();

-- it_asset_disposed: reads it_assets.asset_id, asset_tag, asset_name, disposal_method,
-- disposal_date, disposal_value, data_sanitization_method, certificate_of_destruction,
-- updated_by (as disposed_by), organization_id.
CREATE OR REPLACE FUNCTION itrelay.it_notify_asset_disposed()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM itrelay.enqueue('it_asset_disposed', TG_TABLE_NAME, jsonb_strip_nulls(jsonb_build_object(
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
        'organization_id', NEW.organization_id)));
    RETURN NULL;
END;
$$;

-- Fires when status changes to 'disposed'.
CREATE OR REPLACE TRIGGER it_asset_disposed_trigger
    AFTER UPDATE ON it_assets
    FOR EACH ROW
    WHEN (NEW.status = 'disposed' AND OLD.status IS DISTINCT FROM 'disposed')
    EXECUTE FUNCTION itrelay.it_notify_asset_disposed();

-- it_asset_assigned: reads it_asset_assignments.asset_id, employee_id, assignment_date,
-- previous_assignee_id, site_id, building, room (as location), organization_id,
-- assigned_by. The relay adds asset_tag, asset_name, asset_type (and the location, when
-- the assignment has no site) from it_assets, and employee_name from employees.
CREATE OR REPLACE FUNCTION itrelay.it_notify_asset_assigned()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM itrelay.enqueue('it_asset_assigned', TG_TABLE_NAME, jsonb_strip_nulls(jsonb_build_object(
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
        'assigned_by', NEW.assigned_by)));
    RETURN NULL;
END;
$$;

-- Fires on every new assignment.
CREATE OR REPLACE TRIGGER it_asset_assigned_trigger
    AFTER INSERT ON it_asset_assignments
    FOR EACH ROW
    EXECUTE FUNCTION itrelay.it_notify_asset_assigned();

-- it_ticket_created: reads it_tickets.ticket_id, ticket_number, category, subcategory,
-- priority, subject, description, requester_id, affected_asset_id, organization_id,
-- site_id. The relay adds requester_name and requester_email from employees.
CREATE OR REPLACE FUNCTION itrelay.it_notify_ticket_created()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM itrelay.enqueue('it_ticket_created', TG_TABLE_NAME, jsonb_strip_nulls(jsonb_build_object(
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
        'site_id', NEW.site_id)));
    RETURN NULL;
END;
$$;

-- Fires on every new ticket.
CREATE OR REPLACE TRIGGER it_ticket_created_trigger
    AFTER INSERT ON it_tickets
    FOR EACH ROW
    EXECUTE FUNCTION itrelay.it_notify_ticket_created();

-- it_ticket_status_changed: reads it_tickets.ticket_id, ticket_number, status (old and
-- new), requester_id, assigned_to_id, updated_by (as changed_by), resolution_notes,
-- organization_id.
CREATE OR REPLACE FUNCTION itrelay.it_notify_ticket_status_changed()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM itrelay.enqueue('it_ticket_status_changed', TG_TABLE_NAME, jsonb_strip_nulls(jsonb_build_object(
        'event_type', 'it_ticket_status_changed',
        'ticket_id', NEW.ticket_id,
        'ticket_number', NEW.ticket_number,
        'old_status', OLD.status,
        'new_status', NEW.status,
        'requester_id', NEW.requester_id,
        'assigned_to_id', NEW.assigned_to_id,
        'changed_by', NEW.updated_by,
        'resolution_notes', NEW.resolution_notes,
        'organization_id', NEW.organization_id)));
    RETURN NULL;
END;
$$;

-- Fires when status changes.
CREATE OR REPLACE TRIGGER it_ticket_status_changed_trigger
    AFTER UPDATE ON it_tickets
    FOR EACH ROW
    WHEN (NEW.status IS DISTINCT FROM OLD.status)
    EXECUTE FUNCTION itrelay.it_notify_ticket_status_changed();

-- it_license_renewed: reads it_licenses.license_id, software_name, software_vendor,
-- expiration_date (old and new), renewal_cost, updated_by (as renewed_by),
-- organization_id; renewal_date is the day of the update.
CREATE OR REPLACE FUNCTION itrelay.it_notify_license_renewed()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM itrelay.enqueue('it_license_renewed', TG_TABLE_NAME, jsonb_strip_nulls(jsonb_build_object(
        'event_type', 'it_license_renewed',
        'license_id', NEW.license_id,
        'software_name', NEW.software_name,
        'software_vendor', NEW.software_vendor,
        'old_expiration_date', OLD.expiration_date,
        'new_expiration_date', NEW.expiration_date,
        'renewal_date', current_date,
        'renewal_cost', NEW.renewal_cost,
        'renewed_by', NEW.updated_by,
        'organization_id', NEW.organization_id)));
    RETURN NULL;
END;
$$;

-- Fires when expiration_date is extended (new > old).
CREATE OR REPLACE TRIGGER it_license_renewed_trigger
    AFTER UPDATE ON it_licenses
    FOR EACH ROW
    WHEN (NEW.expiration_date > OLD.expiration_date)
    EXECUTE FUNCTION itrelay.it_notify_license_renewed();

-- ==== Time-based events ====

-- ==== Version ====

INSERT INTO itrelay.schema_version (version) VALUES (1) ON CONFLICT DO NOTHING;

COMMIT;

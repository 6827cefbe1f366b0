-- Reference schema of the IT module's tables, as itrelay's triggers, tests and demo use them.
--
-- This file is NOT part of `itrelay install`: the IT module owns these tables. It shows
-- the columns each trigger reads (named after the payload fields they feed) so a DBA can
-- map real tables onto it. Apply it only to a scratch database:
--   psql -v ON_ERROR_STOP=1 -f sql/reference_schema.sql
-- Every table carries organization_id; the actor of a change is the row's updated_by.

BEGIN;

CREATE TABLE IF NOT EXISTS it_vendors (
    vendor_id       uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id uuid NOT NULL,
    vendor_name     text NOT NULL
);

CREATE TABLE IF NOT EXISTS employees (
    employee_id     uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id uuid NOT NULL,
    employee_name   text NOT NULL,
    email           text
);

CREATE TABLE IF NOT EXISTS it_assets (
    asset_id                   uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id            uuid NOT NULL,
    asset_tag                  text NOT NULL,
    asset_name                 text NOT NULL,
    asset_type                 text NOT NULL,
    status                     text NOT NULL DEFAULT 'available',
    purchase_cost              numeric(14, 2),
    purchase_date              date,
    vendor_id                  uuid REFERENCES it_vendors (vendor_id),
    po_number                  text,
    serial_number              text,
    warranty_months            integer,
    site_id                    uuid,
    building                   text,
    room                       text,
    disposal_method            text,
    disposal_date              date,
    disposal_value             numeric(14, 2),
    data_sanitization_method   text,
    certificate_of_destruction boolean,
    updated_by                 uuid
);

CREATE TABLE IF NOT EXISTS it_asset_assignments (
    assignment_id        uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id      uuid NOT NULL,
    asset_id             uuid NOT NULL REFERENCES it_assets (asset_id),
    employee_id          uuid NOT NULL REFERENCES employees (employee_id),
    assignment_date      date NOT NULL DEFAULT current_date,
    previous_assignee_id uuid,
    -- Where the asset goes; when site_id is NULL the relay uses the asset's location.
    site_id              uuid,
    building             text,
    room                 text,
    assigned_by          uuid NOT NULL
);

CREATE TABLE IF NOT EXISTS it_tickets (
    ticket_id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id   uuid NOT NULL,
    ticket_number     text NOT NULL,
    category          text NOT NULL,
    subcategory       text,
    priority          text NOT NULL,
    subject           text NOT NULL,
    description       text NOT NULL,
    requester_id      uuid NOT NULL REFERENCES employees (employee_id),
    affected_asset_id uuid REFERENCES it_assets (asset_id),
    site_id           uuid,
    status            text NOT NULL DEFAULT 'open',
    assigned_to_id    uuid,
    resolution_notes  text,
    updated_by        uuid
);

CREATE TABLE IF NOT EXISTS it_licenses (
    license_id       uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id  uuid NOT NULL,
    software_name    text NOT NULL,
    software_vendor  text NOT NULL,
    license_type     text NOT NULL,
    license_key      text,
    license_count    integer NOT NULL,
    cost_per_license numeric(14, 2) NOT NULL,
    purchase_date    date NOT NULL,
    expiration_date  date,
    renewal_cost     numeric(14, 2),
    vendor_id        uuid REFERENCES it_vendors (vendor_id),
    updated_by       uuid
);

COMMIT;

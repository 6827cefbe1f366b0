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
    updated_by        uuid,
    -- SLA clocks (it_sla_breached): targets run from created_at.
    created_at        timestamptz NOT NULL DEFAULT now(),
    first_response_at timestamptz,
    resolved_at       timestamptz
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

-- Time-based events (itrelay.scan_due_events) read the tables below.

-- Vendor contracts (it_contract_expiring): active ones are scanned for expiration.
CREATE TABLE IF NOT EXISTS it_vendor_contracts (
    contract_id     uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id uuid NOT NULL,
    contract_number text NOT NULL,
    vendor_id       uuid NOT NULL REFERENCES it_vendors (vendor_id),
    contract_type   text NOT NULL,
    start_date      date,
    expiration_date date NOT NULL,
    contract_value  numeric(14, 2),
    auto_renew      boolean NOT NULL DEFAULT false,
    -- Only 'active' contracts are scanned; e.g. 'terminated' ones are not.
    status          text NOT NULL DEFAULT 'active',
    updated_by      uuid
);

-- SLA targets per ticket priority (it_sla_breached); tickets of a priority without a
-- policy have no SLA.
CREATE TABLE IF NOT EXISTS it_sla_policies (
    organization_id  uuid NOT NULL,
    priority         text NOT NULL,
    response_hours   numeric(8, 2) NOT NULL CHECK (response_hours > 0),
    resolution_hours numeric(8, 2) NOT NULL CHECK (resolution_hours > 0),
    PRIMARY KEY (organization_id, priority)
);

-- Patches to deploy by a target date (it_patch_deployment_overdue): overdue while
-- deployed_at is NULL and the patch is not cancelled.
CREATE TABLE IF NOT EXISTS it_patches (
    patch_id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id    uuid NOT NULL,
    patch_name         text NOT NULL,
    severity           text NOT NULL,
    target_date        date NOT NULL,
    status             text NOT NULL DEFAULT 'pending',
    deployed_at        timestamptz,
    affected_asset_ids uuid[] NOT NULL DEFAULT '{}',
    updated_by         uuid
);

-- Seats in use per license (it_license_compliance_alert): one row per assignment to a
-- person or device; a revoked assignment no longer counts.
CREATE TABLE IF NOT EXISTS it_license_assignments (
    assignment_id   uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id uuid NOT NULL,
    license_id      uuid NOT NULL REFERENCES it_licenses (license_id),
    employee_id     uuid REFERENCES employees (employee_id),
    asset_id        uuid REFERENCES it_assets (asset_id),
    assigned_at     timestamptz NOT NULL DEFAULT now(),
    revoked_at      timestamptz
);

-- The IT-04 License Compliance Check API, exactly as the contract specifies it. It lives
-- here, not in install.sql: it is the IT module's function (its dashboard calls it too),
-- so uninstalling the relay must not remove it. itrelay's compliance scan calls it.
-- usage_count: active assignments. variance = usage_count - license_count;
-- variance_percent = 100 * variance / license_count (of 1 when license_count is 0),
-- rounded to 2 places. compliance_status: over_deployed when usage exceeds the count,
-- under_utilized when at most half the licenses are in use, else compliant.
CREATE OR REPLACE FUNCTION it_check_license_compliance(
    p_organization_id uuid,
    p_license_id uuid DEFAULT NULL -- NULL = check all
) RETURNS TABLE (
    license_id uuid,
    software_name text,
    license_count integer,
    usage_count integer,
    compliance_status text,
    variance integer,
    variance_percent numeric
)
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = public
AS $$
    SELECT l.license_id, l.software_name, l.license_count, u.usage_count,
           CASE WHEN u.usage_count > l.license_count THEN 'over_deployed'
                WHEN l.license_count > 0 AND u.usage_count * 2 <= l.license_count THEN 'under_utilized'
                ELSE 'compliant' END,
           u.usage_count - l.license_count,
           round(100.0 * (u.usage_count - l.license_count) / greatest(l.license_count, 1), 2)
    FROM it_licenses l
    CROSS JOIN LATERAL (
        SELECT count(*)::integer AS usage_count
        FROM it_license_assignments a
        WHERE a.license_id = l.license_id AND a.revoked_at IS NULL
    ) u
    WHERE l.organization_id = p_organization_id
      AND (p_license_id IS NULL OR l.license_id = p_license_id);
$$;

-- SECURITY DEFINER reads every organization's licenses for whoever calls it, and the
-- organization is the caller's argument: no role may call it unless granted (the relay's
-- role is, by sql/role.sql; grant the IT-04 dashboard's role as well).
REVOKE EXECUTE ON FUNCTION it_check_license_compliance(uuid, uuid) FROM PUBLIC;

-- Maintenance needs raised against an asset (it_asset_maintenance_required).
CREATE TABLE IF NOT EXISTS it_maintenance_requests (
    maintenance_request_id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id        uuid NOT NULL,
    asset_id               uuid NOT NULL REFERENCES it_assets (asset_id),
    maintenance_type       text NOT NULL,
    description            text NOT NULL,
    priority               text NOT NULL,
    requested_by           uuid NOT NULL,
    updated_by             uuid
);

CREATE TABLE IF NOT EXISTS it_security_incidents (
    incident_id        uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id    uuid NOT NULL,
    incident_number    text NOT NULL,
    incident_type      text NOT NULL,
    severity           text NOT NULL,
    description        text NOT NULL,
    affected_asset_ids uuid[],
    affected_user_ids  uuid[],
    detected_at        timestamptz NOT NULL,
    reported_by        uuid NOT NULL,
    site_id            uuid,
    updated_by         uuid
);

CREATE TABLE IF NOT EXISTS it_vulnerabilities (
    vulnerability_id      uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id       uuid NOT NULL,
    cve_id                text,
    vulnerability_name    text NOT NULL,
    severity              text NOT NULL,
    cvss_score            numeric(3, 1),
    affected_asset_ids    uuid[] NOT NULL DEFAULT '{}',
    remediation_available boolean NOT NULL DEFAULT false,
    -- The patch that remediates it, when one is known.
    patch_id              uuid,
    updated_by            uuid
);

CREATE TABLE IF NOT EXISTS it_purchase_requests (
    request_id      uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id uuid NOT NULL,
    request_number  text NOT NULL,
    requester_id    uuid NOT NULL REFERENCES employees (employee_id),
    request_type    text NOT NULL,
    estimated_cost  numeric(14, 2) NOT NULL,
    justification   text NOT NULL,
    vendor_id       uuid REFERENCES it_vendors (vendor_id),
    site_id         uuid,
    -- draft, submitted, approved, rejected, ...
    approval_status text NOT NULL DEFAULT 'draft',
    approval_notes  text,
    po_number       text,
    -- Set when the goods are received; the lines received are in it_purchase_request_items.
    received_date   date,
    updated_by      uuid
);

-- The lines of a purchase request; quantity_received and serial_numbers are filled at receipt.
CREATE TABLE IF NOT EXISTS it_purchase_request_items (
    item_id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id   uuid NOT NULL,
    request_id        uuid NOT NULL REFERENCES it_purchase_requests (request_id),
    line_number       integer NOT NULL,
    item_description  text NOT NULL,
    quantity          integer NOT NULL,
    quantity_received integer,
    serial_numbers    text[],
    UNIQUE (request_id, line_number)
);

CREATE TABLE IF NOT EXISTS it_onboarding_instances (
    onboarding_instance_id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id        uuid NOT NULL,
    employee_id            uuid NOT NULL REFERENCES employees (employee_id),
    -- pending, in_progress, completed, cancelled
    status                 text NOT NULL DEFAULT 'pending',
    completed_at           timestamptz,
    updated_by             uuid
);

CREATE TABLE IF NOT EXISTS it_access_accounts (
    account_id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id     uuid NOT NULL,
    employee_id         uuid NOT NULL REFERENCES employees (employee_id),
    system_name         text NOT NULL,
    account_username    text NOT NULL,
    -- pending, active, suspended, deactivated
    status              text NOT NULL DEFAULT 'pending',
    deactivation_reason text,
    updated_by          uuid
);

-- One run of an IT report (report_name copied from the report definition at run time).
CREATE TABLE IF NOT EXISTS it_report_runs (
    run_id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id uuid NOT NULL,
    report_id       uuid NOT NULL,
    report_name     text NOT NULL,
    format          text NOT NULL,
    -- queued, running, completed, failed
    status          text NOT NULL DEFAULT 'queued',
    document_id     uuid,
    error_code      text,
    error_message   text,
    retryable       boolean,
    -- Who started the run; NULL for scheduled runs.
    requested_by    uuid,
    updated_by      uuid
);

-- Change requests: draft → submitted → approved | rejected → scheduled → implemented | rolled_back.
CREATE TABLE IF NOT EXISTS it_changes (
    change_id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id     uuid NOT NULL,
    change_number       text NOT NULL,
    title               text NOT NULL,
    change_type         text NOT NULL,
    risk_level          text NOT NULL,
    status              text NOT NULL DEFAULT 'draft',
    scheduled_start     timestamptz,
    scheduled_end       timestamptz,
    approval_notes      text,
    -- Why it was rejected or rolled back.
    status_reason       text,
    -- Set to ask for a change advisory board review whatever the risk level.
    cab_review_required boolean NOT NULL DEFAULT false,
    cab_review_reason   text,
    updated_by          uuid
);

COMMIT;

//! Row-change events of assets, licenses, security and procurement, end to end: each
//! business write that meets the contract's condition yields exactly the expected
//! message on each subscriber's exchange and on no other; writes that do not meet it
//! (an unchanged status, an unrelated column, a re-save) yield nothing.

mod common;

use common::*;
use serde_json::json;

#[tokio::test]
async fn maintenance_required_is_enriched_from_the_asset() {
    let mut env = TestEnv::new().await;
    env.seed().await;
    env.start_relay(&[]);
    let request = "d0000000-0000-4000-8000-000000000001";
    env.execute(&format!(
        "INSERT INTO it_maintenance_requests (maintenance_request_id, organization_id, asset_id, maintenance_type,
                                              description, priority, requested_by)
             VALUES ('{request}', '{ORG}', '{ASSET}', 'repair', 'Hinge cracked', 'high', '{EMPLOYEE}');
         UPDATE it_maintenance_requests SET priority = 'critical', updated_by = '{ACTOR}'
             WHERE maintenance_request_id = '{request}';"
    ))
    .await;
    env.wait_until_settled(1).await;
    let one = &["it_asset_maintenance_required"][..];
    let messages = assert_routed(&env, &[("FM", one), ("PF-10", one)]).await;
    assert_eq!(
        without_timestamp(&messages[0].body),
        json!({
            "event_type": "it_asset_maintenance_required",
            "asset_id": ASSET,
            "asset_tag": "LT-0042",
            "asset_name": "ThinkPad X1",
            "maintenance_type": "repair",
            "description": "Hinge cracked",
            "priority": "high",
            "requested_by": EMPLOYEE,
            "location": {"site_id": SITE, "building": "HQ", "room": "4.12"},
            "organization_id": ORG,
        })
    );
    assert_eq!(messages[0].raw_body, messages[1].raw_body);
}

#[tokio::test]
async fn license_created_carries_a_key_reference_never_the_key() {
    const KEY: &str = "KEY-SECRET-7731";
    let mut env = TestEnv::new().await;
    env.seed().await;
    env.start_relay(&[]);
    let keyed = "c0000000-0000-4000-8000-000000000011";
    let keyless = "c0000000-0000-4000-8000-000000000012";
    env.execute(&format!(
        "INSERT INTO it_licenses (license_id, organization_id, software_name, software_vendor, license_type,
                                  license_key, license_count, cost_per_license, purchase_date, expiration_date,
                                  vendor_id)
             VALUES ('{keyed}', '{ORG}', 'CAD Pro', 'Autodraw', 'subscription', '{KEY}', 10, 99.5,
                     '2026-01-01', '2027-01-01', '{VENDOR}');
         INSERT INTO it_licenses (license_id, organization_id, software_name, software_vendor, license_type,
                                  license_count, cost_per_license, purchase_date)
             VALUES ('{keyless}', '{ORG}', 'Editor', 'Texty', 'perpetual', 3, 20, '2026-02-01');
         UPDATE it_licenses SET license_count = 12, license_key = '{KEY}-2' WHERE license_id = '{keyed}';"
    ))
    .await;
    env.wait_until_settled(2).await;
    let both = &["it_license_created", "it_license_created"][..];
    let messages = assert_routed(&env, &[("FA", both)]).await;
    assert_eq!(
        without_timestamp(&messages[0].body),
        json!({
            "event_type": "it_license_created",
            "license_id": keyed,
            "software_name": "CAD Pro",
            "software_vendor": "Autodraw",
            "license_type": "subscription",
            "license_key_ref": format!("it_licenses/{keyed}/license_key"),
            "license_count": 10,
            "cost_per_license": 99.5,
            "total_cost": 995.0,
            "purchase_date": "2026-01-01",
            "expiration_date": "2027-01-01",
            "vendor_id": VENDOR,
            "organization_id": ORG,
        })
    );
    assert_eq!(messages[1].body["license_id"], keyless);
    assert_eq!(messages[1].body["total_cost"], 60.0);
    assert!(messages[1].body.get("license_key_ref").is_none());
    for message in &messages {
        assert!(!String::from_utf8_lossy(&message.raw_body).contains(KEY));
        assert!(!format!("{:?}", message.properties).contains(KEY));
    }
    let leaks = env
        .count(&format!(
            "SELECT count(*) FROM itrelay.outbox
             WHERE payload::text LIKE '%{KEY}%' OR coalesce(last_error, '') LIKE '%{KEY}%'"
        ))
        .await;
    assert_eq!(leaks, 0);
}

#[tokio::test]
async fn security_incident_created_carries_the_affected_ids() {
    let mut env = TestEnv::new().await;
    env.seed().await;
    env.start_relay(&[]);
    let incident = "e0000000-0000-4000-8000-000000000001";
    env.execute(&format!(
        "SET TIME ZONE 'UTC';
         INSERT INTO it_security_incidents (incident_id, organization_id, incident_number, incident_type, severity,
                                            description, affected_asset_ids, affected_user_ids, detected_at,
                                            reported_by, site_id)
             VALUES ('{incident}', '{ORG}', 'SEC-1', 'phishing', 'high', 'Credential phishing mail',
                     ARRAY['{ASSET}']::uuid[], ARRAY['{EMPLOYEE}', '{ACTOR}']::uuid[],
                     '2026-03-05 08:15:00+00', '{ACTOR}', '{SITE}');
         UPDATE it_security_incidents SET severity = 'critical', updated_by = '{ACTOR}'
             WHERE incident_id = '{incident}';"
    ))
    .await;
    env.wait_until_settled(1).await;
    let one = &["it_security_incident_created"][..];
    let messages = assert_routed(&env, &[("GR", one), ("PF-10", one)]).await;
    assert_eq!(
        without_timestamp(&messages[0].body),
        json!({
            "event_type": "it_security_incident_created",
            "incident_id": incident,
            "incident_number": "SEC-1",
            "incident_type": "phishing",
            "severity": "high",
            "description": "Credential phishing mail",
            "affected_asset_ids": [ASSET],
            "affected_user_ids": [EMPLOYEE, ACTOR],
            "detected_at": "2026-03-05T08:15:00+00:00",
            "reported_by": ACTOR,
            "organization_id": ORG,
            "site_id": SITE,
        })
    );
}

#[tokio::test]
async fn critical_vulnerability_fires_when_severity_becomes_critical() {
    let mut env = TestEnv::new().await;
    env.seed().await;
    env.start_relay(&[]);
    let raised = "f0000000-0000-4000-8000-000000000001";
    let patch = "f0000000-0000-4000-8000-0000000000aa";
    env.execute(&format!(
        "INSERT INTO it_vulnerabilities (vulnerability_id, organization_id, cve_id, vulnerability_name, severity,
                                         cvss_score, affected_asset_ids)
             VALUES ('{raised}', '{ORG}', 'CVE-2026-0001', 'Remote code execution', 'high', 8.1,
                     ARRAY['{ASSET}', '{SITE}']::uuid[]);
         UPDATE it_vulnerabilities SET cvss_score = 8.4 WHERE vulnerability_id = '{raised}';
         UPDATE it_vulnerabilities SET severity = 'critical', cvss_score = 9.8, remediation_available = true,
             patch_id = '{patch}', updated_by = '{ACTOR}' WHERE vulnerability_id = '{raised}';
         UPDATE it_vulnerabilities SET severity = 'critical' WHERE vulnerability_id = '{raised}';
         UPDATE it_vulnerabilities SET cvss_score = 10 WHERE vulnerability_id = '{raised}';
         INSERT INTO it_vulnerabilities (organization_id, vulnerability_name, severity)
             VALUES ('{ORG}', 'Low-risk banner leak', 'low');
         INSERT INTO it_vulnerabilities (organization_id, vulnerability_name, severity)
             VALUES ('{ORG}', 'Zero-day', 'critical');"
    ))
    .await;
    env.wait_until_settled(2).await;
    let both = &[
        "it_critical_vulnerability_detected",
        "it_critical_vulnerability_detected",
    ][..];
    let messages = assert_routed(&env, &[("GR", both), ("PF-10", both)]).await;
    let first = messages
        .iter()
        .find(|m| m.body["vulnerability_id"] == raised)
        .expect("raised vulnerability");
    assert_eq!(
        without_timestamp(&first.body),
        json!({
            "event_type": "it_critical_vulnerability_detected",
            "vulnerability_id": raised,
            "cve_id": "CVE-2026-0001",
            "vulnerability_name": "Remote code execution",
            "severity": "critical",
            "cvss_score": 9.8,
            "affected_asset_ids": [ASSET, SITE],
            "affected_asset_count": 2,
            "remediation_available": true,
            "patch_id": patch,
            "organization_id": ORG,
        })
    );
    let zero_day = messages
        .iter()
        .find(|m| m.body["vulnerability_name"] == "Zero-day")
        .expect("inserted as critical");
    assert_eq!(zero_day.body["affected_asset_ids"], json!([]));
    assert_eq!(zero_day.body["affected_asset_count"], 0);
}

#[tokio::test]
async fn purchase_request_is_submitted_approved_and_received() {
    let mut env = TestEnv::new().await;
    env.seed().await;
    env.start_relay(&[]);
    let request = "a1000000-0000-4000-8000-000000000001";
    let with_vendor = "a1000000-0000-4000-8000-000000000002";
    env.execute(&format!(
        "INSERT INTO it_purchase_requests (request_id, organization_id, request_number, requester_id, request_type,
                                           estimated_cost, justification, site_id)
             VALUES ('{request}', '{ORG}', 'PR-1', '{EMPLOYEE}', 'hardware', 4200, 'New hires', '{SITE}');
         UPDATE it_purchase_requests SET approval_status = 'submitted', updated_by = '{EMPLOYEE}'
             WHERE request_id = '{request}';
         UPDATE it_purchase_requests SET justification = 'New hires (3)' WHERE request_id = '{request}';
         UPDATE it_purchase_requests SET approval_status = 'submitted' WHERE request_id = '{request}';
         UPDATE it_purchase_requests SET approval_status = 'approved', approval_notes = 'Within budget',
             po_number = 'PO-77', updated_by = '{ACTOR}' WHERE request_id = '{request}';
         UPDATE it_purchase_requests SET approval_status = 'approved' WHERE request_id = '{request}';
         INSERT INTO it_purchase_request_items (organization_id, request_id, line_number, item_description,
                                                quantity, quantity_received, serial_numbers)
             VALUES ('{ORG}', '{request}', 1, 'Laptop', 3, 2, ARRAY['SN-1', 'SN-2']),
                    ('{ORG}', '{request}', 2, 'USB-C cable', 3, 3, NULL),
                    ('{ORG}', '{request}', 3, 'Dock', 1, NULL, NULL);
         UPDATE it_purchase_requests SET received_date = '2026-03-10', updated_by = '{EMPLOYEE}'
             WHERE request_id = '{request}';
         UPDATE it_purchase_requests SET received_date = '2026-03-11' WHERE request_id = '{request}';
         INSERT INTO it_purchase_requests (request_id, organization_id, request_number, requester_id, request_type,
                                           estimated_cost, justification, vendor_id, approval_status)
             VALUES ('{with_vendor}', '{ORG}', 'PR-2', '{ACTOR}', 'software', 900, 'Renewal', '{VENDOR}',
                     'submitted');"
    ))
    .await;
    env.wait_until_settled(4).await;
    let submitted = "it_purchase_request_submitted";
    let approved = "it_purchase_request_approved";
    let received = "it_purchase_request_received";
    let messages = assert_routed(
        &env,
        &[
            ("FW-34", &[submitted, submitted]),
            ("FA-04", &[approved]),
            ("IT-01", &[received]),
            ("PF-10", &[submitted, approved, received, submitted]),
        ],
    )
    .await;
    let find = |event_type: &str, request_id: &str| {
        messages
            .iter()
            .find(|m| m.routing_key == event_type && m.body["request_id"] == request_id)
            .map(|m| without_timestamp(&m.body))
            .expect("message")
    };
    assert_eq!(
        find(submitted, request),
        json!({
            "event_type": submitted,
            "request_id": request,
            "request_number": "PR-1",
            "requester_id": EMPLOYEE,
            "requester_name": "Dana Reyes",
            "request_type": "hardware",
            "estimated_cost": 4200.0,
            "justification": "New hires",
            "organization_id": ORG,
            "site_id": SITE,
        })
    );
    let second = find(submitted, with_vendor);
    assert_eq!(second["vendor_id"], VENDOR);
    assert_eq!(second["vendor_name"], "Acme Hardware");
    assert_eq!(second["requester_name"], "Sam Ortiz");
    let mut approval = find(approved, request);
    let approved_at = approval
        .as_object_mut()
        .and_then(|body| body.remove("approved_at"))
        .expect("approved_at");
    time::OffsetDateTime::parse(
        approved_at.as_str().expect("approved_at is a string"),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("approved_at is RFC 3339");
    assert_eq!(
        approval,
        json!({
            "event_type": approved,
            "request_id": request,
            "request_number": "PR-1",
            "requester_id": EMPLOYEE,
            "request_type": "hardware",
            "estimated_cost": 4200.0,
            "approved_by": ACTOR,
            "approval_notes": "Within budget",
            "organization_id": ORG,
        })
    );
    assert_eq!(
        find(received, request),
        json!({
            "event_type": received,
            "request_id": request,
            "request_number": "PR-1",
            "po_number": "PO-77",
            "items_received": [
                {"item_description": "Laptop", "quantity": 2, "serial_numbers": ["SN-1", "SN-2"]},
                {"item_description": "USB-C cable", "quantity": 3},
            ],
            "received_by": EMPLOYEE,
            "received_date": "2026-03-10",
            "organization_id": ORG,
        })
    );
}

#[tokio::test]
async fn an_asset_is_purchased_once_ever() {
    let env = TestEnv::new().await;
    env.seed().await;
    let purchases = "SELECT count(*) FROM itrelay.outbox WHERE event_type = 'it_asset_purchased'";
    // The seeded asset has neither cost nor date yet; the second asset is bought at insert.
    env.execute(&format!(
        "UPDATE it_assets SET purchase_cost = 1200, purchase_date = '2026-03-01' WHERE asset_id = '{ASSET}';
         INSERT INTO it_assets (organization_id, asset_tag, asset_name, asset_type, purchase_cost, purchase_date)
             VALUES ('{ORG}', 'MN-2', 'Monitor', 'monitor', 300, '2026-03-02');"
    ))
    .await;
    assert_eq!(env.count(purchases).await, 2);
    // Cleared and entered again, each field, on both: no new capitalisation.
    for field in ["purchase_cost", "purchase_date"] {
        env.execute(&format!(
            "UPDATE it_assets SET {field} = NULL;
             UPDATE it_assets SET purchase_cost = 1250, purchase_date = '2026-03-03';"
        ))
        .await;
    }
    assert_eq!(env.count(purchases).await, 2);
}

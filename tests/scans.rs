//! Time-based events: the SQL scans, driven with an explicit `p_now`, record each event
//! once per threshold and subject (across restarts and concurrent scans), catch up once
//! after downtime, re-arm on a new date, and the relay delivers what they record to
//! each subscriber's exchange; the daemon's scheduler runs them on its own.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const CONTRACT: &str = "c0000000-0000-4000-8000-000000000001";
const LICENSE: &str = "d0000000-0000-4000-8000-000000000001";
const TICKET: &str = "e0000000-0000-4000-8000-000000000001";
const PATCH: &str = "f0000000-0000-4000-8000-000000000001";
const PATCH_ASSET: &str = "f0000000-0000-4000-8000-0000000000aa";
/// The scans' "now" in most tests.
const NOW: &str = "2026-03-01T09:00:00Z";

/// A fresh environment with the reference rows seeded and the outbox emptied of the
/// row-change events that seeding caused (they are not under test here).
async fn scan_env(setup: &str) -> TestEnv {
    let env = TestEnv::new().await;
    env.seed().await;
    env.execute(setup).await;
    env.execute("DELETE FROM itrelay.outbox").await;
    env
}

/// Runs every scan as of `now`; how many events they recorded.
async fn scan(env: &TestEnv, now: &str) -> i32 {
    env.client
        .query_one(
            "SELECT itrelay.scan_due_events($1::text::timestamptz)",
            &[&now],
        )
        .await
        .expect("scan_due_events")
        .get(0)
}

/// `field` of every outbox payload of `event_type`, in id order.
async fn outbox_field(env: &TestEnv, event_type: &str, field: &str) -> Vec<Value> {
    env.client
        .query(
            "SELECT payload -> $2 FROM itrelay.outbox WHERE event_type = $1 ORDER BY id",
            &[&event_type, &field],
        )
        .await
        .expect("outbox payloads")
        .iter()
        .map(|row| row.get(0))
        .collect()
}

fn contract(id: &str, expiration: &str) -> String {
    format!(
        "INSERT INTO it_vendor_contracts (contract_id, organization_id, contract_number, vendor_id, contract_type,
             expiration_date, contract_value, auto_renew)
             VALUES ('{id}', '{ORG}', 'VC-{}', '{VENDOR}', 'support', '{expiration}', 12000, true);",
        &id[..8]
    )
}

fn license(id: &str, expiration: &str, count: i32, in_use: i32) -> String {
    format!(
        "INSERT INTO it_licenses (license_id, organization_id, software_name, software_vendor, license_type,
             license_count, cost_per_license, purchase_date, expiration_date, renewal_cost)
             VALUES ('{id}', '{ORG}', 'Figma', 'Figma Inc', 'subscription', {count}, 15, '2025-03-01', '{expiration}', 1800);
         INSERT INTO it_license_assignments (organization_id, license_id, employee_id)
             SELECT '{ORG}', '{id}', '{EMPLOYEE}' FROM generate_series(1, {in_use});"
    )
}

const SLA_POLICY: &str =
    "INSERT INTO it_sla_policies (organization_id, priority, response_hours, resolution_hours)
    VALUES ('7f1c1c4e-8a2b-4d53-9a55-2a1e7b0c9d11', 'high', 4, 24);";

fn ticket(id: &str, created_at: &str) -> String {
    format!(
        "INSERT INTO it_tickets (ticket_id, organization_id, ticket_number, category, priority, subject, description,
             requester_id, assigned_to_id, created_at)
             VALUES ('{id}', '{ORG}', 'TCK-{}', 'hardware', 'high', 'Laptop dead', 'No boot', '{EMPLOYEE}',
                     '{ACTOR}', '{created_at}');",
        &id[..8]
    )
}

fn patch(id: &str, target: &str) -> String {
    format!(
        "INSERT INTO it_patches (patch_id, organization_id, patch_name, severity, target_date, affected_asset_ids)
             VALUES ('{id}', '{ORG}', 'KB5034441', 'critical', '{target}', ARRAY['{PATCH_ASSET}'::uuid]);"
    )
}

/// The body's `timestamp` is the scan's `p_now`.
fn assert_stamped_now(body: &Value) {
    let stamp = time::OffsetDateTime::parse(
        body["timestamp"].as_str().expect("timestamp"),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("RFC 3339 timestamp");
    assert_eq!(stamp, time::macros::datetime!(2026-03-01 09:00 UTC));
}

#[tokio::test]
async fn each_time_based_event_reaches_its_subscribers_with_the_contract_body() {
    let mut env = scan_env(&format!(
        "{}{}{SLA_POLICY}{}{}",
        contract(CONTRACT, "2026-03-31"),
        license(LICENSE, "2026-03-08", 10, 12),
        ticket(TICKET, "2026-03-01T04:00:00Z"),
        patch(PATCH, "2026-02-25"),
    ))
    .await;
    env.start_relay(&[]);
    assert_eq!(scan(&env, NOW).await, 5);
    env.wait_until_settled(5).await;
    let messages = assert_routed(
        &env,
        &[
            (
                "PF-10",
                &[
                    "it_contract_expiring",
                    "it_license_expiring",
                    "it_sla_breached",
                    "it_patch_deployment_overdue",
                    "it_license_compliance_alert",
                ],
            ),
            ("IT-02", &["it_sla_breached"]),
        ],
    )
    .await;
    for message in &messages {
        assert_stamped_now(&message.body);
    }
    let (notifications, dashboard): (Vec<Received>, Vec<Received>) = messages
        .into_iter()
        .partition(|m| m.exchange == env.exchange("PF-10"));
    let bodies: Vec<Value> = notifications
        .iter()
        .map(|m| without_timestamp(&m.body))
        .collect();
    assert_eq!(
        bodies,
        [
            json!({
                "event_type": "it_contract_expiring",
                "contract_id": CONTRACT,
                "contract_number": "VC-c0000000",
                "vendor_id": VENDOR,
                "vendor_name": "Acme Hardware",
                "contract_type": "support",
                "expiration_date": "2026-03-31",
                "days_remaining": 30,
                "contract_value": 12000.0,
                "auto_renew": true,
                "organization_id": ORG,
            }),
            json!({
                "event_type": "it_license_expiring",
                "license_id": LICENSE,
                "software_name": "Figma",
                "software_vendor": "Figma Inc",
                "license_type": "subscription",
                "expiration_date": "2026-03-08",
                "days_remaining": 7,
                "license_count": 10,
                "renewal_cost": 1800.0,
                "organization_id": ORG,
            }),
            json!({
                "event_type": "it_sla_breached",
                "ticket_id": TICKET,
                "ticket_number": "TCK-e0000000",
                "sla_type": "response",
                "sla_target_hours": 4.0,
                "actual_hours": 5.0,
                "breach_time": "2026-03-01T08:00:00+00:00",
                "priority": "high",
                "assigned_to_id": ACTOR,
                "organization_id": ORG,
            }),
            json!({
                "event_type": "it_patch_deployment_overdue",
                "patch_id": PATCH,
                "patch_name": "KB5034441",
                "severity": "critical",
                "target_date": "2026-02-25",
                "days_overdue": 4,
                "affected_asset_ids": [PATCH_ASSET],
                "affected_asset_count": 1,
                "organization_id": ORG,
            }),
            json!({
                "event_type": "it_license_compliance_alert",
                "license_id": LICENSE,
                "software_name": "Figma",
                "compliance_status": "over_deployed",
                "license_count": 10,
                "usage_count": 12,
                "variance": 2,
                "variance_percent": 20.0,
                "threshold_breached": "critical",
                "organization_id": ORG,
            }),
        ]
    );
    // The dashboard's copy of the breach is the same message.
    assert_eq!(dashboard[0].message_id(), notifications[2].message_id());
    assert_eq!(dashboard[0].body, notifications[2].body);
    assert_eq!(
        notifications[0].header("source_table").as_deref(),
        Some("it_vendor_contracts")
    );
}

#[tokio::test]
async fn subjects_not_due_fire_nothing() {
    let env = scan_env(&format!(
        "{}{}{}{}{SLA_POLICY}{}{}{}
         UPDATE it_tickets SET first_response_at = '2026-03-01T05:00:00Z', resolved_at = '2026-03-01T08:00:00Z';
         UPDATE it_vendor_contracts SET status = 'terminated' WHERE contract_id = 'c0000000-0000-4000-8000-000000000002';
         UPDATE it_patches SET deployed_at = '2026-02-20' WHERE patch_id = '{PATCH}';
         UPDATE it_patches SET status = 'cancelled' WHERE patch_id = 'f0000000-0000-4000-8000-000000000002';",
        // 91 days away; terminated; expired yesterday; 8 of 10 in use is compliant.
        contract(CONTRACT, "2026-05-31"),
        contract("c0000000-0000-4000-8000-000000000002", "2026-03-05"),
        license(LICENSE, "2026-02-28", 10, 8),
        license("d0000000-0000-4000-8000-000000000002", "2026-12-31", 10, 10),
        ticket(TICKET, "2026-03-01T04:00:00Z"),
        patch(PATCH, "2026-02-01"),
        patch("f0000000-0000-4000-8000-000000000002", "2026-02-01"),
    ))
    .await;
    // A second ticket, inside both targets; a patch due today is not overdue yet.
    env.execute(&format!(
        "{}{}DELETE FROM itrelay.outbox;",
        ticket(
            "e0000000-0000-4000-8000-000000000002",
            "2026-03-01T06:00:00Z"
        ),
        patch("f0000000-0000-4000-8000-000000000003", "2026-03-01"),
    ))
    .await;
    assert_eq!(scan(&env, NOW).await, 0);
    assert_eq!(env.count("SELECT count(*) FROM itrelay.outbox").await, 0);
    assert_eq!(
        env.count("SELECT count(*) FROM itrelay.due_events").await,
        0
    );
}

#[tokio::test]
async fn expiry_fires_once_per_threshold_and_catches_up_once_after_downtime() {
    let env = scan_env(&contract(CONTRACT, "2026-06-01")).await;
    // (scan time, events recorded): 90 and 60 days out, then down from 59 to 13 days
    // (missing 30 and 14), then 7 days, then expired.
    let steps = [
        ("2026-02-20T09:00:00Z", 0), // 101 days
        ("2026-03-03T00:00:00Z", 1), // 90
        ("2026-03-03T23:59:00Z", 0), // same day, again
        ("2026-03-04T09:00:00Z", 0), // 89
        ("2026-04-02T09:00:00Z", 1), // 60
        ("2026-04-03T09:00:00Z", 0), // 59
        ("2026-05-19T09:00:00Z", 1), // 13: only the tightest crossed, 14
        ("2026-05-20T09:00:00Z", 0), // 12
        ("2026-05-25T09:00:00Z", 1), // 7
        ("2026-05-28T09:00:00Z", 0), // 4
        ("2026-06-02T09:00:00Z", 0), // expired
    ];
    for (now, expected) in steps {
        assert_eq!(scan(&env, now).await, expected, "scan at {now}");
    }
    assert_eq!(
        outbox_field(&env, "it_contract_expiring", "days_remaining").await,
        [json!(90), json!(60), json!(13), json!(7)]
    );
    // A restart is just another scan: the bookkeeping is in the database.
    assert_eq!(scan(&env, "2026-05-25T09:00:00Z").await, 0);
}

#[tokio::test]
async fn a_changed_expiration_date_rearms_the_thresholds() {
    let env = scan_env(&contract(CONTRACT, "2026-03-31")).await;
    assert_eq!(scan(&env, NOW).await, 1); // 30 days
    env.execute(&format!(
        "UPDATE it_vendor_contracts SET expiration_date = '2026-04-20' WHERE contract_id = '{CONTRACT}'"
    ))
    .await;
    assert_eq!(scan(&env, NOW).await, 1); // 50 days: the 60-day threshold of the new date
    assert_eq!(scan(&env, NOW).await, 0);
    assert_eq!(
        outbox_field(&env, "it_contract_expiring", "expiration_date").await,
        [json!("2026-03-31"), json!("2026-04-20")]
    );
}

#[tokio::test]
async fn two_concurrent_scans_record_each_event_once() {
    let setup: String = (1..=20)
        .map(|n| contract(&format!("c0000000-0000-4000-8000-{n:012}"), "2026-03-10"))
        .collect();
    let env = scan_env(&setup).await;
    // The first scan holds its records uncommitted while the second runs into them.
    let first = connect(&env.db_url).await;
    first.batch_execute("BEGIN").await.expect("begin");
    let recorded: i32 = first
        .query_one(
            "SELECT itrelay.scan_due_events($1::text::timestamptz)",
            &[&NOW],
        )
        .await
        .expect("first scan")
        .get(0);
    assert_eq!(recorded, 20);
    let second_url = env.db_url.clone();
    let second = tokio::spawn(async move {
        let client = connect(&second_url).await;
        let recorded: i32 = client
            .query_one(
                "SELECT itrelay.scan_due_events($1::text::timestamptz)",
                &[&NOW],
            )
            .await
            .expect("second scan")
            .get(0);
        recorded
    });
    wait_for(|| async {
        env.count(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .await
            == 1
    })
    .await;
    first.batch_execute("COMMIT").await.expect("commit");
    assert_eq!(second.await.expect("second scan task"), 0);
    assert_eq!(env.count("SELECT count(*) FROM itrelay.outbox").await, 20);
}

#[tokio::test]
async fn sla_breaches_fire_once_per_target_including_late_ones_seen_afterwards() {
    let late = "e0000000-0000-4000-8000-000000000002";
    let env = scan_env(&format!(
        "{SLA_POLICY}{}{}
         UPDATE it_tickets SET first_response_at = '2026-03-01T06:30:00Z' WHERE ticket_id = '{late}';",
        ticket(TICKET, "2026-03-01T00:00:00Z"),
        ticket(late, "2026-03-01T00:00:00Z"),
    ))
    .await;
    assert_eq!(scan(&env, "2026-03-01T03:59:00Z").await, 0);
    // Both miss the 4-hour response target; the late one was answered after 6.5 hours.
    assert_eq!(scan(&env, "2026-03-01T07:00:00Z").await, 2);
    assert_eq!(scan(&env, "2026-03-01T12:00:00Z").await, 0);
    let mut hours: Vec<f64> = outbox_field(&env, "it_sla_breached", "actual_hours")
        .await
        .iter()
        .filter_map(Value::as_f64)
        .collect();
    hours.sort_by(f64::total_cmp);
    assert_eq!(hours, [6.5, 7.0]);
    env.execute(&format!(
        "UPDATE it_tickets SET resolved_at = '2026-03-01T20:00:00Z' WHERE ticket_id = '{late}'"
    ))
    .await;
    assert_eq!(scan(&env, "2026-03-02T01:00:00Z").await, 1); // 24-hour resolution target
    assert_eq!(scan(&env, "2026-03-05T01:00:00Z").await, 0);
    assert_eq!(
        outbox_field(&env, "it_sla_breached", "sla_type").await,
        [json!("response"), json!("response"), json!("resolution")]
    );
}

#[tokio::test]
async fn overdue_patches_fire_once_per_target_date() {
    let env = scan_env(&patch(PATCH, "2026-02-25")).await;
    assert_eq!(scan(&env, "2026-02-25T23:00:00Z").await, 0);
    assert_eq!(scan(&env, NOW).await, 1);
    assert_eq!(scan(&env, "2026-03-09T09:00:00Z").await, 0);
    env.execute(&format!(
        "UPDATE it_patches SET target_date = '2026-03-10' WHERE patch_id = '{PATCH}'"
    ))
    .await;
    assert_eq!(scan(&env, "2026-03-09T09:00:00Z").await, 0);
    assert_eq!(scan(&env, "2026-03-12T09:00:00Z").await, 1);
    assert_eq!(
        outbox_field(&env, "it_patch_deployment_overdue", "days_overdue").await,
        [json!(4), json!(2)]
    );
}

#[tokio::test]
async fn compliance_alerts_escalate_once_and_rearm_when_compliant_again() {
    let env = scan_env(&license(LICENSE, "2027-01-01", 20, 21)).await;
    let grow = |to: i32| {
        format!(
            "UPDATE it_license_assignments SET revoked_at = now() WHERE license_id = '{LICENSE}';
             INSERT INTO it_license_assignments (organization_id, license_id, employee_id)
                 SELECT '{ORG}', '{LICENSE}', '{EMPLOYEE}' FROM generate_series(1, {to});"
        )
    };
    assert_eq!(scan(&env, NOW).await, 1); // 5 % over: warning
    assert_eq!(scan(&env, NOW).await, 0);
    env.execute(&grow(25)).await;
    assert_eq!(scan(&env, NOW).await, 1); // 25 % over: critical
    env.execute(&grow(21)).await;
    assert_eq!(scan(&env, NOW).await, 0); // back to warning level: already escalated
    env.execute(&grow(15)).await;
    assert_eq!(scan(&env, NOW).await, 0); // compliant: re-arms
    env.execute(&grow(22)).await;
    assert_eq!(scan(&env, NOW).await, 1);
    env.execute(&grow(10)).await;
    assert_eq!(scan(&env, NOW).await, 1); // half in use: under-utilized
    assert_eq!(
        outbox_field(&env, "it_license_compliance_alert", "threshold_breached").await,
        [
            json!("warning"),
            json!("critical"),
            json!("warning"),
            json!("warning")
        ]
    );
    assert_eq!(
        outbox_field(&env, "it_license_compliance_alert", "compliance_status").await,
        [
            json!("over_deployed"),
            json!("over_deployed"),
            json!("over_deployed"),
            json!("under_utilized")
        ]
    );
}

#[tokio::test]
async fn the_daemon_scans_on_its_schedule_and_the_relay_delivers() {
    let mut env = scan_env(
        "INSERT INTO it_licenses (license_id, organization_id, software_name, software_vendor, license_type,
             license_count, cost_per_license, purchase_date, expiration_date)
             VALUES ('d0000000-0000-4000-8000-000000000001', '7f1c1c4e-8a2b-4d53-9a55-2a1e7b0c9d11', 'Slack',
                     'Salesforce', 'subscription', 1, 8, '2025-01-01', current_date + 5);
         INSERT INTO it_license_assignments (organization_id, license_id)
             VALUES ('7f1c1c4e-8a2b-4d53-9a55-2a1e7b0c9d11', 'd0000000-0000-4000-8000-000000000001');",
    )
    .await;
    env.start_relay(&[]);
    let stop = CancellationToken::new();
    let scans = tokio::spawn(itrelay::scan::run(
        env.settings(&[
            ("ITRELAY__SCAN__ENABLED", "true"),
            ("ITRELAY__SCAN__INTERVAL_SECS", "1"),
        ]),
        stop.clone(),
    ));
    env.wait_until_settled(1).await;
    // A subject that falls due later is found by a later scan; the first is not repeated.
    env.execute(&patch(PATCH, "2000-01-01")).await;
    env.wait_until_settled(2).await;
    stop.cancel();
    tokio::time::timeout(WAIT, scans)
        .await
        .expect("scans stop in time")
        .expect("scan task");
    assert_routed(
        &env,
        &[(
            "PF-10",
            &["it_license_expiring", "it_patch_deployment_overdue"],
        )],
    )
    .await;
}

#[tokio::test]
async fn the_scheduler_survives_failing_scans_and_lost_connections() {
    // Without its SLA policy table every scan fails (and records nothing) until it is back.
    let env = scan_env(&format!(
        "{}
         UPDATE it_licenses SET expiration_date = current_date + 5;
         ALTER TABLE it_sla_policies RENAME TO it_sla_policies_away;",
        license(LICENSE, "2000-01-01", 1, 1),
    ))
    .await;
    let stop = CancellationToken::new();
    let scans = tokio::spawn(itrelay::scan::run(
        env.settings(&[
            ("ITRELAY__SCAN__ENABLED", "true"),
            ("ITRELAY__SCAN__INTERVAL_SECS", "1"),
        ]),
        stop.clone(),
    ));
    let rollbacks = "SELECT xact_rollback FROM pg_stat_database WHERE datname = current_database()";
    wait_for(|| async { env.count(rollbacks).await >= 1 }).await;
    assert_eq!(env.count("SELECT count(*) FROM itrelay.outbox").await, 0);
    env.execute("ALTER TABLE it_sla_policies_away RENAME TO it_sla_policies")
        .await;
    wait_for(|| async { env.count("SELECT count(*) FROM itrelay.outbox").await == 1 }).await;
    // Its connection killed, it reconnects and goes on scanning.
    env.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = current_database() AND application_name = 'itrelay'",
    )
    .await;
    env.execute(&patch(PATCH, "2000-01-01")).await;
    wait_for(|| async { env.count("SELECT count(*) FROM itrelay.outbox").await == 2 }).await;
    stop.cancel();
    tokio::time::timeout(WAIT, scans)
        .await
        .expect("scans stop in time")
        .expect("scan task");
}

/// Polls `condition` until it holds, failing after [`WAIT`].
async fn wait_for<F, Fut>(condition: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met in time"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// (ticket_number, sla_type, actual_hours) of every recorded breach, sorted.
async fn breaches(env: &TestEnv) -> Vec<(String, String, f64)> {
    let mut found: Vec<(String, String, f64)> = env
        .client
        .query(
            "SELECT payload->>'ticket_number', payload->>'sla_type', (payload->>'actual_hours')::float8
             FROM itrelay.outbox WHERE event_type = 'it_sla_breached'",
            &[],
        )
        .await
        .expect("breaches")
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect();
    found.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    found
}

#[tokio::test]
async fn each_sla_path_and_a_resolution_counts_as_the_response() {
    // All created at midnight; targets: response 4 hours, resolution 24 hours.
    let tickets = [
        (
            "e1000000-0000-4000-8000-000000000001",
            "first_response_at = '2026-03-01T02:00:00Z'",
        ),
        (
            "e2000000-0000-4000-8000-000000000001",
            "resolved_at = '2026-03-01T03:00:00Z', status = 'resolved'",
        ),
        (
            "e3000000-0000-4000-8000-000000000001",
            "first_response_at = '2026-03-01T06:00:00Z'",
        ),
        (
            "e4000000-0000-4000-8000-000000000001",
            "resolved_at = '2026-03-01T05:00:00Z', status = 'resolved'",
        ),
        ("e5000000-0000-4000-8000-000000000001", "status = 'closed'"),
        ("e6000000-0000-4000-8000-000000000001", "status = 'open'"),
    ];
    let setup: String = tickets
        .iter()
        .map(|(id, update)| {
            format!(
                "{}UPDATE it_tickets SET {update} WHERE ticket_id = '{id}';",
                ticket(id, "2026-03-01T00:00:00Z")
            )
        })
        .collect();
    let env = scan_env(&format!("{SLA_POLICY}{setup}")).await;
    let breach = |number: &str, sla_type: &str, hours: f64| {
        (format!("TCK-{number}"), sla_type.to_owned(), hours)
    };
    // Answered in time (e1), resolved in time without an answer (e2), closed without
    // times (e5): no response breach. Answered late (e3), resolved late without an
    // answer (e4, measured to the resolution), never answered (e6, to the scan).
    assert_eq!(scan(&env, "2026-03-01T12:00:00Z").await, 3);
    assert_eq!(
        breaches(&env).await,
        [
            breach("e3000000", "response", 6.0),
            breach("e4000000", "response", 5.0),
            breach("e6000000", "response", 12.0),
        ]
    );
    // Unresolved past 24 hours: e1, e3, e6; e2 and e4 were resolved in time, e5 is closed.
    assert_eq!(scan(&env, "2026-03-02T12:00:00Z").await, 3);
    let resolution: Vec<_> = breaches(&env)
        .await
        .into_iter()
        .filter(|(_, sla_type, _)| sla_type == "resolution")
        .collect();
    assert_eq!(
        resolution,
        [
            breach("e1000000", "resolution", 36.0),
            breach("e3000000", "resolution", 36.0),
            breach("e6000000", "resolution", 36.0),
        ]
    );
}

/// The license ids of the outbox's events, sorted.
async fn alerted_licenses(env: &TestEnv) -> Vec<String> {
    env.client
        .query(
            "SELECT payload->>'license_id' FROM itrelay.outbox ORDER BY 1",
            &[],
        )
        .await
        .expect("alerts")
        .iter()
        .map(|row| row.get(0))
        .collect()
}

#[tokio::test]
async fn new_licenses_are_not_under_utilized_during_their_grace_period() {
    let new = "d1000000-0000-4000-8000-000000000001";
    let old = "d2000000-0000-4000-8000-000000000001";
    let new_over = "d3000000-0000-4000-8000-000000000001";
    let env = scan_env(&format!(
        "{}{}{}
         UPDATE it_licenses SET purchase_date = '2026-02-20' WHERE license_id = '{new}';
         UPDATE it_licenses SET purchase_date = '2026-02-25' WHERE license_id = '{new_over}';",
        license(new, "2027-06-01", 10, 0),
        license(old, "2027-06-01", 10, 0),
        license(new_over, "2027-06-01", 2, 3),
    ))
    .await;
    // Nine days old and unused: within the default 30 days. Over-deployed is reported
    // whatever the age.
    assert_eq!(scan(&env, NOW).await, 2);
    assert_eq!(alerted_licenses(&env).await, [old, new_over]);
    // 31 days old.
    assert_eq!(scan(&env, "2026-03-23T09:00:00Z").await, 1);
    assert_eq!(alerted_licenses(&env).await, [new, old, new_over]);

    // The grace is a parameter (the daemon passes scan.license_grace_days).
    let env = scan_env(&license(new, "2027-06-01", 10, 0)).await;
    env.execute(&format!(
        "UPDATE it_licenses SET purchase_date = '2026-02-20' WHERE license_id = '{new}'"
    ))
    .await;
    let recorded: i32 = env
        .client
        .query_one(
            "SELECT itrelay.scan_due_events($1::text::timestamptz, 5)",
            &[&NOW],
        )
        .await
        .expect("scan with a grace of 5 days")
        .get(0);
    assert_eq!(recorded, 1);
}

//! Each event of the core catalog, end to end: a business write on the real Postgres
//! yields exactly one message on each subscriber's exchange of the real RabbitMQ, with
//! the contract body and the documented properties, and nothing anywhere else.

mod common;

use common::*;
use serde_json::{json, Value};

async fn event_id_of(env: &TestEnv, event_type: &str) -> String {
    env.client
        .query_one(
            "SELECT event_id::text FROM itrelay.outbox WHERE event_type = $1",
            &[&event_type],
        )
        .await
        .expect("one outbox row")
        .get(0)
}

#[tokio::test]
async fn asset_purchased_fires_once_when_cost_and_date_are_first_both_set() {
    let mut env = TestEnv::new().await;
    env.seed().await;
    env.start_relay(&[]);
    let asset = "a0000000-0000-4000-8000-000000000001";
    env.execute(&format!(
        "INSERT INTO it_assets (asset_id, organization_id, asset_tag, asset_name, asset_type, vendor_id, serial_number)
             VALUES ('{asset}', '{ORG}', 'LT-0100', 'MacBook Pro', 'laptop', '{VENDOR}', 'SN-9');
         UPDATE it_assets SET purchase_cost = 2499.5 WHERE asset_id = '{asset}';
         UPDATE it_assets SET purchase_date = '2026-03-01', warranty_months = 36 WHERE asset_id = '{asset}';
         UPDATE it_assets SET purchase_cost = 2600 WHERE asset_id = '{asset}';"
    ))
    .await;
    // Set on insert: fires at once.
    env.execute(&format!(
        "INSERT INTO it_assets (organization_id, asset_tag, asset_name, asset_type, purchase_cost, purchase_date, vendor_id)
             VALUES ('{ORG}', 'MN-7', 'Monitor', 'monitor', 300, '2026-03-02', '{VENDOR}')"
    ))
    .await;
    env.wait_until_settled(2).await;
    let messages = assert_routed(
        &env,
        &[("FA", &["it_asset_purchased", "it_asset_purchased"])],
    )
    .await;
    assert_eq!(
        without_timestamp(&messages[0].body),
        json!({
            "event_type": "it_asset_purchased",
            "asset_id": asset,
            "asset_tag": "LT-0100",
            "asset_type": "laptop",
            "asset_name": "MacBook Pro",
            "purchase_cost": 2499.5,
            "purchase_date": "2026-03-01",
            "vendor_id": VENDOR,
            "vendor_name": "Acme Hardware",
            "serial_number": "SN-9",
            "warranty_months": 36,
            "organization_id": ORG,
        })
    );
    assert_eq!(messages[1].body["asset_tag"], "MN-7");
}

#[tokio::test]
async fn messages_carry_the_documented_properties_and_headers() {
    let mut env = TestEnv::new().await;
    env.seed().await;
    env.start_relay(&[]);
    env.execute(&format!(
        "UPDATE it_assets SET status = 'disposed', disposal_method = 'recycled', disposal_date = '2026-03-02',
             updated_by = '{ACTOR}' WHERE asset_id = '{ASSET}'"
    ))
    .await;
    env.wait_until_settled(1).await;
    let event_id = event_id_of(&env, "it_asset_disposed").await;
    let outbox_id = env.count("SELECT id FROM itrelay.outbox").await.to_string();
    let messages = assert_routed(
        &env,
        &[
            ("FA", &["it_asset_disposed"]),
            ("GR", &["it_asset_disposed"]),
        ],
    )
    .await;
    for message in &messages {
        let p = &message.properties;
        assert_eq!(message.message_id(), event_id);
        assert_eq!(p.kind().as_ref().unwrap().as_str(), "it_asset_disposed");
        assert_eq!(
            p.content_type().as_ref().unwrap().as_str(),
            "application/json"
        );
        assert_eq!(*p.delivery_mode(), Some(2));
        assert_eq!(p.app_id().as_ref().unwrap().as_str(), "itrelay");
        assert!(p.timestamp().is_some());
        let headers = [
            ("schema_ref", "payload.ItAssetDisposed.v1"),
            ("organization_id", ORG),
            ("source_table", "it_assets"),
            ("outbox_id", outbox_id.as_str()),
            ("cloudEvents_id", event_id.as_str()),
            ("cloudEvents_type", "it_asset_disposed"),
            ("cloudEvents_specversion", "1.0"),
            ("cloudEvents_source", "/itrelay/it_assets"),
            ("cloudEvents_subject", ASSET),
        ];
        for (name, value) in headers {
            assert_eq!(
                message.header(name).as_deref(),
                Some(value),
                "header {name}"
            );
        }
        assert_eq!(
            message.header("cloudEvents_time"),
            message.body["timestamp"].as_str().map(str::to_owned)
        );
    }
    assert_eq!(messages[0].raw_body, messages[1].raw_body);
}

#[tokio::test]
async fn asset_disposed_fires_only_when_status_becomes_disposed() {
    let mut env = TestEnv::new().await;
    env.seed().await;
    env.start_relay(&[]);
    env.execute(&format!(
        "UPDATE it_assets SET status = 'in_repair' WHERE asset_id = '{ASSET}';
         UPDATE it_assets SET status = 'disposed', disposal_method = 'sold', disposal_date = '2026-03-02',
             disposal_value = 150, certificate_of_destruction = false, updated_by = '{ACTOR}'
             WHERE asset_id = '{ASSET}';
         UPDATE it_assets SET room = 'scrap' WHERE asset_id = '{ASSET}';
         UPDATE it_assets SET status = 'disposed' WHERE asset_id = '{ASSET}';"
    ))
    .await;
    env.wait_until_settled(1).await;
    let messages = assert_routed(
        &env,
        &[
            ("FA", &["it_asset_disposed"]),
            ("GR", &["it_asset_disposed"]),
        ],
    )
    .await;
    assert_eq!(
        without_timestamp(&messages[0].body),
        json!({
            "event_type": "it_asset_disposed",
            "asset_id": ASSET,
            "asset_tag": "LT-0042",
            "asset_name": "ThinkPad X1",
            "disposal_method": "sold",
            "disposal_date": "2026-03-02",
            "disposal_value": 150.0,
            "certificate_of_destruction": false,
            "disposed_by": ACTOR,
            "organization_id": ORG,
        })
    );
}

#[tokio::test]
async fn asset_assigned_is_enriched_from_the_asset_and_the_employee() {
    let mut env = TestEnv::new().await;
    env.seed().await;
    env.start_relay(&[]);
    env.execute(&format!(
        "INSERT INTO it_asset_assignments (organization_id, asset_id, employee_id, assignment_date, assigned_by)
             VALUES ('{ORG}', '{ASSET}', '{EMPLOYEE}', '2026-03-03', '{ACTOR}');
         INSERT INTO it_asset_assignments (organization_id, asset_id, employee_id, assignment_date,
                                           previous_assignee_id, site_id, room, assigned_by)
             VALUES ('{ORG}', '{ASSET}', '{ACTOR}', '2026-03-04', '{EMPLOYEE}', '{OTHER_ORG}', 'B-2', '{ACTOR}');"
    ))
    .await;
    env.wait_until_settled(2).await;
    let both = &["it_asset_assigned", "it_asset_assigned"][..];
    let messages = assert_routed(&env, &[("PF-10", both), ("HR", both)]).await;
    let first = messages
        .iter()
        .find(|m| m.body["assignment_date"] == "2026-03-03")
        .unwrap();
    assert_eq!(
        without_timestamp(&first.body),
        json!({
            "event_type": "it_asset_assigned",
            "asset_id": ASSET,
            "asset_tag": "LT-0042",
            "asset_name": "ThinkPad X1",
            "asset_type": "laptop",
            "employee_id": EMPLOYEE,
            "employee_name": "Dana Reyes",
            "assignment_date": "2026-03-03",
            "location": {"site_id": SITE, "building": "HQ", "room": "4.12"},
            "organization_id": ORG,
            "assigned_by": ACTOR,
        })
    );
    let second = messages
        .iter()
        .find(|m| m.body["assignment_date"] == "2026-03-04")
        .unwrap();
    assert_eq!(
        second.body["location"],
        json!({"site_id": OTHER_ORG, "room": "B-2"})
    );
    assert_eq!(second.body["previous_assignee_id"], EMPLOYEE);
    assert_eq!(second.body["employee_name"], "Sam Ortiz");
}

#[tokio::test]
async fn ticket_created_and_status_changes_arrive_in_order() {
    let mut env = TestEnv::new().await;
    env.seed().await;
    env.start_relay(&[]);
    let ticket = "b0000000-0000-4000-8000-000000000001";
    env.execute(&format!(
        "INSERT INTO it_tickets (ticket_id, organization_id, ticket_number, category, subcategory, priority,
                                 subject, description, requester_id, affected_asset_id)
             VALUES ('{ticket}', '{ORG}', 'TCK-1', 'hardware', 'display', 'high', 'Flicker', 'Screen flickers',
                     '{EMPLOYEE}', '{ASSET}');"
    ))
    .await;
    for (status, actor) in [
        ("in_progress", ACTOR),
        ("in_progress", ACTOR),
        ("resolved", ACTOR),
        ("closed", EMPLOYEE),
    ] {
        env.execute(&format!(
            "UPDATE it_tickets SET status = '{status}', assigned_to_id = '{ACTOR}', updated_by = '{actor}'
                 WHERE ticket_id = '{ticket}';
             UPDATE it_tickets SET subject = subject || '.' WHERE ticket_id = '{ticket}';"
        ))
        .await;
    }
    env.wait_until_settled(4).await;
    let messages = assert_routed(
        &env,
        &[(
            "PF-10",
            &[
                "it_ticket_created",
                "it_ticket_status_changed",
                "it_ticket_status_changed",
                "it_ticket_status_changed",
            ],
        )],
    )
    .await;
    assert_eq!(
        without_timestamp(&messages[0].body),
        json!({
            "event_type": "it_ticket_created",
            "ticket_id": ticket,
            "ticket_number": "TCK-1",
            "category": "hardware",
            "subcategory": "display",
            "priority": "high",
            "subject": "Flicker",
            "description": "Screen flickers",
            "requester_id": EMPLOYEE,
            "requester_name": "Dana Reyes",
            "requester_email": "dana@example.com",
            "affected_asset_id": ASSET,
            "organization_id": ORG,
        })
    );
    let transitions: Vec<(Value, Value)> = messages[1..]
        .iter()
        .map(|m| (m.body["old_status"].clone(), m.body["new_status"].clone()))
        .collect();
    assert_eq!(
        transitions,
        [
            (json!("open"), json!("in_progress")),
            (json!("in_progress"), json!("resolved")),
            (json!("resolved"), json!("closed")),
        ]
    );
    assert_eq!(messages[3].body["changed_by"], EMPLOYEE);
    assert_eq!(messages[1].body["assigned_to_id"], ACTOR);
}

#[tokio::test]
async fn license_renewed_fires_only_when_expiration_is_extended() {
    let mut env = TestEnv::new().await;
    env.seed().await;
    env.start_relay(&[]);
    let license = "c0000000-0000-4000-8000-000000000001";
    env.execute(&format!(
        "INSERT INTO it_licenses (license_id, organization_id, software_name, software_vendor, license_type,
                                  license_key, license_count, cost_per_license, purchase_date, expiration_date)
             VALUES ('{license}', '{ORG}', 'CAD Pro', 'Autodraw', 'subscription', 'KEY-SECRET-123', 10, 99,
                     '2025-01-01', '2026-01-01');
         UPDATE it_licenses SET expiration_date = '2025-06-01' WHERE license_id = '{license}';
         UPDATE it_licenses SET license_count = 12 WHERE license_id = '{license}';
         UPDATE it_licenses SET expiration_date = '2027-06-01', renewal_cost = 1100, updated_by = '{ACTOR}'
             WHERE license_id = '{license}';"
    ))
    .await;
    // The insert also records it_license_created (see tests/row_events.rs).
    env.wait_until_settled(2).await;
    let messages = assert_routed(
        &env,
        &[("FA", &["it_license_created", "it_license_renewed"])],
    )
    .await;
    let body = without_timestamp(&messages[1].body);
    let renewal_date = body["renewal_date"].clone();
    assert_eq!(
        body,
        json!({
            "event_type": "it_license_renewed",
            "license_id": license,
            "software_name": "CAD Pro",
            "software_vendor": "Autodraw",
            "old_expiration_date": "2025-06-01",
            "new_expiration_date": "2027-06-01",
            "renewal_date": renewal_date,
            "renewal_cost": 1100.0,
            "renewed_by": ACTOR,
            "organization_id": ORG,
        })
    );
    for message in &messages {
        assert!(!String::from_utf8_lossy(&message.raw_body).contains("KEY-SECRET"));
    }
}

#[tokio::test]
async fn rolled_back_writes_produce_nothing() {
    let mut env = TestEnv::new().await;
    env.seed().await;
    env.start_relay(&[]);
    env.execute(&format!(
        "BEGIN;
         UPDATE it_assets SET status = 'disposed', disposal_method = 'recycled', disposal_date = '2026-03-02',
             updated_by = '{ACTOR}' WHERE asset_id = '{ASSET}';
         ROLLBACK;"
    ))
    .await;
    assert_eq!(env.count("SELECT count(*) FROM itrelay.outbox").await, 0);
    // A committed write after it is the only thing relayed.
    env.execute(&format!(
        "INSERT INTO it_tickets (organization_id, ticket_number, category, priority, subject, description, requester_id)
             VALUES ('{ORG}', 'TCK-2', 'email', 'low', 'Quota', 'Mailbox full', '{EMPLOYEE}');"
    ))
    .await;
    env.wait_until_settled(1).await;
    assert_routed(&env, &[("PF-10", &["it_ticket_created"])]).await;
}

#[tokio::test]
async fn events_written_while_the_relay_was_stopped_are_all_delivered_in_order() {
    let mut env = TestEnv::new().await;
    env.seed().await;
    env.execute(&format!(
        "INSERT INTO it_tickets (organization_id, ticket_number, category, priority, subject, description, requester_id)
             SELECT '{ORG}', 'TCK-' || n, 'software', 'medium', 'Subject ' || n, 'Body', '{EMPLOYEE}'
             FROM generate_series(1, 1200) AS n;"
    ))
    .await;
    env.start_relay(&[("ITRELAY__RELAY__BATCH_SIZE", "500")]);
    env.wait_until_settled(1200).await;
    let messages = env.drain(&env.exchange("PF-10")).await;
    let numbers: Vec<String> = messages
        .iter()
        .map(|m| m.body["ticket_number"].as_str().unwrap().to_owned())
        .collect();
    let expected: Vec<String> = (1..=1200).map(|n| format!("TCK-{n}")).collect();
    assert_eq!(numbers, expected);
}

//! Who may create an event: only the installed triggers and the roles a DBA granted
//! `itrelay.enqueue`. A role with no privilege can NOTIFY, but the relay publishes nothing
//! of it, and it cannot read another organization's licenses through the IT module's
//! SECURITY DEFINER compliance function.

mod common;

use common::role::TestRole;
use common::*;
use serde_json::json;

const INSUFFICIENT_PRIVILEGE: &str = "42501";

fn ticket(number: &str) -> String {
    format!(
        "INSERT INTO it_tickets (organization_id, ticket_number, category, priority, subject, description, requester_id)
             VALUES ('{ORG}', '{number}', 'other', 'low', 'S', 'D', '{EMPLOYEE}')"
    )
}

fn forged_purchase() -> String {
    json!({
        "event_type": "it_asset_purchased", "asset_id": ASSET, "asset_tag": "LT-0042",
        "asset_type": "laptop", "asset_name": "ThinkPad X1", "purchase_cost": 999_999.99,
        "purchase_date": "2026-03-01", "organization_id": ORG
    })
    .to_string()
}

async fn assert_refused(client: &tokio_postgres::Client, sql: &str) {
    let error = client
        .batch_execute(sql)
        .await
        .expect_err(&format!("an unprivileged role may not run: {sql}"));
    assert_eq!(
        error.code().map(|c| c.code()),
        Some(INSUFFICIENT_PRIVILEGE),
        "{sql}: {error}"
    );
}

#[tokio::test]
async fn an_unprivileged_role_cannot_make_the_relay_publish_anything() {
    let role = TestRole::new();
    let mut env = TestEnv::new().await;
    env.seed().await;
    role.create_bare();
    env.start_relay(&[]);
    env.execute(&ticket("TCK-1")).await;
    env.wait_until_settled(1).await;

    let forger = connect(&role.url(&env.database)).await;
    // NOTIFY needs no privilege: the relay must not believe it.
    forger
        .execute("SELECT pg_notify('it_events', $1)", &[&forged_purchase()])
        .await
        .expect("anyone may NOTIFY");
    assert_refused(
        &forger,
        "SELECT itrelay.enqueue('it_asset_purchased', '{}'::jsonb)",
    )
    .await;
    assert_refused(
        &forger,
        "SELECT itrelay.enqueue('it_asset_purchased', 'it_assets', '{}'::jsonb)",
    )
    .await;
    assert_refused(
        &forger,
        "INSERT INTO itrelay.outbox (event_type, payload, source_table) VALUES ('x', '{}', 'x')",
    )
    .await;

    // Two genuine events after the forged one: the relay went past it.
    env.execute(&ticket("TCK-2")).await;
    env.wait_until_settled(2).await;
    env.execute(&ticket("TCK-3")).await;
    env.wait_until_settled(3).await;
    assert_eq!(env.count("SELECT count(*) FROM itrelay.outbox").await, 3);
    let delivered = env.drain_all().await;
    let purchases = delivered.get(&env.exchange("FA")).map_or(0, Vec::len);
    assert_eq!(purchases, 0, "a forged purchase was published");
    let tickets: Vec<_> = delivered[&env.exchange("PF-10")]
        .iter()
        .map(|m| m.body["ticket_number"].clone())
        .collect();
    assert_eq!(tickets, ["TCK-1", "TCK-2", "TCK-3"]);
}

#[tokio::test]
async fn a_role_granted_enqueue_creates_events_and_nothing_else() {
    let role = TestRole::new();
    let mut env = TestEnv::new().await;
    env.seed().await;
    role.create_bare();
    // As the README tells a DBA.
    env.execute(&format!(
        "GRANT USAGE ON SCHEMA itrelay TO \"{0}\";
         GRANT EXECUTE ON FUNCTION itrelay.enqueue(text, jsonb) TO \"{0}\";",
        role.0
    ))
    .await;
    env.start_relay(&[]);
    let producer = connect(&role.url(&env.database)).await;
    let payload = json!({
        "event_type": "it_ticket_status_changed",
        "ticket_id": "e0000000-0000-4000-8000-000000000009",
        "ticket_number": "EXT-9", "old_status": "open", "new_status": "closed",
        "requester_id": EMPLOYEE, "changed_by": ACTOR, "organization_id": ORG
    });
    producer
        .execute(
            "SELECT itrelay.enqueue('it_ticket_status_changed', $1::jsonb)",
            &[&payload],
        )
        .await
        .expect("a granted role enqueues");
    assert_refused(
        &producer,
        "SELECT itrelay.enqueue('it_ticket_status_changed', 'it_tickets', '{}'::jsonb)",
    )
    .await;
    assert_refused(&producer, "SELECT * FROM itrelay.outbox").await;
    env.wait_until_settled(1).await;
    let delivered = env.drain(&env.exchange("PF-10")).await;
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0].body["ticket_number"], "EXT-9");
    assert_eq!(
        delivered[0].header("source_table").as_deref(),
        Some("enqueue")
    );
    assert_eq!(delivered[0].header("x-unauthenticated"), None);
}

#[tokio::test]
async fn license_compliance_is_not_open_to_every_role() {
    let bare = TestRole::new();
    let relay = TestRole::new();
    let env = TestEnv::new().await;
    env.seed().await;
    env.execute(&format!(
        "INSERT INTO it_licenses (organization_id, software_name, software_vendor, license_type,
                                  license_count, cost_per_license, purchase_date)
             VALUES ('{OTHER_ORG}', 'Secret Suite', 'V', 'per_user', 10, 1, '2020-01-01')"
    ))
    .await;
    bare.create_bare();
    relay.apply(&env.db_url);
    let outsider = connect(&bare.url(&env.database)).await;
    assert_refused(&outsider, "SELECT * FROM it_licenses").await;
    assert_refused(
        &outsider,
        &format!("SELECT * FROM it_check_license_compliance('{OTHER_ORG}')"),
    )
    .await;
    // The relay's role still runs the compliance scan.
    let scanner = connect(&relay.url(&env.database)).await;
    let recorded: i32 = scanner
        .query_one("SELECT itrelay.scan_license_compliance()", &[])
        .await
        .expect("the relay role scans compliance")
        .get(0);
    assert_eq!(recorded, 1);
}

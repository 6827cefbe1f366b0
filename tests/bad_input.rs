//! Bad input gets a clear answer and costs nothing else: large multibyte text, identical
//! events in one transaction, notifications naming outbox rows that do not exist, an
//! unreachable host and wrong credentials.

mod common;

use std::process::Stdio;

use common::*;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

#[tokio::test]
async fn large_multibyte_text_is_relayed_intact() {
    let mut env = TestEnv::new().await;
    env.seed().await;
    env.start_relay(&[("ITRELAY__RELAY__ACCEPT_NOTIFY_EVENTS", "true")]);
    // 200 KB of multibyte text in the outbox; a 7,900-byte notification, close to
    // Postgres's 8,000-byte limit, cut only at character boundaries.
    let long_text = "Ünïcödé 漢字 🙂 ".repeat(10_000);
    env.client
        .execute(
            &format!(
                "INSERT INTO it_tickets (organization_id, ticket_number, category, priority, subject, description, requester_id)
                     VALUES ('{ORG}', 'TCK-long', 'other', 'low', 'Long', $1, '{EMPLOYEE}')"
            ),
            &[&long_text],
        )
        .await
        .unwrap();
    // Once that event is through, the relay listens.
    env.wait_until_settled(1).await;
    let mut notes = String::new();
    let base = json!({
        "event_type": "it_ticket_status_changed",
        "ticket_id": "e0000000-0000-4000-8000-000000000002",
        "ticket_number": "EXT-2",
        "old_status": "open",
        "new_status": "resolved",
        "requester_id": EMPLOYEE,
        "changed_by": ACTOR,
        "organization_id": ORG,
        "timestamp": "2026-03-01T10:00:00Z",
        "resolution_notes": "",
    });
    let overhead = base.to_string().len();
    for c in "漢🙂é".chars().cycle() {
        if overhead + notes.len() + c.len_utf8() > 7_900 {
            break;
        }
        notes.push(c);
    }
    let mut near_limit = base.clone();
    near_limit["resolution_notes"] = json!(notes);
    env.client
        .execute(
            "SELECT pg_notify('it_events', $1)",
            &[&near_limit.to_string()],
        )
        .await
        .unwrap();
    env.wait_until_settled(2).await;
    let received = env.drain(&env.exchange("PF-10")).await;
    assert_eq!(received.len(), 2);
    let created = received
        .iter()
        .find(|m| m.body["ticket_number"] == "TCK-long")
        .unwrap();
    assert_eq!(created.body["description"], long_text);
    let changed = received
        .iter()
        .find(|m| m.body["ticket_number"] == "EXT-2")
        .unwrap();
    assert_eq!(changed.body, near_limit);
}

#[tokio::test]
async fn identical_events_in_one_transaction_are_each_delivered() {
    let mut env = TestEnv::new().await;
    env.seed().await;
    env.start_relay(&[]);
    let payload = json!({
        "event_type": "it_ticket_status_changed",
        "ticket_id": "e0000000-0000-4000-8000-000000000003",
        "ticket_number": "EXT-3",
        "old_status": "open",
        "new_status": "closed",
        "requester_id": EMPLOYEE,
        "changed_by": ACTOR,
        "organization_id": ORG,
    });
    env.execute(&format!(
        "BEGIN;
         SELECT itrelay.enqueue('it_ticket_status_changed', 'it_tickets', '{payload}'::jsonb);
         SELECT itrelay.enqueue('it_ticket_status_changed', 'it_tickets', '{payload}'::jsonb);
         COMMIT;"
    ))
    .await;
    env.wait_until_settled(2).await;
    let received = env.drain(&env.exchange("PF-10")).await;
    assert_eq!(received.len(), 2);
    assert_ne!(received[0].message_id(), received[1].message_id());
    assert_eq!(
        received[0].body["ticket_number"],
        received[1].body["ticket_number"]
    );
}

#[tokio::test]
async fn notifications_naming_missing_or_delivered_rows_only_wake_the_relay() {
    let mut env = TestEnv::new().await;
    env.seed().await;
    env.start_relay(&[]);
    env.execute(&format!(
        "INSERT INTO it_tickets (organization_id, ticket_number, category, priority, subject, description, requester_id)
             VALUES ('{ORG}', 'TCK-1', 'other', 'low', 'S', 'D', '{EMPLOYEE}')"
    ))
    .await;
    env.wait_until_settled(1).await;
    let delivered_id = env.count("SELECT id FROM itrelay.outbox").await;
    for payload in [
        delivered_id.to_string(),
        "987654321".to_owned(),
        String::new(),
    ] {
        env.client
            .execute("SELECT pg_notify('it_events', $1)", &[&payload])
            .await
            .unwrap();
    }
    // A later event shows the relay went through those wake-ups and is still relaying.
    env.execute(&format!(
        "INSERT INTO it_tickets (organization_id, ticket_number, category, priority, subject, description, requester_id)
             VALUES ('{ORG}', 'TCK-2', 'other', 'low', 'S', 'D', '{EMPLOYEE}')"
    ))
    .await;
    env.wait_until_settled(2).await;
    let numbers: Vec<_> = env
        .drain(&env.exchange("PF-10"))
        .await
        .iter()
        .map(|m| m.body["ticket_number"].clone())
        .collect();
    assert_eq!(numbers, [json!("TCK-1"), json!("TCK-2")]);
    assert!(env.drain(&env.dead_letter_exchange()).await.is_empty());
}

/// Runs `itrelay run` with `overrides` until a log line contains every one of `wanted`
/// (it must keep running meanwhile); returns the log so far.
async fn logs_until(env: &TestEnv, overrides: &[(&str, &str)], wanted: &[&str]) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_itrelay"))
        .arg("run")
        .envs(env.env_vars())
        .envs(overrides.iter().copied())
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn itrelay run");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut log = String::new();
    let found = tokio::time::timeout(WAIT, async {
        while let Ok(Some(line)) = lines.next_line().await {
            log.push_str(&line);
            log.push('\n');
            if wanted.iter().all(|w| line.contains(w)) {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(found, Ok(true), "no log line with {wanted:?} in:\n{log}");
    assert!(
        child.try_wait().unwrap().is_none(),
        "the relay gave up instead of retrying"
    );
    log
}

#[tokio::test]
async fn unreachable_host_is_retried_with_a_clear_log() {
    let env = TestEnv::new().await;
    let log = logs_until(
        &env,
        &[(
            "ITRELAY__POSTGRES__URL",
            "postgres://postgres:pw-not-shown@127.0.0.1:1/x",
        )],
        &["relay interrupted; reconnecting", "postgres"],
    )
    .await;
    assert!(!log.contains("pw-not-shown"), "{log}");
}

#[tokio::test]
async fn wrong_credentials_are_named_and_not_printed() {
    let env = TestEnv::new().await;
    let log = logs_until(
        &env,
        &[(
            "ITRELAY__AMQP__URL",
            "amqp://guest:wrong-secret@127.0.0.1:5672/%2f",
        )],
        &["relay interrupted; reconnecting", "rabbitmq"],
    )
    .await;
    assert!(
        log.contains("ACCESS_REFUSED")
            || log.contains("access refused")
            || log.contains("authentication"),
        "{log}"
    );
    assert!(!log.contains("wrong-secret"), "{log}");
}

#[tokio::test]
async fn license_keys_never_reach_logs_even_at_debug_level() {
    let env = TestEnv::new().await;
    env.seed().await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_itrelay"))
        .arg("run")
        .envs(env.env_vars())
        .env("ITRELAY__RELAY__ACCEPT_NOTIFY_EVENTS", "true")
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn itrelay run");
    env.execute(&format!(
        "INSERT INTO it_licenses (organization_id, software_name, software_vendor, license_type, license_key,
                                  license_count, cost_per_license, purchase_date)
             VALUES ('{ORG}', 'CAD', 'Autodraw', 'per_user', 'SECRET-KEY-IN-ROW', 5, 10, '2026-01-01')"
    ))
    .await;
    env.wait_until_settled(1).await;
    // Also a whole-event notification carrying a key, once the relay listens.
    let notified = json!({
        "event_type": "it_license_created", "license_id": ACTOR, "license_key": "SECRET-KEY-IN-NOTIFY",
        "software_name": "CAD", "organization_id": ORG
    });
    env.client
        .execute(
            "SELECT pg_notify('it_events', $1)",
            &[&notified.to_string()],
        )
        .await
        .unwrap();
    env.wait_until_settled(2).await;
    child.start_kill().unwrap();
    let output = child.wait_with_output().await.unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(log.contains("DEBUG"), "debug logging was not on:\n{log}");
    assert!(
        !log.contains("SECRET-KEY"),
        "a license key reached the log:\n{log}"
    );
    let bodies: Vec<String> = env
        .drain_all()
        .await
        .into_values()
        .flatten()
        .map(|m| {
            format!(
                "{} {:?}",
                String::from_utf8_lossy(&m.raw_body),
                m.properties
            )
        })
        .collect();
    assert_eq!(bodies.len(), 2, "{bodies:?}");
    assert!(
        bodies.iter().all(|b| !b.contains("SECRET-KEY")),
        "{bodies:?}"
    );
}

#[tokio::test]
async fn rows_the_relay_cannot_read_are_dead_lettered_one_by_one() {
    let mut env = TestEnv::new().await;
    env.seed().await;
    // Rows Postgres stores but the relay cannot read: JSON nested deeper than the
    // reader's limit, a number beyond a double, a creation time of infinity.
    let deep = format!("{}1{}", "[".repeat(300), "]".repeat(300));
    let huge = format!(
        "{{\"event_type\": \"it_ticket_created\", \"n\": {}}}",
        "9".repeat(400)
    );
    env.client
        .execute(
            "INSERT INTO itrelay.outbox (event_type, payload, source_table) VALUES
                 ('it_ticket_created', $1::text::jsonb, 'it_tickets'),
                 ('it_ticket_created', $2::text::jsonb, 'it_tickets')",
            &[&deep, &huge],
        )
        .await
        .unwrap();
    insert_ticket(&env.client, "TCK-between").await;
    env.execute(
        "INSERT INTO itrelay.outbox (event_type, payload, source_table, created_at)
         VALUES ('it_ticket_created', '{}', 'it_tickets', '-infinity')",
    )
    .await;
    insert_ticket(&env.client, "TCK-after").await;
    env.start_relay(&[]);
    env.wait_until_settled(5).await;
    let delivered = env.drain(&env.exchange("PF-10")).await;
    let numbers: Vec<&str> = delivered
        .iter()
        .map(|m| m.body["ticket_number"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(numbers, ["TCK-between", "TCK-after"]);
    let failed = itrelay::cli::dead_letters::dead_letters(&env.client, 10)
        .await
        .unwrap();
    let reasons: Vec<String> = failed
        .iter()
        .map(|f| f.reason.clone().unwrap_or_default())
        .collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(reasons[0].contains("recursion limit"), "{reasons:?}");
    assert!(reasons[1].contains("number out of range"), "{reasons:?}");
    assert!(reasons[2].contains("created_at unreadable"), "{reasons:?}");
    for reason in &reasons {
        assert!(!reason.contains("9999"), "a value was quoted: {reason}");
    }
    assert_eq!(env.drain(&env.dead_letter_exchange()).await.len(), 3);
    let status = itrelay::cli::status::status(&env.client, std::time::Duration::from_secs(15))
        .await
        .unwrap();
    assert_eq!(status.failed, 3);
}

#[tokio::test]
async fn at_trace_level_no_password_nor_event_body_reaches_the_log() {
    let env = TestEnv::new().await;
    env.seed().await;
    let mut child = spawn_run(
        &env,
        "trace",
        &[
            // Unroutable: the broker returns the message, body and all, to the relay.
            ("ITRELAY__ROUTES__IT_TICKET_CREATED", "NOBODY"),
            // A whole-event notification is stored with its body as a statement parameter.
            ("ITRELAY__RELAY__ACCEPT_NOTIFY_EVENTS", "true"),
        ],
    );
    let log = read_stderr(&mut child);
    env.execute(&format!(
        "INSERT INTO it_tickets (organization_id, ticket_number, category, priority, subject, description, requester_id)
             VALUES ('{ORG}', 'TCK-T', 'other', 'low', 'S', 'BODY-MARKER-7731', '{EMPLOYEE}');
         INSERT INTO it_assets (organization_id, asset_tag, asset_name, asset_type, purchase_cost, purchase_date, vendor_id)
             VALUES ('{ORG}', 'BODY-MARKER-7731', 'Monitor', 'monitor', 300, '2026-03-02', '{VENDOR}');"
    ))
    .await;
    env.wait_until_settled(2).await;
    let notified = json!({
        "event_type": "it_ticket_status_changed", "ticket_id": ACTOR, "ticket_number": "EXT-T",
        "old_status": "open", "new_status": "closed", "requester_id": EMPLOYEE,
        "changed_by": ACTOR, "organization_id": ORG, "resolution_notes": "BODY-MARKER-7731"
    });
    env.client
        .execute(
            "SELECT pg_notify('it_events', $1)",
            &[&notified.to_string()],
        )
        .await
        .unwrap();
    env.wait_until_settled(3).await;
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let log = log.await.unwrap();
    let _ = env
        .channel
        .exchange_delete(
            env.exchange("NOBODY").into(),
            lapin::options::ExchangeDeleteOptions::default(),
        )
        .await;
    assert!(log.contains("TRACE"), "trace logging was not on:\n{log}");
    assert_eq!(env.outbox_states().await.get("failed"), Some(&1));
    assert!(
        !log.contains("BODY-MARKER"),
        "an event body reached the log"
    );
    // The user name is shown in the masked URL (`guest:***`); the password never.
    assert!(
        !log.replace("guest:***", "").contains("guest"),
        "the AMQP password reached the log"
    );
}

//! Bad events are dead-lettered with their reason, their rows kept as failed, and the
//! events after them keep flowing. Whole-event notifications are relayed the same way.

mod common;

use common::*;

/// A valid ticket insert: one event for PF-10.
fn ticket_insert(number: &str) -> String {
    format!(
        "INSERT INTO it_tickets (organization_id, ticket_number, category, priority, subject, description, requester_id)
             VALUES ('{ORG}', '{number}', 'network', 'medium', 'VPN', 'VPN drops', '{EMPLOYEE}');"
    )
}

async fn failed_rows(env: &TestEnv) -> Vec<(String, String)> {
    env.client
        .query(
            "SELECT event_type, last_error FROM itrelay.outbox WHERE state = 'failed' ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

#[tokio::test]
async fn invalid_event_is_dead_lettered_and_the_next_is_delivered() {
    let mut env = TestEnv::new().await;
    env.seed().await;
    env.start_relay(&[]);
    env.execute(&format!(
        "UPDATE it_assets SET status = 'disposed', disposal_method = 'burned', disposal_date = '2026-03-02',
             updated_by = '{ACTOR}' WHERE asset_id = '{ASSET}';
         {}",
        ticket_insert("TCK-after")
    ))
    .await;
    env.wait_until_settled(2).await;
    let failed = failed_rows(&env).await;
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].0, "it_asset_disposed");
    assert!(
        failed[0]
            .1
            .starts_with("validate: does not match payload.ItAssetDisposed.v1"),
        "{}",
        failed[0].1
    );
    assert!(failed[0].1.contains("/disposal_method"), "{}", failed[0].1);

    let all = env.drain_all().await;
    assert!(all[&env.exchange("FA")].is_empty());
    assert!(all[&env.exchange("GR")].is_empty());
    assert_eq!(all[&env.exchange("PF-10")].len(), 1);
    let dead = &all[&env.dead_letter_exchange()];
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].routing_key, "it_asset_disposed");
    assert_eq!(
        dead[0].header("x-rejected-stage").as_deref(),
        Some("validate")
    );
    assert!(dead[0]
        .header("x-rejection-reason")
        .unwrap()
        .contains("/disposal_method"));
    assert_eq!(dead[0].body["disposal_method"], "burned");
    let event_id: String = env
        .client
        .query_one(
            "SELECT event_id::text FROM itrelay.outbox WHERE state = 'failed'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(dead[0].message_id(), event_id);
}

#[tokio::test]
async fn unknown_and_foreign_references_are_dead_lettered_at_enrichment() {
    let mut env = TestEnv::new().await;
    env.seed().await;
    env.execute(&format!(
        "INSERT INTO employees (employee_id, organization_id, employee_name) VALUES ('{OTHER_ORG}', '{OTHER_ORG}', 'Stranger');
         ALTER TABLE it_tickets DROP CONSTRAINT it_tickets_requester_id_fkey;"
    ))
    .await;
    env.start_relay(&[]);
    env.execute(&format!(
        "INSERT INTO it_tickets (organization_id, ticket_number, category, priority, subject, description, requester_id)
             VALUES ('{ORG}', 'TCK-x', 'access', 'low', 'S', 'D', '{OTHER_ORG}');
         INSERT INTO it_tickets (organization_id, ticket_number, category, priority, subject, description, requester_id)
             VALUES ('{ORG}', 'TCK-y', 'access', 'low', 'S', 'D', 'dddddddd-dddd-4ddd-8ddd-dddddddddddd');
         {}",
        ticket_insert("TCK-ok")
    ))
    .await;
    env.wait_until_settled(3).await;
    let failed = failed_rows(&env).await;
    assert_eq!(failed.len(), 2);
    assert!(
        failed[0].1.contains("belongs to another organization"),
        "{}",
        failed[0].1
    );
    assert!(
        failed[1]
            .1
            .contains("requester_id dddddddd-dddd-4ddd-8ddd-dddddddddddd not found in employees"),
        "{}",
        failed[1].1
    );
    let delivered = env.drain(&env.exchange("PF-10")).await;
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0].body["ticket_number"], "TCK-ok");
    assert_eq!(env.drain(&env.dead_letter_exchange()).await.len(), 2);
}

#[tokio::test]
async fn unroutable_copy_is_dead_lettered_for_its_module_alone() {
    let mut env = TestEnv::new().await;
    env.seed().await;
    // Tickets go to PF-10 and to a module whose exchange has no queue bound.
    env.start_relay(&[("ITRELAY__ROUTES__IT_TICKET_CREATED", "PF-10,NOBODY")]);
    env.execute(&ticket_insert("TCK-lost")).await;
    env.execute(&format!(
        "UPDATE it_assets SET status = 'disposed', disposal_method = 'donated', disposal_date = '2026-03-02',
             updated_by = '{ACTOR}' WHERE asset_id = '{ASSET}'"
    ))
    .await;
    env.wait_until_settled(2).await;
    assert!(
        failed_rows(&env).await.is_empty(),
        "no event failed as a whole"
    );
    let failed = itrelay::cli::dead_letters::dead_letters(&env.client, 10)
        .await
        .unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].module.as_deref(), Some("NOBODY"));
    let reason = failed[0].reason.clone().unwrap_or_default();
    assert!(
        reason.starts_with("unroutable: returned by exchange"),
        "{reason}"
    );
    assert!(reason.contains(&env.exchange("NOBODY")), "{reason}");
    let dead = env.drain(&env.dead_letter_exchange()).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].body["ticket_number"], "TCK-lost");
    assert_eq!(
        dead[0].header("x-rejected-for-module").as_deref(),
        Some("NOBODY")
    );
    // The subscribers with a queue got their copies.
    let tickets = env.drain(&env.exchange("PF-10")).await;
    assert_eq!(tickets.len(), 1);
    assert_eq!(env.drain(&env.exchange("FA")).await.len(), 1);

    // Once a queue is bound, a replay sends the dead-lettered copy again, to its module
    // alone.
    let nobody = env.exchange("NOBODY");
    env.bind_queue(&nobody).await;
    let replayed = itrelay::cli::dead_letters::replay(
        &env.client,
        "it_events",
        &itrelay::cli::dead_letters::ReplaySelection {
            event_ids: vec![dead[0].message_id().parse().unwrap()],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(replayed, 1);
    env.wait_until_settled(2).await;
    assert_eq!(env.drain(&nobody).await.len(), 1);
    assert!(env.drain(&env.exchange("PF-10")).await.is_empty());
    assert!(itrelay::cli::dead_letters::dead_letters(&env.client, 10)
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn whole_event_notifications_are_relayed_and_bad_ones_dead_lettered() {
    let mut env = TestEnv::new().await;
    env.seed().await;
    env.start_relay(&[("ITRELAY__RELAY__ACCEPT_NOTIFY_EVENTS", "true")]);
    // Once a first event is through, the relay leads and listens.
    env.execute(&ticket_insert("TCK-first")).await;
    env.wait_until_settled(1).await;
    env.drain(&env.exchange("PF-10")).await;
    let valid = serde_json::json!({
        "event_type": "it_ticket_status_changed",
        "ticket_id": "e0000000-0000-4000-8000-000000000001",
        "ticket_number": "EXT-1",
        "old_status": "open",
        "new_status": "pending",
        "requester_id": EMPLOYEE,
        "changed_by": ACTOR,
        "organization_id": ORG,
        "timestamp": "2026-03-01T10:00:00Z",
    });
    for payload in [
        valid.to_string(),
        "{\"event_type\": \"it_ticket_created\", \"license_key\": \"SECRET-KEY-9\"".to_owned(),
        "{\"event_type\": \"it_unheard_of\", \"organization_id\": \"x\"}".to_owned(),
    ] {
        env.client
            .execute("SELECT pg_notify('it_events', $1)", &[&payload])
            .await
            .unwrap();
    }
    env.wait_until_settled(4).await;
    let delivered = env.drain(&env.exchange("PF-10")).await;
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0].body, valid);
    assert_eq!(
        delivered[0].header("source_table").as_deref(),
        Some("notify")
    );
    assert_eq!(
        delivered[0].header("x-unauthenticated").as_deref(),
        Some("Boolean(true)")
    );
    let dead = env.drain(&env.dead_letter_exchange()).await;
    assert_eq!(dead.len(), 2);
    let reasons: Vec<String> = dead
        .iter()
        .map(|m| m.header("x-rejection-reason").unwrap())
        .collect();
    assert!(
        reasons.iter().any(|r| r.contains("not valid JSON")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("unknown event type \"it_unheard_of\"")),
        "{reasons:?}"
    );
    for message in &dead {
        assert!(!String::from_utf8_lossy(&message.raw_body).contains("SECRET-KEY-9"));
    }
    let stored: i64 = env
        .count("SELECT count(*) FROM itrelay.outbox WHERE payload::text LIKE '%SECRET-KEY-9%'")
        .await;
    assert_eq!(stored, 0, "the license key reached the outbox");
}

#[tokio::test]
async fn unroutable_copy_waits_for_a_queue_under_the_wait_policy() {
    let mut env = TestEnv::new().await;
    env.seed().await;
    env.start_relay(&[
        ("ITRELAY__ROUTES__IT_TICKET_CREATED", "PF-10,NOBODY"),
        ("ITRELAY__DELIVERY__UNROUTABLE_BY_MODULE__NOBODY", "wait"),
        ("ITRELAY__DELIVERY__RETRY_MIN_MS", "50"),
        ("ITRELAY__DELIVERY__RETRY_MAX_MS", "200"),
    ]);
    env.execute(&ticket_insert("TCK-1")).await;
    env.execute(&ticket_insert("TCK-2")).await;
    // PF-10 gets both at once; NOBODY's copies wait, in order, until a queue is bound.
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut pf10 = Vec::new();
    while pf10.len() < 2 && tokio::time::Instant::now() < deadline {
        pf10.extend(env.drain(&env.exchange("PF-10")).await);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(pf10.len(), 2);
    let mut waiting = 0;
    while waiting < 2 && tokio::time::Instant::now() < deadline {
        waiting = env
            .count(
                "SELECT count(*) FROM itrelay.copies WHERE state = 'waiting' AND module = 'NOBODY'",
            )
            .await;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(waiting, 2, "both NOBODY copies wait");
    assert_eq!(
        env.count("SELECT count(*) FROM itrelay.outbox WHERE state = 'held'")
            .await,
        2
    );
    let nobody = env.exchange("NOBODY");
    env.bind_queue(&nobody).await;
    env.wait_until_settled(2).await;
    let numbers: Vec<String> = env
        .drain(&nobody)
        .await
        .iter()
        .map(|m| {
            m.body["ticket_number"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(numbers, ["TCK-1", "TCK-2"]);
    assert!(
        env.drain(&env.exchange("PF-10")).await.is_empty(),
        "PF-10 got nothing twice"
    );
    assert!(env.drain(&env.dead_letter_exchange()).await.is_empty());
}

/// The AMQP client hands a returned message to whichever confirm completes next, another
/// message's when the broker acks several at once: with copies for a bound and an unbound
/// module interleaved in large batches, each return must still be matched to its own copy.
#[tokio::test]
async fn each_return_is_matched_to_its_own_copy() {
    let mut env = TestEnv::new().await;
    env.seed().await;
    env.start_relay(&[("ITRELAY__ROUTES__IT_TICKET_CREATED", "PF-10,NOBODY")]);
    insert_tickets(&env.client, "TCK", 400).await;
    env.wait_until_settled(400).await;
    let delivered = env.drain(&env.exchange("PF-10")).await;
    let unique: std::collections::HashSet<String> =
        delivered.iter().map(Received::message_id).collect();
    assert_eq!(
        (delivered.len(), unique.len()),
        (400, 400),
        "every PF-10 copy delivered once"
    );
    let dead = env.drain(&env.dead_letter_exchange()).await;
    assert_eq!(dead.len(), 400, "every NOBODY copy dead-lettered");
    assert!(dead
        .iter()
        .all(|m| m.header("x-rejected-for-module").as_deref() == Some("NOBODY")));
    assert_eq!(
        env.count(
            "SELECT count(*) FROM itrelay.copies WHERE state = 'failed' AND module = 'NOBODY'"
        )
        .await,
        400
    );
}

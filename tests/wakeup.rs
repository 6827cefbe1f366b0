//! The relay loop. Wake-up: an idle relay is woken by the trigger's NOTIFY at once, not
//! by its fallback poll; a busy one is not notified at all (the flag the triggers read
//! says so). Overlapping batches: a transaction that commits late, below the batch in
//! flight, is relayed while a backlog drains, not after it.

mod common;

use std::time::Duration;

use common::*;

async fn relay_idle(env: &TestEnv) -> Option<bool> {
    env.client
        .query_opt("SELECT idle FROM itrelay.relay_state", &[])
        .await
        .unwrap()
        .map(|row| row.get(0))
}

async fn wait_for_idle(env: &TestEnv, idle: bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while relay_idle(env).await != Some(idle) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "relay never became idle={idle}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn idle_relay_is_woken_by_notify_not_by_its_fallback_poll() {
    let mut env = TestEnv::new().await;
    env.seed().await;
    // A fallback poll longer than the test's patience: only NOTIFY can deliver in time.
    env.start_relay(&[("ITRELAY__RELAY__POLL_INTERVAL_MS", "600000")]);
    for round in 0..3 {
        wait_for_idle(&env, true).await;
        env.execute(&format!(
            "INSERT INTO it_tickets (organization_id, ticket_number, category, priority, subject, description, requester_id)
                 VALUES ('{ORG}', 'TCK-{round}', 'other', 'low', 'S', 'D', '{EMPLOYEE}')"
        ))
        .await;
        env.wait_until_settled(round + 1).await;
    }
    assert_eq!(env.drain(&env.exchange("PF-10")).await.len(), 3);
}

#[tokio::test]
async fn no_relay_means_no_notify_flag_and_events_wait_in_the_outbox() {
    let env = TestEnv::new().await;
    env.seed().await;
    assert_eq!(relay_idle(&env).await, None);
    env.execute(&format!(
        "INSERT INTO it_tickets (organization_id, ticket_number, category, priority, subject, description, requester_id)
             VALUES ('{ORG}', 'TCK-1', 'other', 'low', 'S', 'D', '{EMPLOYEE}')"
    ))
    .await;
    assert_eq!(
        env.count("SELECT count(*) FROM itrelay.outbox WHERE state = 'pending'")
            .await,
        1
    );
}

async fn delivered_like(env: &TestEnv, pattern: &str) -> i64 {
    env.client
        .query_one(
            "SELECT count(*) FROM itrelay.outbox
             WHERE state = 'delivered' AND payload->>'ticket_number' LIKE $1",
            &[&pattern],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn late_commits_are_relayed_while_a_backlog_drains() {
    let mut env = TestEnv::new().await;
    env.seed().await;
    // Ten open transactions, each holding an outbox id between committed events, and a
    // backlog after them.
    let mut late = Vec::new();
    for n in 0..10 {
        insert_ticket(&env.client, &format!("EARLY-{n}")).await;
        let open = connect(&env.db_url).await;
        open.batch_execute("BEGIN").await.unwrap();
        insert_ticket(&open, &format!("LATE-{n}")).await;
        late.push(open);
    }
    env.execute(&format!(
        "INSERT INTO it_tickets (organization_id, ticket_number, category, priority, subject, description, requester_id)
             SELECT '{ORG}', 'BACKLOG-' || n, 'other', 'low', 'S', 'D', '{EMPLOYEE}'
             FROM generate_series(1, 3000) AS n"
    ))
    .await;
    // Small batches: the backlog drains batch after batch, one always in flight.
    env.start_relay(&[("ITRELAY__RELAY__BATCH_SIZE", "5")]);
    while delivered_like(&env, "BACKLOG-%").await < 100 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for open in &late {
        open.batch_execute("COMMIT").await.unwrap();
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    while delivered_like(&env, "LATE-%").await < 10 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "late commits never relayed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        delivered_like(&env, "BACKLOG-%").await < 3000,
        "the late commits waited for the whole backlog"
    );
    env.reconcile("PF-10", 3020).await.assert_nothing_lost();
}

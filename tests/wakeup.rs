//! The relay loop. Wake-up: an idle relay is woken by the trigger's NOTIFY at once, not
//! by its fallback poll; a busy one is not notified at all (the idle lock the triggers
//! try says so). Overlapping batches: a transaction that commits late, below the batch in
//! flight, is relayed while a backlog drains, not after it. Claim floor: an event whose
//! transaction stays open while the relay moves past its id is still claimed when it commits.

mod common;

use std::time::Duration;

use common::*;

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

async fn wait_delivered_like(env: &TestEnv, pattern: &str, count: i64, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    while delivered_like(env, pattern).await < count {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{count} events {pattern} not delivered within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
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
    insert_tickets(&env.client, "BACKLOG", 3000).await;
    // Small batches: the backlog drains batch after batch, one always in flight.
    env.start_relay(&[("ITRELAY__RELAY__BATCH_SIZE", "5")]);
    wait_delivered_like(&env, "BACKLOG-%", 100, WAIT).await;
    for open in &late {
        open.batch_execute("COMMIT").await.unwrap();
    }
    wait_delivered_like(&env, "LATE-%", 10, WAIT).await;
    assert!(
        delivered_like(&env, "BACKLOG-%").await < 3000,
        "the late commits waited for the whole backlog"
    );
    env.reconcile("PF-10", 3020).await.assert_nothing_lost();
}

#[tokio::test]
async fn a_transaction_left_open_holds_the_claim_floor_below_its_event() {
    let mut env = TestEnv::new().await;
    env.seed().await;
    insert_tickets(&env.client, "BEFORE", 200).await;
    env.start_relay(&[("ITRELAY__RELAY__BATCH_SIZE", "5")]);
    wait_delivered_like(&env, "BEFORE-%", 10, WAIT).await;
    // Written while the relay drains, so its trigger does not NOTIFY: only a claim that
    // still looks at its id can find it once it commits.
    let open = connect(&env.db_url).await;
    open.batch_execute("BEGIN").await.unwrap();
    insert_ticket(&open, "HELD").await;
    assert_eq!(
        relay_idle(&env).await,
        Some(false),
        "the relay went idle too soon"
    );
    wait_delivered_like(&env, "BEFORE-%", 200, WAIT).await;
    // Events after it are delivered, and the relay probes and polls for a while: a floor
    // that followed the delivered ids alone would now be above the open event.
    for n in 0..20 {
        insert_ticket(&env.client, &format!("AFTER-{n}")).await;
    }
    wait_delivered_like(&env, "AFTER-%", 20, WAIT).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    open.batch_execute("COMMIT").await.unwrap();
    // Well under the floor's periodic rewind (5 s after the last wake-up): an event left
    // below the floor would wait for that.
    wait_delivered_like(&env, "HELD", 1, Duration::from_secs(2)).await;
    env.reconcile("PF-10", 221).await.assert_nothing_lost();
}

#[tokio::test]
async fn a_replay_below_the_claim_floor_is_relayed_at_once() {
    let mut env = TestEnv::new().await;
    env.seed().await;
    env.start_relay(&[]);
    insert_tickets(&env.client, "FIRST", 50).await;
    wait_delivered_like(&env, "FIRST-%", 50, WAIT).await;
    // Later events, and time for the probes to settle every id so far: the floor is now
    // above the first events.
    for n in 0..5 {
        insert_ticket(&env.client, &format!("LATER-{n}")).await;
    }
    wait_delivered_like(&env, "LATER-%", 5, WAIT).await;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let first = env
        .client
        .query_one(
            "SELECT event_id FROM itrelay.outbox WHERE payload->>'ticket_number' = 'FIRST-1'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let selection = itrelay::cli::dead_letters::ReplaySelection {
        event_ids: vec![first],
        event_type: None,
        since: None,
        until: None,
        include_delivered: true,
    };
    let replayed = itrelay::cli::dead_letters::replay(&env.client, "it_events", &selection)
        .await
        .unwrap();
    assert_eq!(replayed, 1);
    // Well under the floor's periodic rewind (5 s): the notification names the row.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while env
        .count("SELECT count(*) FROM itrelay.outbox WHERE attempts = 2 AND state = 'delivered'")
        .await
        < 1
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the replayed event waited for the rewind"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

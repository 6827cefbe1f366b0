//! The outbox's storage: an install of the layout before partitions is upgraded without
//! losing or re-sending anything; under sustained load with retention on, the outbox
//! stays small and retention drops nothing pending; an insert with no partition for its
//! id (the relay down for long) still commits and is delivered; a long reader of the
//! outbox holds up neither the relay nor, for more than a moment, partition upkeep.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;

/// sql/install.sql as it was before delivery was recorded in `itrelay.progress`.
const INSTALL_BEFORE: &str = include_str!("fixtures/install_before_storage.sql");

/// Event ids of the outbox rows by state, in id order.
async fn ids_by_state(env: &TestEnv) -> BTreeMap<String, Vec<i64>> {
    let mut states = BTreeMap::<String, Vec<i64>>::new();
    for row in env
        .client
        .query("SELECT state, id FROM itrelay.outbox ORDER BY id", &[])
        .await
        .expect("outbox states")
    {
        states.entry(row.get(0)).or_default().push(row.get(1));
    }
    states
}

/// The event id of each outbox id in `ids`.
async fn event_ids(env: &TestEnv, ids: &[i64]) -> Vec<String> {
    let mut found = Vec::new();
    for id in ids {
        let row = env
            .client
            .query_one(
                "SELECT event_id::text FROM itrelay.outbox WHERE id = $1",
                &[id],
            )
            .await
            .expect("event id");
        found.push(row.get(0));
    }
    found
}

#[tokio::test]
async fn an_install_of_the_row_per_state_layout_is_upgraded_without_loss_or_resend() {
    let mut env = TestEnv::new().await;
    env.seed().await;
    itrelay::sql::uninstall(&env.client, true)
        .await
        .expect("uninstall");
    env.execute(INSTALL_BEFORE).await;
    insert_tickets(&env.client, "OLD", 10).await;
    let first = env.count("SELECT min(id) FROM itrelay.outbox").await;
    let at = |n: i64| first + n - 1;
    // Delivered: 1-3 and 8 (above pending rows); failed: 4; held: 5, its PF-10 copy
    // waiting; pending: 6, 7, 9, 10.
    env.execute(&format!(
        "UPDATE itrelay.outbox SET state = 'delivered', attempts = 1, delivered_at = now()
             WHERE id IN ({}, {}, {}, {});
         UPDATE itrelay.outbox SET state = 'failed', attempts = 1, last_error = 'rejected'
             WHERE id = {};
         UPDATE itrelay.outbox SET state = 'held', attempts = 1 WHERE id = {};
         INSERT INTO itrelay.copies (outbox_id, module, entity, state, attempts, last_error)
             SELECT id, 'PF-10', entity, 'waiting', 1, 'nacked' FROM itrelay.outbox WHERE id = {};",
        at(1),
        at(2),
        at(3),
        at(8),
        at(4),
        at(5),
        at(5)
    ))
    .await;
    let before = ids_by_state(&env).await;

    itrelay::sql::install(&env.client, "it_events")
        .await
        .expect("upgrade");

    assert_eq!(
        ids_by_state(&env).await,
        before,
        "states across the upgrade"
    );
    assert_eq!(
        env.count("SELECT count(*) FROM itrelay.events_default")
            .await,
        0,
        "the upgraded events have partitions of their own"
    );
    let expected = event_ids(&env, &[at(5), at(6), at(7), at(9), at(10)]).await;
    env.start_relay(&[]);
    insert_ticket(&env.client, "NEW-1").await;
    env.wait_until_settled(11).await;
    let mut expected = expected;
    expected.extend(event_ids(&env, &[at(11)]).await);
    let consumed: Vec<String> = env
        .drain(&env.exchange("PF-10"))
        .await
        .iter()
        .map(Received::message_id)
        .collect();
    assert_eq!(
        consumed, expected,
        "exactly the pending events and the held copy, in id order"
    );
    let states = env.outbox_states().await;
    assert_eq!(states.get("failed"), Some(&1));
    assert_eq!(states.get("delivered"), Some(&10));
    env.stop_relay().await;
}

/// The heap of every partition of the outbox, in bytes, and its rows.
async fn outbox_size(env: &TestEnv) -> (i64, i64) {
    let row = env
        .client
        .query_one(
            "SELECT coalesce(sum(pg_relation_size(inhrelid)), 0)::bigint,
                    (SELECT count(*) FROM itrelay.events)
             FROM pg_inherits WHERE inhparent = 'itrelay.events'::regclass",
            &[],
        )
        .await
        .expect("outbox size");
    (row.get(0), row.get(1))
}

/// Retention that removes every settled partition, once a second.
const RETAIN_NOTHING: &[(&str, &str)] = &[
    ("ITRELAY__RETENTION__DELIVERED_MAX_AGE_HOURS", "0"),
    ("ITRELAY__RETENTION__INTERVAL_SECS", "1"),
];

/// Stops the relay process and returns what it logged.
async fn stop(mut relay: tokio::process::Child, log: tokio::task::JoinHandle<String>) -> String {
    relay.start_kill().expect("kill the relay");
    relay.wait().await.expect("reap the relay");
    log.await.expect("relay log")
}

/// Partitions of `span` ids from the next id on, in place of those install created.
async fn small_partitions(env: &TestEnv, span: i64) {
    env.execute(&format!(
        "DO $$
         DECLARE p regclass;
         BEGIN
             FOR p IN SELECT inhrelid::regclass FROM pg_inherits
                      WHERE inhparent = 'itrelay.events'::regclass
                        AND inhrelid <> 'itrelay.events_default'::regclass LOOP
                 EXECUTE format('DROP TABLE %s', p);
             END LOOP;
         END $$;
         UPDATE itrelay.progress SET partition_span = {span};
         SELECT itrelay.extend_partitions();"
    ))
    .await;
}

#[tokio::test]
async fn sustained_load_with_retention_keeps_the_outbox_small_and_drops_nothing_pending() {
    let env = TestEnv::new().await;
    env.seed().await;
    small_partitions(&env, 200).await;
    // The binary: retention runs beside the relay loop.
    let mut relay = spawn_run(&env, "warn", RETAIN_NOTHING);
    let log = read_stderr(&mut relay);
    let rounds = 8;
    let per_round = 400;
    let mut sizes = Vec::new();
    let mut consumed = Vec::new();
    for round in 0..rounds {
        insert_tickets(&env.client, &format!("R{round}"), per_round).await;
        // Every event of the round reaches the consumer, whatever retention removed.
        let deadline = tokio::time::Instant::now() + WAIT;
        while env.count("SELECT count(*) FROM itrelay.pending").await > 0 {
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "round {round}: events still pending; relay log:\n{}",
                    stop(relay, log).await
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        consumed.extend(
            env.drain(&env.exchange("PF-10"))
                .await
                .into_iter()
                .map(|m| m.body["ticket_number"].as_str().unwrap_or("").to_owned()),
        );
        assert_eq!(
            consumed.len() as i64,
            (round + 1) * per_round,
            "round {round}: events consumed"
        );
        // Retention's next passes remove what this round settled.
        let deadline = tokio::time::Instant::now() + WAIT;
        while outbox_size(&env).await.1 > 2 * 200 {
            if tokio::time::Instant::now() >= deadline {
                let (_, left) = outbox_size(&env).await;
                panic!(
                    "round {round}: retention left {left} events; relay log:\n{}",
                    stop(relay, log).await
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        sizes.push(outbox_size(&env).await.0);
    }
    stop(relay, log).await;
    consumed.sort();
    consumed.dedup();
    assert_eq!(
        consumed.len() as i64,
        rounds * per_round,
        "every ticket consumed"
    );
    assert_eq!(env.count("SELECT count(*) FROM itrelay.pending").await, 0);
    // Flat: the last rounds hold no more than the first, though 8 times the events
    // went through.
    let first = sizes[0];
    assert!(
        sizes.iter().all(|&size| size <= first.max(8192) * 2),
        "outbox heap by round: {sizes:?}"
    );
    println!("outbox heap after each round of {per_round} events: {sizes:?} bytes");
}

#[tokio::test]
async fn an_insert_beyond_every_partition_commits_and_is_delivered() {
    let env = TestEnv::new().await;
    env.seed().await;
    // The relay was down while far more ids were used than partitions were made for.
    env.execute("ALTER TABLE itrelay.events ALTER COLUMN id RESTART WITH 50000000")
        .await;
    insert_tickets(&env.client, "FAR", 3).await;
    assert_eq!(
        env.count("SELECT count(*) FROM itrelay.events_default")
            .await,
        3,
        "no partition covers them: the default one holds them"
    );
    // The binary: retention runs beside the relay loop.
    let mut relay = spawn_run(&env, "warn", RETAIN_NOTHING);
    let log = read_stderr(&mut relay);
    env.wait_until_settled(3).await;
    // Partitions are made above what the default partition holds, and later ids land
    // there; once settled, retention empties the default partition.
    let deadline = tokio::time::Instant::now() + WAIT;
    while env
        .count("SELECT count(*) FROM itrelay.events_default")
        .await
        > 0
    {
        if tokio::time::Instant::now() >= deadline {
            panic!(
                "the default partition was not emptied; relay log:\n{}",
                stop(relay, log).await
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    insert_ticket(&env.client, "FAR-4").await;
    assert_eq!(
        env.count("SELECT count(*) FROM itrelay.events_default")
            .await,
        0,
        "a partition covers the next id"
    );
    env.wait_until_settled(1).await;
    assert_eq!(env.drain(&env.exchange("PF-10")).await.len(), 4);
    stop(relay, log).await;
}

#[tokio::test]
async fn a_long_reader_of_the_outbox_holds_up_neither_the_relay_nor_partition_upkeep() {
    let env = TestEnv::new().await;
    env.seed().await;
    small_partitions(&env, 100).await;
    // A DBA's long read: its transaction holds every partition of itrelay.events, and
    // attaching a partition locks the default one exclusively.
    let reader = connect(&env.db_url).await;
    reader
        .batch_execute("BEGIN; SELECT count(*) FROM itrelay.outbox")
        .await
        .expect("the long reader");
    // Past the partitions made ahead: the next ids need new ones.
    insert_tickets(&env.client, "LONG", 250).await;
    let partitions =
        "SELECT count(*) FROM pg_inherits WHERE inhparent = 'itrelay.events'::regclass";
    let before = env.count(partitions).await;
    // A call gives up at once, rather than queue every reader of the events (the relay's
    // claims among them) behind its lock for as long as the long reader runs.
    let created: i32 = tokio::time::timeout(
        Duration::from_secs(5),
        env.client
            .query_one("SELECT itrelay.extend_partitions()", &[]),
    )
    .await
    .expect("itrelay.extend_partitions waited for the long reader")
    .expect("itrelay.extend_partitions")
    .get(0);
    assert_eq!(created, 0, "partitions attached under a reader's lock");
    // The relay's retention tries the same at start; its claims go on meanwhile. Bound:
    // under the old behaviour the claims waited the retention's query timeout (10 s),
    // then again on every retry.
    let mut relay = spawn_run(&env, "warn", &[]);
    let log = read_stderr(&mut relay);
    let delivered = tokio::time::timeout(Duration::from_secs(8), async {
        while env.count("SELECT count(*) FROM itrelay.pending").await > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    if delivered.is_err() {
        panic!(
            "events held up by the long reader; relay log:\n{}",
            stop(relay, log).await
        );
    }
    // Business writes too, the new ids landing in the default partition.
    tokio::time::timeout(
        Duration::from_secs(5),
        insert_tickets(&env.client, "LATE", 10),
    )
    .await
    .expect("a business write held up by the long reader");
    // Once the reader is done, the next extension makes the partitions.
    reader.batch_execute("COMMIT").await.expect("end the read");
    let deadline = tokio::time::Instant::now() + WAIT;
    while env.count(partitions).await <= before {
        if tokio::time::Instant::now() >= deadline {
            panic!(
                "no partition made after the reader ended; relay log:\n{}",
                stop(relay, log).await
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    env.wait_until_settled(260).await;
    assert_eq!(env.drain(&env.exchange("PF-10")).await.len(), 260);
    stop(relay, log).await;
}

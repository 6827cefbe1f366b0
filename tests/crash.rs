//! The relay as a real process: killed with SIGKILL mid-stream and restarted, it loses
//! nothing; a second relay stands by and takes over when the leader dies.

mod common;

use std::collections::HashSet;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use tokio::process::{Child, Command};

fn spawn_relay(env: &TestEnv) -> Child {
    Command::new(env!("CARGO_BIN_EXE_itrelay"))
        .arg("run")
        .envs(env.env_vars())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn itrelay run")
}

async fn delivered(env: &TestEnv) -> i64 {
    env.count("SELECT count(*) FROM itrelay.outbox WHERE state = 'delivered'")
        .await
}

/// Polls until at least `n` rows are delivered.
async fn wait_delivered(env: &TestEnv, n: i64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while delivered(env).await < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "fewer than {n} delivered"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Every committed event id was consumed (lost = 0) and nothing else (unexpected = 0);
/// returns the number of duplicates.
async fn reconcile(env: &TestEnv, total: i64) -> usize {
    env.wait_until_settled(total).await;
    let committed: HashSet<String> = env
        .client
        .query("SELECT event_id::text FROM itrelay.outbox", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    let consumed: Vec<String> = env
        .drain(&env.exchange("PF-10"))
        .await
        .iter()
        .map(Received::message_id)
        .collect();
    let unique: HashSet<String> = consumed.iter().cloned().collect();
    let lost: Vec<_> = committed.difference(&unique).collect();
    let unexpected: Vec<_> = unique.difference(&committed).collect();
    assert!(lost.is_empty(), "lost {} events", lost.len());
    assert!(
        unexpected.is_empty(),
        "{} unexpected events",
        unexpected.len()
    );
    consumed.len() - unique.len()
}

/// Writes `count` single-row ticket transactions, one after another.
async fn write_tickets(db_url: String, from: usize, count: usize) {
    let client = connect(&db_url).await;
    for n in from..from + count {
        client
            .batch_execute(&format!(
                "INSERT INTO it_tickets (organization_id, ticket_number, category, priority, subject, description, requester_id)
                     VALUES ('{ORG}', 'TCK-{n}', 'software', 'low', 'S', 'D', '{EMPLOYEE}')"
            ))
            .await
            .expect("insert ticket");
    }
}

#[tokio::test]
async fn relay_killed_mid_stream_and_restarted_loses_nothing() {
    let env = TestEnv::new().await;
    env.seed().await;
    let total = 600;
    let writer = tokio::spawn(write_tickets(env.db_url.clone(), 0, total));
    let mut relay = spawn_relay(&env);
    for kill_after in [100, 300] {
        wait_delivered(&env, kill_after).await;
        relay.start_kill().expect("SIGKILL");
        relay.wait().await.expect("reap");
        relay = spawn_relay(&env);
    }
    writer.await.unwrap();
    let duplicates = reconcile(&env, total as i64).await;
    println!("kill -9 twice during {total} events: lost 0, duplicates {duplicates}");
    relay.start_kill().ok();
}

#[tokio::test]
async fn standby_takes_over_when_the_leader_dies() {
    let env = TestEnv::new().await;
    env.seed().await;
    let mut leader = spawn_relay(&env);
    write_tickets(env.db_url.clone(), 0, 50).await;
    wait_delivered(&env, 50).await;
    let standby = spawn_relay(&env);
    // The standby waits on the lock: still exactly one leader, and the events flow.
    write_tickets(env.db_url.clone(), 50, 50).await;
    wait_delivered(&env, 100).await;
    leader.start_kill().expect("SIGKILL");
    leader.wait().await.expect("reap");
    write_tickets(env.db_url.clone(), 100, 50).await;
    let duplicates = reconcile(&env, 150).await;
    assert_eq!(
        duplicates, 0,
        "the standby published while the leader lived"
    );
    drop(standby);
}

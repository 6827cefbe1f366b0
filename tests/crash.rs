//! The relay as a real process: killed with SIGKILL mid-stream and restarted, it loses
//! nothing; a second relay stands by and takes over when the leader dies.

mod common;

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

#[tokio::test]
async fn relay_killed_mid_stream_and_restarted_loses_nothing() {
    let env = TestEnv::new().await;
    env.seed().await;
    let total = 600;
    let writer = tokio::spawn(write_tickets(env.db_url.clone(), 0, total, Duration::ZERO));
    let mut relay = spawn_relay(&env);
    for kill_after in [100, 300] {
        env.wait_delivered(kill_after, WAIT).await;
        relay.start_kill().expect("SIGKILL");
        relay.wait().await.expect("reap");
        relay = spawn_relay(&env);
    }
    writer.await.unwrap();
    let outcome = env.reconcile("PF-10", total as i64).await;
    outcome.assert_nothing_lost();
    println!(
        "| relay killed (SIGKILL) twice mid-stream, restarted | {} | {} | {} | – |",
        outcome.committed, outcome.lost, outcome.duplicates
    );
    relay.start_kill().ok();
}

#[tokio::test]
async fn standby_takes_over_when_the_leader_dies() {
    let env = TestEnv::new().await;
    env.seed().await;
    let mut leader = spawn_relay(&env);
    write_tickets(env.db_url.clone(), 0, 50, Duration::ZERO).await;
    env.wait_delivered(50, WAIT).await;
    let standby = spawn_relay(&env);
    // The standby waits on the lock: still exactly one leader, and the events flow.
    write_tickets(env.db_url.clone(), 50, 50, Duration::ZERO).await;
    env.wait_delivered(100, WAIT).await;
    leader.start_kill().expect("SIGKILL");
    leader.wait().await.expect("reap");
    write_tickets(env.db_url.clone(), 100, 50, Duration::ZERO).await;
    let outcome = env.reconcile("PF-10", 150).await;
    println!(
        "| leader killed, standby takes over | {} | {} | {} | – |",
        outcome.committed, outcome.lost, outcome.duplicates
    );
    outcome.assert_nothing_lost();
    assert_eq!(
        outcome.duplicates, 0,
        "the standby published while the leader lived"
    );
    drop(standby);
}

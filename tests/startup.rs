//! The start-up race: on a fresh install, events committed right as the relay turns
//! ready are delivered at once, including one whose transaction began before the relay
//! started (so it sent no NOTIFY) and commits after the relay has had every chance to go
//! idle. The fallback poll is far away, so nothing but the start-up order can deliver
//! them before the relay's idle wait ends.

mod common;

use std::time::Duration;

use common::process::{free_port, spawn_serving, wait_for_status};
use common::*;

/// The longest an idle relay waits before it looks again (`BACKLOG_EVERY`).
const IDLE_WAIT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn events_committed_as_a_fresh_relay_turns_ready_are_delivered() {
    let env = TestEnv::new().await;
    env.seed().await;
    let open = connect(&env.db_url).await;
    open.batch_execute("BEGIN").await.unwrap();
    insert_ticket(&open, "OPEN").await;

    let port = free_port();
    let _relay = spawn_serving(
        &env,
        port,
        &[("ITRELAY__RELAY__POLL_INTERVAL_MS", "600000")],
    );
    wait_for_status(port, "/readyz", 200).await;
    let writers: Vec<_> = (0..5)
        .map(|n| {
            let url = env.db_url.clone();
            tokio::spawn(async move {
                insert_ticket(&connect(&url).await, &format!("READY-{n}")).await;
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    // By now a relay that goes idle regardless has done so, and looks again only after
    // its idle wait, at most five seconds whatever the fallback poll.
    tokio::time::sleep(Duration::from_millis(500)).await;
    open.batch_execute("COMMIT").await.unwrap();
    env.wait_until_settled_within(6, IDLE_WAIT / 2).await;
    env.reconcile("PF-10", 6).await.assert_nothing_lost();
}

//! One NOTIFY channel everywhere: `itrelay install` stores `postgres.channel`, the
//! triggers notify that channel, and a relay configured for another channel refuses to
//! start, so relays on different channels never lead the same outbox.

mod common;

use common::*;
use tokio::process::Command;

const CHANNEL: &str = "ops_events";

#[tokio::test]
async fn triggers_notify_the_channel_stored_at_install() {
    let mut env = TestEnv::new().await;
    env.seed().await;
    let install = Command::new(env!("CARGO_BIN_EXE_itrelay"))
        .arg("install")
        .envs(env.env_vars())
        .env("ITRELAY__POSTGRES__CHANNEL", CHANNEL)
        .output()
        .await
        .expect("itrelay install");
    assert!(install.status.success(), "{install:?}");
    // Applying the file again, as psql would, keeps the stored channel.
    env.execute(itrelay::sql::INSTALL).await;
    assert_eq!(
        itrelay::sql::installed_channel(&env.client).await.unwrap(),
        CHANNEL
    );
    // The fallback poll is far away: only the trigger's NOTIFY wakes the relay in time.
    env.start_relay(&[
        ("ITRELAY__POSTGRES__CHANNEL", CHANNEL),
        ("ITRELAY__RELAY__POLL_INTERVAL_MS", "600000"),
    ]);
    wait_for_idle(&env, true).await;
    insert_ticket(&env.client, "TCK-1").await;
    env.reconcile("PF-10", 1).await.assert_nothing_lost();
}

#[tokio::test]
async fn a_relay_on_another_channel_refuses_to_start() {
    let env = TestEnv::new().await;
    let run = Command::new(env!("CARGO_BIN_EXE_itrelay"))
        .arg("run")
        .envs(env.env_vars())
        .env("ITRELAY__POSTGRES__CHANNEL", CHANNEL)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(WAIT, run)
        .await
        .expect("the relay stops by itself")
        .expect("itrelay run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(CHANNEL) && stderr.contains("it_events"),
        "names both channels: {stderr}"
    );
    assert_eq!(
        env.count("SELECT count(*) FROM itrelay.leader").await,
        0,
        "it never led"
    );
}

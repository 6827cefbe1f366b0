//! A Postgres error that recurs on every attempt (here: itrelay is not installed) is
//! logged with what the server said, and the relay backs off further at each attempt
//! instead of reconnecting several times a second.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use tokio::io::AsyncReadExt;
use tokio::process::Command;

/// How long the relay runs against the broken database.
const RUN: Duration = Duration::from_secs(4);

#[tokio::test]
async fn a_persistent_error_is_logged_with_the_servers_message_and_backs_off() {
    let env = TestEnv::new().await;
    env.execute("DROP SCHEMA itrelay CASCADE").await;
    let mut relay = Command::new(env!("CARGO_BIN_EXE_itrelay"))
        .args(["--log-format", "json", "run"])
        .envs(env.env_vars())
        .env("ITRELAY__RELAY__RECONNECT_MIN_MS", "100")
        .env("ITRELAY__RELAY__RECONNECT_MAX_MS", "10000")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn itrelay run");
    tokio::time::sleep(RUN).await;
    relay.start_kill().expect("SIGKILL");
    relay.wait().await.expect("reap");
    let mut logs = String::new();
    relay
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut logs)
        .await
        .expect("logs");
    let attempts: Vec<&str> = logs
        .lines()
        .filter(|line| line.contains("relay interrupted"))
        .collect();
    let first = attempts.first().expect("the failure is logged");
    assert!(!first.contains("db error"), "{first}");
    assert!(
        first.contains("42P01") && first.contains("does not exist"),
        "the server's code and message: {first}"
    );
    // Doubling from 100 ms, four seconds hold about six attempts; resetting the backoff
    // each time would make it forty.
    assert!(
        attempts.len() <= 10,
        "{} attempts in {RUN:?}:\n{logs}",
        attempts.len()
    );
}

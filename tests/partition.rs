//! Leadership survives a partition between the leader and Postgres. Relay A reaches
//! Postgres through a test proxy, relay B directly; the proxy then black-holes A's
//! connection, leaving it half-open, so the server keeps A's session and its leader
//! lock. B must take over within the lease, A must say it no longer leads, `status` must
//! name the real leader, and nothing committed may be lost.

mod common;

use std::time::Duration;

use common::process::{free_port, get, metric, spawn_serving, wait_for_metric};
use common::proxy::{Mode, Proxy};
use common::*;
use tokio::process::{Child, Command};

const LEASE_SECS: u64 = 4;
/// Lease, then a standby retry and the end of the old session, with room for a busy
/// machine; without a lease nobody would lead for hours.
const TAKEOVER_BOUND: Duration = Duration::from_secs(LEASE_SECS * 4);

/// A relay process serving HTTP on `port`, reaching Postgres at `pg_url`.
fn spawn_relay(env: &TestEnv, pg_url: &str, port: u16) -> Child {
    let lease = LEASE_SECS.to_string();
    spawn_serving(
        env,
        port,
        &[
            ("ITRELAY__POSTGRES__URL", pg_url),
            ("ITRELAY__POSTGRES__QUERY_TIMEOUT_SECS", "2"),
            ("ITRELAY__RELAY__LEASE_SECS", &lease),
        ],
    )
}

async fn commit_tickets(env: &TestEnv, from: usize, count: usize) {
    for n in from..from + count {
        insert_ticket(&env.client, &format!("TCK-{n}")).await;
    }
}

/// `itrelay status` with `args`, and the relays' lease: its standard output.
async fn status_output(env: &TestEnv, args: &[&str]) -> Vec<u8> {
    let output = Command::new(env!("CARGO_BIN_EXE_itrelay"))
        .arg("status")
        .args(args)
        .envs(env.env_vars())
        .env("ITRELAY__RELAY__LEASE_SECS", LEASE_SECS.to_string())
        .env("ITRELAY__POSTGRES__QUERY_TIMEOUT_SECS", "2")
        .output()
        .await
        .expect("itrelay status");
    assert!(output.status.success(), "{output:?}");
    output.stdout
}

async fn status(env: &TestEnv) -> serde_json::Value {
    serde_json::from_slice(&status_output(env, &["--json"]).await).expect("status JSON")
}

/// A relay whose Postgres connection is black-holed, and the proxy in between.
async fn partitioned_leader(env: &TestEnv) -> (Proxy, Child, u16) {
    let proxy = Proxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let port = free_port();
    let url = format!(
        "postgres://postgres@127.0.0.1:{}/{}",
        proxy.port, env.database
    );
    let relay = spawn_relay(env, &url, port);
    wait_for_metric(port, "itrelay_leader", 1).await;
    (proxy, relay, port)
}

#[tokio::test]
async fn a_standby_takes_over_from_a_partitioned_leader_within_the_lease() {
    let env = TestEnv::new().await;
    env.seed().await;
    let (proxy, _a, a_port) = partitioned_leader(&env).await;
    let b_port = free_port();
    let _b = spawn_relay(&env, &env.db_url, b_port);
    wait_for_metric(b_port, "itrelay_standby", 1).await;
    commit_tickets(&env, 0, 5).await;
    env.wait_until_settled(5).await;

    proxy.set(Mode::Blackhole);
    commit_tickets(&env, 5, 10).await;
    env.wait_until_settled_within(15, TAKEOVER_BOUND).await;
    assert_eq!(metric(b_port, "itrelay_leader").await, Some(1));
    let (code, body) = get(b_port, "/readyz").await.unwrap_or_default();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("ok   leadership: leading"), "{body}");
    // A gave up before B took over, and is not ready: it reaches no Postgres.
    assert_eq!(metric(a_port, "itrelay_leader").await, Some(0));
    assert_eq!(
        get(a_port, "/readyz").await.map(|(code, _)| code),
        Some(503)
    );
    // `status` names B's session, with a fresh lease.
    let status = status(&env).await;
    assert_eq!(status["leader"]["pid"], status["lease"]["pid"], "{status}");
    assert_eq!(status["lease"]["stale"], false, "{status}");

    // Healed, A stands by, and every event is delivered.
    proxy.cut();
    proxy.set(Mode::Forward);
    wait_for_metric(a_port, "itrelay_standby", 1).await;
    let (code, body) = get(a_port, "/readyz").await.unwrap_or_default();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("ok   leadership: standing by"), "{body}");
    commit_tickets(&env, 15, 5).await;
    env.reconcile("PF-10", 20).await.assert_nothing_lost();
}

#[tokio::test]
async fn status_flags_the_lease_of_a_partitioned_leader() {
    let env = TestEnv::new().await;
    let (proxy, _a, a_port) = partitioned_leader(&env).await;
    proxy.set(Mode::Blackhole);
    // The leader's renewal goes unanswered: it stops leading on its own.
    wait_for_metric(a_port, "itrelay_leader", 0).await;
    tokio::time::sleep(Duration::from_secs(LEASE_SECS)).await;
    let status = status(&env).await;
    // The server still holds the lost session's lock: `status` says its lease is stale.
    assert_eq!(status["leader"]["pid"], status["lease"]["pid"], "{status}");
    assert_eq!(status["lease"]["stale"], true, "{status}");
    let text = status_output(&env, &[]).await;
    let text = String::from_utf8_lossy(&text);
    assert!(text.contains("lease           STALE"), "{text}");
}

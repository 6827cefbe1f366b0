//! Every network wait is bounded: a broker or a Postgres server that accepts TCP and never
//! answers, or a connection black-holed mid-stream, is given up on within its timeout with
//! a log line naming the step, retried until the path heals, and SIGTERM ends the process
//! within `relay.stop_timeout_secs` whatever the broker does.

mod common;

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::proxy::{Mode, Proxy};
use common::*;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// A relay process and the log lines it wrote so far.
struct Spawned {
    child: Child,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Spawned {
    fn start(env: &TestEnv, args: &[&str], extra: &[(&str, String)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_itrelay"))
            .args(["--log-format", "json"])
            .args(args)
            .envs(env.env_vars())
            .envs(extra.iter().map(|(k, v)| (*k, v.as_str())))
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn itrelay");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let collected = logs.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                collected.lock().unwrap().push(line);
            }
        });
        Self { child, logs }
    }

    fn count(&self, needle: &str) -> usize {
        let logs = self.logs.lock().unwrap();
        logs.iter().filter(|line| line.contains(needle)).count()
    }

    /// Waits until `times` log lines contain `needle`; how long that took.
    async fn wait_for_log(&self, needle: &str, times: usize) -> Duration {
        let started = Instant::now();
        while self.count(needle) < times {
            assert!(
                started.elapsed() < WAIT,
                "no {times} log lines with {needle:?} within {WAIT:?}:\n{}",
                self.logs.lock().unwrap().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        started.elapsed()
    }

    fn sigterm(&self) {
        let pid = self.child.id().expect("relay pid");
        let status = std::process::Command::new("kill")
            .args(["-15", &pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }
}

async fn rabbitmq_proxy() -> Proxy {
    Proxy::start("127.0.0.1:5672".parse().unwrap()).await
}

fn through(proxy: &Proxy, query: &str) -> (&'static str, String) {
    (
        "ITRELAY__AMQP__URL",
        format!("amqp://guest:guest@127.0.0.1:{}/%2f{query}", proxy.port),
    )
}

fn setting(key: &'static str, value: &str) -> (&'static str, String) {
    (key, value.to_owned())
}

/// Waits until `at_least` outbox rows are delivered.
/// A Postgres address that accepts TCP and never answers the handshake: every task that
/// connects (the relay, the scans, the outbox gauges) gives up within
/// `postgres.query_timeout_secs`, keeps trying, and once the path heals the events written
/// meanwhile flow.
#[tokio::test]
async fn postgres_that_never_answers_is_retried_until_it_does() {
    let env = TestEnv::new().await;
    env.seed().await;
    let postgres = Proxy::start("127.0.0.1:5432".parse().unwrap()).await;
    postgres.set(Mode::Blackhole);
    let database = env.db_url.rsplit('/').next().expect("database name");
    let relay = Spawned::start(
        &env,
        &["run"],
        &[
            setting(
                "ITRELAY__POSTGRES__URL",
                &format!("postgres://postgres@127.0.0.1:{}/{database}", postgres.port),
            ),
            setting("ITRELAY__POSTGRES__QUERY_TIMEOUT_SECS", "1"),
            setting("ITRELAY__RELAY__LEASE_SECS", "2"),
        ],
    );
    insert_tickets(&env.client, "SILENT", 20).await;
    relay
        .wait_for_log("no answer to the connection's handshake within 1s", 3)
        .await;
    postgres.set(Mode::Forward);
    let outcome = env.reconcile("PF-10", 20).await;
    outcome.assert_nothing_lost();
}

/// (a) The broker's address accepts TCP and never says a word: each attempt times out
/// with a log line naming the handshake, the relay keeps trying, and once the path heals
/// the events written meanwhile flow.
#[tokio::test]
async fn broker_that_never_answers_is_retried_until_it_does() {
    let env = TestEnv::new().await;
    env.seed().await;
    let rabbitmq = rabbitmq_proxy().await;
    rabbitmq.set(Mode::Blackhole);
    let relay = Spawned::start(
        &env,
        &["run"],
        &[
            through(&rabbitmq, ""),
            setting("ITRELAY__AMQP__CONNECT_TIMEOUT_SECS", "1"),
        ],
    );
    insert_tickets(&env.client, "SILENT", 20).await;
    // Two attempts in a row, each given up on with the step named.
    relay
        .wait_for_log(
            "(TCP, TLS and AMQP handshake): no answer from the broker",
            2,
        )
        .await;
    assert_eq!(
        env.count("SELECT count(*) FROM itrelay.outbox WHERE state = 'pending'")
            .await,
        20
    );
    rabbitmq.set(Mode::Forward);
    let outcome = env.reconcile("PF-10", 20).await;
    outcome.assert_nothing_lost();
    // The attempts given up on are not left behind: once healed, one connection remains.
    wait_for_one_connection(&rabbitmq).await;
}

/// Waits until the relay's connection is the only one through `proxy`.
async fn wait_for_one_connection(proxy: &Proxy) {
    let deadline = Instant::now() + WAIT;
    while proxy.open_connections() > 1 {
        assert!(
            Instant::now() < deadline,
            "{} connections open through the proxy",
            proxy.open_connections()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// (b) A backlog is draining when the broker's connection goes silent (half-open: no
/// reset, no answer). The relay notices within its bounds, reconnects once the path
/// heals, and nothing is lost.
#[tokio::test]
async fn connection_black_holed_mid_stream_is_noticed_and_replaced() {
    let env = TestEnv::new().await;
    env.seed().await;
    let rabbitmq = rabbitmq_proxy().await;
    // Heartbeats far off: the confirm timeout has to notice on its own.
    let relay = Spawned::start(
        &env,
        &["run"],
        &[
            through(&rabbitmq, "?heartbeat=60"),
            setting("ITRELAY__AMQP__CONFIRM_TIMEOUT_SECS", "2"),
            setting("ITRELAY__AMQP__CONNECT_TIMEOUT_SECS", "1"),
            setting("ITRELAY__RELAY__BATCH_SIZE", "50"),
        ],
    );
    const BACKLOG: i64 = 5_000;
    insert_tickets(&env.client, "HALF", BACKLOG).await;
    env.wait_delivered(50, WAIT).await;
    rabbitmq.set(Mode::Blackhole);
    let pending = env
        .count("SELECT count(*) FROM itrelay.outbox WHERE state = 'pending'")
        .await;
    assert!(pending > 0, "the backlog was drained before the black hole");
    let noticed = relay
        .wait_for_log("relay interrupted; reconnecting", 1)
        .await;
    // The bound: the confirm timeout, plus the time to give up closing the connection.
    assert!(
        noticed < Duration::from_secs(2 + 1 + 5),
        "noticed only after {noticed:?}"
    );
    // Still silent: new attempts time out too.
    relay
        .wait_for_log("no answer from the broker within 1s", 1)
        .await;
    rabbitmq.set(Mode::Forward);
    let outcome = env.reconcile("PF-10", BACKLOG).await;
    outcome.assert_nothing_lost();
    // The half-open connection given up on is closed once the path heals.
    wait_for_one_connection(&rabbitmq).await;
}

/// (c) SIGTERM while the broker is black-holed and confirms are outstanding, with
/// broker timeouts far longer than the stop timeout: the process exits within the stop timeout,
/// and says why.
#[tokio::test]
async fn sigterm_during_a_black_hole_ends_within_the_stop_timeout() {
    let env = TestEnv::new().await;
    env.seed().await;
    let rabbitmq = rabbitmq_proxy().await;
    let mut relay = Spawned::start(
        &env,
        &["run"],
        &[
            through(&rabbitmq, "?heartbeat=600"),
            setting("ITRELAY__AMQP__CONFIRM_TIMEOUT_SECS", "600"),
            setting("ITRELAY__AMQP__CONNECT_TIMEOUT_SECS", "600"),
            setting("ITRELAY__RELAY__STOP_TIMEOUT_SECS", "2"),
        ],
    );
    insert_tickets(&env.client, "STOP", 10).await;
    env.wait_delivered(10, WAIT).await;
    rabbitmq.set(Mode::Blackhole);
    // Events written now are published into the black hole and never confirmed.
    insert_tickets(&env.client, "HELD", 200).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    relay.sigterm();
    let stopped = Instant::now();
    let status = tokio::time::timeout(WAIT, relay.child.wait())
        .await
        .expect("the relay exits within the test's wait")
        .expect("exit status");
    let took = stopped.elapsed();
    assert!(
        took < Duration::from_secs(2 + 5),
        "exited {took:?} after SIGTERM"
    );
    assert_eq!(status.code(), Some(1), "cut short: exit 1");
    relay.wait_for_log("stop timeout reached", 1).await;
    // What was not confirmed stays pending, for the next relay.
    let pending = env
        .count("SELECT count(*) FROM itrelay.outbox WHERE state = 'pending'")
        .await;
    assert!(pending > 0, "unconfirmed rows were marked");
}

/// The canary's own broker connection is bounded too: it gives up, says why, and retries.
#[tokio::test]
async fn canary_gives_up_on_a_broker_that_never_answers() {
    let env = TestEnv::new().await;
    let rabbitmq = rabbitmq_proxy().await;
    rabbitmq.set(Mode::Blackhole);
    let relay = Spawned::start(
        &env,
        &["run"],
        &[
            through(&rabbitmq, ""),
            setting("ITRELAY__AMQP__CONNECT_TIMEOUT_SECS", "1"),
            setting("ITRELAY__CANARY__ENABLED", "true"),
        ],
    );
    relay
        .wait_for_log("canary interrupted; reconnecting", 2)
        .await;
    let logs = relay.logs.lock().unwrap().clone();
    assert!(
        logs.iter().any(|line| line.contains("canary interrupted")
            && line.contains("(TCP, TLS and AMQP handshake): no answer from the broker")),
        "{}",
        logs.join("\n")
    );
}

/// The same silent broker at `itrelay check`: it fails within the connect timeout, naming
/// the step, instead of hanging.
#[tokio::test]
async fn check_gives_up_on_a_broker_that_never_answers() {
    let env = TestEnv::new().await;
    let rabbitmq = rabbitmq_proxy().await;
    rabbitmq.set(Mode::Blackhole);
    let relay = Spawned::start(
        &env,
        &["check"],
        &[
            through(&rabbitmq, ""),
            setting("ITRELAY__AMQP__CONNECT_TIMEOUT_SECS", "1"),
        ],
    );
    let output = tokio::time::timeout(WAIT, relay.child.wait_with_output())
        .await
        .expect("check ends")
        .expect("check output");
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("FAIL  rabbitmq")
            && stdout
                .contains("(TCP, TLS and AMQP handshake): no answer from the broker within 1s"),
        "{stdout}"
    );
}

//! Fault injection: the relay runs through a TCP proxy to each service, and each scenario
//! breaks one on purpose while events are written. Every committed event must be
//! consumed (lost = 0, unexpected = 0); duplicates are allowed and reported.
//!
//! Each scenario prints a row of the reliability table in docs/reliability.md:
//! `cargo test --test faults -- --nocapture --test-threads 1 2>/dev/null | grep -o '| [A-Za-z].* |$'`

mod common;

use std::future::Future;
use std::time::{Duration, Instant};

use common::proxy::{Mode, Proxy};
use common::*;

/// Events per scenario, written one per transaction, spread over about three seconds.
const EVENTS: usize = 300;
const PAUSE: Duration = Duration::from_millis(10);
/// How long a fault lasts.
const OUTAGE: Duration = Duration::from_secs(3);

struct Faults {
    postgres: Proxy,
    rabbitmq: Proxy,
}

/// Runs one scenario: a relay behind both proxies, `EVENTS` events written while
/// `fault` runs once a quarter of them are delivered; then reconciles and prints a row.
async fn scenario<F, Fut>(name: &str, extra: &[(&str, &str)], fault: F) -> Reconciliation
where
    F: FnOnce(Faults) -> Fut,
    Fut: Future<Output = Faults>,
{
    let mut env = TestEnv::new().await;
    env.seed().await;
    let faults = Faults {
        postgres: Proxy::start("127.0.0.1:5432".parse().unwrap()).await,
        rabbitmq: Proxy::start("127.0.0.1:5672".parse().unwrap()).await,
    };
    let pg_url = format!(
        "postgres://postgres@127.0.0.1:{}/{}",
        faults.postgres.port, env.database
    );
    let amqp_url = format!(
        "amqp://guest:guest@127.0.0.1:{}/%2f?heartbeat=1",
        faults.rabbitmq.port
    );
    let mut settings = vec![
        ("ITRELAY__POSTGRES__URL", pg_url.as_str()),
        ("ITRELAY__AMQP__URL", amqp_url.as_str()),
        ("ITRELAY__POSTGRES__QUERY_TIMEOUT_SECS", "2"),
        ("ITRELAY__AMQP__CONFIRM_TIMEOUT_SECS", "2"),
        ("ITRELAY__RELAY__RECONNECT_MAX_MS", "500"),
    ];
    settings.extend_from_slice(extra);
    env.start_relay(&settings);
    let writer = tokio::spawn(write_tickets(env.db_url.clone(), 0, EVENTS, PAUSE));
    env.wait_delivered(EVENTS as i64 / 4, WAIT).await;
    let faults = fault(faults).await;
    let recovery = recovery_time(&env).await;
    writer.await.expect("writer");
    let outcome = env.reconcile("PF-10", EVENTS as i64).await;
    println!(
        "| {name} | {} | {} | {} | {:.1} s |",
        outcome.committed,
        outcome.lost,
        outcome.duplicates,
        recovery.as_secs_f64()
    );
    outcome.assert_nothing_lost();
    drop(faults);
    outcome
}

/// Time from the end of a fault until the relay delivers again (or has nothing left).
async fn recovery_time(env: &TestEnv) -> Duration {
    let restored = Instant::now();
    let delivered_before = env.delivered().await;
    loop {
        let pending = env
            .count("SELECT count(*) FROM itrelay.outbox WHERE state = 'pending'")
            .await;
        if env.delivered().await > delivered_before || pending == 0 {
            return restored.elapsed();
        }
        assert!(
            restored.elapsed() < WAIT,
            "no delivery within {WAIT:?} of the fault's end"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn rabbitmq_connection_reset() {
    scenario("RabbitMQ connection reset", &[], |faults| async {
        faults.rabbitmq.cut();
        faults
    })
    .await;
}

#[tokio::test]
async fn rabbitmq_silent_half_open() {
    scenario(
        "RabbitMQ black-holed 3 s (half-open)",
        &[],
        |faults| async {
            faults.rabbitmq.set(Mode::Blackhole);
            tokio::time::sleep(OUTAGE).await;
            faults.rabbitmq.cut();
            faults.rabbitmq.set(Mode::Forward);
            faults
        },
    )
    .await;
}

#[tokio::test]
async fn rabbitmq_down_longer_than_backoff() {
    scenario("RabbitMQ down 3 s", &[], |faults| async {
        faults.rabbitmq.set(Mode::Refuse);
        tokio::time::sleep(OUTAGE).await;
        faults.rabbitmq.set(Mode::Forward);
        faults
    })
    .await;
}

#[tokio::test]
async fn postgres_connection_reset() {
    scenario("Postgres connection reset", &[], |faults| async {
        faults.postgres.cut();
        faults
    })
    .await;
}

#[tokio::test]
async fn postgres_silent_half_open() {
    scenario(
        "Postgres black-holed 3 s (half-open)",
        &[],
        |faults| async {
            faults.postgres.set(Mode::Blackhole);
            tokio::time::sleep(OUTAGE).await;
            faults.postgres.cut();
            faults.postgres.set(Mode::Forward);
            faults
        },
    )
    .await;
}

#[tokio::test]
async fn postgres_down_longer_than_backoff() {
    scenario("Postgres down 3 s", &[], |faults| async {
        faults.postgres.set(Mode::Refuse);
        tokio::time::sleep(OUTAGE).await;
        faults.postgres.set(Mode::Forward);
        faults
    })
    .await;
}

#[tokio::test]
async fn both_services_reset_together() {
    scenario("both connections reset", &[], |faults| async {
        faults.postgres.cut();
        faults.rabbitmq.cut();
        faults
    })
    .await;
}

#[tokio::test]
async fn broker_nacks_are_retried_until_confirmed() {
    let mut env = TestEnv::new().await;
    env.seed().await;
    // A second queue on PF-10 that holds at most 20 messages and makes the broker nack
    // publishes beyond that; a slow consumer frees room now and then.
    let small = format!("{}small", env.prefix);
    let mut arguments = lapin::types::FieldTable::default();
    arguments.insert(
        "x-max-length".into(),
        lapin::types::AMQPValue::LongLongInt(20),
    );
    arguments.insert(
        "x-overflow".into(),
        lapin::types::AMQPValue::LongString("reject-publish".into()),
    );
    env.channel
        .queue_declare(
            small.as_str().into(),
            lapin::options::QueueDeclareOptions::default(),
            arguments,
        )
        .await
        .unwrap();
    env.channel
        .queue_bind(
            small.as_str().into(),
            env.exchange("PF-10").into(),
            "#".into(),
            lapin::options::QueueBindOptions::default(),
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap();
    // Nacked copies are retried within a second, not after the production backoff.
    env.start_relay(&[
        ("ITRELAY__DELIVERY__RETRY_MIN_MS", "50"),
        ("ITRELAY__DELIVERY__RETRY_MAX_MS", "1000"),
    ]);
    let writer = tokio::spawn(write_tickets(env.db_url.clone(), 0, EVENTS, Duration::ZERO));
    let draining = env.channel.clone();
    let small_queue = small.clone();
    let slow_consumer = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let purged = draining
                .queue_purge(
                    small_queue.as_str().into(),
                    lapin::options::QueuePurgeOptions::default(),
                )
                .await;
            if purged.is_err() {
                return;
            }
        }
    });
    // Nacked copies wait in itrelay.copies until confirmed: seen there, the broker nacked.
    let copies_seen = tokio::spawn({
        let db_url = env.db_url.clone();
        async move {
            let client = connect(&db_url).await;
            let mut most = 0;
            loop {
                let waiting: i64 = client
                    .query_one("SELECT count(*) FROM itrelay.copies", &[])
                    .await
                    .map_or(0, |row| row.get(0));
                most = most.max(waiting);
                if most > 0 {
                    return most;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    writer.await.unwrap();
    let outcome = env.reconcile("PF-10", EVENTS as i64).await;
    slow_consumer.abort();
    let _ = env
        .channel
        .queue_delete(
            small.as_str().into(),
            lapin::options::QueueDeleteOptions::default(),
        )
        .await;
    let retried = tokio::time::timeout(Duration::from_secs(1), copies_seen)
        .await
        .map_or(0, |most| most.unwrap_or(0));
    println!(
        "| broker nacks (queue full, reject-publish) | {} | {} | {} | – |",
        outcome.committed, outcome.lost, outcome.duplicates
    );
    outcome.assert_nothing_lost();
    assert!(
        retried > 0,
        "the broker never nacked: the scenario tested nothing"
    );
}

#[tokio::test]
async fn one_transaction_of_100k_events() {
    let mut env = TestEnv::new().await;
    env.seed().await;
    env.start_relay(&[]);
    let total = 100_000;
    let started = Instant::now();
    insert_tickets(&env.client, "TCK", total).await;
    let outcome = env.reconcile("PF-10", total).await;
    println!(
        "| one transaction of 100k events | {} | {} | {} | {:.1} s to drain |",
        outcome.committed,
        outcome.lost,
        outcome.duplicates,
        started.elapsed().as_secs_f64()
    );
    outcome.assert_nothing_lost();
}

//! The delivery promise under attack: randomized producers (inserts and status changes of
//! a small set of tickets, late committers, rollbacks), the relay in small overlapping
//! batches, a subscriber queue that makes the broker nack (a short queue with
//! `reject-publish` and a consumer that stalls now and then), and relays killed at
//! random points while a standby takes over. A consumer checks, per ticket, that the
//! sequence number each change wrote under the row lock arrives in increasing order
//! (duplicates aside), and that no committed event is lost. It runs under both capture
//! modes: the outbox, and WAL capture on a Postgres of its own.
//!
//! `ITRELAY_CHECKER_EVENTS` sets the number of events (default 6,000), and
//! `ITRELAY_CHECKER_SEED` the random seed (printed by each run), e.g.
//! `ITRELAY_CHECKER_EVENTS=100000 cargo test --release --test ordering -- --nocapture`.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::server::LocalPostgres;
use common::*;
use futures_util::StreamExt;
use itrelay::relay::Relay;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use tokio::task::JoinHandle;
use tokio_postgres::error::SqlState;
use tokio_util::sync::CancellationToken;

const STATUSES: [&str; 4] = ["in_progress", "pending", "resolved", "open"];

/// One message as the consumer saw it.
#[derive(Debug, Clone)]
struct Arrival {
    ticket_id: String,
    seq: u64,
    message_id: String,
}

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn per_entity_order_and_nothing_lost_under_random_interleavings_and_faults() {
    checker(TestEnv::new().await).await;
}

/// The same under WAL capture (`postgres.capture = "wal"`), on a Postgres of the test's
/// own with `wal_level = logical`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn per_entity_order_and_nothing_lost_under_wal_capture() {
    let server = LocalPostgres::start(&["wal_level=logical"]).await;
    let env = TestEnv::on_server(
        &server.admin_url(),
        &[("ITRELAY__POSTGRES__CAPTURE", "wal")],
    )
    .await;
    itrelay::wal::install(&env.client, itrelay::config::Capture::Wal, WAIT)
        .await
        .expect("switch to WAL capture");
    checker(env).await;
}

/// Runs the checker on `env`: producers, faults, the consumer, the verdict.
async fn checker(mut env: TestEnv) {
    let target = setting("ITRELAY_CHECKER_EVENTS", 6_000) as usize;
    let seed = setting("ITRELAY_CHECKER_SEED", fastrand::u64(..));
    println!("checker: {target} events, seed {seed}");
    env.seed().await;
    let relay_env: Vec<(&str, &str)> = vec![
        ("ITRELAY__RELAY__BATCH_SIZE", "25"),
        ("ITRELAY__DELIVERY__RETRY_MIN_MS", "20"),
        ("ITRELAY__DELIVERY__RETRY_MAX_MS", "200"),
    ];
    // Registers the relay's exchanges for cleanup.
    env.start_relay(&relay_env);
    env.stop_relay().await;

    let (queue, arrivals, consumer) = ordered_consumer(&env).await;
    let relays = Relays::new(env.settings(&relay_env));
    relays.start();
    relays.start();

    let committed = Arc::new(AtomicUsize::new(0));
    let producers: Vec<JoinHandle<()>> = (0..6)
        .map(|n| {
            tokio::spawn(produce(
                env.db_url.clone(),
                seed.wrapping_add(n),
                target,
                committed.clone(),
            ))
        })
        .collect();
    let faults = tokio::spawn({
        let relays = relays.clone();
        let committed = committed.clone();
        async move {
            let mut rng = fastrand::Rng::with_seed(seed ^ 0x5eed);
            while committed.load(Ordering::Relaxed) < target {
                tokio::time::sleep(Duration::from_millis(rng.u64(300..1500))).await;
                relays.kill_one(&mut rng);
                relays.start();
            }
        }
    });
    let most_waiting = Arc::new(AtomicUsize::new(0));
    let sampler = tokio::spawn({
        let db_url = env.db_url.clone();
        let most_waiting = most_waiting.clone();
        async move {
            let client = connect(&db_url).await;
            loop {
                let row = client
                    .query_one("SELECT count(*) FROM itrelay.copies", &[])
                    .await
                    .unwrap();
                let waiting = row.get::<_, i64>(0) as usize;
                most_waiting.fetch_max(waiting, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    for producer in producers {
        producer.await.unwrap();
    }
    faults.await.unwrap();

    // Every committed change is in the outbox, settled: the last sequence number of each
    // ticket counts its committed changes. (Under WAL capture an event reaches the outbox
    // only once the relay has moved it there from the slot.)
    let changes = env
        .count(
            "SELECT coalesce(sum(coalesce(resolution_notes, '0')::bigint), 0)::bigint + count(*)
             FROM it_tickets",
        )
        .await;
    env.wait_until_settled_within(changes, Duration::from_secs(240))
        .await;
    let expected: HashSet<String> = env
        .client
        .query("SELECT event_id::text FROM itrelay.outbox", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(
        changes,
        expected.len() as i64,
        "events in the outbox against changes committed"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let seen: HashSet<String> = arrivals
            .lock()
            .unwrap()
            .iter()
            .map(|a| a.message_id.clone())
            .collect();
        if expected.is_subset(&seen) || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    relays.stop_all().await;
    consumer.abort();
    sampler.abort();
    let _ = env
        .channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;

    let arrivals = arrivals.lock().unwrap().clone();
    let report = check(&arrivals, &expected);
    println!(
        "checker: {} events committed, {} messages received, {} duplicates, {} lost, \
         {} out of order, {} relays killed, at most {} copies waiting at once",
        expected.len(),
        arrivals.len(),
        report.duplicates,
        report.lost,
        report.out_of_order.len(),
        relays.killed(),
        most_waiting.load(Ordering::Relaxed)
    );
    assert_eq!(report.lost, 0, "events lost");
    assert_eq!(
        env.count("SELECT count(*) FROM itrelay.outbox WHERE state = 'failed'")
            .await,
        0,
        "events dead-lettered"
    );
    assert!(
        report.out_of_order.is_empty(),
        "out of order (ticket, seq after seq): {:?}",
        &report.out_of_order[..report.out_of_order.len().min(10)]
    );
    assert!(
        relays.killed() > 0,
        "no relay was killed: the run tested no takeover"
    );
}

struct Report {
    lost: usize,
    duplicates: usize,
    out_of_order: Vec<(String, u64, u64)>,
}

/// Per ticket, the first arrival of each message must carry a higher sequence number
/// than every first arrival before it; every expected message must have arrived.
fn check(arrivals: &[Arrival], expected: &HashSet<String>) -> Report {
    let mut seen = HashSet::new();
    let mut last: HashMap<&str, u64> = HashMap::new();
    let mut out_of_order = Vec::new();
    let mut duplicates = 0;
    for arrival in arrivals {
        if !seen.insert(arrival.message_id.as_str()) {
            duplicates += 1;
            continue;
        }
        if let Some(&before) = last.get(arrival.ticket_id.as_str()) {
            if arrival.seq <= before {
                out_of_order.push((arrival.ticket_id.clone(), arrival.seq, before));
            }
        }
        last.insert(&arrival.ticket_id, arrival.seq);
    }
    let lost = expected
        .iter()
        .filter(|id| !seen.contains(id.as_str()))
        .count();
    Report {
        lost,
        duplicates,
        out_of_order,
    }
}

/// A queue on PF-10 that holds at most 30 ready messages and makes the broker nack
/// beyond that, and a consumer that records each arrival and stalls now and then.
async fn ordered_consumer(env: &TestEnv) -> (String, Arc<Mutex<Vec<Arrival>>>, JoinHandle<()>) {
    let queue = format!("{}ordered", env.prefix);
    let mut arguments = FieldTable::default();
    arguments.insert("x-max-length".into(), AMQPValue::LongLongInt(30));
    arguments.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    env.channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::default(),
            arguments,
        )
        .await
        .unwrap();
    env.channel
        .queue_bind(
            queue.as_str().into(),
            env.exchange("PF-10").into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let connection = lapin::Connection::connect(AMQP_URL, amqp_properties())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .basic_qos(20, BasicQosOptions::default())
        .await
        .unwrap();
    let mut deliveries = channel
        .basic_consume(
            queue.as_str().into(),
            "checker".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let arrivals = Arc::new(Mutex::new(Vec::new()));
    let recorded = arrivals.clone();
    let consumer = tokio::spawn(async move {
        let _connection = connection;
        let mut count = 0u64;
        while let Some(delivery) = deliveries.next().await {
            let delivery = match delivery {
                Ok(delivery) => delivery,
                Err(error) => panic!("checker consumer: {error}"),
            };
            let body: serde_json::Value =
                serde_json::from_slice(&delivery.data).unwrap_or_default();
            let seq = body["resolution_notes"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            recorded.lock().unwrap().push(Arrival {
                ticket_id: body["ticket_id"].as_str().unwrap_or_default().to_owned(),
                seq,
                message_id: delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|id| id.to_string())
                    .unwrap_or_default(),
            });
            count += 1;
            if count.is_multiple_of(400) {
                // A stall: the queue fills and the broker nacks.
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            let _ = delivery.ack(BasicAckOptions::default()).await;
        }
    });
    (queue, arrivals, consumer)
}

/// Commits random changes to a few tickets until `target` events are committed in all:
/// a new ticket, or one to three status changes, each writing the ticket's next sequence
/// number under its row lock; some transactions sleep before COMMIT, some roll back.
async fn produce(db_url: String, seed: u64, target: usize, committed: Arc<AtomicUsize>) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let client = connect(&db_url).await;
    while committed.load(Ordering::Relaxed) < target {
        let tickets: Vec<String> = client
            .query("SELECT ticket_id::text FROM it_tickets", &[])
            .await
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect();
        client.batch_execute("BEGIN").await.unwrap();
        match changes(&client, &mut rng, &tickets).await {
            Ok(events) if rng.u8(..10) != 0 => {
                client.batch_execute("COMMIT").await.unwrap();
                committed.fetch_add(events, Ordering::Relaxed);
            }
            Ok(_) => client.batch_execute("ROLLBACK").await.unwrap(),
            // Two producers changing the same tickets in another order: one gives way.
            Err(error) if error.code() == Some(&SqlState::T_R_DEADLOCK_DETECTED) => {
                client.batch_execute("ROLLBACK").await.unwrap()
            }
            Err(error) => panic!("producer: {error}"),
        }
    }
}

/// One transaction's changes: new tickets (one or several in one statement), or one to
/// three status changes, each of one ticket or of several in one statement (the
/// triggers run once per statement); returns the events they wrote. Sometimes sleeps
/// before returning: a late committer.
async fn changes(
    client: &tokio_postgres::Client,
    rng: &mut fastrand::Rng,
    tickets: &[String],
) -> Result<usize, tokio_postgres::Error> {
    let mut events = 0;
    if tickets.len() < 8 || rng.u8(..10) == 0 {
        events += client
            .execute(
                &format!(
                    "INSERT INTO it_tickets (organization_id, ticket_number, category, priority,
                         subject, description, requester_id)
                     SELECT '{ORG}', $1 || '-' || n, 'software', 'low', 'S', 'D', '{EMPLOYEE}'
                     FROM generate_series(1, $2) AS n"
                ),
                &[&format!("CHK-{}", rng.u32(..)), &rng.i32(1..=3)],
            )
            .await? as usize;
    }
    for _ in 0..rng.usize(1..=3) {
        if tickets.is_empty() {
            break;
        }
        let pool = tickets.len().min(40);
        let chosen: Vec<&String> = (0..rng.usize(1..=4))
            .map(|_| &tickets[rng.usize(..pool)])
            .collect();
        let status = STATUSES[rng.usize(..STATUSES.len())];
        let changed = client
            .execute(
                &format!(
                    "UPDATE it_tickets
                 SET status = $2, updated_by = '{ACTOR}',
                     resolution_notes = (coalesce(resolution_notes, '0')::bigint + 1)::text
                 WHERE ticket_id = ANY($1::text[]::uuid[]) AND status <> $2"
                ),
                &[&chosen, &status],
            )
            .await?;
        events += changed as usize;
    }
    if rng.u8(..3) == 0 {
        tokio::time::sleep(Duration::from_millis(rng.u64(1..40))).await;
    }
    Ok(events)
}

/// A relay running in this process: its stop signal and its task.
type Running = (CancellationToken, JoinHandle<()>);

/// Relays in this process, all on the test's settings: one leads, the others stand by.
#[derive(Clone)]
struct Relays {
    settings: itrelay::config::Settings,
    running: Arc<Mutex<Vec<Running>>>,
    killed: Arc<AtomicUsize>,
}

impl Relays {
    fn new(settings: itrelay::config::Settings) -> Self {
        Self {
            settings,
            running: Arc::default(),
            killed: Arc::default(),
        }
    }

    fn start(&self) {
        let relay = Relay::new(self.settings.clone()).unwrap();
        let token = CancellationToken::new();
        let stop = token.clone();
        let handle = tokio::spawn(async move {
            if let Err(error) = relay.run(stop).await {
                panic!("the relay stopped: {error}");
            }
        });
        self.running.lock().unwrap().push((token, handle));
    }

    /// Kills a random relay at whatever point it is: no shutdown, connections dropped.
    fn kill_one(&self, rng: &mut fastrand::Rng) {
        let mut running = self.running.lock().unwrap();
        if running.is_empty() {
            return;
        }
        let victim = rng.usize(..running.len());
        let (_, handle) = running.remove(victim);
        handle.abort();
        self.killed.fetch_add(1, Ordering::Relaxed);
    }

    fn killed(&self) -> usize {
        self.killed.load(Ordering::Relaxed)
    }

    async fn stop_all(&self) {
        let running: Vec<_> = self.running.lock().unwrap().drain(..).collect();
        for (token, handle) in running {
            token.cancel();
            let _ = tokio::time::timeout(WAIT, handle).await;
        }
    }
}

/// Two transactions writing events of one asset through a table other than the asset's
/// (assignments): the second takes its event's id only once the first has ended, so ids
/// follow commit order for the entity. Events of another asset do not wait.
#[tokio::test]
async fn events_of_one_entity_take_their_ids_in_commit_order() {
    let env = TestEnv::new().await;
    env.seed().await;
    let other_asset = "66666666-6666-4666-8666-666666666666";
    env.execute(&format!(
        "INSERT INTO it_assets (asset_id, organization_id, asset_tag, asset_name, asset_type)
             VALUES ('{other_asset}', '{ORG}', 'LT-0043', 'ThinkPad X1', 'laptop')"
    ))
    .await;
    let assign = |asset: &str| {
        format!(
            "INSERT INTO it_asset_assignments (organization_id, asset_id, employee_id, assignment_date, assigned_by)
                 VALUES ('{ORG}', '{asset}', '{EMPLOYEE}', '2026-03-01', '{ACTOR}')"
        )
    };
    let first = connect(&env.db_url).await;
    let second = connect(&env.db_url).await;
    first
        .batch_execute(&format!("BEGIN; {}", assign(ASSET)))
        .await
        .unwrap();
    second
        .batch_execute("BEGIN; SET LOCAL lock_timeout = '300ms'")
        .await
        .unwrap();
    second
        .batch_execute(&assign(other_asset))
        .await
        .expect("another asset's event does not wait");
    let blocked = second.batch_execute(&assign(ASSET)).await.unwrap_err();
    assert_eq!(
        blocked.code(),
        Some(&SqlState::LOCK_NOT_AVAILABLE),
        "the second event of the asset took an id while the first was uncommitted"
    );
    second.batch_execute("ROLLBACK").await.unwrap();
    first.batch_execute("COMMIT").await.unwrap();
    second.batch_execute(&assign(ASSET)).await.unwrap();
    let entities: Vec<String> = env
        .client
        .query("SELECT entity FROM itrelay.outbox ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(
        entities,
        [format!("asset_id:{ASSET}"), format!("asset_id:{ASSET}")]
    );
}

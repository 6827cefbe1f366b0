//! The comparison with a peer relay: the same business work (tickets inserted, each one
//! `it_ticket_created` event on a durable queue) through itrelay and through the peer,
//! measured alike: end to end in transactions of 500, the burst after one large
//! transaction, latency at a fixed rate, and what each costs the business writes.
//!
//! The peer is subzerocloud/pg-amqp-bridge (LISTEN/NOTIFY → AMQP, no outbox, no
//! confirms), given as a binary by `ITRELAY_BENCH_PEER`; a notify trigger on `it_tickets`
//! sends it the same JSON as itrelay's trigger captures, and it publishes persistent
//! messages (`DELIVERY_MODE=PERSISTENT`) to a topic exchange bound to a durable queue.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::StreamExt;
use lapin::options::BasicConsumeOptions;
use lapin::types::FieldTable;
use lapin::Connection;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::env::{amqp_properties, BenchEnv, AMQP_URL};
use crate::load::TicketWriter;
use crate::pgbench::{self, DbCost};
use crate::stats::Percentiles;
use crate::watch::{Usage, Watched};
use crate::Sizes;

/// Which relay a [`Subject`] is: what only one of them has (an outbox) depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Itrelay,
    Peer,
}

/// A relay the comparison runs: how to start it, how its Postgres sessions are named,
/// where its messages land and which trigger captures the business writes for it.
pub struct Subject {
    pub name: &'static str,
    pub kind: Kind,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    application_name: &'static str,
    /// The durable queue its messages reach.
    pub queue: String,
    /// Turns its capture on: its triggers on `it_tickets`, and no other.
    capture_on: String,
}

/// The peer's trigger and function on `it_tickets`, and its notification channel.
const PEER_TRIGGER: &str = "itrelay_bench_peer_notify";
const PEER_CHANNEL: &str = "itrelay_bench_peer";
/// `application_name` of the peer's sessions, set in its connection URI.
const PEER_APPLICATION: &str = "pg-amqp-bridge";
const NO_CAPTURE: &str = "ALTER TABLE it_tickets DISABLE TRIGGER USER";

impl Subject {
    /// itrelay as the run configures it (its settings overlay included).
    pub fn itrelay(env: &BenchEnv) -> Self {
        Self {
            name: "itrelay",
            kind: Kind::Itrelay,
            program: PathBuf::from(env!("CARGO_BIN_EXE_itrelay")),
            args: vec!["run".to_owned()],
            env: env.relay_env(AMQP_URL),
            application_name: "itrelay",
            queue: env.consumer_queue(),
            capture_on: "ALTER TABLE it_tickets ENABLE TRIGGER USER".to_owned(),
        }
    }

    /// The peer built at `binary`: declares its exchange and queue and installs its
    /// notify trigger, off until a phase turns it on. [`Subject::remove_peer`] undoes it.
    pub async fn peer(env: &BenchEnv, binary: PathBuf) -> Result<Self> {
        if !binary.is_file() {
            bail!(
                "ITRELAY_BENCH_PEER: {} is not a file (a pg-amqp-bridge binary)",
                binary.display()
            );
        }
        let exchange = format!("{}peer", env.prefix);
        let queue = format!("{}peer.bench", env.prefix);
        env.durable_queue(&exchange, &queue).await?;
        env.client
            .batch_execute(&peer_trigger_sql())
            .await
            .context("install the peer's notify trigger")?;
        let mut uri = url::Url::parse(&env.db_url)?;
        uri.query_pairs_mut()
            .append_pair("application_name", PEER_APPLICATION);
        let vars = [
            ("POSTGRESQL_URI", uri.to_string()),
            ("AMQP_URI", AMQP_URL.to_owned()),
            ("BRIDGE_CHANNELS", format!("{PEER_CHANNEL}:{exchange}")),
            ("DELIVERY_MODE", "PERSISTENT".to_owned()),
            ("RUST_LOG", "error".to_owned()),
        ];
        Ok(Self {
            name: "pg-amqp-bridge",
            kind: Kind::Peer,
            program: binary,
            args: Vec::new(),
            env: vars.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            application_name: PEER_APPLICATION,
            queue,
            capture_on: format!(
                "{NO_CAPTURE}; ALTER TABLE it_tickets ENABLE TRIGGER {PEER_TRIGGER}"
            ),
        })
    }

    /// Drops the peer's trigger and turns itrelay's back on.
    pub async fn remove_peer(env: &BenchEnv) -> Result<()> {
        env.client
            .batch_execute(&format!(
                "DROP TRIGGER IF EXISTS {PEER_TRIGGER} ON it_tickets;
                 DROP FUNCTION IF EXISTS {PEER_TRIGGER}();
                 ALTER TABLE it_tickets ENABLE TRIGGER USER"
            ))
            .await?;
        Ok(())
    }

    pub fn start(&self, phase: &str) -> Result<Watched> {
        Watched::spawn(
            &self.program,
            &self.args,
            &self.env,
            &format!("{}-bench-{phase}", self.name),
            self.application_name,
        )
    }

    /// This subject's capture on (every other trigger off), or no trigger at all.
    pub async fn capture(&self, env: &BenchEnv, on: bool) -> Result<()> {
        let sql = if on { &self.capture_on } else { NO_CAPTURE };
        env.client.batch_execute(sql).await?;
        Ok(())
    }

    /// Writes a probe ticket every half second until one reaches the queue (the peer
    /// loses what is notified before it listens), then empties the queue.
    pub async fn wait_ready(&self, env: &BenchEnv, watched: &mut Watched) -> Result<()> {
        let writer = TicketWriter::connect(&env.db_url).await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut probe = 0;
        while Instant::now() < deadline {
            watched.relay.ensure_running()?;
            writer.write(&format!("{READY}{probe}"), 1).await?;
            probe += 1;
            let next = Instant::now() + Duration::from_millis(500);
            while Instant::now() < next {
                if env.queue_depth(&self.queue).await? > 0 {
                    env.purge(&self.queue).await?;
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        bail!(
            "{} delivered none of {probe} probe tickets within 60 s",
            self.name
        )
    }
}

/// Ticket numbers of readiness probes, which the consumers ignore.
const READY: &str = "READY";

/// The body of itrelay's `it_ticket_created` trigger, as the catalog holds it.
const TICKET_CREATED_BODY: &str = include_str!("../../catalog/it_ticket_created.sql");

/// The same JSON as itrelay's `it_ticket_created` trigger captures (built from that
/// trigger's own body, so the two cannot drift apart), notified to the peer as
/// `routing_key|body`.
fn peer_trigger_sql() -> String {
    let record = "events := events || ROW('it_ticket_created', ";
    let record_end = ")))::itrelay.new_event;\nEND;";
    assert!(
        TICKET_CREATED_BODY.contains(record)
            && TICKET_CREATED_BODY.trim_end().ends_with(record_end),
        "catalog/it_ticket_created.sql no longer records its event as the peer's trigger expects"
    );
    let body = TICKET_CREATED_BODY
        .replace(
            record,
            &format!("PERFORM pg_notify('{PEER_CHANNEL}', 'it_ticket_created|' || "),
        )
        .replace(record_end, "))::text);\n    RETURN NULL;\nEND;");
    format!(
        "CREATE FUNCTION {PEER_TRIGGER}() RETURNS trigger LANGUAGE plpgsql AS $$
         {body}
         $$;
         CREATE TRIGGER {PEER_TRIGGER} AFTER INSERT ON it_tickets
             FOR EACH ROW EXECUTE FUNCTION {PEER_TRIGGER}();
         ALTER TABLE it_tickets DISABLE TRIGGER {PEER_TRIGGER};"
    )
}

/// One subject's side of the comparison.
#[derive(Debug, Serialize)]
pub struct Side {
    pub subject: &'static str,
    /// Mean body of the messages it published, in bytes (end-to-end phase).
    pub body_bytes: f64,
    pub end_to_end: Flow,
    pub burst: Flow,
    pub latency: Latency,
    pub db_cost: DbCost,
}

/// Every comparison phase for `subject`; `step` announces each.
pub async fn side(
    env: &BenchEnv,
    sizes: &Sizes,
    subject: &Subject,
    step: &(dyn Fn(&str) + Sync),
) -> Result<Side> {
    step(&format!(
        "{}: end to end, {} events in transactions of {}",
        subject.name, sizes.flow_events, sizes.flow_rows_per_tx
    ));
    let (end_to_end, body_bytes) = flow(env, sizes, subject, sizes.flow_rows_per_tx).await?;
    step(&format!(
        "{}: burst after one {}-row transaction",
        subject.name, sizes.flow_events
    ));
    let (burst, _) = flow(env, sizes, subject, sizes.flow_events).await?;
    step(&format!("{}: latency", subject.name));
    let latency = latency(env, sizes, subject).await?;
    step(&format!("{}: business writes (pgbench)", subject.name));
    // Leaves the subject's capture on.
    let db_cost = pgbench::measure(env, sizes, subject).await?;
    Ok(Side {
        subject: subject.name,
        body_bytes,
        end_to_end,
        burst,
        latency,
        db_cost,
    })
}

/// `events` tickets through a running relay.
#[derive(Debug, Serialize)]
pub struct Flow {
    pub events: usize,
    pub rows_per_tx: usize,
    /// From the first commit's return to the last commit's return.
    pub commit_seconds: f64,
    /// From the first commit's return to the last message's arrival.
    pub seconds: f64,
    /// Messages that arrived (missing ones were waited for up to the catch-up limit).
    pub received: usize,
    /// `received` over `seconds`.
    pub events_per_s: f64,
    /// From opening the window before the first write until everything arrived.
    pub usage: Usage,
}

/// Commits `sizes.flow_events` tickets in transactions of `rows_per_tx`, one after the
/// other on one connection, while `subject` runs; a consumer on its queue records the
/// arrivals. Returns the flow and the mean body size.
async fn flow(
    env: &BenchEnv,
    sizes: &Sizes,
    subject: &Subject,
    rows_per_tx: usize,
) -> Result<(Flow, f64)> {
    let events = sizes.flow_events;
    let tag = format!("FLOW{rows_per_tx}x");
    env.reset_tables().await?;
    subject.capture(env, true).await?;
    let mut watched = subject.start(&format!("flow-{rows_per_tx}"))?;
    subject.wait_ready(env, &mut watched).await?;
    let consumer = Consumer::start(&subject.queue).await?;
    let writer = TicketWriter::connect(&env.db_url).await?;
    let window = watched.open(&env.client).await?;
    let mut first_commit = None;
    let mut written = 0;
    while written < events {
        let rows = rows_per_tx.min(events - written);
        writer
            .write(&format!("{tag}{written}"), rows as i32)
            .await?;
        first_commit.get_or_insert_with(Instant::now);
        written += rows;
    }
    let last_commit = Instant::now();
    let first_commit = first_commit.context("no events to write")?;
    let arrivals = consumer.wait_for(events, sizes.catch_up_limit).await;
    let usage = watched.close(window, &env.client).await?;
    watched.stop().await?;
    env.purge(&subject.queue).await?;
    let last = arrivals.at.values().max().copied().unwrap_or(first_commit);
    let seconds = last.saturating_duration_since(first_commit).as_secs_f64();
    let received = arrivals.at.len();
    Ok((
        Flow {
            events,
            rows_per_tx,
            commit_seconds: last_commit.duration_since(first_commit).as_secs_f64(),
            seconds,
            received,
            events_per_s: received as f64 / seconds.max(1e-9),
            usage,
        },
        arrivals.mean_body_bytes,
    ))
}

#[derive(Debug, Serialize)]
pub struct Latency {
    pub target_per_s: f64,
    pub achieved_per_s: f64,
    pub sent: usize,
    /// Samples after the warm-up that were measured.
    pub measured: usize,
    pub missing: usize,
    /// Commit returned to the producer → consumer received the message (milliseconds).
    pub millis: Percentiles,
    pub usage: Usage,
}

/// Producers commit single-ticket transactions at a fixed total rate; a consumer on the
/// subject's queue records when each arrives.
async fn latency(env: &BenchEnv, sizes: &Sizes, subject: &Subject) -> Result<Latency> {
    env.reset_tables().await?;
    subject.capture(env, true).await?;
    let mut watched = subject.start("latency")?;
    subject.wait_ready(env, &mut watched).await?;
    let consumer = Consumer::start(&subject.queue).await?;
    let window = watched.open(&env.client).await?;
    let count = (sizes.latency_rate * sizes.latency.as_secs_f64()) as usize;
    let start = tokio::time::Instant::now();
    let committed = paced_commits(&env.db_url, sizes, count, start).await?;
    let achieved_per_s = count as f64 / start.elapsed().as_secs_f64();
    let arrived = consumer.wait_for(count, Duration::from_secs(30)).await.at;
    let usage = watched.close(window, &env.client).await?;
    watched.stop().await?;
    let warmup = (sizes.latency_rate * sizes.latency_warmup.as_secs_f64()) as usize;
    let mut millis = Vec::with_capacity(count);
    let mut missing = 0;
    for (i, commit) in committed.iter().enumerate().skip(warmup) {
        let Some(commit) = commit else {
            missing += 1;
            continue;
        };
        match arrived.get(&format!("LAT{i}-1")) {
            Some(received) if received >= commit => {
                millis.push(received.duration_since(*commit).as_secs_f64() * 1e3)
            }
            Some(received) => millis.push(-commit.duration_since(*received).as_secs_f64() * 1e3),
            None => missing += 1,
        }
    }
    env.purge(&subject.queue).await?;
    Ok(Latency {
        target_per_s: sizes.latency_rate,
        achieved_per_s,
        sent: count,
        measured: millis.len(),
        missing,
        millis: Percentiles::of(millis),
        usage,
    })
}

/// Commits ticket `LAT<i>` at `start + i / rate`, the ticks spread round-robin over
/// `sizes.producers` connections so that one slow commit does not hold up the next;
/// returns when each commit returned.
async fn paced_commits(
    db_url: &str,
    sizes: &Sizes,
    count: usize,
    start: tokio::time::Instant,
) -> Result<Vec<Option<Instant>>> {
    let interval = Duration::from_secs_f64(1.0 / sizes.latency_rate);
    let mut tasks = Vec::with_capacity(sizes.producers);
    for first in 0..sizes.producers {
        let writer = TicketWriter::connect(db_url).await?;
        let step = sizes.producers;
        tasks.push(tokio::spawn(async move {
            let mut committed = Vec::with_capacity(count / step + 1);
            for i in (first..count).step_by(step) {
                tokio::time::sleep_until(start + interval.mul_f64(i as f64)).await;
                writer.write(&format!("LAT{i}"), 1).await?;
                committed.push((i, Instant::now()));
            }
            anyhow::Ok(committed)
        }));
    }
    let mut all = vec![None; count];
    for task in tasks {
        for (i, at) in task.await?? {
            all[i] = Some(at);
        }
    }
    Ok(all)
}

/// What a consumer saw: when each ticket number arrived, and the mean body size.
struct Arrivals {
    at: HashMap<String, Instant>,
    mean_body_bytes: f64,
}

#[derive(Default)]
struct Seen {
    at: HashMap<String, Instant>,
    body_bytes: usize,
}

/// A consumer recording when each ticket number arrived (readiness probes aside).
struct Consumer {
    seen: Arc<Mutex<Seen>>,
    stop: CancellationToken,
    _amqp: Connection,
}

impl Consumer {
    async fn start(queue: &str) -> Result<Self> {
        let amqp = Connection::connect(AMQP_URL, amqp_properties()).await?;
        let channel = amqp.create_channel().await?;
        let no_ack = BasicConsumeOptions {
            no_ack: true,
            ..BasicConsumeOptions::default()
        };
        let mut deliveries = channel
            .basic_consume(
                queue.into(),
                "itrelay-bench".into(),
                no_ack,
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("consume {queue}"))?;
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = CancellationToken::new();
        let (record, stopped) = (seen.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let delivery = tokio::select! {
                    _ = stopped.cancelled() => return,
                    delivery = deliveries.next() => delivery,
                };
                let Some(Ok(delivery)) = delivery else { return };
                let at = Instant::now();
                let body: serde_json::Value =
                    serde_json::from_slice(&delivery.data).unwrap_or_default();
                let Some(number) = body["ticket_number"].as_str() else {
                    continue;
                };
                if number.starts_with(READY) {
                    continue;
                }
                if let Ok(mut seen) = record.lock() {
                    seen.at.insert(number.to_owned(), at);
                    seen.body_bytes += delivery.data.len();
                }
            }
        });
        Ok(Self {
            seen,
            stop,
            _amqp: amqp,
        })
    }

    fn count(&self) -> usize {
        self.seen.lock().map(|seen| seen.at.len()).unwrap_or(0)
    }

    /// Waits until `count` tickets arrived or `limit` passed.
    async fn wait_for(self, count: usize, limit: Duration) -> Arrivals {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline && self.count() < count {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.stop.cancel();
        let seen = self
            .seen
            .lock()
            .map(|mut seen| std::mem::take(&mut *seen))
            .unwrap_or_default();
        Arrivals {
            mean_body_bytes: seen.body_bytes as f64 / seen.at.len().max(1) as f64,
            at: seen.at,
        }
    }
}

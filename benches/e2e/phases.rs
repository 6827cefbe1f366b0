//! The measured phases that run the relay: draining a backlog, keeping up with producers
//! at full speed, latency at a fixed rate, and memory while the broker is unreachable.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::Connection;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::env::{amqp_properties, BenchEnv, AMQP_ADDR, AMQP_URL};
use crate::load::{self, Produced, TicketWriter};
use crate::proxy::{Mode, Proxy};
use crate::stats::Percentiles;
use crate::watch::{Usage, Watched};
use crate::Sizes;

#[derive(Debug, Serialize)]
pub struct Drain {
    pub events: usize,
    pub delivered: i64,
    pub failed: i64,
    /// From starting the relay process until nothing is pending.
    pub wall_seconds: f64,
    /// Events delivered over `wall_seconds`.
    pub events_per_s: f64,
    pub usage: Usage,
    pub storage: Storage,
}

/// What the events cost the database's storage: WAL per event (the whole cluster's, so
/// other sessions' writes count too) and the relay's tables after the drain.
#[derive(Debug, Serialize)]
pub struct Storage {
    /// WAL written by the business transactions that wrote the events, per event.
    pub write_wal_bytes_per_event: f64,
    /// WAL written while the relay drained them, per event.
    pub relay_wal_bytes_per_event: f64,
    /// Heap (main fork) of every table in schema itrelay, partitions included.
    pub heap_bytes: i64,
    pub live_rows: i64,
    pub dead_rows: i64,
}

/// The current WAL position, in bytes.
async fn wal_position(client: &tokio_postgres::Client) -> Result<f64> {
    Ok(client
        .query_one("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::float8", &[])
        .await?
        .get(0))
}

/// Heap bytes, live and dead rows of the tables in schema itrelay.
async fn itrelay_tables(client: &tokio_postgres::Client) -> Result<(i64, i64, i64)> {
    client
        .batch_execute("SELECT pg_stat_clear_snapshot()")
        .await?;
    let row = client
        .query_one(
            "SELECT coalesce(sum(pg_relation_size(c.oid)), 0)::bigint,
                    coalesce(sum(s.n_live_tup), 0)::bigint, coalesce(sum(s.n_dead_tup), 0)::bigint
             FROM pg_class AS c LEFT JOIN pg_stat_user_tables AS s ON s.relid = c.oid
             WHERE c.relnamespace = 'itrelay'::regnamespace AND c.relkind = 'r'",
            &[],
        )
        .await?;
    Ok((row.get(0), row.get(1), row.get(2)))
}

/// 100k (or `sizes.drain_events`) events written with the relay stopped, then drained.
pub async fn drain(env: &BenchEnv, sizes: &Sizes) -> Result<Drain> {
    env.reset_tables().await?;
    let before_write = wal_position(&env.client).await?;
    load::pre_write(&env.db_url, sizes.drain_events).await?;
    let written = wal_position(&env.client).await? - before_write;
    env.quiesce().await?;
    let before_drain = wal_position(&env.client).await?;
    let mut watched = Watched::start(&env.relay_env(AMQP_URL), "itrelay-bench-drain")?;
    let window = watched.open(&env.client).await?;
    let wall_seconds = watched
        .wait_drained(&env.client, Duration::from_secs(900))
        .await?
        .as_secs_f64();
    let usage = watched.close(window, &env.client).await?;
    watched.stop().await?;
    let drained = wal_position(&env.client).await? - before_drain;
    let (heap_bytes, live_rows, dead_rows) = itrelay_tables(&env.client).await?;
    let (_, delivered, failed) = load::outbox_states(&env.client).await?;
    env.purge(&env.consumer_queue()).await?;
    let events = sizes.drain_events as f64;
    Ok(Drain {
        events: sizes.drain_events,
        delivered,
        failed,
        wall_seconds,
        events_per_s: delivered as f64 / wall_seconds,
        usage,
        storage: Storage {
            write_wal_bytes_per_event: written / events,
            relay_wal_bytes_per_event: drained / events,
            heap_bytes,
            live_rows,
            dead_rows,
        },
    })
}

#[derive(Debug, Serialize)]
pub struct KeepUp {
    pub produced: Produced,
    /// Events the relay delivered per second while the producers ran.
    pub delivered_per_s: f64,
    /// Age of the oldest pending event, sampled every 100 ms (seconds).
    pub backlog_age: Percentiles,
    pub pending_at_end: i64,
    /// From the producers' stop until nothing was pending (None: not within the limit).
    pub catch_up_seconds: Option<f64>,
    pub usage: Usage,
}

/// Producers commit `rows_per_tx`-row transactions as fast as they can while the relay runs.
pub async fn keep_up(env: &BenchEnv, sizes: &Sizes, rows_per_tx: i32) -> Result<KeepUp> {
    env.reset_tables().await?;
    let mut watched = Watched::start(
        &env.relay_env(AMQP_URL),
        &format!("itrelay-bench-keepup-{rows_per_tx}"),
    )?;
    let writer = TicketWriter::connect(&env.db_url).await?;
    watched.wait_ready(&env.client, &writer).await?;
    let (_, delivered_before, _) = load::outbox_states(&env.client).await?;
    let window = watched.open(&env.client).await?;
    let stop = CancellationToken::new();
    let ages =
        load::sample_backlog_age(&env.db_url, Duration::from_millis(100), stop.clone()).await?;
    let produced = load::produce(
        &env.db_url,
        sizes.producers,
        rows_per_tx,
        sizes.keep_up,
        &format!("K{rows_per_tx}x"),
    )
    .await?;
    stop.cancel();
    let ages = ages.await??;
    let (pending_at_end, delivered_after, _) = load::outbox_states(&env.client).await?;
    let catch_up_seconds = watched
        .wait_drained(&env.client, sizes.catch_up_limit)
        .await
        .map(|waited| waited.as_secs_f64())
        .ok();
    let usage = watched.close(window, &env.client).await?;
    watched.stop().await?;
    env.purge(&env.consumer_queue()).await?;
    Ok(KeepUp {
        produced,
        delivered_per_s: (delivered_after - delivered_before) as f64 / produced.seconds,
        backlog_age: Percentiles::of(ages),
        pending_at_end,
        catch_up_seconds,
        usage,
    })
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
/// ticket exchange's queue records when each arrives.
pub async fn latency(env: &BenchEnv, sizes: &Sizes) -> Result<Latency> {
    env.reset_tables().await?;
    let mut watched = Watched::start(&env.relay_env(AMQP_URL), "itrelay-bench-latency")?;
    let writer = TicketWriter::connect(&env.db_url).await?;
    watched.wait_ready(&env.client, &writer).await?;
    env.purge(&env.consumer_queue()).await?;
    let consumer = Consumer::start(&env.consumer_queue()).await?;
    let window = watched.open(&env.client).await?;
    let count = (sizes.latency_rate * sizes.latency.as_secs_f64()) as usize;
    let start = tokio::time::Instant::now();
    let committed = paced_commits(&env.db_url, sizes, count, start).await?;
    let achieved_per_s = count as f64 / start.elapsed().as_secs_f64();
    let arrived = consumer.wait_for(count, Duration::from_secs(30)).await;
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
    env.purge(&env.consumer_queue()).await?;
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

/// A consumer recording when each ticket number arrived.
struct Consumer {
    arrived: Arc<Mutex<HashMap<String, Instant>>>,
    stop: CancellationToken,
    _amqp: Connection,
}

impl Consumer {
    async fn start(queue: &str) -> Result<Self> {
        let amqp = Connection::connect(AMQP_URL, amqp_properties()).await?;
        let channel = amqp.create_channel().await?;
        channel.basic_qos(1_000, BasicQosOptions::default()).await?;
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
            .context("consume the ticket queue")?;
        let arrived = Arc::new(Mutex::new(HashMap::new()));
        let stop = CancellationToken::new();
        let (record, stopped) = (arrived.clone(), stop.clone());
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
                if let Some(number) = body["ticket_number"].as_str() {
                    if let Ok(mut arrived) = record.lock() {
                        arrived.insert(number.to_owned(), at);
                    }
                }
            }
        });
        Ok(Self {
            arrived,
            stop,
            _amqp: amqp,
        })
    }

    /// Waits until `count` messages (besides the readiness probe) arrived or `limit`
    /// passed; returns the arrival times.
    async fn wait_for(self, count: usize, limit: Duration) -> HashMap<String, Instant> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.arrived.lock().map(|a| a.len()).unwrap_or(0) >= count {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.stop.cancel();
        let arrived = self.arrived.lock().map(|a| a.clone()).unwrap_or_default();
        arrived
    }
}

#[derive(Debug, Serialize)]
pub struct Outage {
    pub seconds: f64,
    /// Events committed while the broker was unreachable.
    pub events_written: u64,
    /// RSS just before the cut (KiB).
    pub rss_before_kib: u64,
    /// RSS sampled every 100 ms while cut.
    pub usage: Usage,
    /// From restoring the broker until the backlog was delivered.
    pub recovery_seconds: Option<f64>,
}

/// The relay talks to RabbitMQ through a proxy; the proxy is cut while producers keep
/// writing, and the relay's memory is sampled; then the broker comes back.
pub async fn outage(env: &BenchEnv, sizes: &Sizes) -> Result<Outage> {
    env.reset_tables().await?;
    let proxy = Proxy::start(AMQP_ADDR.parse()?).await;
    let via_proxy = format!("amqp://guest:guest@127.0.0.1:{}/%2f", proxy.port);
    let mut watched = Watched::start(&env.relay_env(&via_proxy), "itrelay-bench-outage")?;
    let writer = TicketWriter::connect(&env.db_url).await?;
    watched.wait_ready(&env.client, &writer).await?;
    let rss_before_kib = crate::process::memory(watched.relay.pid())?.rss_kib;
    proxy.set(Mode::Refuse);
    let window = watched.open(&env.client).await?;
    let produced = load::produce(&env.db_url, sizes.producers, 1, sizes.outage, "OUT").await?;
    let usage = watched.close(window, &env.client).await?;
    proxy.set(Mode::Forward);
    let recovery_seconds = watched
        .wait_drained(&env.client, sizes.catch_up_limit)
        .await
        .map(|waited| waited.as_secs_f64())
        .ok();
    watched.stop().await?;
    env.purge(&env.consumer_queue()).await?;
    Ok(Outage {
        seconds: produced.seconds,
        events_written: produced.events,
        rss_before_kib,
        usage,
        recovery_seconds,
    })
}

//! The measured phases that run the relay: draining a backlog, keeping up with producers
//! at full speed, memory while the broker is unreachable, and the phases it shares with
//! the peer ([`crate::compare`]); all with the run's [`crate::env::RelaySetup`].

use std::time::Duration;

use anyhow::Result;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::compare::{self, Side, Subject};
use crate::env::{BenchEnv, AMQP_ADDR, AMQP_URL};
use crate::load::{self, Produced, TicketWriter};
use crate::proxy::{Mode, Proxy};
use crate::stats::Percentiles;
use crate::watch::{Usage, Watched};
use crate::Sizes;

/// Everything measured of itrelay with one setup (server and settings).
#[derive(Debug, Serialize)]
pub struct RelayRun {
    /// `section.key=value` settings besides the relay's defaults.
    pub settings: Vec<String>,
    pub drain: Drain,
    pub keep_up_1_row: KeepUp,
    pub keep_up_100_rows: KeepUp,
    /// The phases run alike for the peer.
    pub compared: Side,
    pub outage: Outage,
}

/// Installs itrelay in the run's database and runs every relay phase; `step` announces
/// each.
pub async fn relay_run(
    env: &BenchEnv,
    sizes: &Sizes,
    step: &(dyn Fn(&str) + Sync),
) -> Result<RelayRun> {
    env.cli(&["install"]).await?;
    step("drain");
    let drain = drain(env, sizes).await?;
    step("keep up, 1-row transactions");
    let keep_up_1_row = keep_up(env, sizes, 1).await?;
    step("keep up, 100-row transactions");
    let keep_up_100_rows = keep_up(env, sizes, 100).await?;
    let compared = compare::side(env, sizes, &Subject::itrelay(env), step).await?;
    step("broker unreachable");
    let outage = outage(env, sizes).await?;
    Ok(RelayRun {
        settings: env
            .setup
            .settings
            .iter()
            .map(|(key, value)| format!("{key}={value}"))
            .collect(),
        drain,
        keep_up_1_row,
        keep_up_100_rows,
        compared,
        outage,
    })
}

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

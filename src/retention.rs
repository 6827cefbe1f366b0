//! Retention and partitions: every `retention.interval_secs` the relay creates the
//! partitions of `itrelay.events` the next ids need, and removes whole partitions whose
//! events are all delivered and older than `retention.delivered_max_age_hours`
//! (`itrelay.extend_partitions`, `itrelay.retire_partitions` in sql/install.sql): their
//! space is freed at once, with no dead rows, so the outbox stays small whether or not
//! autovacuum runs. A partition holding a failed event, a held one or a copy for one
//! module is kept, for inspection and replay.

use std::time::Duration;

use tokio::time::Instant;

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::config::Settings;
use crate::listen::PgSession;

/// How many spans of ids ahead of the next id partitions are created.
const PARTITIONS_AHEAD: i32 = 2;
/// How often partitions are extended: often enough that, at tens of thousands of events
/// a second, the next ids have their partition (those that do not land in the default
/// partition, and are removed with it).
const EXTEND_EVERY: Duration = Duration::from_secs(10);

/// Creates the partitions the next ids need; returns how many it created.
pub async fn extend(client: &tokio_postgres::Client) -> Result<i32, tokio_postgres::Error> {
    client
        .query_one("SELECT itrelay.extend_partitions($1)", &[&PARTITIONS_AHEAD])
        .await?
        .try_get(0)
}

/// Removes up to `max_partitions` partitions whose events are all delivered and older
/// than `max_age_hours`; returns how many events went.
pub async fn prune(
    client: &tokio_postgres::Client,
    max_age_hours: u32,
    max_partitions: u32,
) -> Result<u64, tokio_postgres::Error> {
    let removed: i64 = client
        .query_one(
            "SELECT itrelay.retire_partitions(make_interval(hours => $1), $2)",
            &[
                &i32::try_from(max_age_hours).unwrap_or(i32::MAX),
                &i32::try_from(max_partitions).unwrap_or(i32::MAX),
            ],
        )
        .await?
        .try_get(0)?;
    Ok(removed.unsigned_abs())
}

/// Extends the partitions every [`EXTEND_EVERY`] and, if retention is enabled, prunes
/// every `retention.interval_secs`, until `shutdown`, reconnecting on errors.
pub async fn run(settings: Settings, shutdown: CancellationToken) {
    let retention = &settings.retention;
    let interval = Duration::from_secs(retention.interval_secs);
    let mut backoff = Backoff::new(
        Duration::from_millis(settings.relay.reconnect_min_ms),
        Duration::from_millis(settings.relay.reconnect_max_ms),
    );
    loop {
        let pass = async {
            let pg = PgSession::connect(&settings.postgres).await?;
            let mut pruned_at: Option<Instant> = None;
            loop {
                let created = extend(&pg.client).await?;
                if created > 0 {
                    info!(partitions = created, "retention: created outbox partitions");
                }
                let due = retention.enabled && pruned_at.is_none_or(|at| at.elapsed() >= interval);
                if !due {
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok::<_, anyhow::Error>(()),
                        _ = tokio::time::sleep(EXTEND_EVERY.min(interval)) => {}
                    }
                    continue;
                }
                pruned_at = Some(Instant::now());
                let removed = prune(
                    &pg.client,
                    retention.delivered_max_age_hours,
                    retention.batch_size,
                )
                .await?;
                if removed > 0 {
                    info!(rows = removed, "retention: removed old delivered events");
                } else {
                    debug!("retention: nothing to remove");
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok::<_, anyhow::Error>(()),
                    _ = tokio::time::sleep(EXTEND_EVERY.min(interval)) => {}
                }
            }
        };
        match pass.await {
            Ok(()) => return,
            Err(error) => {
                let delay = backoff.next_delay();
                warn!(error = %format!("{error:#}"), "retention interrupted; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

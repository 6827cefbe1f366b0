//! Retention and partitions: every few seconds the relay creates the partitions of
//! `itrelay.events` the next ids need, and every `retention.interval_secs` removes whole
//! partitions whose events are all delivered and older than
//! `retention.delivered_max_age_hours` (`itrelay.extend_partitions`,
//! `itrelay.retire_partitions` in sql/install.sql): their space is freed at once, with no
//! dead rows, so the outbox stays small whether or not autovacuum runs. A partition holding a failed event, a held one or a copy for one
//! module is kept, for inspection and replay.

use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::config::Settings;
use crate::postgres::{ConnectError, PgSession};
use crate::tasks::{self, Failure};

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

/// Why a retention pass stopped.
#[derive(Debug, thiserror::Error)]
enum RetentionError {
    #[error("connecting to Postgres: {0}")]
    Connect(#[from] ConnectError),
    #[error("managing outbox partitions: {}", crate::postgres::describe(.0))]
    Query(#[from] tokio_postgres::Error),
    #[error("managing outbox partitions: no answer within {0:?}")]
    Timeout(Duration),
}

impl Failure for RetentionError {}

/// Extends the partitions every [`EXTEND_EVERY`] and, if retention is enabled, prunes
/// every `retention.interval_secs`, until `shutdown`, reconnecting on errors.
pub async fn run(settings: Settings, shutdown: CancellationToken) {
    let retention = &settings.retention;
    let interval = Duration::from_secs(retention.interval_secs);
    let limit = settings.query_timeout();
    let (settings, shutdown) = (&settings, &shutdown);
    let _ = tasks::supervise::<RetentionError, _>(
        "retention",
        tasks::backoff(settings),
        Duration::ZERO,
        shutdown,
        move |progress| async move {
            let pg = PgSession::connect(&settings.postgres).await?;
            let mut pruned_at: Option<Instant> = None;
            loop {
                let created =
                    tasks::bounded(limit, RetentionError::Timeout, extend(&pg.client)).await?;
                if created > 0 {
                    info!(partitions = created, "retention: created outbox partitions");
                }
                let due = retention.enabled && pruned_at.is_none_or(|at| at.elapsed() >= interval);
                if due {
                    pruned_at = Some(Instant::now());
                    let removed = tasks::bounded(
                        limit,
                        RetentionError::Timeout,
                        prune(
                            &pg.client,
                            retention.delivered_max_age_hours,
                            retention.batch_size,
                        ),
                    )
                    .await?;
                    if removed > 0 {
                        info!(rows = removed, "retention: removed old delivered events");
                    } else {
                        debug!("retention: nothing to remove");
                    }
                }
                progress.made();
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(EXTEND_EVERY.min(interval)) => {}
                }
            }
        },
    )
    .await;
}

//! Retention: delivered outbox rows older than `retention.delivered_max_age_hours` are
//! deleted in small batches, with a pause between them, so the outbox does not grow
//! without bound and the business database is not disturbed. Failed rows are kept.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::config::Settings;
use crate::listen::{ConnectError, PgSession};
use crate::tasks::{self, Failure};

/// Pause between two delete batches.
const BATCH_PAUSE: Duration = Duration::from_millis(200);

/// Deletes one batch of old delivered rows; returns how many went. Rows locked by
/// anyone else are skipped, so concurrent relays never wait on each other.
pub async fn prune_batch(
    client: &tokio_postgres::Client,
    max_age_hours: u32,
    batch_size: i64,
) -> Result<u64, tokio_postgres::Error> {
    client
        .execute(
            "DELETE FROM itrelay.outbox WHERE id IN (
                 SELECT id FROM itrelay.outbox
                 WHERE state = 'delivered'
                   AND delivered_at < now() - make_interval(hours => $1)
                   -- A copy dead-lettered for one module is kept, for replay.
                   AND NOT EXISTS (SELECT 1 FROM itrelay.copies AS c WHERE c.outbox_id = outbox.id)
                 ORDER BY delivered_at
                 LIMIT $2
                 FOR UPDATE SKIP LOCKED)",
            &[&(max_age_hours as i32), &batch_size],
        )
        .await
}

/// Why a retention pass stopped.
#[derive(Debug, thiserror::Error)]
enum RetentionError {
    #[error("connecting to Postgres: {0}")]
    Connect(#[from] ConnectError),
    #[error("removing delivered events: {}", crate::listen::describe(.0))]
    Query(#[from] tokio_postgres::Error),
    #[error("removing delivered events: no answer within {0:?}")]
    Timeout(Duration),
}

impl Failure for RetentionError {}

/// Prunes every `retention.interval_secs` until `shutdown`, reconnecting on errors.
pub async fn run(settings: Settings, shutdown: CancellationToken) {
    let retention = &settings.retention;
    if !retention.enabled {
        return;
    }
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
            loop {
                let mut removed = 0;
                loop {
                    let batch = tasks::bounded(
                        limit,
                        RetentionError::Timeout,
                        prune_batch(
                            &pg.client,
                            retention.delivered_max_age_hours,
                            i64::from(retention.batch_size),
                        ),
                    )
                    .await?;
                    removed += batch;
                    if batch < u64::from(retention.batch_size) || shutdown.is_cancelled() {
                        break;
                    }
                    tokio::time::sleep(BATCH_PAUSE).await;
                }
                progress.made();
                if removed > 0 {
                    info!(rows = removed, "retention: removed old delivered events");
                } else {
                    debug!("retention: nothing to remove");
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(interval) => {}
                }
            }
        },
    )
    .await;
}

//! The outbox gauges for `/metrics`: pending rows, the age of the oldest, failed rows and
//! failed copies (one destination only) not replayed; under WAL capture, the WAL the
//! replication slot holds back. Measured every few seconds on a connection of their own, by leader and
//! standby alike, so that they keep moving (and alerts keep firing) whatever the relay
//! loop is doing: idle, stuck, or not leading at all.

use std::time::Duration;

use crate::config::Capture;
use crate::config::Settings;
use crate::metrics::METRICS;
use crate::outbox;
use crate::postgres::{ConnectError, PgSession};
use crate::tasks::{self, Failure};
use crate::wal;
use tokio_util::sync::CancellationToken;

/// How often the outbox is measured.
pub const EVERY: Duration = Duration::from_secs(5);

/// One statement for the four gauges; pending events are found without reading the
/// settled ones (`itrelay.pending`), and read once for their count and oldest; failed
/// ones through their partial index.
const MEASURE_SQL: &str = "SELECT pending.count, pending.oldest_age,
    (SELECT count(*) FROM itrelay.events WHERE state = 'failed'),
    (SELECT count(*) FROM itrelay.copies WHERE state = 'failed')
    FROM (SELECT count(*) AS count,
                 coalesce(extract(epoch FROM now() - min(created_at)
                                  FILTER (WHERE isfinite(created_at))), 0)::float8 AS oldest_age
          FROM itrelay.pending) AS pending";

#[derive(Debug, thiserror::Error)]
enum GaugeError {
    #[error("connecting to Postgres: {0}")]
    Connect(#[from] ConnectError),
    #[error("measuring the outbox: {0}")]
    Query(#[from] tokio_postgres::Error),
    #[error("measuring the outbox: no answer within {0:?}")]
    Timeout(Duration),
}

impl Failure for GaugeError {}

/// Measures every [`EVERY`] until `shutdown`; a lost connection is reopened with backoff.
pub async fn run(settings: Settings, shutdown: CancellationToken) {
    let limit = settings.query_timeout();
    let (settings, shutdown) = (&settings, &shutdown);
    let _ = tasks::supervise::<GaugeError, _>(
        "outbox gauges",
        tasks::backoff(settings),
        EVERY,
        shutdown,
        move |progress| async move {
            let pg = PgSession::connect(&settings.postgres).await?;
            outbox::use_index_paths(&pg.client).await?;
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    measured = measure(&pg, limit, settings.postgres.capture) => measured?,
                }
                progress.made();
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    () = tokio::time::sleep(EVERY) => {}
                }
            }
        },
    )
    .await;
}

async fn measure(pg: &PgSession, limit: Duration, capture: Capture) -> Result<(), GaugeError> {
    let row = tasks::bounded(
        limit,
        GaugeError::Timeout,
        pg.client.query_one(MEASURE_SQL, &[]),
    )
    .await?;
    METRICS.backlog_rows.set(row.try_get(0)?);
    METRICS.backlog_oldest_age_seconds.set(row.try_get(1)?);
    METRICS.failed_rows.set(row.try_get(2)?);
    METRICS.failed_copies.set(row.try_get(3)?);
    if capture == Capture::Wal {
        let slot = tasks::bounded(limit, GaugeError::Timeout, wal::slot(&pg.client)).await?;
        METRICS
            .wal_retained_bytes
            .set(slot.map_or(0, |slot| slot.retained_bytes));
    }
    Ok(())
}

//! The outbox gauges for `/metrics`: pending rows, the age of the oldest, failed rows and
//! failed copies (one destination only) not replayed. Measured every few seconds on a connection of their own, by leader and
//! standby alike, so that they keep moving (and alerts keep firing) whatever the relay
//! loop is doing: idle, stuck, or not leading at all.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::backoff::Backoff;
use crate::config::Settings;
use crate::listen::{ConnectError, PgSession};
use crate::metrics::METRICS;

/// How often the outbox is measured.
pub const EVERY: Duration = Duration::from_secs(5);

/// One statement for the four gauges; pending events are found without reading the
/// settled ones (`itrelay.pending`), failed ones through their partial index.
pub const MEASURE_SQL: &str = "SELECT
    (SELECT count(*) FROM itrelay.pending),
    (SELECT coalesce(extract(epoch FROM now() - min(created_at) FILTER (WHERE isfinite(created_at))), 0)::float8
       FROM itrelay.pending),
    (SELECT count(*) FROM itrelay.events WHERE state = 'failed'),
    (SELECT count(*) FROM itrelay.copies WHERE state = 'failed')";

#[derive(Debug, thiserror::Error)]
enum GaugeError {
    #[error("connecting to Postgres: {0}")]
    Connect(#[from] ConnectError),
    #[error("measuring the outbox: {0}")]
    Query(#[from] tokio_postgres::Error),
    #[error("measuring the outbox: no answer within {0:?}")]
    Timeout(Duration),
}

/// Measures every [`EVERY`] until `shutdown`; a lost connection is reopened with backoff.
pub async fn run(settings: Settings, shutdown: CancellationToken) {
    let mut backoff = Backoff::new(
        Duration::from_millis(settings.relay.reconnect_min_ms),
        Duration::from_millis(settings.relay.reconnect_max_ms),
    );
    let mut session: Option<PgSession> = None;
    loop {
        let measured = tokio::select! {
            () = shutdown.cancelled() => return,
            measured = measure(&settings, &mut session) => measured,
        };
        let delay = match measured {
            Ok(()) => {
                backoff.reset();
                EVERY
            }
            Err(error) => {
                session = None;
                let delay = backoff.next_delay().max(EVERY);
                warn!(%error, retry_in_ms = delay.as_millis() as u64, "outbox gauges not updated");
                delay
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

async fn measure(settings: &Settings, session: &mut Option<PgSession>) -> Result<(), GaugeError> {
    let limit = settings.query_timeout();
    let pg = match session {
        Some(pg) => pg,
        None => {
            let connected = tokio::time::timeout(limit, PgSession::connect(&settings.postgres))
                .await
                .map_err(|_| GaugeError::Timeout(limit))??;
            session.insert(connected)
        }
    };
    let row = tokio::time::timeout(limit, pg.client.query_one(MEASURE_SQL, &[]))
        .await
        .map_err(|_| GaugeError::Timeout(limit))??;
    METRICS.backlog_rows.set(row.try_get(0)?);
    METRICS.backlog_oldest_age_seconds.set(row.try_get(1)?);
    METRICS.failed_rows.set(row.try_get(2)?);
    METRICS.failed_copies.set(row.try_get(3)?);
    Ok(())
}

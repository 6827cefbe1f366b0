//! The due-event scheduler: runs `itrelay.scan_due_events()` every `scan.interval_secs`.
//!
//! Time-based events (expiring contracts and licenses, SLA breaches, overdue patches,
//! license compliance) are found by SQL functions in `sql/install.sql` that record each
//! event once and write it to the outbox; the relay then delivers them like any other.
//! This loop only calls them on a schedule, on its own connection. It needs no leader
//! lock: the SQL's bookkeeping makes concurrent scans record each event once.

use std::time::Duration;

use tokio_postgres::types::ToSql;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::Settings;
use crate::metrics::METRICS;
use crate::postgres::{ConnectError, PgSession};
use crate::tasks::{self, Failure};

/// The statement each scan runs: every time-based scan, as of the database's `now()`,
/// with `scan.license_grace_days` as $1.
pub const SCAN_SQL: &str = "SELECT itrelay.scan_due_events(now(), $1)";

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("connecting to Postgres: {0}")]
    Connect(#[from] ConnectError),
    #[error("running itrelay.scan_due_events(): {}", crate::postgres::describe(.0))]
    Query(#[from] tokio_postgres::Error),
    #[error("itrelay.scan_due_events() did not answer within {0:?}")]
    Timeout(Duration),
}

impl Failure for ScanError {}

/// Scans every `scan.interval_secs` until `shutdown`. A lost connection is reopened with
/// backoff; a failed statement on a live connection (say, a missing table) is retried at
/// the next scan, as sooner would only fail again. Returns at once when `scan.enabled` is
/// false.
pub async fn run(settings: Settings, shutdown: CancellationToken) {
    if !settings.scan.enabled {
        info!("due-event scans disabled (scan.enabled = false)");
        return;
    }
    let limit = settings.query_timeout();
    let grace = settings.scan.license_grace_days;
    let (settings, shutdown) = (&settings, &shutdown);
    let _ = tasks::supervise::<ScanError, _>(
        "due-event scan",
        tasks::backoff(settings),
        Duration::ZERO,
        shutdown,
        move |progress| async move {
            let pg = PgSession::connect(&settings.postgres).await?;
            let params: [&(dyn ToSql + Sync); 1] = [&grace];
            loop {
                let scanned = tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    scanned = tasks::bounded(limit, ScanError::Timeout, pg.client.query_one(SCAN_SQL, &params)) => scanned,
                };
                METRICS.scan_runs.inc();
                match scanned.and_then(|row| Ok(row.try_get::<_, i32>(0)?)) {
                    Ok(recorded) => {
                        debug!(recorded, "due-event scan done");
                        progress.made();
                    }
                    Err(error) => {
                        METRICS.scan_failures.inc();
                        if !matches!(error, ScanError::Query(_)) || pg.client.is_closed() {
                            return Err(error);
                        }
                        warn!(%error, retry_in_ms = settings.scan_interval().as_millis() as u64, "due-event scan failed");
                    }
                }
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    () = tokio::time::sleep(settings.scan_interval()) => {}
                }
            }
        },
    )
    .await;
}

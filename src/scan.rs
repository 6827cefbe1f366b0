//! The due-event scheduler: runs `itrelay.scan_due_events()` every `scan.interval_secs`.
//!
//! Time-based events (expiring contracts and licenses, SLA breaches, overdue patches,
//! license compliance) are found by SQL functions in `sql/install.sql` that record each
//! event once and write it to the outbox; the relay then delivers them like any other.
//! This loop only calls them on a schedule, on its own connection. It needs no leader
//! lock: the SQL's bookkeeping makes concurrent scans record each event once.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::config::Settings;
use crate::listen::{ConnectError, PgSession};
use crate::metrics::METRICS;

/// The statement each scan runs: every time-based scan, as of the database's `now()`,
/// with `scan.license_grace_days` as $1.
pub const SCAN_SQL: &str = "SELECT itrelay.scan_due_events(now(), $1)";

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("connecting to Postgres: {0}")]
    Connect(#[from] ConnectError),
    #[error("running itrelay.scan_due_events(): {}", crate::listen::describe(.0))]
    Query(#[from] tokio_postgres::Error),
    #[error("itrelay.scan_due_events() did not answer within {0:?}")]
    Timeout(Duration),
}

/// Scans every `scan.interval_secs` until `shutdown`. A lost connection is reopened with
/// backoff; a failed statement is retried at the next scan. Returns at once when
/// `scan.enabled` is false.
pub async fn run(settings: Settings, shutdown: CancellationToken) {
    if !settings.scan.enabled {
        info!("due-event scans disabled (scan.enabled = false)");
        return;
    }
    let mut backoff = Backoff::new(
        Duration::from_millis(settings.relay.reconnect_min_ms),
        Duration::from_millis(settings.relay.reconnect_max_ms),
    );
    let mut session = None;
    loop {
        let outcome = tokio::select! {
            () = shutdown.cancelled() => return,
            outcome = scan_once(&settings, &mut session) => outcome,
        };
        METRICS.scan_runs.inc();
        let delay = match outcome {
            Ok(recorded) => {
                debug!(recorded, "due-event scan done");
                backoff.reset();
                settings.scan_interval()
            }
            Err(error) => {
                METRICS.scan_failures.inc();
                let delay = if keeps_session(&error, session.as_ref()) {
                    // The SQL failed on a live connection (say, a missing table): retrying
                    // sooner than the schedule would only fail again.
                    settings.scan_interval()
                } else {
                    session = None;
                    backoff.next_delay()
                };
                warn!(%error, retry_in_ms = delay.as_millis() as u64, "due-event scan failed");
                delay
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// Whether the session survives `error`: the statement failed, not the connection.
fn keeps_session(error: &ScanError, session: Option<&PgSession>) -> bool {
    matches!(error, ScanError::Query(_)) && session.is_some_and(|pg| !pg.client.is_closed())
}

/// One scan on `session`, connecting first when there is none; how many events it recorded.
async fn scan_once(settings: &Settings, session: &mut Option<PgSession>) -> Result<i32, ScanError> {
    let pg = match session {
        Some(pg) => pg,
        None => session.insert(PgSession::connect(&settings.postgres).await?),
    };
    let limit = settings.query_timeout();
    let grace = settings.scan.license_grace_days;
    let row = tokio::time::timeout(limit, pg.client.query_one(SCAN_SQL, &[&grace]))
        .await
        .map_err(|_| ScanError::Timeout(limit))??;
    Ok(row.try_get(0)?)
}

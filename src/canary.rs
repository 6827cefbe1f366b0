//! The canary: while leading, the relay writes a synthetic event now and then through
//! the triggers' own path (`itrelay.enqueue`: outbox row and wake-up) and consumes it back
//! from its canary exchange. The round trip is exported (`itrelay_canary_seconds`), and
//! readiness fails while a canary is overdue, whatever the reason: a LISTEN silently
//! broken, a stuck query, a broker that accepts and never confirms.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use uuid::Uuid;

use crate::config::Settings;
use crate::health::{Health, Role};
use crate::metrics::METRICS;
use crate::postgres::{ConnectError, PgSession};
use crate::route::Router;
use crate::sink::amqp::{PublishError, Watcher};
use crate::tasks::{self, Failure};

/// Outbox event type of canaries; the relay sends them to its canary exchange only.
pub const EVENT_TYPE: &str = "itrelay_canary";
/// Their `source_table`.
const SOURCE: &str = "itrelay";
/// How often overdue canaries are looked for.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Why the canary watcher stopped and starts over.
#[derive(Debug, thiserror::Error)]
enum CanaryError {
    #[error("rabbitmq: {0}")]
    Connect(#[from] PublishError),
    #[error("rabbitmq: canary consumer cancelled")]
    ConsumerCancelled,
    #[error("postgres: {0}")]
    Postgres(#[from] ConnectError),
    #[error("writing a canary: {}", crate::postgres::describe(.0))]
    Write(tokio_postgres::Error),
    #[error("writing a canary: no answer within {0:?}")]
    WriteTimeout(Duration),
}

impl Failure for CanaryError {}

/// Writes one canary; reports a failure on `failed`.
async fn write(pg: Arc<PgSession>, id: Uuid, limit: Duration, failed: mpsc::Sender<CanaryError>) {
    let written = tasks::bounded(limit, CanaryError::WriteTimeout, async {
        pg.client
            .execute(
                "SELECT itrelay.enqueue($1, $2, jsonb_build_object('canary_id', $3::text))",
                &[&EVENT_TYPE, &SOURCE, &id.to_string()],
            )
            .await
            .map_err(CanaryError::Write)
    })
    .await;
    let Err(error) = written else { return };
    // The watcher may be gone already; then nobody needs to know.
    let _ = failed.send(error).await;
}

/// Runs the canary until `shutdown`, if `canary.enabled`: while `health` says this relay
/// leads, and reporting overdue canaries to it.
pub async fn run(settings: Settings, health: Health, shutdown: CancellationToken) {
    if !settings.canary.enabled {
        return;
    }
    let _ = tasks::supervise(
        "canary",
        tasks::backoff(&settings),
        Duration::ZERO,
        &shutdown,
        |_| watch(&settings, &health, &shutdown),
    )
    .await;
}

async fn watch(
    settings: &Settings,
    health: &Health,
    shutdown: &CancellationToken,
) -> Result<(), CanaryError> {
    let canary = &settings.canary;
    let router = Router::from_settings(settings);
    let mut watcher = Watcher::open(&settings.amqp, "itrelay-canary").await?;
    let pg = Arc::new(PgSession::connect(&settings.postgres).await?);
    // Writes run on their own, so that a write that hangs is noticed as a stall.
    let (write_failed, mut write_failures) = mpsc::channel::<CanaryError>(1);
    let mut bound = false;
    let mut in_flight: HashMap<Uuid, Instant> = HashMap::new();
    let mut send = tokio::time::interval(Duration::from_secs(canary.interval_secs));
    let mut check = tokio::time::interval(CHECK_EVERY);
    let stall_after = Duration::from_secs(canary.stall_after_secs);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                // Closed, not dropped: the connection's I/O thread ends before the runtime.
                watcher.close().await;
                return Ok(());
            }
            _ = send.tick() => {
                if health.role() != Role::Leader {
                    // Only the leader's path is watched.
                    in_flight.clear();
                    continue;
                }
                if !bound {
                    // The relay declares the canary exchange when it starts leading.
                    watcher.watch(router.canary()).await?;
                    bound = true;
                }
                let id = Uuid::new_v4();
                // Counted from before the write: a write that hangs is a stall too.
                in_flight.insert(id, Instant::now());
                tokio::spawn(write(pg.clone(), id, settings.query_timeout(), write_failed.clone()));
            }
            Some(error) = write_failures.recv() => return Err(error),
            received = watcher.next() => {
                let received = received.ok_or(CanaryError::ConsumerCancelled)??;
                let id = serde_json::from_slice::<serde_json::Value>(&received.body)
                    .ok()
                    .and_then(|body| body.get("canary_id")?.as_str().and_then(|id| Uuid::parse_str(id).ok()));
                if let Some(sent) = id.and_then(|id| in_flight.remove(&id)) {
                    let round_trip = sent.elapsed();
                    debug!(round_trip_ms = round_trip.as_millis() as u64, "canary back");
                    METRICS.canary_seconds.observe(round_trip.as_secs_f64());
                }
            }
            _ = check.tick() => {}
        }
        let stalled = in_flight.values().any(|sent| sent.elapsed() > stall_after);
        if health.set_canary_overdue(stalled) && stalled {
            warn!(
                stall_after_secs = canary.stall_after_secs,
                "canary overdue: not ready"
            );
        }
    }
}

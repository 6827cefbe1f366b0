//! One shutdown signal for every loop: SIGTERM or SIGINT cancels the token; the work
//! then has until the stop timeout to finish.

use std::future::Future;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// A token cancelled on the first SIGTERM or SIGINT.
pub fn on_signals() -> std::io::Result<CancellationToken> {
    let token = CancellationToken::new();
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let cancel = token.clone();
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        };
        info!(
            signal = name,
            "shutting down: finishing the batch in flight"
        );
        cancel.cancel();
    });
    Ok(token)
}

/// Runs `work` to its end, or until `stop_timeout` after `shutdown` is cancelled,
/// whichever comes first: `None` if the stop timeout cut the work short (rows left
/// unfinished stay pending in the outbox and are sent again).
pub async fn within_stop_timeout<T>(
    work: impl Future<Output = T>,
    shutdown: &CancellationToken,
    stop_timeout: Duration,
) -> Option<T> {
    let deadline = async {
        shutdown.cancelled().await;
        tokio::time::sleep(stop_timeout).await;
    };
    tokio::select! {
        done = work => Some(done),
        _ = deadline => {
            warn!(
                stop_timeout_secs = stop_timeout.as_secs(),
                "stop timeout reached with work unfinished (relay.stop_timeout_secs); exiting"
            );
            None
        }
    }
}

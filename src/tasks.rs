//! The one way a long-running task (the relay, the canary, the scans, retention, the
//! outbox gauges) survives failures: it runs in attempts, each on connections of its own;
//! an attempt that fails is logged and followed, after a jittered backoff, by the next,
//! until shutdown or an error that no retry can mend.

use std::fmt::Display;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::backoff::Backoff;
use crate::config::Settings;

/// An attempt's error, as the supervisor sees it.
pub trait Failure: Display {
    /// Whether retrying is pointless (say, a configuration the server refuses): the task
    /// ends with this error instead.
    fn is_fatal(&self) -> bool {
        false
    }
}

impl Failure for anyhow::Error {}

/// The reconnect backoff every task uses: `relay.reconnect_min_ms` to `reconnect_max_ms`.
pub fn backoff(settings: &Settings) -> Backoff {
    Backoff::new(
        Duration::from_millis(settings.relay.reconnect_min_ms),
        Duration::from_millis(settings.relay.reconnect_max_ms),
    )
}

/// Handed to each attempt, which calls [`Progress::made`] once it did real work (a batch
/// recorded, a scan run): the backoff then starts over, so that an error recurring at once
/// (a missing grant, a wrong schema) is retried ever more slowly and one after hours of
/// work is retried at once.
#[derive(Debug, Clone, Default)]
pub struct Progress(Arc<AtomicBool>);

impl Progress {
    pub fn made(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    fn take(&self) -> bool {
        self.0.swap(false, Ordering::Relaxed)
    }
}

/// Runs `attempt` until one returns `Ok` (the task is over, normally at shutdown) or fails
/// fatally, or `shutdown` is cancelled while waiting to retry. The wait after a failure is
/// the backoff's next delay, at least `min_delay`.
pub async fn supervise<E, Attempt>(
    name: &'static str,
    mut backoff: Backoff,
    min_delay: Duration,
    shutdown: &CancellationToken,
    mut attempt: impl FnMut(Progress) -> Attempt,
) -> Result<(), E>
where
    E: Failure,
    Attempt: Future<Output = Result<(), E>>,
{
    let progress = Progress::default();
    loop {
        let error = match attempt(progress.clone()).await {
            Ok(()) => return Ok(()),
            Err(error) if error.is_fatal() => return Err(error),
            Err(error) => error,
        };
        if progress.take() {
            backoff.reset();
        }
        let delay = backoff.next_delay().max(min_delay);
        warn!(task = name, %error, retry_in_ms = delay.as_millis() as u64, "{name} interrupted; reconnecting");
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// Bounds a call by `limit`; `timed_out` makes the error of a call left unanswered.
pub async fn bounded<T, E>(
    limit: Duration,
    timed_out: impl FnOnce(Duration) -> E,
    call: impl Future<Output = Result<T, impl Into<E>>>,
) -> Result<T, E> {
    match tokio::time::timeout(limit, call).await {
        Ok(result) => result.map_err(Into::into),
        Err(_) => Err(timed_out(limit)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    enum Trouble {
        Passing,
        Fatal,
    }

    impl Display for Trouble {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{self:?}")
        }
    }

    impl Failure for Trouble {
        fn is_fatal(&self) -> bool {
            *self == Trouble::Fatal
        }
    }

    fn quick() -> Backoff {
        Backoff::new(Duration::from_millis(1), Duration::from_millis(2))
    }

    #[tokio::test]
    async fn retries_until_an_attempt_succeeds() {
        let mut attempts = 0;
        let outcome = supervise(
            "test",
            quick(),
            Duration::ZERO,
            &CancellationToken::new(),
            |_| {
                attempts += 1;
                std::future::ready(if attempts < 3 {
                    Err(Trouble::Passing)
                } else {
                    Ok(())
                })
            },
        )
        .await;
        assert_eq!(outcome, Ok(()));
        assert_eq!(attempts, 3);
    }

    #[tokio::test]
    async fn a_fatal_error_ends_the_task() {
        let mut attempts = 0;
        let outcome = supervise(
            "test",
            quick(),
            Duration::ZERO,
            &CancellationToken::new(),
            |_| {
                attempts += 1;
                std::future::ready(Err(Trouble::Fatal))
            },
        )
        .await;
        assert_eq!(outcome, Err(Trouble::Fatal));
        assert_eq!(attempts, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_the_wait_before_the_next_attempt() {
        let shutdown = CancellationToken::new();
        let mut attempts = 0;
        let slow = Backoff::new(Duration::from_secs(3600), Duration::from_secs(3600));
        let stopper = shutdown.clone();
        let outcome = supervise("test", slow, Duration::ZERO, &shutdown, |_| {
            attempts += 1;
            stopper.cancel();
            std::future::ready(Err(Trouble::Passing))
        })
        .await;
        assert_eq!(outcome, Ok(()));
        assert_eq!(attempts, 1);
    }

    /// Each wait, measured on the paused clock, for attempts that fail four times, with
    /// or without progress before failing.
    async fn waits(progress_each_time: bool) -> Vec<Duration> {
        let backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(64));
        let mut starts = Vec::new();
        let _ = supervise(
            "test",
            backoff,
            Duration::ZERO,
            &CancellationToken::new(),
            |progress| {
                starts.push(tokio::time::Instant::now());
                if progress_each_time {
                    progress.made();
                }
                std::future::ready(if starts.len() < 5 {
                    Err(Trouble::Passing)
                } else {
                    Ok(())
                })
            },
        )
        .await;
        starts.windows(2).map(|pair| pair[1] - pair[0]).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn progress_starts_the_backoff_over() {
        assert!(waits(true)
            .await
            .iter()
            .all(|wait| *wait <= Duration::from_secs(1)));
        let growing = waits(false).await;
        assert!(growing[3] >= Duration::from_secs(4), "{growing:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_left_unanswered_is_an_error() {
        let never = std::future::pending::<Result<(), Trouble>>();
        let outcome: Result<(), Trouble> =
            bounded(Duration::from_secs(1), |_| Trouble::Passing, never).await;
        assert_eq!(outcome, Err(Trouble::Passing));
    }
}

//! The relay loop: connect, become the leader, LISTEN, then drain the outbox a batch at a
//! time ([`crate::batch`]) whenever woken or polled; on losing either service, back off
//! and start over. Nothing is held only in memory: a row is marked delivered after the
//! broker confirmed it.

use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::backoff::Backoff;
use crate::config::Settings;
use crate::listen::{Notice, PgSession};
use crate::metrics::{Service, METRICS};
use crate::outbox::Outbox;
use crate::publish::{PublishError, Publisher};
use crate::route::Router;
use crate::validate::Validators;

/// Polls while busy start this quick and double while they find nothing; past the last,
/// the relay goes idle and waits for NOTIFY.
const BUSY_POLL_FIRST: Duration = Duration::from_millis(1);
const BUSY_POLL_LAST: Duration = Duration::from_millis(64);
/// How often the leader measures the backlog for `/metrics`.
const BACKLOG_EVERY: Duration = Duration::from_secs(5);

/// Why a session with the services ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("postgres: {0}")]
    PostgresConnect(#[from] crate::listen::ConnectError),
    #[error("rabbitmq: {0}")]
    Amqp(#[from] PublishError),
    #[error("postgres connection closed")]
    PostgresClosed,
    #[error("postgres: no answer within {0:?}")]
    PostgresTimeout(Duration),
    #[error("rabbitmq connection closed")]
    AmqpClosed,
}

impl SessionError {
    /// The service whose loss ended the session.
    pub fn service(&self) -> Service {
        match self {
            SessionError::Amqp(_) | SessionError::AmqpClosed => Service::Rabbitmq,
            SessionError::Postgres(_)
            | SessionError::PostgresConnect(_)
            | SessionError::PostgresClosed
            | SessionError::PostgresTimeout(_) => Service::Postgres,
        }
    }
}

pub struct Relay {
    pub(crate) settings: Settings,
    pub(crate) router: Router,
    pub(crate) validators: Validators,
}

impl Relay {
    pub fn new(settings: Settings) -> anyhow::Result<Self> {
        Ok(Self {
            router: Router::from_settings(&settings),
            validators: Validators::for_catalog()?,
            settings,
        })
    }

    /// Relays until `shutdown` is cancelled, reconnecting as often as it takes.
    pub async fn run(&self, shutdown: CancellationToken) {
        let relay = &self.settings.relay;
        let mut backoff = Backoff::new(
            Duration::from_millis(relay.reconnect_min_ms),
            Duration::from_millis(relay.reconnect_max_ms),
        );
        loop {
            match self.session(&shutdown, &mut backoff).await {
                Ok(()) => return,
                Err(error) => {
                    METRICS
                        .reconnects
                        .get_or_create(&error.service().into())
                        .inc();
                    let delay = backoff.next_delay();
                    warn!(%error, retry_in_ms = delay.as_millis() as u64, "relay interrupted; reconnecting");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    async fn session(
        &self,
        shutdown: &CancellationToken,
        backoff: &mut Backoff,
    ) -> Result<(), SessionError> {
        let publisher = Publisher::connect(
            &self.settings.amqp,
            &self.router,
            self.settings.confirm_timeout(),
        )
        .await?;
        METRICS.set_connected(Service::Rabbitmq, true);
        let amqp_failed = publisher.failure_signal();
        let outcome = async {
            let mut pg = self
                .bounded(PgSession::connect(&self.settings.postgres))
                .await?;
            METRICS.set_connected(Service::Postgres, true);
            if !self.await_leadership(&pg, shutdown).await? {
                return Ok(());
            }
            backoff.reset();
            self.lead(&mut pg, &publisher, &amqp_failed, shutdown).await
        }
        .await;
        METRICS.leader.set(0);
        METRICS.standby.set(0);
        METRICS.set_connected(Service::Postgres, false);
        METRICS.set_connected(Service::Rabbitmq, false);
        publisher.close().await;
        outcome
    }

    /// Bounds a Postgres call by `postgres.query_timeout_secs`.
    pub(crate) async fn bounded<T, E: Into<SessionError>>(
        &self,
        call: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, SessionError> {
        let limit = self.settings.query_timeout();
        match tokio::time::timeout(limit, call).await {
            Ok(result) => result.map_err(Into::into),
            Err(_) => Err(SessionError::PostgresTimeout(limit)),
        }
    }

    /// Waits until this relay holds the leader lock; `false` if shut down first.
    async fn await_leadership(
        &self,
        pg: &PgSession,
        shutdown: &CancellationToken,
    ) -> Result<bool, SessionError> {
        let channel = &self.settings.postgres.channel;
        let retry = Duration::from_millis(self.settings.relay.standby_retry_ms);
        let mut announced = false;
        while !self.bounded(pg.try_lead(channel)).await? {
            if !announced {
                info!(%channel, "another relay leads this channel; standing by");
                METRICS.standby.set(1);
                announced = true;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(false),
                _ = tokio::time::sleep(retry) => {}
            }
        }
        METRICS.standby.set(0);
        METRICS.leader.set(1);
        Ok(true)
    }

    /// Drains the outbox while there is work, polling quickly; once a few quick polls in
    /// a row find nothing, flags itself idle (so triggers NOTIFY again) and waits for a
    /// notification or the fallback poll.
    async fn lead(
        &self,
        pg: &mut PgSession,
        publisher: &Publisher,
        amqp_failed: &Notify,
        shutdown: &CancellationToken,
    ) -> Result<(), SessionError> {
        let channel = &self.settings.postgres.channel;
        // The relay's own writes (delivered marks, the idle flag) need not wait for the
        // WAL flush: a mark lost in a Postgres crash only means the event is sent again,
        // which at-least-once allows. Business transactions are not affected.
        self.bounded(pg.client.batch_execute("SET synchronous_commit = off"))
            .await?;
        self.bounded(pg.listen(channel)).await?;
        let outbox = self.bounded(Outbox::prepare(&pg.client)).await?;
        self.bounded(outbox.set_idle(&pg.client, false)).await?;
        info!(%channel, "leading: relaying events");
        let fallback_poll = Duration::from_millis(self.settings.relay.poll_interval_ms);
        let pause_after_nack = Duration::from_millis(self.settings.relay.reconnect_min_ms);
        let mut notified = Vec::new();
        let mut quiet_poll = BUSY_POLL_FIRST;
        let mut backlog_measured = Instant::now() - BACKLOG_EVERY;
        loop {
            if backlog_measured.elapsed() >= BACKLOG_EVERY {
                self.measure_backlog(&pg.client).await?;
                backlog_measured = Instant::now();
            }
            self.take_in_notified(pg, &outbox, &mut notified).await?;
            let report = self.relay_batch(&pg.client, &outbox, publisher).await?;
            if shutdown.is_cancelled() {
                return Ok(());
            }
            let full = report.claimed == self.settings.relay.batch_size as usize;
            let wait = if report.retried > 0 {
                pause_after_nack
            } else if full {
                continue;
            } else if report.claimed > 0 {
                quiet_poll = BUSY_POLL_FIRST;
                quiet_poll
            } else if quiet_poll <= BUSY_POLL_LAST {
                let wait = quiet_poll;
                quiet_poll *= 2;
                wait
            } else {
                // Quiet: from now on a committed event wakes the relay by NOTIFY. Events
                // committed while the flag flips are caught by one more look right after.
                self.bounded(outbox.set_idle(&pg.client, true)).await?;
                let caught = self.relay_batch(&pg.client, &outbox, publisher).await?;
                if caught.claimed == 0 {
                    let wait = fallback_poll.min(BACKLOG_EVERY);
                    self.wait_for_notice(pg, amqp_failed, shutdown, wait, &mut notified)
                        .await?;
                }
                self.bounded(outbox.set_idle(&pg.client, false)).await?;
                quiet_poll = BUSY_POLL_FIRST;
                continue;
            };
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = amqp_failed.notified() => return Err(SessionError::AmqpClosed),
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Updates the backlog gauges: pending rows and the age of the oldest.
    async fn measure_backlog(&self, client: &Client) -> Result<(), SessionError> {
        let row = self
            .bounded(client.query_one(
                "SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8
                 FROM itrelay.outbox WHERE state = 'pending'",
                &[],
            ))
            .await?;
        METRICS.backlog_rows.set(row.try_get(0)?);
        METRICS.backlog_oldest_age_seconds.set(row.try_get(1)?);
        Ok(())
    }

    /// Waits for a notification, the fallback poll or shutdown; whole-event
    /// notifications are kept in `notified`.
    async fn wait_for_notice(
        &self,
        pg: &mut PgSession,
        amqp_failed: &Notify,
        shutdown: &CancellationToken,
        fallback_poll: Duration,
        notified: &mut Vec<String>,
    ) -> Result<(), SessionError> {
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = amqp_failed.notified() => return Err(SessionError::AmqpClosed),
            notice = pg.next_notice() => match notice {
                None => return Err(SessionError::PostgresClosed),
                Some(Notice::Event(text)) => notified.push(text),
                Some(Notice::Wake) => {}
            },
            _ = tokio::time::sleep(fallback_poll) => {}
        }
        Ok(())
    }

    /// Stores the whole-event notifications received so far as outbox rows.
    async fn take_in_notified(
        &self,
        pg: &mut PgSession,
        outbox: &Outbox,
        notified: &mut Vec<String>,
    ) -> Result<(), SessionError> {
        while let Some(notice) = pg.try_next_notice() {
            if let Notice::Event(text) = notice {
                notified.push(text);
            }
        }
        if !notified.is_empty() {
            let stored = self
                .bounded(outbox.insert_notified(&pg.client, notified))
                .await?;
            METRICS.notified_events.inc_by(stored);
            info!(events = stored, "took in whole-event notifications");
            notified.clear();
        }
        Ok(())
    }
}

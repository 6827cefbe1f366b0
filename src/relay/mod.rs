//! The relay: connect to both services, become the leader, then lead
//! ([`leader::Leader`]) until shut down; on losing either service, back off and start
//! over. Nothing is held only in memory: a row is marked delivered after the broker
//! confirmed it.
//!
//! - [`leader`]: one leading session, the loop that drains the outbox;
//! - [`dispatch`]: one batch's I/O: claim, publish, confirm;
//! - [`batch`]: a batch's plain values and the pure logic that judges it;
//! - [`retry`]: sending waiting copies again.

mod batch;
mod dispatch;
mod leader;
mod retry;

use std::time::Duration;

use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use self::leader::Leader;
use crate::config::Settings;
use crate::health::{Health, Role};
use crate::lease::{self, LeaseError, Takeover};
use crate::metrics::{Service, METRICS};
use crate::postgres::PgSession;
use crate::route::Router;
use crate::sink::amqp::Publisher;
use crate::sink::Sink;
use crate::sql;
use crate::tasks::{self, Failure, Progress};
use crate::validate::Validators;
use crate::wal;

/// How often the broker connection's blocked state is looked at, for `/readyz`.
const BLOCKED_EVERY: Duration = Duration::from_secs(1);

/// Why a session with the services ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("postgres: {}", crate::postgres::describe(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("postgres: {0}")]
    PostgresConnect(#[from] crate::postgres::ConnectError),
    /// The sink failed: it could not take or confirm messages in time.
    #[error("{}: {error}", .service.as_str())]
    Sink {
        service: Service,
        error: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("postgres connection closed")]
    PostgresClosed,
    #[error("postgres: no answer within {0:?}")]
    PostgresTimeout(Duration),
    #[error("{} connection closed", .0.as_str())]
    SinkClosed(Service),
    #[error("postgres: {0}")]
    Lease(#[from] LeaseError),
    #[error("postgres: {0}")]
    Ingest(#[from] crate::wal::IngestError),
    /// Fatal: the installed capture mode or the server's `wal_level` does not allow the
    /// configured `postgres.capture`.
    #[error("{0}")]
    Capture(#[from] crate::wal::CaptureError),
    /// Fatal: the triggers would wake another channel than the one the relay listens on.
    #[error(
        "postgres.channel is {configured:?} but itrelay was installed with channel {installed:?}: \
         set postgres.channel to {installed:?}, or run `itrelay install` with {configured:?}"
    )]
    ChannelMismatch {
        installed: String,
        configured: String,
    },
}

impl SessionError {
    /// The service whose loss ended the session.
    pub fn service(&self) -> Service {
        match self {
            SessionError::Sink { service, .. } | SessionError::SinkClosed(service) => *service,
            SessionError::Postgres(_)
            | SessionError::PostgresConnect(_)
            | SessionError::PostgresClosed
            | SessionError::PostgresTimeout(_)
            | SessionError::Lease(_)
            | SessionError::Ingest(_)
            | SessionError::Capture(_)
            | SessionError::ChannelMismatch { .. } => Service::Postgres,
        }
    }

    /// The failure of sink `S`.
    pub(crate) fn sink<S: Sink>(error: S::Error) -> Self {
        SessionError::Sink {
            service: S::SERVICE,
            error: Box::new(error),
        }
    }
}

impl Failure for SessionError {
    /// A channel or capture mismatch, or WAL capture without logical decoding: no retry
    /// can mend it, the relay stops.
    fn is_fatal(&self) -> bool {
        matches!(
            self,
            SessionError::ChannelMismatch { .. } | SessionError::Capture(_)
        )
    }
}

pub struct Relay {
    pub(crate) settings: Settings,
    pub(crate) router: Router,
    pub(crate) validators: Validators,
    pub(crate) health: Health,
}

impl Relay {
    pub fn new(settings: Settings) -> anyhow::Result<Self> {
        Ok(Self {
            router: Router::from_settings(&settings),
            validators: Validators::for_catalog()?,
            settings,
            health: Health::default(),
        })
    }

    /// Reports readiness to `health` (shared with `/readyz`) instead of a private one.
    pub fn with_health(mut self, health: Health) -> Self {
        self.health = health;
        self
    }

    /// Relays until `shutdown` is cancelled, reconnecting as often as it takes
    /// ([`tasks::supervise`]); returns early only with a fatal error
    /// ([`Failure::is_fatal`] of [`SessionError`]).
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), SessionError> {
        tasks::supervise(
            "relay",
            tasks::backoff(&self.settings),
            Duration::ZERO,
            &shutdown,
            |progress| {
                let shutdown = &shutdown;
                async move {
                    let outcome = self.session(shutdown, &progress).await;
                    if let Some(error) = outcome.as_ref().err().filter(|error| !error.is_fatal()) {
                        METRICS
                            .reconnects
                            .get_or_create(&error.service().into())
                            .inc();
                    }
                    outcome
                }
            },
        )
        .await
    }

    async fn session(
        &self,
        shutdown: &CancellationToken,
        progress: &Progress,
    ) -> Result<(), SessionError> {
        // The one place that picks the sink.
        let sink = Publisher::connect(
            &self.settings.amqp,
            &self.router,
            self.settings.confirm_timeout(),
        )
        .await
        .map_err(SessionError::sink::<Publisher>)?;
        self.lead_with(sink, shutdown, progress).await
    }

    /// Leads with `sink` once connected to Postgres and elected, until shut down or a
    /// service is lost.
    async fn lead_with<S: Sink>(
        &self,
        sink: S,
        shutdown: &CancellationToken,
        progress: &Progress,
    ) -> Result<(), SessionError> {
        self.health.set_connected(S::SERVICE, true);
        let sink_failed = sink.failure_signal();
        let work = async {
            let mut pg = self
                .bounded(PgSession::connect(&self.settings.postgres))
                .await?;
            self.health.set_connected(Service::Postgres, true);
            self.check_channel(&pg).await?;
            self.check_capture(&pg).await?;
            if !self.await_leadership(&pg, shutdown).await? {
                return Ok(());
            }
            // The lease is renewed on this session while it leads; a renewal that fails
            // or goes unanswered ends the session, and with it the leadership.
            let client = pg.client.clone();
            let lead = async {
                Leader::start(self, &mut pg, &sink, &sink_failed, shutdown)
                    .await?
                    .run(progress)
                    .await
            };
            tokio::select! {
                led = lead => led,
                lost = self.keep_lease(&client) => Err(lost),
            }
        };
        let outcome = tokio::select! {
            outcome = work => outcome,
            () = self.health.watch_broker(BLOCKED_EVERY, || sink.blocked()) => Ok(()),
        };
        self.health.set_role(Role::None);
        self.health.set_connected(Service::Postgres, false);
        self.health.set_connected(S::SERVICE, false);
        sink.close().await;
        outcome
    }

    /// Bounds a Postgres call by `postgres.query_timeout_secs`.
    pub(crate) async fn bounded<T, E: Into<SessionError>>(
        &self,
        call: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, SessionError> {
        crate::tasks::bounded(
            self.settings.query_timeout(),
            SessionError::PostgresTimeout,
            call,
        )
        .await
    }

    /// Refuses a channel other than the one the triggers notify.
    async fn check_channel(&self, pg: &PgSession) -> Result<(), SessionError> {
        let installed = self.bounded(sql::installed_channel(&pg.client)).await?;
        let configured = &self.settings.postgres.channel;
        if installed == *configured {
            Ok(())
        } else {
            Err(SessionError::ChannelMismatch {
                installed,
                configured: configured.clone(),
            })
        }
    }

    /// Refuses a capture mode other than the installed one, and WAL capture on a server
    /// without logical decoding.
    async fn check_capture(&self, pg: &PgSession) -> Result<(), SessionError> {
        let (installed, wal_level) = self.bounded(wal::installed(&pg.client)).await?;
        Ok(wal::check(
            self.settings.postgres.capture,
            installed,
            &wal_level,
        )?)
    }

    /// Waits until this relay holds the leader lock and its lease ([`crate::lease`]),
    /// ending the session of a leader whose lease expired; `false` if shut down first.
    async fn await_leadership(
        &self,
        pg: &PgSession,
        shutdown: &CancellationToken,
    ) -> Result<bool, SessionError> {
        let channel = &self.settings.postgres.channel;
        let retry = Duration::from_millis(self.settings.relay.standby_retry_ms);
        let mut announced = false;
        let mut refused = false;
        while !self.bounded(lease::try_take(&pg.client, channel)).await? {
            if !announced {
                info!("another relay leads this outbox; standing by");
                self.health.set_role(Role::Standby);
                announced = true;
            }
            match self
                .bounded(lease::end_stale(&pg.client, self.settings.lease()))
                .await?
            {
                Takeover::Ended { pid } => {
                    warn!(
                        pid,
                        lease_secs = self.settings.relay.lease_secs,
                        "the leader's lease expired; ended its session to take over"
                    );
                    continue;
                }
                Takeover::NotPermitted { pid } if !refused => {
                    warn!(pid, "the leader's lease expired, but this role may not end its session (needs the leader's role or pg_signal_backend)");
                    refused = true;
                }
                Takeover::NotPermitted { .. } | Takeover::None => {}
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(false),
                _ = tokio::time::sleep(retry) => {}
            }
        }
        self.health.set_role(Role::None);
        Ok(true)
    }

    /// Renews the lease every third of `relay.lease_secs`, each renewal bounded by
    /// `postgres.query_timeout_secs`; returns why it could not.
    async fn keep_lease(&self, client: &Client) -> SessionError {
        let every = lease::renew_every(self.settings.lease());
        loop {
            tokio::time::sleep(every).await;
            if let Err(error) = self.bounded(lease::renew(client)).await {
                return error;
            }
        }
    }
}

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
use crate::batch::{InFlight, Prepared};
use crate::config::Settings;
use crate::copies::Copies;
use crate::delivery::Gates;
use crate::floor::ClaimFloor;
use crate::health::{Health, Role};
use crate::lease::{self, LeaseError, Takeover};
use crate::listen::{Notice, PgSession};
use crate::metrics::{Service, METRICS};
use crate::notified::NotifyEvents;
use crate::outbox::Outbox;
use crate::publish::{PublishError, Publisher};
use crate::route::Router;
use crate::sql;
use crate::validate::Validators;

/// While busy the relay looks for new events this often; after `QUIET_POLLS` looks in
/// a row find nothing, it goes idle and waits for NOTIFY.
const BUSY_POLL: Duration = Duration::from_millis(1);
const QUIET_POLLS: u32 = 32;
/// How often the relay looks while a transaction that will not NOTIFY keeps it from
/// going idle.
const NOT_YET_IDLE_POLL: Duration = Duration::from_millis(10);
/// The longest idle wait between two looks at the outbox.
const BACKLOG_EVERY: Duration = Duration::from_secs(5);
/// How often the broker connection's blocked state is looked at, for `/readyz`.
const BLOCKED_EVERY: Duration = Duration::from_secs(1);

/// Why a session with the services ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("postgres: {}", crate::listen::describe(.0))]
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
    #[error("postgres: {0}")]
    Lease(#[from] LeaseError),
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
            SessionError::Amqp(_) | SessionError::AmqpClosed => Service::Rabbitmq,
            SessionError::Postgres(_)
            | SessionError::PostgresConnect(_)
            | SessionError::PostgresClosed
            | SessionError::PostgresTimeout(_)
            | SessionError::Lease(_)
            | SessionError::ChannelMismatch { .. } => Service::Postgres,
        }
    }

    /// An error that no retry can mend: the relay stops.
    pub fn is_fatal(&self) -> bool {
        matches!(self, SessionError::ChannelMismatch { .. })
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

    /// Relays until `shutdown` is cancelled, reconnecting as often as it takes; returns
    /// early only with a fatal error ([`SessionError::is_fatal`]).
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), SessionError> {
        let relay = &self.settings.relay;
        let mut backoff = Backoff::new(
            Duration::from_millis(relay.reconnect_min_ms),
            Duration::from_millis(relay.reconnect_max_ms),
        );
        loop {
            match self.session(&shutdown, &mut backoff).await {
                Ok(()) => return Ok(()),
                Err(error) if error.is_fatal() => return Err(error),
                Err(error) => {
                    METRICS
                        .reconnects
                        .get_or_create(&error.service().into())
                        .inc();
                    let delay = backoff.next_delay();
                    warn!(%error, retry_in_ms = delay.as_millis() as u64, "relay interrupted; reconnecting");
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
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
        self.health.set_connected(Service::Rabbitmq, true);
        let amqp_failed = publisher.failure_signal();
        let work = async {
            let mut pg = self
                .bounded(PgSession::connect(&self.settings.postgres))
                .await?;
            self.health.set_connected(Service::Postgres, true);
            self.check_channel(&pg).await?;
            if !self.await_leadership(&pg, shutdown).await? {
                return Ok(());
            }
            // The lease is renewed on this session while it leads; a renewal that fails
            // or goes unanswered ends the session, and with it the leadership.
            let client = pg.client.clone();
            tokio::select! {
                led = self.lead(&mut pg, &publisher, &amqp_failed, shutdown, backoff) => led,
                lost = self.keep_lease(&client) => Err(lost),
            }
        };
        let outcome = tokio::select! {
            outcome = work => outcome,
            () = self.health.watch_broker(BLOCKED_EVERY, || publisher.blocked()) => Ok(()),
        };
        self.health.set_role(Role::None);
        self.health.set_connected(Service::Postgres, false);
        self.health.set_connected(Service::Rabbitmq, false);
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

    /// Drains the outbox in overlapping batches: while one batch's confirms are on their
    /// way, the previous batch's outcomes are recorded and the next batch is claimed, in
    /// one pipelined round trip. A batch that holds an event of an entity the batch in
    /// flight holds one of waits for that batch's confirms before it is sent, so a nack
    /// there can hold its copies back. Once `QUIET_POLLS` polls in a row find nothing,
    /// flags itself idle (so triggers NOTIFY again) and waits for a notification, the
    /// fallback poll or a waiting copy's retry. The reconnect `backoff` starts over only
    /// after real progress (a batch recorded, or a full idle cycle): an error that recurs
    /// right after leadership is taken (a missing grant or schema) keeps backing off.
    async fn lead(
        &self,
        pg: &mut PgSession,
        publisher: &Publisher,
        amqp_failed: &Notify,
        shutdown: &CancellationToken,
        backoff: &mut Backoff,
    ) -> Result<(), SessionError> {
        let channel = &self.settings.postgres.channel;
        // The relay's own writes (delivered marks, the lease) need not wait for the
        // WAL flush: a mark lost in a Postgres crash only means the event is sent again,
        // which at-least-once allows. Business transactions are not affected.
        self.bounded(pg.client.batch_execute("SET synchronous_commit = off"))
            .await?;
        // No event can be missed at start-up, by construction:
        // - LISTEN comes before the first claim, so a transaction that commits after that
        //   claim and sent NOTIFY wakes this session;
        // - a transaction that sent no NOTIFY found the relay busy (it does not hold the
        //   idle lock: a new session holds none) and holds the lock shared until it ends,
        //   so the relay cannot go idle before it ends, and polls until then ([`Self::idle`]);
        // - one that found a previous leader idle notified a channel nobody may have
        //   listened on: it committed before this LISTEN, so before the first claim, which
        //   sees it, or after, and then its NOTIFY reaches this session;
        // - readiness (`itrelay_leader`) is reported only once the first claim has run.
        self.bounded(pg.listen(channel)).await?;
        let outbox = self
            .bounded(Outbox::prepare(&pg.client, &self.settings.mapping))
            .await?;
        let copies = self.bounded(Copies::prepare(&pg.client)).await?;
        let mut gates = self.bounded(copies.gates(&pg.client)).await?;
        info!(%channel, "leading: relaying events");
        let mut notified = Vec::new();
        let mut notify_events = NotifyEvents::new(self.settings.relay.accept_notify_events);
        notify_events.announce(channel);
        let mut quiet_polls = 0;
        let mut floor = ClaimFloor::new(Instant::now());
        // Claimed and through the pipeline, not yet published.
        let mut prepared: Option<Prepared> = None;
        // Published, confirms outstanding.
        let mut in_flight: Option<InFlight> = None;
        loop {
            if shutdown.is_cancelled() {
                // The batch in flight is finished; one merely claimed stays pending.
                if let Some(batch) = in_flight.take() {
                    self.finish(pg, &outbox, publisher, batch, &mut gates)
                        .await?;
                }
                return Ok(());
            }
            floor.rewind_if_due(Instant::now());
            self.take_in_notified(
                pg,
                &outbox,
                &mut notified,
                &mut notify_events,
                &mut floor,
                &mut gates,
            )
            .await?;
            let must_settle_first = in_flight.as_ref().is_some_and(|batch| {
                gates.due(Instant::now())
                    || prepared
                        .as_ref()
                        .is_some_and(|next| batch.shares_entity_with(next))
            });
            if must_settle_first {
                if let Some(batch) = in_flight.take() {
                    self.finish(pg, &outbox, publisher, batch, &mut gates)
                        .await?;
                }
            }
            if gates.due(Instant::now()) {
                // Every outcome so far is recorded: the copies held back are all there.
                gates = self
                    .retry_waiting(&pg.client, &outbox, &copies, publisher)
                    .await?;
            }
            let sent = match prepared.take() {
                Some(batch) => Some(self.send(publisher, batch, &gates).await?),
                None => None,
            };
            let settled = match in_flight.take() {
                Some(batch) => Some(self.settle(publisher, batch, &mut gates).await?),
                None => None,
            };
            let outcomes = settled.as_ref().map_or(&[][..], |s| &s.outcomes[..]);
            in_flight = sent;
            let skip = in_flight.as_ref().map_or(&[][..], InFlight::ids);
            let (_, next) = tokio::try_join!(
                self.bounded(outbox.record(&pg.client, outcomes)),
                self.prepare(&pg.client, &outbox, &mut floor, skip),
            )?;
            self.health.set_role(Role::Leader);
            if !outcomes.is_empty() {
                backoff.reset();
            }
            if next.claimed() > 0 {
                prepared = Some(next);
                quiet_polls = 0;
            } else if in_flight.is_some() {
                // Nothing new: settle the batch in flight, then look again.
            } else if quiet_polls < QUIET_POLLS {
                quiet_polls += 1;
                self.pause(BUSY_POLL, amqp_failed, shutdown).await?;
            } else {
                prepared = self
                    .idle(
                        pg,
                        &outbox,
                        &mut floor,
                        &mut gates,
                        amqp_failed,
                        shutdown,
                        &mut notified,
                    )
                    .await?;
                backoff.reset();
                quiet_polls = 0;
            }
        }
    }

    /// Settles the batch in flight and records its outcomes.
    async fn finish(
        &self,
        pg: &PgSession,
        outbox: &Outbox,
        publisher: &Publisher,
        batch: InFlight<'_>,
        gates: &mut Gates,
    ) -> Result<(), SessionError> {
        let settled = self.settle(publisher, batch, gates).await?;
        self.bounded(outbox.record(&pg.client, &settled.outcomes))
            .await
            .map(drop)
    }

    /// Flags the relay idle, so that triggers NOTIFY, and waits for work: a notification,
    /// an event found by the fallback poll, or a waiting copy falling due. The flag is
    /// granted only once every transaction that found the relay busy (and so sends no
    /// NOTIFY) has ended; until then the relay keeps polling, and the look sent right
    /// after the grant sees their events. Returns the claimed batch, if any, with the
    /// flag cleared again.
    #[allow(clippy::too_many_arguments)]
    async fn idle(
        &self,
        pg: &mut PgSession,
        outbox: &Outbox,
        floor: &mut ClaimFloor,
        gates: &mut Gates,
        amqp_failed: &Notify,
        shutdown: &CancellationToken,
        notified: &mut Vec<String>,
    ) -> Result<Option<Prepared>, SessionError> {
        let fallback_poll = Duration::from_millis(self.settings.relay.poll_interval_ms);
        let mut next = loop {
            // Sent first, the flag's grant precedes the claim's snapshot.
            let (granted, next) = tokio::try_join!(
                self.bounded(outbox.set_idle(&pg.client, true)),
                self.prepare(&pg.client, outbox, floor, &[]),
            )?;
            if granted {
                break next;
            }
            if next.claimed() > 0 || shutdown.is_cancelled() || gates.due(Instant::now()) {
                return Ok(Some(next).filter(|batch| batch.claimed() > 0));
            }
            self.pause(NOT_YET_IDLE_POLL, amqp_failed, shutdown).await?;
        };
        while next.claimed() == 0 {
            let mut wait = fallback_poll.min(BACKLOG_EVERY);
            if let Some(until_due) = gates.until_due(Instant::now()) {
                wait = wait.min(until_due);
            }
            let woken = self
                .wait_for_notice(pg, amqp_failed, shutdown, wait, notified, floor, gates)
                .await?;
            if shutdown.is_cancelled() || gates.due(Instant::now()) {
                // Shut down: no relay listens any more, triggers need not NOTIFY. A copy
                // due: the loop sends it, busy again.
                self.bounded(outbox.set_idle(&pg.client, false)).await?;
                return Ok(None);
            }
            if woken {
                let (_, claimed) = tokio::try_join!(
                    self.bounded(outbox.set_idle(&pg.client, false)),
                    self.prepare(&pg.client, outbox, floor, &[]),
                )?;
                return Ok(Some(claimed).filter(|batch| batch.claimed() > 0));
            }
            next = self.prepare(&pg.client, outbox, floor, &[]).await?;
        }
        self.bounded(outbox.set_idle(&pg.client, false)).await?;
        Ok(Some(next))
    }

    /// Sleeps for `wait`, unless shut down or the broker connection fails first.
    async fn pause(
        &self,
        wait: Duration,
        amqp_failed: &Notify,
        shutdown: &CancellationToken,
    ) -> Result<(), SessionError> {
        tokio::select! {
            _ = shutdown.cancelled() => Ok(()),
            _ = amqp_failed.notified() => Err(SessionError::AmqpClosed),
            _ = tokio::time::sleep(wait) => Ok(()),
        }
    }

    /// Waits for a notification, the fallback poll or shutdown, and takes the
    /// notification in ([`take_notice`]). True if a notification came.
    #[allow(clippy::too_many_arguments)]
    async fn wait_for_notice(
        &self,
        pg: &mut PgSession,
        amqp_failed: &Notify,
        shutdown: &CancellationToken,
        fallback_poll: Duration,
        notified: &mut Vec<String>,
        floor: &mut ClaimFloor,
        gates: &mut Gates,
    ) -> Result<bool, SessionError> {
        tokio::select! {
            _ = shutdown.cancelled() => Ok(false),
            _ = amqp_failed.notified() => Err(SessionError::AmqpClosed),
            notice = pg.next_notice() => match notice {
                None => Err(SessionError::PostgresClosed),
                Some(notice) => {
                    take_notice(notice, notified, floor, gates);
                    Ok(true)
                }
            },
            _ = tokio::time::sleep(fallback_poll) => Ok(false),
        }
    }

    /// Takes in the notifications received so far ([`take_notice`]) and stores the
    /// whole-event ones as outbox rows, if they are accepted ([`NotifyEvents`]).
    async fn take_in_notified(
        &self,
        pg: &mut PgSession,
        outbox: &Outbox,
        notified: &mut Vec<String>,
        notify_events: &mut NotifyEvents,
        floor: &mut ClaimFloor,
        gates: &mut Gates,
    ) -> Result<(), SessionError> {
        while let Some(notice) = pg.try_next_notice() {
            take_notice(notice, notified, floor, gates);
        }
        notify_events.admit(notified, Instant::now());
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

/// Keeps a whole-event notification in `notified`, to be stored; a replay's wake-up
/// lowers the floor to the rows it put back to pending, and makes the copies it put back
/// to waiting due.
fn take_notice(
    notice: Notice,
    notified: &mut Vec<String>,
    floor: &mut ClaimFloor,
    gates: &mut Gates,
) {
    match notice {
        Notice::Event(text) => notified.push(text),
        Notice::Wake { from_id: Some(id) } => {
            floor.lower_to(id);
            gates.due_now(Instant::now());
        }
        Notice::Wake { from_id: None } => {}
    }
}

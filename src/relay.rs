//! The relay loop: connect, become the leader, LISTEN, then drain the outbox through the
//! pipeline (redact → decode → enrich → validate → route → publish → record) whenever
//! woken or polled; on losing either service, back off and start over. Nothing is held
//! only in memory: a row is marked delivered after the broker confirmed it.

use std::collections::BTreeSet;
use std::time::Duration;

use time::OffsetDateTime;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::config::Settings;
use crate::decode::decode;
use crate::enrich::{self, enrich};
use crate::envelope::{self, envelope, Message};
use crate::event::{DeadLetter, Event, Rejection, Stage};
use crate::listen::{Notice, PgSession};
use crate::outbox::{fetch_references, Outbox, Outcome};
use crate::publish::{Confirmation, PublishError, Publisher};
use crate::redact::redact;
use crate::route::Router;
use crate::validate::Validators;

/// Polls while busy start this quick and double while they find nothing; past the last,
/// the relay goes idle and waits for NOTIFY.
const BUSY_POLL_FIRST: Duration = Duration::from_millis(1);
const BUSY_POLL_LAST: Duration = Duration::from_millis(64);

/// Why a session with the services ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("rabbitmq: {0}")]
    Amqp(#[from] PublishError),
    #[error("postgres connection closed")]
    PostgresClosed,
}

/// What one batch came to.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchReport {
    pub claimed: usize,
    pub delivered: usize,
    pub dead_lettered: usize,
    pub retried: usize,
}

pub struct Relay {
    settings: Settings,
    router: Router,
    validators: Validators,
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
            &self.settings.amqp.url,
            &self.router,
            self.settings.confirm_timeout(),
        )
        .await?;
        let outcome = async {
            let mut pg = PgSession::connect(&self.settings.postgres.url).await?;
            if !self.await_leadership(&pg, shutdown).await? {
                return Ok(());
            }
            backoff.reset();
            self.lead(&mut pg, &publisher, shutdown).await
        }
        .await;
        publisher.close().await;
        outcome
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
        while !pg.try_lead(channel).await? {
            if !announced {
                info!(%channel, "another relay leads this channel; standing by");
                announced = true;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(false),
                _ = tokio::time::sleep(retry) => {}
            }
        }
        Ok(true)
    }

    /// Drains the outbox while there is work, polling quickly; once a few quick polls in
    /// a row find nothing, flags itself idle (so triggers NOTIFY again) and waits for a
    /// notification or the fallback poll.
    async fn lead(
        &self,
        pg: &mut PgSession,
        publisher: &Publisher,
        shutdown: &CancellationToken,
    ) -> Result<(), SessionError> {
        let channel = &self.settings.postgres.channel;
        pg.listen(channel).await?;
        let outbox = Outbox::prepare(&pg.client).await?;
        outbox.set_idle(&pg.client, false).await?;
        info!(%channel, "leading: relaying events");
        let fallback_poll = Duration::from_millis(self.settings.relay.poll_interval_ms);
        let pause_after_nack = Duration::from_millis(self.settings.relay.reconnect_min_ms);
        let mut notified = Vec::new();
        let mut quiet_poll = BUSY_POLL_FIRST;
        loop {
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
                outbox.set_idle(&pg.client, true).await?;
                let caught = self.relay_batch(&pg.client, &outbox, publisher).await?;
                if caught.claimed == 0 {
                    self.wait_for_notice(pg, shutdown, fallback_poll, &mut notified)
                        .await?;
                }
                outbox.set_idle(&pg.client, false).await?;
                quiet_poll = BUSY_POLL_FIRST;
                continue;
            };
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Waits for a notification, the fallback poll or shutdown; whole-event
    /// notifications are kept in `notified`.
    async fn wait_for_notice(
        &self,
        pg: &mut PgSession,
        shutdown: &CancellationToken,
        fallback_poll: Duration,
        notified: &mut Vec<String>,
    ) -> Result<(), SessionError> {
        tokio::select! {
            _ = shutdown.cancelled() => {}
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
            let stored = outbox.insert_notified(&pg.client, notified).await?;
            info!(events = stored, "took in whole-event notifications");
            notified.clear();
        }
        Ok(())
    }

    /// Claims one batch, relays it, and records each row's outcome.
    pub async fn relay_batch(
        &self,
        client: &Client,
        outbox: &Outbox,
        publisher: &Publisher,
    ) -> Result<BatchReport, SessionError> {
        let rows = outbox.claim(client, self.settings.relay.batch_size).await?;
        if rows.is_empty() {
            return Ok(BatchReport::default());
        }
        let claimed = rows.len();
        let mut events = Vec::with_capacity(claimed);
        let mut dead = Vec::new();
        for mut row in rows {
            redact(&mut row.payload);
            match decode(row) {
                Ok(event) => events.push(event),
                Err(dead_letter) => dead.push(*dead_letter),
            }
        }
        let wanted: BTreeSet<_> = events.iter().flat_map(enrich::wanted).collect();
        let references = fetch_references(client, &wanted).await?;
        let mut ready = Vec::with_capacity(events.len());
        for mut event in events {
            let checked =
                enrich(&mut event, &references).and_then(|()| self.validators.validate(&mut event));
            match checked {
                Ok(()) => ready.push(event),
                Err(rejection) => dead.push(event.into_dead_letter(rejection)),
            }
        }
        let mut outcomes = Vec::with_capacity(claimed);
        dead.extend(self.publish_events(publisher, ready, &mut outcomes).await?);
        self.publish_dead_letters(publisher, dead, &mut outcomes)
            .await?;
        outbox.record(client, &outcomes).await?;
        let mut report = BatchReport {
            claimed,
            ..BatchReport::default()
        };
        for (_, outcome) in &outcomes {
            match outcome {
                Outcome::Delivered => report.delivered += 1,
                Outcome::Failed(_) => report.dead_lettered += 1,
                Outcome::Retry(_) => report.retried += 1,
            }
        }
        Ok(report)
    }

    /// Publishes each event to all its subscribers. Fully confirmed events are recorded
    /// delivered; returned ones come back as dead letters. From the first nacked event on,
    /// nothing is recorded delivered, so the rest are sent again, in order.
    async fn publish_events(
        &self,
        publisher: &Publisher,
        events: Vec<Event>,
        outcomes: &mut Vec<(i64, Outcome)>,
    ) -> Result<Vec<DeadLetter>, PublishError> {
        let app_id = &self.settings.amqp.app_id;
        let messages: Vec<Message> = events.iter().map(|e| envelope(e, app_id)).collect();
        let mut sends = Vec::new();
        let mut senders = Vec::new();
        for (index, (event, message)) in events.iter().zip(&messages).enumerate() {
            for destination in self.router.destinations(event.spec) {
                sends.push((destination.exchange.as_str(), message));
                senders.push(index);
            }
        }
        let confirmations = publisher.publish(&sends).await?;
        let mut nacked = vec![false; events.len()];
        let mut returned: Vec<Option<String>> = vec![None; events.len()];
        for ((index, confirmation), (exchange, _)) in
            senders.into_iter().zip(confirmations).zip(&sends)
        {
            match confirmation {
                Confirmation::Acked => {}
                Confirmation::Nacked => nacked[index] = true,
                Confirmation::Returned {
                    reply_code,
                    reply_text,
                } => {
                    returned[index] = Some(format!(
                        "returned by exchange {exchange} ({reply_code} {reply_text}): no queue is bound for this event type"
                    ));
                }
            }
        }
        let first_nacked = nacked.iter().position(|n| *n).unwrap_or(events.len());
        let mut unroutable = Vec::new();
        for (index, (event, returned)) in events.into_iter().zip(returned).enumerate() {
            if index == first_nacked {
                warn!(event_id = %event.event_id, event_type = event.spec.event_type,
                      "broker nacked the event; it stays pending and is sent again");
                outcomes.push((
                    event.outbox_id,
                    Outcome::Retry("nacked by the broker".into()),
                ));
            } else if index > first_nacked {
                // Left pending, untouched: re-sent after the nacked event to keep order.
            } else if let Some(reason) = returned {
                unroutable.push(event.into_dead_letter(Rejection::new(Stage::Unroutable, reason)));
            } else {
                debug!(event_id = %event.event_id, event_type = event.spec.event_type, "event delivered");
                outcomes.push((event.outbox_id, Outcome::Delivered));
            }
        }
        Ok(unroutable)
    }

    /// Sends rejected events to the dead-letter exchange; once confirmed, their rows are
    /// recorded failed with the reason (and kept for replay).
    async fn publish_dead_letters(
        &self,
        publisher: &Publisher,
        dead: Vec<DeadLetter>,
        outcomes: &mut Vec<(i64, Outcome)>,
    ) -> Result<(), PublishError> {
        if dead.is_empty() {
            return Ok(());
        }
        let now = OffsetDateTime::now_utc();
        let app_id = &self.settings.amqp.app_id;
        let messages: Vec<Message> = dead
            .iter()
            .map(|d| envelope::dead_letter(d, app_id, now))
            .collect();
        let exchange = self.router.dead_letter();
        let sends: Vec<_> = messages.iter().map(|m| (exchange, m)).collect();
        let confirmations = publisher.publish(&sends).await?;
        for (dead_letter, confirmation) in dead.into_iter().zip(confirmations) {
            let DeadLetter {
                outbox_id,
                event_id,
                event_type,
                rejection,
                ..
            } = dead_letter;
            if confirmation == Confirmation::Nacked {
                outcomes.push((
                    outbox_id,
                    Outcome::Retry("dead letter nacked by the broker".into()),
                ));
                continue;
            }
            if matches!(confirmation, Confirmation::Returned { .. }) {
                warn!(%event_id, %exchange, "no queue is bound to the dead-letter exchange; the event is kept as failed in the outbox only");
            }
            warn!(%event_id, %event_type, stage = rejection.stage.as_str(), reason = %rejection.reason, "event dead-lettered");
            outcomes.push((outbox_id, Outcome::Failed(rejection.to_string())));
        }
        Ok(())
    }
}

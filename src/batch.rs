//! One batch through the pipeline: claim the oldest pending rows, redact → decode →
//! enrich → validate each, route and publish them with confirms, dead-letter what cannot
//! be relayed, and record every row's outcome in one statement.

use std::collections::BTreeSet;

use time::OffsetDateTime;
use tokio_postgres::Client;
use tracing::{debug, warn};

use crate::canary;
use crate::catalog;
use crate::decode::decode;
use crate::enrich::{self, enrich};
use crate::envelope::{self, envelope, Message};
use crate::event::{DeadLetter, Event, OutboxRow, Rejection, Stage};
use crate::metrics::{DeadLetterLabels, RelayedLabels, METRICS};
use crate::outbox::{fetch_references, Outbox, Outcome};
use crate::publish::{Confirmation, PublishError, Publisher};
use crate::redact::redact;
use crate::relay::{Relay, SessionError};

/// What one batch came to.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchReport {
    pub claimed: usize,
    pub delivered: usize,
    pub dead_lettered: usize,
    pub retried: usize,
}

impl Relay {
    /// Claims one batch, relays it, and records each row's outcome.
    pub async fn relay_batch(
        &self,
        client: &Client,
        outbox: &Outbox,
        publisher: &Publisher,
    ) -> Result<BatchReport, SessionError> {
        let rows = self
            .bounded(outbox.claim(client, self.settings.relay.batch_size))
            .await?;
        if rows.is_empty() {
            return Ok(BatchReport::default());
        }
        let claimed = rows.len();
        let mut events = Vec::with_capacity(claimed);
        let mut dead = Vec::new();
        let mut canaries = Vec::new();
        for mut row in rows {
            if row.event_type == canary::EVENT_TYPE {
                canaries.push(row);
                continue;
            }
            redact(&mut row.payload);
            match decode(row) {
                Ok(event) => events.push(event),
                Err(dead_letter) => dead.push(*dead_letter),
            }
        }
        let wanted: BTreeSet<_> = events.iter().flat_map(enrich::wanted).collect();
        let references = self.bounded(fetch_references(client, &wanted)).await?;
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
        self.publish_canaries(publisher, canaries, &mut outcomes)
            .await?;
        self.bounded(outbox.record(client, &outcomes)).await?;
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
                for destination in self.router.destinations(event.spec) {
                    METRICS
                        .relayed
                        .get_or_create(&RelayedLabels {
                            event_type: event.spec.event_type,
                            module: destination.module.clone(),
                        })
                        .inc();
                }
                outcomes.push((event.outbox_id, Outcome::Delivered));
            }
        }
        Ok(unroutable)
    }

    /// Sends canary rows to the relay's canary exchange, never to a subscriber. Whether
    /// a canary watcher is bound or not, an acked canary is done.
    async fn publish_canaries(
        &self,
        publisher: &Publisher,
        canaries: Vec<OutboxRow>,
        outcomes: &mut Vec<(i64, Outcome)>,
    ) -> Result<(), PublishError> {
        if canaries.is_empty() {
            return Ok(());
        }
        let app_id = &self.settings.amqp.app_id;
        let messages: Vec<Message> = canaries
            .iter()
            .map(|row| envelope::canary(row, app_id))
            .collect();
        let sends: Vec<_> = messages.iter().map(|m| (self.router.canary(), m)).collect();
        let confirmations = publisher.publish(&sends).await?;
        for (row, confirmation) in canaries.iter().zip(confirmations) {
            let outcome = if confirmation == Confirmation::Nacked {
                Outcome::Retry("canary nacked by the broker".into())
            } else {
                Outcome::Delivered
            };
            outcomes.push((row.id, outcome));
        }
        Ok(())
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
            let known_type = catalog::find(&event_type).map_or("unknown", |spec| spec.event_type);
            METRICS
                .dead_lettered
                .get_or_create(&DeadLetterLabels {
                    event_type: known_type.to_owned(),
                    stage: rejection.stage.as_str(),
                })
                .inc();
            outcomes.push((outbox_id, Outcome::Failed(rejection.to_string())));
        }
        Ok(())
    }
}

//! One batch through the pipeline, in three steps that the relay loop overlaps with the
//! batches before and after it:
//! - [`Relay::prepare`] claims the oldest pending rows and takes each through redact →
//!   decode → enrich → validate;
//! - [`Relay::send`] publishes them (events to their subscribers, rejected ones to the
//!   dead-letter exchange, canaries to the canary exchange) without waiting;
//! - [`Relay::settle`] waits for the confirms and works out each row's outcome, which the
//!   loop records in one statement.

use std::collections::{BTreeSet, HashMap};

use time::OffsetDateTime;
use tokio::time::Instant;
use tokio_postgres::Client;
use tracing::{debug, warn};

use crate::canary;
use crate::catalog::{self, EventSpec};
use crate::decode::decode;
use crate::enrich::{self, enrich};
use crate::envelope::{self, envelope, Message};
use crate::event::{DeadLetter, Event, OutboxRow, Rejection, Stage};
use crate::floor::ClaimFloor;
use crate::metrics::{DeadLetterLabels, RelayedLabels, METRICS};
use crate::outbox::{IdRange, Outbox, Outcome};
use crate::publish::{Confirmation, PublishError, Publisher, Unconfirmed};
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

/// A claimed batch, through the pipeline and ready to publish.
pub struct Prepared {
    ids: Option<IdRange>,
    claimed: usize,
    events: Vec<Event>,
    dead: Vec<DeadLetter>,
    canaries: Vec<OutboxRow>,
}

impl Prepared {
    pub fn claimed(&self) -> usize {
        self.claimed
    }
}

/// A batch published, its confirms on their way.
pub struct InFlight<'r> {
    ids: Option<IdRange>,
    claimed: usize,
    events: Vec<Event>,
    /// Per message published for an event: the event's index and the exchange.
    event_sends: Vec<(usize, &'r str)>,
    dead: Vec<DeadLetter>,
    canary_ids: Vec<i64>,
    /// Confirms of the event messages, then the dead letters, then the canaries.
    unconfirmed: Unconfirmed,
}

impl InFlight<'_> {
    /// The claimed rows' id range: the next claim skips it.
    pub fn ids(&self) -> Option<IdRange> {
        self.ids
    }

    /// Waits for the confirms and records nothing: the rows stay pending and are sent
    /// again, after an earlier batch's nacked event.
    pub async fn abandon(self, publisher: &Publisher) -> Result<(), PublishError> {
        publisher.confirm(self.unconfirmed).await.map(drop)
    }
}

/// A batch confirmed: each row's outcome, to record.
pub struct Settled {
    pub outcomes: Vec<(i64, Outcome)>,
    pub report: BatchReport,
}

impl Relay {
    /// Claims the oldest pending rows from `floor` on and outside `skip` (the batch in
    /// flight) and takes them through the pipeline; what cannot be relayed becomes a dead
    /// letter. Now and then a probe goes first, in the same round trip, to raise the floor.
    pub async fn prepare(
        &self,
        client: &Client,
        outbox: &Outbox,
        floor: &mut ClaimFloor,
        skip: Option<IdRange>,
    ) -> Result<Prepared, SessionError> {
        let probe = async {
            if floor.wants_probe(Instant::now()) {
                outbox.probe(client).await.map(Some)
            } else {
                Ok(None)
            }
        };
        let claim = outbox.claim(client, self.settings.relay.batch_size, floor.start(), skip);
        // Polled first, the probe is sent first: its snapshot precedes the claim's.
        let (probe, rows) = self
            .bounded(async { tokio::try_join!(probe, claim) })
            .await?;
        if let Some(probe) = probe {
            floor.probed(probe, Instant::now());
        }
        floor.claimed(
            rows.first().map(|row| row.id),
            skip.map(|range| range.first),
        );
        let claimed = rows.len();
        let ids = rows.first().zip(rows.last()).map(|(first, last)| IdRange {
            first: first.id,
            last: last.id,
        });
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
        let references = if wanted.is_empty() {
            Default::default()
        } else {
            self.bounded(outbox.fetch_references(client, &wanted))
                .await?
        };
        let mut ready = Vec::with_capacity(events.len());
        for mut event in events {
            let checked =
                enrich(&mut event, &references).and_then(|()| self.validators.validate(&mut event));
            match checked {
                Ok(()) => ready.push(event),
                Err(rejection) => dead.push(event.into_dead_letter(rejection)),
            }
        }
        Ok(Prepared {
            ids,
            claimed,
            events: ready,
            dead,
            canaries,
        })
    }

    /// Publishes a prepared batch without waiting for the confirms.
    pub async fn send<'r>(
        &'r self,
        publisher: &Publisher,
        prepared: Prepared,
    ) -> Result<InFlight<'r>, PublishError> {
        let Prepared {
            ids,
            claimed,
            events,
            dead,
            canaries,
        } = prepared;
        let app_id = &self.settings.amqp.app_id;
        let cloudevents = &self.settings.cloudevents;
        let event_messages: Vec<Message> = events
            .iter()
            .map(|e| envelope(e, app_id, cloudevents))
            .collect();
        let dead_messages = self.dead_letter_messages(&dead);
        let canary_messages: Vec<Message> = canaries
            .iter()
            .map(|row| envelope::canary(row, app_id))
            .collect();
        let mut event_sends = Vec::with_capacity(events.len());
        let mut sends = Vec::with_capacity(events.len() + dead.len() + canaries.len());
        for (index, (event, message)) in events.iter().zip(&event_messages).enumerate() {
            for destination in self.router.destinations(event.spec) {
                let exchange = destination.exchange.as_str();
                event_sends.push((index, exchange));
                sends.push((exchange, message));
            }
        }
        sends.extend(dead_messages.iter().map(|m| (self.router.dead_letter(), m)));
        sends.extend(canary_messages.iter().map(|m| (self.router.canary(), m)));
        let unconfirmed = publisher.send(&sends).await?;
        Ok(InFlight {
            ids,
            claimed,
            events,
            event_sends,
            dead,
            canary_ids: canaries.iter().map(|row| row.id).collect(),
            unconfirmed,
        })
    }

    /// Waits for a batch's confirms and works out each row's outcome. Returned events
    /// are dead-lettered here (published and confirmed before this returns).
    pub async fn settle(
        &self,
        publisher: &Publisher,
        in_flight: InFlight<'_>,
    ) -> Result<Settled, PublishError> {
        let InFlight {
            claimed,
            events,
            event_sends,
            dead,
            canary_ids,
            unconfirmed,
            ..
        } = in_flight;
        let mut confirmations = publisher.confirm(unconfirmed).await?;
        let canary_confirmations = confirmations.split_off(event_sends.len() + dead.len());
        let dead_confirmations = confirmations.split_off(event_sends.len());
        let mut outcomes = Vec::with_capacity(claimed);
        let unroutable = self.event_outcomes(events, &event_sends, confirmations, &mut outcomes);
        dead_letter_outcomes(dead, dead_confirmations, &mut outcomes);
        if !unroutable.is_empty() {
            let messages = self.dead_letter_messages(&unroutable);
            let sends: Vec<_> = messages
                .iter()
                .map(|m| (self.router.dead_letter(), m))
                .collect();
            let confirmations = publisher.publish(&sends).await?;
            dead_letter_outcomes(unroutable, confirmations, &mut outcomes);
        }
        for (id, confirmation) in canary_ids.into_iter().zip(canary_confirmations) {
            let outcome = if confirmation == Confirmation::Nacked {
                Outcome::Retry("canary nacked by the broker".into())
            } else {
                // Whether a canary watcher is bound or not, an acked canary is done.
                Outcome::Delivered
            };
            outcomes.push((id, outcome));
        }
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
        Ok(Settled { outcomes, report })
    }

    fn dead_letter_messages(&self, dead: &[DeadLetter]) -> Vec<Message> {
        let now = OffsetDateTime::now_utc();
        dead.iter()
            .map(|d| envelope::dead_letter(d, &self.settings.amqp.app_id, now))
            .collect()
    }

    /// Events fully confirmed are delivered; returned ones come back as dead letters.
    /// From the first nacked event on, nothing is recorded delivered, so the rest are
    /// sent again, in order.
    fn event_outcomes(
        &self,
        events: Vec<Event>,
        event_sends: &[(usize, &str)],
        confirmations: Vec<Confirmation>,
        outcomes: &mut Vec<(i64, Outcome)>,
    ) -> Vec<DeadLetter> {
        let mut nacked = vec![false; events.len()];
        let mut returned: Vec<Option<String>> = vec![None; events.len()];
        for (&(index, exchange), confirmation) in event_sends.iter().zip(confirmations) {
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
        // Delivered events per type, counted into the metrics once per batch.
        let mut delivered: HashMap<&'static str, (&'static EventSpec, u64)> = HashMap::new();
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
                delivered
                    .entry(event.spec.event_type)
                    .or_insert((event.spec, 0))
                    .1 += 1;
                outcomes.push((event.outbox_id, Outcome::Delivered));
            }
        }
        for (spec, count) in delivered.into_values() {
            for destination in self.router.destinations(spec) {
                METRICS
                    .relayed
                    .get_or_create(&RelayedLabels {
                        event_type: spec.event_type,
                        module: destination.module.clone(),
                    })
                    .inc_by(count);
            }
        }
        unroutable
    }
}

/// Dead letters confirmed are recorded failed with the reason (and kept for replay);
/// nacked ones stay pending.
fn dead_letter_outcomes(
    dead: Vec<DeadLetter>,
    confirmations: Vec<Confirmation>,
    outcomes: &mut Vec<(i64, Outcome)>,
) {
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
            warn!(%event_id, "no queue is bound to the dead-letter exchange; the event is kept as failed in the outbox only");
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
}

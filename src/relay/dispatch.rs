//! One batch's I/O, in three steps that the leader overlaps with the batches before and
//! after it:
//! - [`Dispatch::prepare`] claims the oldest pending rows and takes them through the
//!   pipeline ([`crate::pipeline`]);
//! - [`Dispatch::send`] publishes them (each event to each subscriber as its own copy,
//!   rejected ones to the dead-letter exchange, canaries to the canary exchange) without
//!   waiting; a copy whose entity has an earlier copy waiting for that module is not
//!   published but waits behind it ([`Gates`]);
//! - [`Dispatch::settle`] waits for the confirms, publishes the later rounds of copies,
//!   and works out each row's outcome ([`Sent::settle`]), which the leader records in
//!   one statement.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use futures_util::FutureExt;
use time::OffsetDateTime;
use tokio::time::Instant;
use tokio_postgres::Client;
use tracing::warn;

use super::batch::{Answers, Outgoing, Prepared, RoundVerdicts, Sent, Settled};
use super::{Relay, SessionError};
use crate::catalog;
use crate::delivery::{self, Answer, Gates, Verdict};
use crate::envelope::{self, envelope};
use crate::event::DeadLetter;
use crate::floor::ClaimFloor;
use crate::metrics::{DeadLetterLabels, RelayedLabels, METRICS};
use crate::outbox::{claimed_id, Claimed, Outbox};
use crate::pipeline::{Decoded, Processed};
use crate::route::Destination;
use crate::sink::{Confirmation, Message, Sink};
use crate::wal::Ingest;

/// A batch published, its confirms on their way.
pub(crate) struct InFlight<'r, S: Sink> {
    sent: Sent<'r, Message>,
    /// Confirms of the first round of copies, then the dead letters, then the canaries.
    unconfirmed: S::Pending,
    sent_at: Instant,
}

impl<S: Sink> InFlight<'_, S> {
    /// The claimed rows: the next claim steps over exactly these.
    pub fn ids(&self) -> &[i64] {
        &self.sent.ids
    }

    /// How long ago the batch was published.
    pub fn age(&self, now: Instant) -> Duration {
        now.duration_since(self.sent_at)
    }

    /// Whether `next` must wait for this batch's confirms ([`Sent::shares_entity_with`]).
    pub fn shares_entity_with(&self, next: &Prepared) -> bool {
        self.sent.shares_entity_with(next)
    }
}

/// Batches through the pipeline to the broker and back, for one leading session.
pub(crate) struct Dispatch<'a, S> {
    pub relay: &'a Relay,
    pub sink: &'a S,
    /// Under WAL capture: moves the slot's events into the outbox before each claim, on a
    /// session of its own.
    pub wal: Option<Ingest>,
}

impl<'a, S: Sink> Dispatch<'a, S> {
    /// Claims the oldest pending rows from `floor` on but for those `in_flight`, and
    /// takes them through the pipeline. Under WAL capture the events of transactions
    /// committed since the last claim are moved into the outbox first. Now and then a
    /// probe goes first, in the same round trip, to raise the floor.
    pub async fn prepare(
        &self,
        client: &Client,
        outbox: &Outbox,
        floor: &mut ClaimFloor,
        in_flight: &[i64],
    ) -> Result<Prepared, SessionError> {
        // The move, when due, commits before the claim is sent: the claim's snapshot sees
        // the moved events.
        if let Some(ingest) = self.wal.as_ref().filter(|i| i.is_due(Instant::now())) {
            ingest.run().await?;
        }
        let probe = async {
            if floor.wants_probe(Instant::now()) {
                outbox.probe(client).await.map(Some)
            } else {
                Ok(None)
            }
        };
        let claim = outbox.claim(
            client,
            self.relay.settings.relay.batch_size,
            floor.start(),
            in_flight,
        );
        // Polled first, the probe is sent first: its snapshot precedes the claim's.
        let (probe, rows) = self
            .relay
            .bounded(async { tokio::try_join!(probe, claim) })
            .await?;
        if let Some(probe) = probe {
            floor.probed(probe, Instant::now());
        }
        let ids: Vec<i64> = rows.iter().map(claimed_id).collect();
        floor.claimed(ids.first().copied(), in_flight.iter().min().copied());
        let processed = self.process(client, outbox, rows).await?;
        Ok(Prepared { ids, processed })
    }

    /// Under WAL capture, makes the next claim move the slot's events first, however
    /// recently the last move ran: the look that lets the relay go idle, and the one a
    /// notification or the fallback poll wakes it for, must see every committed event.
    pub fn move_before_next_claim(&self) {
        if let Some(ingest) = &self.wal {
            ingest.make_due();
        }
    }

    /// Takes claimed rows through the pipeline, fetching the reference rows enrichment
    /// needs in one round trip; what cannot be relayed becomes a dead letter, one row at
    /// a time.
    pub async fn process(
        &self,
        client: &Client,
        outbox: &Outbox,
        rows: Vec<Claimed>,
    ) -> Result<Processed, SessionError> {
        let decoded = Decoded::new(rows);
        let wanted = decoded.wanted();
        let references = if wanted.is_empty() {
            Default::default()
        } else {
            self.relay
                .bounded(outbox.references.fetch(client, &wanted))
                .await?
        };
        Ok(decoded.complete(&references, &self.relay.validators))
    }

    /// The message of each event, the same for all its copies.
    pub fn messages(&self, processed: &Processed) -> Vec<Message> {
        let settings = &self.relay.settings;
        processed
            .events
            .iter()
            .map(|e| envelope(e, &settings.cloudevents))
            .collect()
    }

    /// Publishes a prepared batch without waiting for the confirms: the first round of
    /// its copies, its dead letters and canaries. Copies `gates` block wait behind.
    pub async fn send(
        &self,
        prepared: Prepared,
        gates: &Gates,
    ) -> Result<InFlight<'a, S>, SessionError> {
        let Prepared { ids, processed } = prepared;
        let router = &self.relay.router;
        let messages = self.messages(&processed);
        let Processed {
            events,
            dead,
            canaries,
        } = processed;
        let dead_messages = self.dead_letter_messages(&dead);
        let canary_messages: Vec<Message> = canaries.iter().map(envelope::canary).collect();
        let mut copies = Vec::with_capacity(events.len());
        let mut held = Vec::new();
        for (index, event) in events.iter().enumerate() {
            for destination in router.destinations(event.spec) {
                if gates.blocks(&destination.module, event.entity.as_deref()) {
                    held.push((index, destination));
                } else {
                    copies.push((index, destination));
                }
            }
        }
        let outgoing = Outgoing::new(events, messages, copies);
        let (_, mut sends) = outgoing.round(0);
        sends.extend(dead_messages.iter().map(|m| (router.dead_letter(), m)));
        sends.extend(canary_messages.iter().map(|m| (router.canary(), m)));
        let unconfirmed = self
            .sink
            .send(&sends)
            .await
            .map_err(SessionError::sink::<S>)?;
        Ok(InFlight {
            sent: Sent {
                ids,
                outgoing,
                held,
                dead,
                canary_ids: canaries.iter().map(|row| row.id).collect(),
            },
            unconfirmed,
            sent_at: Instant::now(),
        })
    }

    /// Resolves once every confirm of the first round of `in_flight` is in: settling it
    /// then waits for nothing but its later rounds, if any. May be dropped at any point.
    pub fn confirmed<'s>(
        &'s self,
        in_flight: &'s InFlight<'a, S>,
    ) -> impl Future<Output = ()> + Send + use<'s, 'a, S> {
        self.sink.confirmed(&in_flight.unconfirmed)
    }

    /// Whether every confirm of the first round of `in_flight` is in by now.
    pub fn is_confirmed(&self, in_flight: &InFlight<'a, S>) -> bool {
        self.confirmed(in_flight).now_or_never().is_some()
    }

    /// Waits for a batch's confirms, publishes its later rounds of copies, and works out
    /// each row's outcome. Copies that now wait block their (module, entity) in `gates`;
    /// copies dead-lettered for their module are published to the dead-letter exchange
    /// (and confirmed) here.
    pub async fn settle(
        &self,
        in_flight: InFlight<'a, S>,
        gates: &mut Gates,
    ) -> Result<Settled<'a>, SessionError> {
        let InFlight {
            sent, unconfirmed, ..
        } = in_flight;
        let first_round = sent.outgoing.round(0).0.len();
        let mut confirmations = self
            .sink
            .confirm(unconfirmed)
            .await
            .map_err(SessionError::sink::<S>)?;
        let canaries = confirmations.split_off(first_round + sent.dead.len());
        let dead = confirmations.split_off(first_round);
        let copies = self.publish_rounds(&sent.outgoing, confirmations).await?;
        for (dead_letter, confirmation) in sent.dead.iter().zip(&dead) {
            log_dead_letter(dead_letter, confirmation);
        }
        let first_retry = Duration::from_millis(self.relay.settings.delivery.retry_min_ms);
        let answers = Answers {
            copies,
            dead,
            canaries,
        };
        let settled = sent.settle(answers, first_retry, Instant::now(), gates);
        count_relayed(&settled.relayed);
        Ok(settled)
    }

    /// Takes the confirmations of the first round of `outgoing` and publishes the later
    /// rounds, each once the one before is confirmed; returns each copy's verdict. A copy
    /// whose (module, entity) had a copy nacked (or held back) in an earlier round is
    /// not published: it waits behind it. Copies whose module's policy dead-letters them
    /// are published to the dead-letter exchange, naming their module, and confirmed
    /// here; one the broker nacks waits instead.
    pub async fn publish_rounds(
        &self,
        outgoing: &Outgoing<'_, Message>,
        first_round: Vec<Confirmation>,
    ) -> Result<Vec<Verdict>, SessionError> {
        let mut rounds = RoundVerdicts::new(outgoing);
        let mut confirmations = first_round;
        for round in 0..=outgoing.last_round() {
            let sent = rounds.take_round(round);
            if round > 0 {
                let sends: Vec<_> = sent.iter().map(|&i| outgoing.send(i)).collect();
                confirmations = self.publish(&sends).await?;
            }
            let verdicts = sent
                .iter()
                .zip(std::mem::take(&mut confirmations))
                .map(|(&i, confirmation)| self.verdict(outgoing.copies[i].1, confirmation))
                .collect::<Vec<_>>();
            rounds.judge(&sent, verdicts);
        }
        let verdicts = rounds.finish();
        let letters: Vec<(usize, DeadLetter)> = verdicts
            .iter()
            .enumerate()
            .filter_map(|(i, verdict)| match verdict {
                Verdict::DeadLetter(rejection) => {
                    let (event, destination) = outgoing.copies[i];
                    let letter = outgoing.events[event]
                        .copy_dead_letter(&destination.module, rejection.clone());
                    Some((i, letter))
                }
                _ => None,
            })
            .collect();
        self.dead_letter_copies(verdicts, letters).await
    }

    /// What a copy to `destination` comes to from the broker's answer.
    fn verdict(&self, destination: &Destination, confirmation: Confirmation) -> Verdict {
        let policy = self
            .relay
            .settings
            .delivery
            .unroutable_for(&destination.module);
        delivery::verdict(answer(destination, confirmation), policy)
    }

    /// Publishes the dead letters standing for single copies (`letters`: the index of
    /// the copy's verdict and its dead letter) and confirms them; a nacked one turns its
    /// copy's verdict to waiting.
    pub async fn dead_letter_copies(
        &self,
        mut verdicts: Vec<Verdict>,
        letters: Vec<(usize, DeadLetter)>,
    ) -> Result<Vec<Verdict>, SessionError> {
        if letters.is_empty() {
            return Ok(verdicts);
        }
        let dead: Vec<DeadLetter> = letters.iter().map(|(_, d)| d.clone()).collect();
        let messages = self.dead_letter_messages(&dead);
        let dead_letter = self.relay.router.dead_letter();
        let sends: Vec<_> = messages.iter().map(|m| (dead_letter, m)).collect();
        let confirmations = self.publish(&sends).await?;
        for ((index, letter), confirmation) in letters.into_iter().zip(confirmations) {
            if confirmation == Confirmation::Nacked {
                verdicts[index] = Verdict::Wait("dead letter nacked by the broker".to_owned());
            } else {
                warn!(event_id = %letter.event_id, event_type = %letter.event_type,
                      module = letter.module.as_deref().unwrap_or_default(),
                      reason = %letter.rejection.reason, "copy dead-lettered for its module");
                count_dead_letter(&letter);
            }
        }
        Ok(verdicts)
    }

    /// Sends `sends` and waits for their confirmations.
    pub async fn publish(
        &self,
        sends: &[(&str, &Message)],
    ) -> Result<Vec<Confirmation>, SessionError> {
        self.sink
            .publish(sends)
            .await
            .map_err(SessionError::sink::<S>)
    }

    fn dead_letter_messages(&self, dead: &[DeadLetter]) -> Vec<Message> {
        let now = OffsetDateTime::now_utc();
        dead.iter().map(|d| envelope::dead_letter(d, now)).collect()
    }
}

/// The broker's answer for one copy, as [`delivery::verdict`] takes it.
fn answer(destination: &Destination, confirmation: Confirmation) -> Answer {
    match confirmation {
        Confirmation::Acked => Answer::Confirmed,
        Confirmation::Nacked => Answer::Nacked,
        Confirmation::Returned {
            reply_code,
            reply_text,
        } => Answer::Returned(format!(
            "returned by exchange {} ({reply_code} {reply_text}): no queue is bound for this event type",
            destination.exchange
        )),
    }
}

/// Logs and counts a dead letter the broker took; a nacked one is sent again.
fn log_dead_letter(dead_letter: &DeadLetter, confirmation: &Confirmation) {
    if *confirmation == Confirmation::Nacked {
        return;
    }
    if matches!(confirmation, Confirmation::Returned { .. }) {
        warn!(event_id = %dead_letter.event_id, "no queue is bound to the dead-letter exchange; the event is kept as failed in the outbox only");
    }
    warn!(event_id = %dead_letter.event_id, event_type = %dead_letter.event_type,
          stage = dead_letter.rejection.stage.as_str(), reason = %dead_letter.rejection.reason,
          "event dead-lettered");
    count_dead_letter(dead_letter);
}

/// Counts confirmed copies into the metrics, once per (event type, module) and batch.
fn count_relayed(relayed: &HashMap<(&'static str, &str), u64>) {
    for (&(event_type, module), &count) in relayed {
        METRICS
            .relayed
            .get_or_create(&RelayedLabels {
                event_type,
                module: module.to_owned(),
            })
            .inc_by(count);
    }
}

fn count_dead_letter(dead_letter: &DeadLetter) {
    let known_type =
        catalog::find(&dead_letter.event_type).map_or("unknown", |spec| spec.event_type);
    METRICS
        .dead_lettered
        .get_or_create(&DeadLetterLabels {
            event_type: known_type.to_owned(),
            stage: dead_letter.rejection.stage.as_str(),
        })
        .inc();
}

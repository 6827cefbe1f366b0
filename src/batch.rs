//! One batch through the pipeline, in three steps that the relay loop overlaps with the
//! batches before and after it:
//! - [`Relay::prepare`] claims the oldest pending rows and takes each through redact →
//!   decode → enrich → validate ([`Relay::process`]);
//! - [`Relay::send`] publishes them (each event to each subscriber as its own copy,
//!   rejected ones to the dead-letter exchange, canaries to the canary exchange) without
//!   waiting; a copy whose entity has an earlier copy waiting for that module is not
//!   published but waits behind it ([`Gates`]);
//! - [`Relay::settle`] waits for the confirms and works out each copy's outcome
//!   ([`crate::delivery::judge`]) and so each row's, which the loop records in one
//!   statement.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::time::Instant;
use tokio_postgres::Client;
use tracing::{debug, warn};

use crate::catalog;
use crate::delivery::{self, Answer, CopyRecord, CopyState, Gates, Verdict, BEHIND};
use crate::envelope::{self, envelope, Message};
use crate::event::{DeadLetter, Event};
use crate::pipeline::{Decoded, Processed};
use crate::floor::ClaimFloor;
use crate::metrics::{DeadLetterLabels, RelayedLabels, METRICS};
use crate::outbox::{claimed_id, Claimed, Outbox, Outcome};
use crate::publish::{Confirmation, PublishError, Publisher, Unconfirmed};
use crate::relay::{Relay, SessionError};
use crate::route::Destination;

/// What one batch came to.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchReport {
    pub claimed: usize,
    pub delivered: usize,
    pub dead_lettered: usize,
    /// Rows sent again as a whole (a nacked dead letter or canary).
    pub retried: usize,
    /// Copies left waiting for a retry.
    pub waiting: usize,
}

/// A claimed batch, through the pipeline and ready to publish.
pub struct Prepared {
    ids: Vec<i64>,
    processed: Processed,
}

impl Prepared {
    pub fn claimed(&self) -> usize {
        self.ids.len()
    }
}

/// Copies to publish (each event to each of its subscribers), in send order, with the
/// publish round of each ([`delivery::rounds`]).
pub(crate) struct Outgoing<'r> {
    pub events: Vec<Event>,
    /// The message of each event, the same for all its copies.
    pub messages: Vec<Message>,
    /// Per copy: the event's index and its destination.
    pub copies: Vec<(usize, &'r Destination)>,
    pub rounds: Vec<usize>,
}

impl<'r> Outgoing<'r> {
    pub fn new(
        events: Vec<Event>,
        messages: Vec<Message>,
        copies: Vec<(usize, &'r Destination)>,
    ) -> Self {
        let keys: Vec<_> = copies
            .iter()
            .map(|&(i, d)| (d.module.as_str(), events[i].entity.as_deref()))
            .collect();
        let rounds = delivery::rounds(&keys);
        Self {
            events,
            messages,
            copies,
            rounds,
        }
    }

    /// The copies of `round`: their indexes and what to publish.
    pub fn round(&self, round: usize) -> (Vec<usize>, Vec<(&str, &Message)>) {
        (0..self.copies.len())
            .filter(|&i| self.rounds[i] == round)
            .map(|i| {
                let (event, destination) = self.copies[i];
                (i, (destination.exchange.as_str(), &self.messages[event]))
            })
            .unzip()
    }
}

/// A batch published, its confirms on their way.
pub struct InFlight<'r> {
    ids: Vec<i64>,
    outgoing: Outgoing<'r>,
    /// Copies not published: they wait behind an earlier copy of their entity.
    held: Vec<(usize, &'r Destination)>,
    dead: Vec<DeadLetter>,
    canary_ids: Vec<i64>,
    /// Confirms of the first round of copies, then the dead letters, then the canaries.
    unconfirmed: Unconfirmed,
}

impl InFlight<'_> {
    /// The claimed rows: the next claim steps over exactly these.
    pub fn ids(&self) -> &[i64] {
        &self.ids
    }

    /// Whether `next` holds an event of an entity this batch holds one of. Then this
    /// batch is settled before `next` is sent: were one of its copies nacked, the
    /// entity's copies in `next` must wait behind it, not overtake it.
    pub fn shares_entity_with(&self, next: &Prepared) -> bool {
        let mine: HashSet<&str> = self
            .outgoing
            .events
            .iter()
            .filter_map(|e| e.entity.as_deref())
            .collect();
        !mine.is_empty()
            && next
                .processed
                .events
                .iter()
                .filter_map(|e| e.entity.as_deref())
                .any(|entity| mine.contains(entity))
    }
}

/// A batch confirmed: each row's outcome, to record.
pub struct Settled {
    pub outcomes: Vec<(i64, Outcome)>,
    pub report: BatchReport,
}

impl Relay {
    /// Claims the oldest pending rows from `floor` on but for those `in_flight`, and
    /// takes them through the pipeline. Now and then a probe goes first, in the same
    /// round trip, to raise the floor.
    pub async fn prepare(
        &self,
        client: &Client,
        outbox: &Outbox,
        floor: &mut ClaimFloor,
        in_flight: &[i64],
    ) -> Result<Prepared, SessionError> {
        let probe = async {
            if floor.wants_probe(Instant::now()) {
                outbox.probe(client).await.map(Some)
            } else {
                Ok(None)
            }
        };
        let claim = outbox.claim(
            client,
            self.settings.relay.batch_size,
            floor.start(),
            in_flight,
        );
        // Polled first, the probe is sent first: its snapshot precedes the claim's.
        let (probe, rows) = self
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

    /// Takes claimed rows through the pipeline ([`crate::pipeline`]), fetching the
    /// reference rows enrichment needs in one round trip; what cannot be relayed becomes
    /// a dead letter, one row at a time.
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
            self.bounded(outbox.fetch_references(client, &wanted))
                .await?
        };
        Ok(decoded.complete(&references, &self.validators))
    }

    /// Publishes a prepared batch without waiting for the confirms: the first round of
    /// its copies, its dead letters and canaries. Copies `gates` block wait behind.
    pub async fn send<'r>(
        &'r self,
        publisher: &Publisher,
        prepared: Prepared,
        gates: &Gates,
    ) -> Result<InFlight<'r>, PublishError> {
        let Prepared {
            ids,
            processed:
                Processed {
                    events,
                    dead,
                    canaries,
                },
        } = prepared;
        let app_id = &self.settings.amqp.app_id;
        let cloudevents = &self.settings.cloudevents;
        let messages: Vec<Message> = events
            .iter()
            .map(|e| envelope(e, app_id, cloudevents))
            .collect();
        let dead_messages = self.dead_letter_messages(&dead);
        let canary_messages: Vec<Message> = canaries
            .iter()
            .map(|row| envelope::canary(row, app_id))
            .collect();
        let mut copies = Vec::with_capacity(events.len());
        let mut held = Vec::new();
        for (index, event) in events.iter().enumerate() {
            for destination in self.router.destinations(event.spec) {
                if gates.blocks(&destination.module, event.entity.as_deref()) {
                    held.push((index, destination));
                } else {
                    copies.push((index, destination));
                }
            }
        }
        let outgoing = Outgoing::new(events, messages, copies);
        let (_, mut sends) = outgoing.round(0);
        sends.extend(dead_messages.iter().map(|m| (self.router.dead_letter(), m)));
        sends.extend(canary_messages.iter().map(|m| (self.router.canary(), m)));
        let unconfirmed = publisher.send(&sends).await?;
        Ok(InFlight {
            ids,
            outgoing,
            held,
            dead,
            canary_ids: canaries.iter().map(|row| row.id).collect(),
            unconfirmed,
        })
    }

    /// Waits for a batch's confirms, publishes its later rounds of copies, and works out
    /// each copy's outcome, and so each row's. Copies that now wait block their (module,
    /// entity) in `gates`; copies dead-lettered for their module are published to the
    /// dead-letter exchange (and confirmed) here.
    pub async fn settle(
        &self,
        publisher: &Publisher,
        in_flight: InFlight<'_>,
        gates: &mut Gates,
    ) -> Result<Settled, PublishError> {
        let InFlight {
            ids,
            outgoing,
            held,
            dead,
            canary_ids,
            unconfirmed,
        } = in_flight;
        let first_round = outgoing.round(0).0.len();
        let mut confirmations = publisher.confirm(unconfirmed).await?;
        let canary_confirmations = confirmations.split_off(first_round + dead.len());
        let dead_confirmations = confirmations.split_off(first_round);
        let verdicts = self
            .publish_rounds(publisher, &outgoing, confirmations)
            .await?;
        let first_retry = Duration::from_millis(self.settings.delivery.retry_min_ms);
        let now = Instant::now();
        let events = &outgoing.events;
        let mut records: Vec<Vec<CopyRecord>> = vec![Vec::new(); events.len()];
        for &(index, destination) in &held {
            records[index].push(CopyRecord {
                module: destination.module.clone(),
                state: CopyState::Waiting,
                error: BEHIND.to_owned(),
                retry_in: Duration::ZERO,
            });
        }
        let mut relayed: HashMap<(&'static str, &str), u64> = HashMap::new();
        let mut confirmed = vec![false; events.len()];
        for (&(index, destination), verdict) in outgoing.copies.iter().zip(verdicts) {
            let event = &events[index];
            let (state, error) = match verdict {
                Verdict::Confirmed => {
                    confirmed[index] = true;
                    *relayed
                        .entry((event.spec.event_type, destination.module.as_str()))
                        .or_default() += 1;
                    continue;
                }
                Verdict::Wait(reason) => {
                    gates.block(
                        &destination.module,
                        event.entity.as_deref(),
                        now,
                        first_retry,
                    );
                    (CopyState::Waiting, reason)
                }
                Verdict::DeadLetter(rejection) => (CopyState::Failed, rejection.to_string()),
            };
            records[index].push(CopyRecord {
                module: destination.module.clone(),
                state,
                error,
                retry_in: first_retry,
            });
        }
        count_relayed(relayed);
        let mut outcomes = Vec::with_capacity(ids.len());
        let mut report = BatchReport {
            claimed: ids.len(),
            ..BatchReport::default()
        };
        for ((event, records), confirmed) in events.iter().zip(records).zip(confirmed) {
            let waiting = records
                .iter()
                .filter(|r| r.state == CopyState::Waiting)
                .count();
            report.waiting += waiting;
            let outcome = match records.first() {
                None => {
                    debug!(event_id = %event.event_id, event_type = event.spec.event_type, "event delivered");
                    Outcome::Delivered(records)
                }
                // Dead-lettered for every subscriber: the event failed as a whole, and a
                // replay sends it to them all.
                Some(first) if !confirmed && waiting == 0 => Outcome::Failed(first.error.clone()),
                Some(_) => Outcome::Delivered(records),
            };
            outcomes.push((event.outbox_id, outcome));
        }
        dead_letter_outcomes(dead, dead_confirmations, &mut outcomes);
        for (id, confirmation) in canary_ids.into_iter().zip(canary_confirmations) {
            let outcome = if confirmation == Confirmation::Nacked {
                Outcome::Retry("canary nacked by the broker".into())
            } else {
                // Whether a canary watcher is bound or not, an acked canary is done.
                Outcome::Delivered(Vec::new())
            };
            outcomes.push((id, outcome));
        }
        for (_, outcome) in &outcomes {
            match outcome {
                Outcome::Delivered(_) => report.delivered += 1,
                Outcome::Failed(_) => report.dead_lettered += 1,
                Outcome::Retry(_) => report.retried += 1,
            }
        }
        Ok(Settled { outcomes, report })
    }

    /// Takes the confirmations of the first round of `outgoing` and publishes the later
    /// rounds, each once the one before is confirmed; returns each copy's verdict. A copy
    /// whose (module, entity) had a copy nacked (or held back) in an earlier round is
    /// not published: it waits behind it. Copies whose module's policy dead-letters them
    /// are published to the dead-letter exchange, naming their module, and confirmed
    /// here; one the broker nacks waits instead.
    pub(crate) async fn publish_rounds(
        &self,
        publisher: &Publisher,
        outgoing: &Outgoing<'_>,
        first_round: Vec<Confirmation>,
    ) -> Result<Vec<Verdict>, PublishError> {
        let mut verdicts: Vec<Option<Verdict>> = vec![None; outgoing.copies.len()];
        let mut waiting: HashSet<(&str, &str)> = HashSet::new();
        let last_round = outgoing.rounds.iter().copied().max().unwrap_or(0);
        let mut confirmations = first_round;
        for round in 0..=last_round {
            let (members, _) = outgoing.round(round);
            let key = |i: usize| {
                let (event, destination) = outgoing.copies[i];
                outgoing.events[event]
                    .entity
                    .as_deref()
                    .map(|entity| (destination.module.as_str(), entity))
            };
            if round > 0 {
                let mut sends = Vec::new();
                for &i in &members {
                    if key(i).is_some_and(|k| waiting.contains(&k)) {
                        verdicts[i] = Some(Verdict::Wait(BEHIND.to_owned()));
                    } else {
                        let (event, destination) = outgoing.copies[i];
                        sends.push((destination.exchange.as_str(), &outgoing.messages[event]));
                    }
                }
                confirmations = publisher.publish(&sends).await?;
            }
            let sent: Vec<usize> = members
                .into_iter()
                .filter(|&i| verdicts[i].is_none())
                .collect();
            for (i, confirmation) in sent.into_iter().zip(std::mem::take(&mut confirmations)) {
                let (_, destination) = outgoing.copies[i];
                let policy = self.settings.delivery.unroutable_for(&destination.module);
                let verdict = delivery::verdict(answer(destination, confirmation), policy);
                if let (Verdict::Wait(_), Some(k)) = (&verdict, key(i)) {
                    waiting.insert(k);
                }
                verdicts[i] = Some(verdict);
            }
        }
        // Cannot fail: every copy is in one round, and each round gives each a verdict.
        let verdicts: Vec<Verdict> = verdicts
            .into_iter()
            .map(|v| v.unwrap_or(Verdict::Confirmed))
            .collect();
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
        self.dead_letter_copies(publisher, verdicts, letters).await
    }

    /// Publishes the dead letters standing for single copies (`letters`: the index of
    /// the copy's verdict and its dead letter) and confirms them; a nacked one turns its
    /// copy's verdict to waiting.
    pub(crate) async fn dead_letter_copies(
        &self,
        publisher: &Publisher,
        mut verdicts: Vec<Verdict>,
        letters: Vec<(usize, DeadLetter)>,
    ) -> Result<Vec<Verdict>, PublishError> {
        if letters.is_empty() {
            return Ok(verdicts);
        }
        let dead: Vec<DeadLetter> = letters.iter().map(|(_, d)| d.clone()).collect();
        let messages = self.dead_letter_messages(&dead);
        let sends: Vec<_> = messages
            .iter()
            .map(|m| (self.router.dead_letter(), m))
            .collect();
        let confirmations = publisher.publish(&sends).await?;
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

    fn dead_letter_messages(&self, dead: &[DeadLetter]) -> Vec<Message> {
        let now = OffsetDateTime::now_utc();
        dead.iter()
            .map(|d| envelope::dead_letter(d, &self.settings.amqp.app_id, now))
            .collect()
    }
}

/// The broker's answer for one copy, as [`delivery::judge`] takes it.
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

/// Counts confirmed copies into the metrics, once per (event type, module) and batch.
fn count_relayed(relayed: HashMap<(&'static str, &str), u64>) {
    for ((event_type, module), count) in relayed {
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

/// Dead letters confirmed are recorded failed with the reason (and kept for replay);
/// nacked ones stay pending.
fn dead_letter_outcomes(
    dead: Vec<DeadLetter>,
    confirmations: Vec<Confirmation>,
    outcomes: &mut Vec<(i64, Outcome)>,
) {
    for (dead_letter, confirmation) in dead.into_iter().zip(confirmations) {
        if confirmation == Confirmation::Nacked {
            outcomes.push((
                dead_letter.outbox_id,
                Outcome::Retry("dead letter nacked by the broker".into()),
            ));
            continue;
        }
        if matches!(confirmation, Confirmation::Returned { .. }) {
            warn!(event_id = %dead_letter.event_id, "no queue is bound to the dead-letter exchange; the event is kept as failed in the outbox only");
        }
        warn!(event_id = %dead_letter.event_id, event_type = %dead_letter.event_type,
              stage = dead_letter.rejection.stage.as_str(), reason = %dead_letter.rejection.reason,
              "event dead-lettered");
        count_dead_letter(&dead_letter);
        outcomes.push((
            dead_letter.outbox_id,
            Outcome::Failed(dead_letter.rejection.to_string()),
        ));
    }
}

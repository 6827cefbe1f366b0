//! A batch's plain values on its way (claimed and through the pipeline, then sent) and
//! the pure logic that judges it: which copies go in which publish round, which wait
//! behind a copy not confirmed, and what each row comes to from the broker's answers.
//! [`super::dispatch`] does the I/O around them.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tokio::time::Instant;
use tracing::debug;

use crate::delivery::{self, CopyRecord, CopyState, Gates, Verdict, BEHIND};
use crate::event::{DeadLetter, Event};
use crate::outbox::Outcome;
use crate::pipeline::Processed;
use crate::route::Destination;
use crate::sink::Confirmation;

/// A claimed batch, through the pipeline and ready to publish.
pub(crate) struct Prepared {
    pub ids: Vec<i64>,
    pub processed: Processed,
}

impl Prepared {
    pub fn claimed(&self) -> usize {
        self.ids.len()
    }
}

/// Copies to publish (each event to each of its subscribers), in send order, with the
/// publish round of each ([`delivery::rounds`]).
pub(crate) struct Outgoing<'r, M> {
    pub events: Vec<Event>,
    /// The message of each event, the same for all its copies.
    pub messages: Vec<M>,
    /// Per copy: the event's index and its destination.
    pub copies: Vec<(usize, &'r Destination)>,
    pub rounds: Vec<usize>,
}

impl<'r, M> Outgoing<'r, M> {
    pub fn new(
        events: Vec<Event>,
        messages: Vec<M>,
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
    pub fn round(&self, round: usize) -> (Vec<usize>, Vec<(&str, &M)>) {
        (0..self.copies.len())
            .filter(|&i| self.rounds[i] == round)
            .map(|i| (i, self.send(i)))
            .unzip()
    }

    /// Copy `i`: its exchange and message.
    pub fn send(&self, i: usize) -> (&str, &M) {
        let (event, destination) = self.copies[i];
        (destination.exchange.as_str(), &self.messages[event])
    }

    /// The last publish round.
    pub fn last_round(&self) -> usize {
        self.rounds.iter().copied().max().unwrap_or(0)
    }

    /// Copy `i`'s (module, entity), if its event has an entity.
    fn key(&self, i: usize) -> Option<(&str, &str)> {
        let (event, destination) = self.copies[i];
        self.events[event]
            .entity
            .as_deref()
            .map(|entity| (destination.module.as_str(), entity))
    }
}

/// The verdicts of a batch's copies, taken round by round: from the first copy of a
/// (module, entity) that is not confirmed, the later copies of that pair are not
/// published but wait behind it.
pub(crate) struct RoundVerdicts<'o, 'r, M> {
    outgoing: &'o Outgoing<'r, M>,
    verdicts: Vec<Option<Verdict>>,
    waiting: HashSet<(&'o str, &'o str)>,
}

impl<'o, 'r, M> RoundVerdicts<'o, 'r, M> {
    pub fn new(outgoing: &'o Outgoing<'r, M>) -> Self {
        Self {
            outgoing,
            verdicts: vec![None; outgoing.copies.len()],
            waiting: HashSet::new(),
        }
    }

    /// The copies of `round` to publish, in order; those behind a copy that waits are
    /// judged waiting now.
    pub fn take_round(&mut self, round: usize) -> Vec<usize> {
        let (members, _) = self.outgoing.round(round);
        members
            .into_iter()
            .filter(|&i| {
                let behind = self
                    .outgoing
                    .key(i)
                    .is_some_and(|key| self.waiting.contains(&key));
                if behind {
                    self.verdicts[i] = Some(Verdict::Wait(BEHIND.to_owned()));
                }
                !behind
            })
            .collect()
    }

    /// Takes the verdicts of the copies `sent`, in order.
    pub fn judge(&mut self, sent: &[usize], verdicts: impl IntoIterator<Item = Verdict>) {
        for (&i, verdict) in sent.iter().zip(verdicts) {
            if let (Verdict::Wait(_), Some(key)) = (&verdict, self.outgoing.key(i)) {
                self.waiting.insert(key);
            }
            self.verdicts[i] = Some(verdict);
        }
    }

    /// Every copy's verdict, in copy order.
    pub fn finish(self) -> Vec<Verdict> {
        // Cannot fail: every copy is in one round, and each round gives each a verdict.
        self.verdicts
            .into_iter()
            .map(|v| v.unwrap_or(Verdict::Confirmed))
            .collect()
    }
}

/// A batch sent: what its rows' outcomes are worked out from once confirmed.
pub(crate) struct Sent<'r, M> {
    pub ids: Vec<i64>,
    pub outgoing: Outgoing<'r, M>,
    /// Copies not published: they wait behind an earlier copy of their entity.
    pub held: Vec<(usize, &'r Destination)>,
    pub dead: Vec<DeadLetter>,
    pub canary_ids: Vec<i64>,
}

/// The broker's answers for a sent batch.
pub(crate) struct Answers {
    /// Per copy, in copy order.
    pub copies: Vec<Verdict>,
    /// Per dead letter.
    pub dead: Vec<Confirmation>,
    /// Per canary.
    pub canaries: Vec<Confirmation>,
}

/// A batch settled: each row's outcome, to record, and the confirmed copies per
/// (event type, module), to count.
pub(crate) struct Settled<'r> {
    pub outcomes: Vec<(i64, Outcome)>,
    pub relayed: HashMap<(&'static str, &'r str), u64>,
}

impl<'r, M> Sent<'r, M> {
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

    /// Each row's outcome from the broker's `answers`. A copy that now waits (nacked,
    /// returned under `wait`) blocks its (module, entity) in `gates`, due `first_retry`
    /// after `now`; an event dead-lettered for every subscriber failed as a whole; a
    /// nacked dead letter or canary is sent again as a row.
    pub fn settle(
        &self,
        answers: Answers,
        first_retry: Duration,
        now: Instant,
        gates: &mut Gates,
    ) -> Settled<'r> {
        let events = &self.outgoing.events;
        let mut records: Vec<Vec<CopyRecord>> = vec![Vec::new(); events.len()];
        for &(index, destination) in &self.held {
            records[index].push(CopyRecord {
                module: destination.module.clone(),
                state: CopyState::Waiting,
                error: BEHIND.to_owned(),
                retry_in: Duration::ZERO,
            });
        }
        let mut relayed: HashMap<(&'static str, &'r str), u64> = HashMap::new();
        let mut confirmed = vec![false; events.len()];
        for (&(index, destination), verdict) in self.outgoing.copies.iter().zip(answers.copies) {
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
        let mut outcomes = Vec::with_capacity(self.ids.len());
        for ((event, records), confirmed) in events.iter().zip(records).zip(confirmed) {
            let waiting = records.iter().any(|r| r.state == CopyState::Waiting);
            let outcome = match records.first() {
                None => {
                    debug!(event_id = %event.event_id, event_type = event.spec.event_type, "event delivered");
                    Outcome::Delivered(records)
                }
                // Dead-lettered for every subscriber: the event failed as a whole, and a
                // replay sends it to them all.
                Some(first) if !confirmed && !waiting => Outcome::Failed(first.error.clone()),
                Some(_) => Outcome::Delivered(records),
            };
            outcomes.push((event.outbox_id, outcome));
        }
        for (dead_letter, confirmation) in self.dead.iter().zip(&answers.dead) {
            let outcome = if *confirmation == Confirmation::Nacked {
                Outcome::Retry("dead letter nacked by the broker".into())
            } else {
                Outcome::Failed(dead_letter.rejection.to_string())
            };
            outcomes.push((dead_letter.outbox_id, outcome));
        }
        for (&id, confirmation) in self.canary_ids.iter().zip(&answers.canaries) {
            let outcome = if *confirmation == Confirmation::Nacked {
                Outcome::Retry("canary nacked by the broker".into())
            } else {
                // Whether a canary watcher is bound or not, an acked canary is done.
                Outcome::Delivered(Vec::new())
            };
            outcomes.push((id, outcome));
        }
        Settled { outcomes, relayed }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Map;
    use time::OffsetDateTime;
    use uuid::Uuid;

    use super::*;
    use crate::catalog;
    use crate::event::{Rejection, Stage};

    fn destination(module: &str) -> Destination {
        Destination {
            module: module.to_owned(),
            exchange: format!("it.{module}"),
        }
    }

    fn event(outbox_id: i64, entity: &str) -> Event {
        Event {
            outbox_id,
            event_id: Uuid::from_u128(outbox_id as u128),
            spec: catalog::find("it_asset_disposed").unwrap(),
            organization_id: Uuid::nil(),
            source_table: "it_assets".into(),
            occurred_at: OffsetDateTime::UNIX_EPOCH,
            entity: Some(entity.to_owned()),
            payload: Map::new(),
        }
    }

    fn dead_letter(outbox_id: i64) -> DeadLetter {
        event(outbox_id, "x").into_dead_letter(Rejection::new(Stage::Validate, "bad"))
    }

    fn nacked() -> Verdict {
        Verdict::Wait("nacked by the broker".into())
    }

    #[test]
    fn from_the_first_copy_not_confirmed_the_entitys_later_copies_wait() {
        let (fa, gr) = (destination("fa"), destination("gr"));
        // Events 1 and 3 are about asset a, 2 about b; every event goes to fa and gr.
        let events = vec![event(1, "a"), event(2, "b"), event(3, "a")];
        let copies = vec![(0, &fa), (0, &gr), (1, &fa), (2, &fa), (2, &gr)];
        let outgoing = Outgoing::new(events, vec!["m1", "m2", "m3"], copies);
        assert_eq!(outgoing.rounds, [0, 0, 0, 1, 1]);
        assert_eq!(outgoing.round(1).1, [("it.fa", &"m3"), ("it.gr", &"m3")]);
        let mut rounds = RoundVerdicts::new(&outgoing);
        let first = rounds.take_round(0);
        assert_eq!(first, [0, 1, 2]);
        rounds.judge(&first, [nacked(), Verdict::Confirmed, Verdict::Confirmed]);
        let second = rounds.take_round(1);
        assert_eq!(second, [4], "a's copy for fa waits behind the nacked one");
        rounds.judge(&second, [Verdict::Confirmed]);
        assert_eq!(
            rounds.finish(),
            [
                nacked(),
                Verdict::Confirmed,
                Verdict::Confirmed,
                Verdict::Wait(BEHIND.into()),
                Verdict::Confirmed
            ]
        );
    }

    #[test]
    fn rows_come_to_an_outcome_from_their_copies_and_answers() {
        let (fa, gr) = (destination("fa"), destination("gr"));
        let events = vec![event(1, "a"), event(2, "b"), event(3, "c"), event(4, "d")];
        let copies = vec![(0, &fa), (0, &gr), (1, &fa), (1, &gr), (2, &fa)];
        let sent = Sent {
            ids: vec![1, 2, 3, 4, 5, 6, 7, 8],
            outgoing: Outgoing::new(events, vec![(); 4], copies),
            held: vec![(3, &fa)],
            dead: vec![dead_letter(5), dead_letter(6)],
            canary_ids: vec![7, 8],
        };
        let unroutable = Rejection::new(Stage::Unroutable, "no queue");
        let answers = Answers {
            copies: vec![
                Verdict::Confirmed,
                Verdict::Confirmed,
                Verdict::Confirmed,
                nacked(),
                Verdict::DeadLetter(unroutable.clone()),
            ],
            dead: vec![Confirmation::Acked, Confirmation::Nacked],
            canaries: vec![Confirmation::Nacked, Confirmation::Acked],
        };
        let now = Instant::now();
        let retry = Duration::from_secs(1);
        let mut gates = Gates::default();
        let settled = sent.settle(answers, retry, now, &mut gates);
        let record = |module: &str, state, error: &str, retry_in| CopyRecord {
            module: module.into(),
            state,
            error: error.into(),
            retry_in,
        };
        assert_eq!(
            settled.outcomes,
            [
                (1, Outcome::Delivered(vec![])),
                (
                    2,
                    Outcome::Delivered(vec![record(
                        "gr",
                        CopyState::Waiting,
                        "nacked by the broker",
                        retry
                    )])
                ),
                (3, Outcome::Failed(unroutable.to_string())),
                (
                    4,
                    Outcome::Delivered(vec![record(
                        "fa",
                        CopyState::Waiting,
                        BEHIND,
                        Duration::ZERO
                    )])
                ),
                (5, Outcome::Failed("validate: bad".into())),
                (6, Outcome::Retry("dead letter nacked by the broker".into())),
                (7, Outcome::Retry("canary nacked by the broker".into())),
                (8, Outcome::Delivered(vec![])),
            ]
        );
        assert!(gates.blocks("gr", Some("b")));
        assert!(!gates.blocks("fa", Some("b")));
        assert_eq!(gates.until_due(now), Some(retry));
        let event_type = "it_asset_disposed";
        assert_eq!(
            settled.relayed,
            HashMap::from([((event_type, "fa"), 2), ((event_type, "gr"), 1)])
        );
    }
}

//! Per-destination delivery, pure bookkeeping: each event goes to each of its subscriber
//! modules as a copy of its own, with its own outcome. A copy the broker nacks, or
//! returns under the `wait` policy, waits for a retry; while it waits, later copies of
//! the same entity for the same module wait behind it (the [`Gates`], and within a batch
//! the publish [`rounds`]), and copies for other modules go on. [`crate::copies`] keeps
//! the waiting copies in Postgres.

use std::collections::HashSet;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::Unroutable;
use crate::event::{Rejection, Stage};

/// A copy not confirmed at the first try, as recorded in `itrelay.copies`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyRecord {
    pub module: String,
    pub state: CopyState,
    pub error: String,
    /// How long until it is sent again (waiting copies).
    pub retry_in: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyState {
    /// Sent again at its next attempt.
    Waiting,
    /// Dead-lettered for its module alone; kept for replay.
    Failed,
}

impl CopyState {
    pub fn as_str(self) -> &'static str {
        match self {
            CopyState::Waiting => "waiting",
            CopyState::Failed => "failed",
        }
    }
}

/// The broker's answer for one copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Confirmed,
    Nacked,
    /// Returned as unroutable, with the reason to record.
    Returned(String),
}

/// What one copy comes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Confirmed,
    /// Sent again later, for this reason.
    Wait(String),
    /// Dead-lettered for its module, for this reason.
    DeadLetter(Rejection),
}

/// Reason recorded for a copy that waits behind an earlier one of its entity.
pub const BEHIND: &str = "waiting behind an earlier copy of the same entity for this module";

/// The (module, entity) pairs that have a copy waiting. A copy of a blocked pair is not
/// published: it waits behind, and is sent after the copies before it, in id order.
#[derive(Debug, Default)]
pub struct Gates {
    blocked: HashSet<(String, String)>,
    /// When the earliest waiting copy is due; `None`: nothing waits.
    next_due: Option<Instant>,
}

impl Gates {
    /// Gates as Postgres holds them: the blocked pairs and when the first copy is due.
    pub fn new(blocked: HashSet<(String, String)>, next_due: Option<Instant>) -> Self {
        Self { blocked, next_due }
    }

    pub fn blocks(&self, module: &str, entity: Option<&str>) -> bool {
        entity.is_some_and(|entity| {
            self.blocked
                .contains(&(module.to_owned(), entity.to_owned()))
        })
    }

    /// Blocks `(module, entity)` behind a copy that now waits `retry_in`.
    pub fn block(&mut self, module: &str, entity: Option<&str>, now: Instant, retry_in: Duration) {
        if let Some(entity) = entity {
            self.blocked.insert((module.to_owned(), entity.to_owned()));
        }
        let due = now + retry_in;
        self.next_due = Some(self.next_due.map_or(due, |next| next.min(due)));
    }

    /// Makes the waiting copies due now: rows were put back to waiting by a replay.
    pub fn due_now(&mut self, now: Instant) {
        self.next_due = Some(now);
    }

    /// Whether a waiting copy is due.
    pub fn due(&self, now: Instant) -> bool {
        self.next_due.is_some_and(|due| due <= now)
    }

    /// How long until a waiting copy is due, if any waits.
    pub fn until_due(&self, now: Instant) -> Option<Duration> {
        self.next_due.map(|due| due.saturating_duration_since(now))
    }
}

/// The backoff before the next attempt of a copy tried `attempts` times: `min`, doubling
/// per attempt, at most `max`.
pub fn retry_delay(attempts: u32, min: Duration, max: Duration) -> Duration {
    min.saturating_mul(1u32 << attempts.min(20)).min(max)
}

/// The publish round of each copy, in send order (`copies[i]` is a copy's module and
/// entity): a new round starts at the first copy whose (module, entity) already has a
/// copy in the current round. So copies go out in send order (id order), and no two
/// copies of one entity are ever unconfirmed at once for one module: were they, the
/// broker could nack the first and take the second.
pub fn rounds(copies: &[(&str, Option<&str>)]) -> Vec<usize> {
    let mut round = 0;
    let mut in_round: HashSet<(&str, &str)> = HashSet::new();
    copies
        .iter()
        .map(|&(module, entity)| {
            if let Some(entity) = entity {
                if !in_round.insert((module, entity)) {
                    round += 1;
                    in_round.clear();
                    in_round.insert((module, entity));
                }
            }
            round
        })
        .collect()
}

/// What a copy comes to from the broker's answer: a nacked copy waits; a returned one
/// follows its module's `policy`.
pub fn verdict(answer: Answer, policy: Unroutable) -> Verdict {
    match answer {
        Answer::Confirmed => Verdict::Confirmed,
        Answer::Nacked => Verdict::Wait("nacked by the broker".to_owned()),
        Answer::Returned(reason) => match policy {
            Unroutable::DeadLetter => {
                Verdict::DeadLetter(Rejection::new(Stage::Unroutable, reason))
            }
            Unroutable::Wait => Verdict::Wait(reason),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn rounds_keep_send_order_with_one_copy_per_entity_and_module() {
        let copies = [
            ("FA", Some("asset_id:1")),
            ("PF-10", Some("asset_id:1")),
            ("FA", Some("asset_id:2")),
            ("FA", Some("asset_id:1")),
            ("FA", None),
            ("FA", Some("asset_id:1")),
            ("FA", None),
        ];
        assert_eq!(rounds(&copies), vec![0, 0, 0, 1, 1, 2, 2]);
    }

    #[test]
    fn nacked_copies_wait_and_returned_ones_follow_the_policy() {
        assert_eq!(
            verdict(Answer::Confirmed, Unroutable::Wait),
            Verdict::Confirmed
        );
        assert_eq!(
            verdict(Answer::Nacked, Unroutable::DeadLetter),
            Verdict::Wait("nacked by the broker".into())
        );
        assert_eq!(
            verdict(Answer::Returned("no queue".into()), Unroutable::DeadLetter),
            Verdict::DeadLetter(Rejection::new(Stage::Unroutable, "no queue"))
        );
        assert_eq!(
            verdict(Answer::Returned("no queue".into()), Unroutable::Wait),
            Verdict::Wait("no queue".into())
        );
    }

    #[test]
    fn gates_know_when_the_first_copy_is_due() {
        let mut gates = Gates::default();
        assert_eq!(gates.until_due(Instant::now()), None);
        let now = Instant::now();
        assert!(!gates.due(now));
        gates.block("FA", Some("e"), now, 3 * SECOND);
        gates.block("FA", Some("f"), now, SECOND);
        gates.block("GR", None, now, 2 * SECOND);
        assert_eq!(gates.until_due(now), Some(SECOND));
        assert!(gates.due(now + SECOND));
        assert!(gates.blocks("FA", Some("e")));
        assert!(!gates.blocks("GR", Some("e")));
        assert!(!gates.blocks("FA", None), "no entity, nothing held back");
    }

    #[test]
    fn retry_delay_doubles_up_to_its_cap() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(1));
        assert_eq!(retry_delay(0, min, max), min);
        assert_eq!(retry_delay(1, min, max), Duration::from_millis(200));
        assert_eq!(retry_delay(3, min, max), Duration::from_millis(800));
        assert_eq!(retry_delay(4, min, max), max);
        assert_eq!(retry_delay(u32::MAX, min, max), max);
    }
}

//! Where a claim starts: the lowest outbox id that can still be pending. Pure bookkeeping;
//! [`crate::outbox`] runs the statements.
//!
//! The claim keeps the floor in `itrelay.progress`: every id below it is settled, which
//! is how an event delivered at the first try is recorded, without touching its row, and
//! what retention goes by. So the floor must be exact with late commits: a row
//! can still turn up below the ids already seen while the transaction that wrote it is
//! running. So the floor rises past an id only once every transaction that was running
//! when that id was seen has ended, which Postgres reports as the oldest running
//! transaction id (`pg_snapshot_xmin`) moving past the snapshot's `xmax`.
//!
//! Rows put back to pending lie below the floor: `itrelay replay` notifies the lowest id
//! it put back, and the floor falls to it; for anyone else's UPDATE (a DBA's), every
//! [`REWIND_EVERY`] the next claim starts from the lowest id again.

use std::time::Duration;

use tokio::time::Instant;

/// How often the relay asks Postgres where the outbox ends and which transactions run.
pub const PROBE_EVERY: Duration = Duration::from_millis(100);
/// How long a probe waits before it may raise the floor, even once its transactions have
/// ended: a transaction whose first write is the outbox row takes its id a moment before
/// its transaction id.
const SETTLE: Duration = Duration::from_millis(100);
/// The longest a row put back to pending without a notification waits below the floor.
pub const REWIND_EVERY: Duration = Duration::from_secs(5);

/// What Postgres said at one moment: the highest outbox id visible, and the snapshot's
/// bounds (`pg_snapshot_xmin`, `pg_snapshot_xmax` of `pg_current_snapshot()`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub max_id: i64,
    pub xmin: i64,
    pub xmax: i64,
}

#[derive(Debug)]
pub struct ClaimFloor {
    floor: i64,
    /// Every id below this is final: committed or never to be.
    settled_below: i64,
    /// The probe waiting for its transactions to end, and when it was taken.
    waiting: Option<(Instant, Probe)>,
    probed_at: Option<Instant>,
    rewound_at: Instant,
}

impl ClaimFloor {
    /// A floor at the lowest id: nothing is known yet.
    pub fn new(now: Instant) -> Self {
        Self {
            floor: 0,
            settled_below: 0,
            waiting: None,
            probed_at: None,
            rewound_at: now,
        }
    }

    /// The lowest id the next claim looks at.
    pub fn start(&self) -> i64 {
        self.floor
    }

    /// Whether the next claim should bring a probe along.
    pub fn wants_probe(&self, now: Instant) -> bool {
        self.probed_at
            .is_none_or(|at| now.duration_since(at) >= PROBE_EVERY)
    }

    /// Takes in a probe run just before a claim: an earlier probe whose transactions have
    /// all ended settles the ids up to its `max_id`.
    pub fn probed(&mut self, probe: Probe, now: Instant) {
        self.probed_at = Some(now);
        match self.waiting {
            Some((taken, earlier))
                if probe.xmin >= earlier.xmax && now.duration_since(taken) >= SETTLE =>
            {
                // Saturating: the last possible id, i64::MAX, settles nothing above it.
                self.settled_below = self.settled_below.max(earlier.max_id.saturating_add(1));
                self.waiting = Some((now, probe));
            }
            Some(_) => {}
            None => self.waiting = Some((now, probe)),
        }
    }

    /// Moves the floor after a claim that started at [`Self::start`]: up to the lowest
    /// pending id it found (`first_claimed`, or the batch in flight that it skipped), but
    /// not past the settled ids.
    pub fn claimed(&mut self, first_claimed: Option<i64>, in_flight_first: Option<i64>) {
        let lowest_pending = first_claimed.into_iter().chain(in_flight_first).min();
        let candidate = lowest_pending.map_or(self.settled_below, |id| id.min(self.settled_below));
        self.floor = self.floor.max(candidate);
    }

    /// Starts the next claim at `id` at the latest: rows from it on were put back to
    /// pending.
    pub fn lower_to(&mut self, id: i64) {
        self.floor = self.floor.min(id);
    }

    /// Starts the next claim from the lowest id again.
    pub fn rewind(&mut self, now: Instant) {
        self.lower_to(0);
        self.rewound_at = now;
    }

    /// Rewinds if the last rewind was [`REWIND_EVERY`] ago.
    pub fn rewind_if_due(&mut self, now: Instant) {
        if now.duration_since(self.rewound_at) >= REWIND_EVERY {
            self.rewind(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(max_id: i64, xmin: i64, xmax: i64) -> Probe {
        Probe { max_id, xmin, xmax }
    }

    /// A floor, from `t0` on, whose ids up to 1,000 are settled.
    fn settled_to_1000(t0: Instant) -> ClaimFloor {
        let mut floor = ClaimFloor::new(t0);
        floor.probed(probe(1_000, 10, 20), t0);
        floor.probed(probe(2_000, 20, 30), t0 + SETTLE);
        floor
    }

    #[test]
    fn rises_only_past_ids_whose_transactions_have_ended() {
        let t0 = Instant::now();
        let mut floor = ClaimFloor::new(t0);
        floor.probed(probe(100, 50, 60), t0);
        floor.claimed(None, None);
        assert_eq!(floor.start(), 0, "nothing is settled yet");
        // Transaction 55, running at the first probe, still runs.
        let t1 = t0 + SETTLE * 2;
        floor.probed(probe(120, 55, 70), t1);
        floor.claimed(None, None);
        assert_eq!(floor.start(), 0);
        // Now every transaction below 60 has ended: ids up to 100 are final.
        let t2 = t1 + SETTLE;
        floor.probed(probe(130, 60, 75), t2);
        floor.claimed(None, None);
        assert_eq!(floor.start(), 101);
    }

    #[test]
    fn waits_a_moment_even_when_the_transactions_have_ended() {
        let t0 = Instant::now();
        let mut floor = ClaimFloor::new(t0);
        floor.probed(probe(100, 50, 60), t0);
        floor.probed(probe(110, 60, 70), t0 + SETTLE / 2);
        floor.claimed(None, None);
        assert_eq!(floor.start(), 0);
        floor.probed(probe(120, 70, 80), t0 + SETTLE);
        floor.claimed(None, None);
        assert_eq!(floor.start(), 101);
    }

    #[test]
    fn never_passes_a_pending_row_or_the_batch_in_flight() {
        let mut floor = settled_to_1000(Instant::now());
        floor.claimed(Some(700), Some(400));
        assert_eq!(floor.start(), 400);
        floor.claimed(Some(900), None);
        assert_eq!(floor.start(), 900);
        floor.claimed(None, None);
        assert_eq!(floor.start(), 1_001);
    }

    #[test]
    fn never_falls_by_itself() {
        let t0 = Instant::now();
        let mut floor = settled_to_1000(t0);
        floor.claimed(None, None);
        assert_eq!(floor.start(), 1_001);
        floor.claimed(Some(1_001), None);
        assert_eq!(floor.start(), 1_001);
        floor.rewind(t0 + SETTLE);
        assert_eq!(floor.start(), 0);
        // A replayed row at 5 is found by the claim from 0, and the floor stays below it.
        floor.claimed(Some(5), None);
        assert_eq!(floor.start(), 5);
    }

    #[test]
    fn falls_to_rows_put_back_to_pending() {
        let mut floor = settled_to_1000(Instant::now());
        floor.claimed(None, None);
        floor.lower_to(2_000);
        assert_eq!(floor.start(), 1_001, "an id above the floor leaves it");
        floor.lower_to(300);
        assert_eq!(floor.start(), 300);
    }

    #[test]
    fn rewinds_on_its_own_now_and_then() {
        let t0 = Instant::now();
        let mut floor = settled_to_1000(t0);
        floor.claimed(None, None);
        floor.rewind_if_due(t0 + REWIND_EVERY / 2);
        assert_eq!(floor.start(), 1_001);
        floor.rewind_if_due(t0 + REWIND_EVERY);
        assert_eq!(floor.start(), 0);
    }

    #[test]
    fn the_last_possible_id_settles() {
        let t0 = Instant::now();
        let mut floor = ClaimFloor::new(t0);
        floor.probed(probe(i64::MAX, 10, 20), t0);
        floor.probed(probe(i64::MAX, 20, 30), t0 + SETTLE);
        floor.claimed(Some(i64::MAX), None);
        assert_eq!(floor.start(), i64::MAX);
    }

    #[test]
    fn probes_are_spaced() {
        let t0 = Instant::now();
        let mut floor = ClaimFloor::new(t0);
        assert!(floor.wants_probe(t0));
        floor.probed(probe(1, 1, 2), t0);
        assert!(!floor.wants_probe(t0 + PROBE_EVERY / 2));
        assert!(floor.wants_probe(t0 + PROBE_EVERY));
    }
}

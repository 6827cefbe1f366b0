//! One leading session: the outbox drained in overlapping batches, whole-event
//! notifications taken in, waiting copies retried, and the relay idle (woken by NOTIFY)
//! when there is nothing to do.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::batch::Prepared;
use super::dispatch::{Dispatch, InFlight};
use super::{retry, Relay, SessionError};
use crate::config::Capture;
use crate::copies::Copies;
use crate::delivery::Gates;
use crate::floor::ClaimFloor;
use crate::health::Role;
use crate::metrics::METRICS;
use crate::notified::{self, NotifyEvents};
use crate::outbox::Outbox;
use crate::postgres::{Notice, PgSession};
use crate::sink::Sink;
use crate::tasks::Progress;
use crate::wal::Ingest;

/// While busy the relay looks for new events this often; after `QUIET_POLLS` looks in
/// a row find nothing, it goes idle and waits for NOTIFY.
const BUSY_POLL: Duration = Duration::from_millis(1);
const QUIET_POLLS: u32 = 32;
/// Batches published whose confirms are not yet settled, at most: with one claimed row
/// each, a low rate sends each event as it comes, while the confirms of those before are
/// on their way.
const MAX_BATCHES_IN_FLIGHT: usize = 16;
/// A batch whose confirms are not all in this long after it was published is waited
/// for before the next claim: a broker that stopped answering is then found by the
/// confirm timeout (`amqp.confirm_timeout_secs`), however few events come.
const SETTLE_AFTER: Duration = Duration::from_millis(20);
/// How often the relay looks while a transaction that will not NOTIFY keeps it from
/// going idle.
const NOT_YET_IDLE_POLL: Duration = Duration::from_millis(10);
/// The longest idle wait between two looks at the outbox.
const BACKLOG_EVERY: Duration = Duration::from_secs(5);

/// What one leading session holds: its Postgres session and statements, the sink,
/// the claim floor, the gates of waiting copies, and the batches on their way.
pub(super) struct Leader<'a, S: Sink> {
    relay: &'a Relay,
    pg: &'a mut PgSession,
    dispatch: Dispatch<'a, S>,
    sink_failed: &'a Notify,
    shutdown: &'a CancellationToken,
    outbox: Outbox,
    copies: Copies,
    gates: Gates,
    floor: ClaimFloor,
    /// Whole-event notifications received, not yet stored.
    notified: Vec<String>,
    notify_events: NotifyEvents,
    /// Claimed and through the pipeline, not yet published.
    prepared: Option<Prepared>,
    /// Published, confirms outstanding, oldest first.
    in_flight: VecDeque<InFlight<'a, S>>,
    /// Looks in a row that found nothing.
    quiet_polls: u32,
}

impl<'a, S: Sink> Leader<'a, S> {
    /// Starts leading on `pg`: LISTEN, the statements prepared, the gates loaded.
    pub async fn start(
        relay: &'a Relay,
        pg: &'a mut PgSession,
        sink: &'a S,
        sink_failed: &'a Notify,
        shutdown: &'a CancellationToken,
    ) -> Result<Self, SessionError> {
        let channel = &relay.settings.postgres.channel;
        // The relay's own writes (delivered marks, the lease) need not wait for the
        // WAL flush: a mark lost in a Postgres crash only means the event is sent again,
        // which at-least-once allows. Business transactions are not affected.
        relay
            .bounded(pg.client.batch_execute("SET synchronous_commit = off"))
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
        relay.bounded(pg.listen(channel)).await?;
        let outbox = relay
            .bounded(Outbox::prepare(&pg.client, &relay.settings.mapping))
            .await?;
        let copies = relay.bounded(Copies::prepare(&pg.client)).await?;
        let wal = match relay.settings.postgres.capture {
            Capture::Wal => {
                // About one batch of single-event transactions (begin, message, commit).
                let limit = relay.settings.relay.batch_size.saturating_mul(3);
                let session = relay
                    .bounded(PgSession::connect(&relay.settings.postgres))
                    .await?;
                let query_timeout = relay.settings.query_timeout();
                Some(
                    relay
                        .bounded(Ingest::prepare(session, limit, query_timeout))
                        .await?,
                )
            }
            Capture::Outbox => None,
        };
        let gates = relay.bounded(copies.gates(&pg.client)).await?;
        info!(%channel, "leading: relaying events");
        let notify_events = NotifyEvents::new(relay.settings.relay.accept_notify_events);
        notify_events.announce(channel);
        Ok(Self {
            relay,
            pg,
            dispatch: Dispatch { relay, sink, wal },
            sink_failed,
            shutdown,
            outbox,
            copies,
            gates,
            floor: ClaimFloor::new(Instant::now()),
            notified: Vec::new(),
            notify_events,
            prepared: None,
            in_flight: VecDeque::new(),
            quiet_polls: 0,
        })
    }

    /// Drains the outbox in overlapping batches: a claimed batch is published at once,
    /// and the next claim does not wait for its confirms. A batch is settled (its
    /// outcomes recorded in the same round trip as the next claim) once its confirms are
    /// in, or once the batches in flight hold more than a batch's worth of rows
    /// ([`Self::window_full`]), so at most two batches' rows are unconfirmed. A batch
    /// that holds an event of an entity a batch in flight holds one of waits for the
    /// batches in flight to settle before it is sent, so a nack there can hold its
    /// copies back. Once `QUIET_POLLS` polls in a row find nothing, flags itself idle
    /// (so triggers NOTIFY again) and waits for a notification, the fallback poll or a
    /// waiting copy's retry. The reconnect backoff
    /// starts over only after real `progress` (a batch recorded, or a full idle cycle): an
    /// error that recurs right after leadership is taken (a missing grant or schema) keeps
    /// backing off.
    pub async fn run(mut self, progress: &Progress) -> Result<(), SessionError> {
        loop {
            if self.shutdown.is_cancelled() {
                // The batches in flight are finished; one merely claimed stays pending.
                return self.finish_in_flight().await;
            }
            self.floor.rewind_if_due(Instant::now());
            self.take_in_notified().await?;
            let must_settle_first = !self.in_flight.is_empty()
                && (self.gates.due(Instant::now())
                    || self.prepared.as_ref().is_some_and(|next| {
                        self.in_flight
                            .iter()
                            .any(|batch| batch.shares_entity_with(next))
                    }));
            if must_settle_first {
                self.finish_in_flight().await?;
                progress.made();
            }
            if self.gates.due(Instant::now()) {
                // Every outcome so far is recorded: the copies held back are all there.
                self.gates = retry::retry_waiting(
                    &self.dispatch,
                    &self.pg.client,
                    &self.outbox,
                    &self.copies,
                )
                .await?;
            }
            if self.advance().await? {
                progress.made();
            }
            if self.prepared.is_some() {
                self.quiet_polls = 0;
            } else if !self.in_flight.is_empty() {
                // Nothing new: look again once the oldest batch's confirms are in (it
                // settles then), or after a busy poll's wait if they are slow.
                self.await_confirms_or(BUSY_POLL).await?;
            } else if self.quiet_polls < QUIET_POLLS {
                self.quiet_polls += 1;
                self.pause(BUSY_POLL).await?;
            } else {
                self.prepared = self.idle().await?;
                progress.made();
                self.quiet_polls = 0;
            }
        }
    }

    /// One turn of the overlap: sends the prepared batch, settles the oldest batch in
    /// flight if its confirms are in, it is [`SETTLE_AFTER`] old or the window is full,
    /// then records its outcomes and claims the next batch in one round trip. True if
    /// outcomes were recorded.
    async fn advance(&mut self) -> Result<bool, SessionError> {
        if let Some(batch) = self.prepared.take() {
            let sent = self.dispatch.send(batch, &self.gates).await?;
            self.in_flight.push_back(sent);
        }
        let settle_oldest = self.window_full()
            || self.in_flight.front().is_some_and(|oldest| {
                oldest.age(Instant::now()) >= SETTLE_AFTER || self.dispatch.is_confirmed(oldest)
            });
        let oldest = if settle_oldest {
            self.in_flight.pop_front()
        } else {
            None
        };
        let settled = match oldest {
            Some(batch) => Some(self.dispatch.settle(batch, &mut self.gates).await?),
            None => None,
        };
        let outcomes = settled.as_ref().map_or(&[][..], |s| &s.outcomes[..]);
        let skip: Vec<i64> = self
            .in_flight
            .iter()
            .flat_map(|batch| batch.ids())
            .copied()
            .collect();
        let client = &self.pg.client;
        let (_, next) = tokio::try_join!(
            self.relay.bounded(self.outbox.record(client, outcomes)),
            self.dispatch
                .prepare(client, &self.outbox, &mut self.floor, &skip),
        )?;
        self.relay.health.set_role(Role::Leader);
        self.prepared = Some(next).filter(|batch| batch.claimed() > 0);
        Ok(!outcomes.is_empty())
    }

    /// Whether the batches in flight are as many as may be, or hold more than a batch's
    /// worth of rows: then the oldest is settled before the next claim. A full batch
    /// alone in flight is not waited for: the next is claimed and published while the
    /// broker works on it, so the broker always has a batch to confirm while the relay
    /// records and claims.
    fn window_full(&self) -> bool {
        let rows: usize = self.in_flight.iter().map(|batch| batch.ids().len()).sum();
        let batch_size =
            usize::try_from(self.relay.settings.relay.batch_size).unwrap_or(usize::MAX);
        self.in_flight.len() >= MAX_BATCHES_IN_FLIGHT || rows > batch_size
    }

    /// Settles the batches in flight, oldest first, recording the outcomes of each.
    async fn finish_in_flight(&mut self) -> Result<(), SessionError> {
        while let Some(batch) = self.in_flight.pop_front() {
            let settled = self.dispatch.settle(batch, &mut self.gates).await?;
            self.relay
                .bounded(self.outbox.record(&self.pg.client, &settled.outcomes))
                .await?;
        }
        Ok(())
    }

    /// Claims from the floor, stepping over nothing (no batch is in flight).
    async fn claim(&mut self) -> Result<Prepared, SessionError> {
        self.dispatch
            .prepare(&self.pg.client, &self.outbox, &mut self.floor, &[])
            .await
    }

    /// Flags the relay idle, so that triggers NOTIFY, and waits for work: a notification,
    /// an event found by the fallback poll, or a waiting copy falling due. The flag is
    /// granted only once every transaction that found the relay busy (and so sends no
    /// NOTIFY) has ended; until then the relay keeps polling, and the look sent right
    /// after the grant sees their events. Returns the claimed batch, if any, with the
    /// flag cleared again.
    async fn idle(&mut self) -> Result<Option<Prepared>, SessionError> {
        let fallback_poll = Duration::from_millis(self.relay.settings.relay.poll_interval_ms);
        let mut next = loop {
            self.dispatch.move_before_next_claim();
            // Sent first, the flag's grant precedes the claim's snapshot.
            let client = &self.pg.client;
            let (granted, next) = tokio::try_join!(
                self.relay.bounded(self.outbox.set_idle(client, true)),
                self.dispatch
                    .prepare(client, &self.outbox, &mut self.floor, &[]),
            )?;
            if granted {
                break next;
            }
            if next.claimed() > 0 || self.shutdown.is_cancelled() || self.gates.due(Instant::now())
            {
                return Ok(Some(next).filter(|batch| batch.claimed() > 0));
            }
            self.pause(NOT_YET_IDLE_POLL).await?;
        };
        while next.claimed() == 0 {
            let mut wait = fallback_poll.min(BACKLOG_EVERY);
            if let Some(until_due) = self.gates.until_due(Instant::now()) {
                wait = wait.min(until_due);
            }
            let woken = self.wait_for_notice(wait).await?;
            self.dispatch.move_before_next_claim();
            if self.shutdown.is_cancelled() || self.gates.due(Instant::now()) {
                // Shut down: no relay listens any more, triggers need not NOTIFY. A copy
                // due: the loop sends it, busy again.
                self.set_busy().await?;
                return Ok(None);
            }
            if woken {
                let client = &self.pg.client;
                let (_, claimed) = tokio::try_join!(
                    self.relay.bounded(self.outbox.set_idle(client, false)),
                    self.dispatch
                        .prepare(client, &self.outbox, &mut self.floor, &[]),
                )?;
                return Ok(Some(claimed).filter(|batch| batch.claimed() > 0));
            }
            next = self.claim().await?;
        }
        self.set_busy().await?;
        Ok(Some(next))
    }

    /// Clears the idle flag: triggers stop sending NOTIFY.
    async fn set_busy(&self) -> Result<(), SessionError> {
        self.relay
            .bounded(self.outbox.set_idle(&self.pg.client, false))
            .await
            .map(drop)
    }

    /// Sleeps for `wait`, unless shut down or the broker connection fails first.
    async fn pause(&self, wait: Duration) -> Result<(), SessionError> {
        tokio::select! {
            _ = self.shutdown.cancelled() => Ok(()),
            _ = self.sink_failed.notified() => Err(SessionError::SinkClosed(S::SERVICE)),
            _ = tokio::time::sleep(wait) => Ok(()),
        }
    }

    /// Waits until the oldest batch in flight is confirmed, or for `wait`, unless shut
    /// down or the broker connection fails first.
    async fn await_confirms_or(&self, wait: Duration) -> Result<(), SessionError> {
        let Some(oldest) = self.in_flight.front() else {
            return self.pause(wait).await;
        };
        tokio::select! {
            () = self.dispatch.confirmed(oldest) => Ok(()),
            paused = self.pause(wait) => paused,
        }
    }

    /// Waits for a notification, `fallback_poll` or shutdown, and takes the
    /// notification in ([`Self::take_notice`]). True if a notification came.
    async fn wait_for_notice(&mut self, fallback_poll: Duration) -> Result<bool, SessionError> {
        let notice = tokio::select! {
            _ = self.shutdown.cancelled() => return Ok(false),
            _ = self.sink_failed.notified() => return Err(SessionError::SinkClosed(S::SERVICE)),
            notice = self.pg.next_notice() => notice,
            _ = tokio::time::sleep(fallback_poll) => return Ok(false),
        };
        let notice = notice.ok_or(SessionError::PostgresClosed)?;
        self.take_notice(notice);
        Ok(true)
    }

    /// Takes in the notifications received so far ([`Self::take_notice`]) and stores the
    /// whole-event ones as outbox rows, if they are accepted ([`NotifyEvents`]).
    async fn take_in_notified(&mut self) -> Result<(), SessionError> {
        while let Some(notice) = self.pg.try_next_notice() {
            self.take_notice(notice);
        }
        self.notify_events.admit(&mut self.notified, Instant::now());
        if !self.notified.is_empty() {
            let stored = self
                .relay
                .bounded(
                    self.outbox
                        .insert_notified(&self.pg.client, &notified::as_rows(&self.notified)),
                )
                .await?;
            METRICS.notified_events.inc_by(stored);
            info!(events = stored, "took in whole-event notifications");
            self.notified.clear();
        }
        Ok(())
    }

    /// Keeps a whole-event notification, to be stored; a replay's wake-up lowers the
    /// floor to the rows it put back to pending, and makes the copies it put back to
    /// waiting due.
    fn take_notice(&mut self, notice: Notice) {
        match notice {
            Notice::Event(text) => self.notified.push(text),
            Notice::Wake { from_id: Some(id) } => {
                self.floor.lower_to(id);
                self.gates.due_now(Instant::now());
            }
            Notice::Wake { from_id: None } => {}
        }
    }
}

//! WAL capture (`postgres.capture = "wal"`): the triggers record each event as a
//! transactional logical message instead of an outbox row, and the leader moves the
//! messages of committed transactions from the database's replication slot into
//! `itrelay.events`, in commit order, before each claim (`itrelay.wal_ingest` in
//! sql/install.sql). From there an event is relayed like any other: retries, dead
//! letters, replay and `status` are the same in both modes. This module holds the mode,
//! the ingest statement, the start-up check, the switch made by `itrelay install`, and the
//! slot's figures for `status` and `/metrics`. See docs/wal-capture.md.

use std::sync::Mutex;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::time::Instant;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};
use tracing::{info, warn};

use crate::config::Capture;
use crate::postgres::PgSession;

/// Why the relay cannot start with its `postgres.capture`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CaptureError {
    #[error(
        "postgres.capture is \"wal\" but the server runs with wal_level = {0}: WAL capture \
         reads a logical replication slot, which needs wal_level = logical (set it in \
         postgresql.conf and restart the server), or set postgres.capture = \"outbox\""
    )]
    WalLevel(String),
    #[error(
        "postgres.capture is {configured:?} but itrelay was installed with capture \
         {installed:?}: run `itrelay install` with postgres.capture = {configured:?}, or set \
         postgres.capture to {installed:?}"
    )]
    Mismatch {
        installed: &'static str,
        configured: &'static str,
    },
}

/// Whether a relay configured with `configured` may relay a database installed with
/// `installed` whose server runs with `wal_level`.
pub fn check(configured: Capture, installed: Capture, wal_level: &str) -> Result<(), CaptureError> {
    if configured == Capture::Wal && wal_level != "logical" {
        return Err(CaptureError::WalLevel(wal_level.to_owned()));
    }
    if configured != installed {
        return Err(CaptureError::Mismatch {
            installed: installed.as_str(),
            configured: configured.as_str(),
        });
    }
    Ok(())
}

/// The installed mode (an install from before WAL capture has none: the outbox) and the
/// server's `wal_level`.
pub async fn installed(client: &Client) -> Result<(Capture, String), tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT coalesce(to_jsonb(s) ->> 'capture', 'outbox'), current_setting('wal_level')
             FROM itrelay.settings AS s",
            &[],
        )
        .await?;
    let capture: String = row.try_get(0)?;
    Ok((
        Capture::parse(&capture).unwrap_or_default(),
        row.try_get(1)?,
    ))
}

/// The least rate, in bytes of unread WAL per second, at which a move is expected to
/// go, beyond `postgres.query_timeout_secs`: measured on 2 busy cores, one transaction of
/// 50,000 events (about 60 MB of WAL) moved in 3.4 s, 17 MB/s. A move is bounded by its
/// size, so one transaction of any size is moved whole, while a connection that stops
/// answering is still given up on.
const LEAST_BYTES_PER_SEC: i64 = 1 << 20;

/// A move that caught up is followed by the next only after this many times as long as
/// it took: reading the slot through SQL decodes the WAL again from the slot's restart
/// point, which trails by up to the WAL of the last 15 s (the server moves it at its
/// periodic snapshots of running transactions). Measured: after one transaction of
/// 100,000 events (150 MB of WAL) each move took 0.43 s with nothing to move. So a relay
/// spends at most a fifth of its time on moves that find the slot caught up; one that
/// finds it full moves again at once.
const IDLE_MOVE_SPACING: u32 = 4;

/// Why a move from the slot failed.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("{}", crate::postgres::describe(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error(
        "moving events from the replication slot ({unread_bytes} bytes of WAL unread) got no \
         answer within {limit:?}"
    )]
    Timeout { limit: Duration, unread_bytes: i64 },
}

/// The leader's move of the slot's messages into `itrelay.events`, on a Postgres session
/// of its own: decoding one large transaction takes as long as it takes, while the
/// leader's own session keeps renewing its lease.
pub struct Ingest {
    session: PgSession,
    unread: Statement,
    statement: Statement,
    /// Decoded changes read at most per call (whole transactions: one may go beyond).
    limit: i32,
    /// `postgres.query_timeout_secs`: the bound of a move with nothing to read.
    query_timeout: Duration,
    /// When the next move may start ([`IDLE_MOVE_SPACING`]).
    next_at: Mutex<Instant>,
}

impl Ingest {
    /// Prepares the call on `session`, reading about `limit` changes at a time.
    pub async fn prepare(
        session: PgSession,
        limit: u32,
        query_timeout: Duration,
    ) -> Result<Self, tokio_postgres::Error> {
        // What a move loses in a crash is moved again: its position is lost with it.
        session
            .client
            .batch_execute("SET synchronous_commit = off")
            .await?;
        Ok(Self {
            unread: session
                .client
                .prepare(
                    "SELECT greatest(pg_current_wal_flush_lsn() - lsn, 0)::bigint
                     FROM itrelay.wal_progress",
                )
                .await?,
            statement: session
                .client
                .prepare("SELECT taken, refused FROM itrelay.wal_ingest($1)")
                .await?,
            session,
            limit: i32::try_from(limit).unwrap_or(i32::MAX),
            query_timeout,
            next_at: Mutex::new(Instant::now()),
        })
    }

    /// Whether a move is due: the last one found the slot full, or it caught up long
    /// enough ago ([`IDLE_MOVE_SPACING`]).
    pub fn is_due(&self, now: Instant) -> bool {
        now >= *self.next_at()
    }

    /// Makes a move due now, whenever the last one was.
    pub fn make_due(&self) {
        *self.next_at() = Instant::now();
    }

    fn next_at(&self) -> std::sync::MutexGuard<'_, Instant> {
        // Cannot fail: the lock is held only to read or write an instant.
        self.next_at
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Moves the events of transactions committed since the last call into
    /// `itrelay.events`; returns how many. The WAL not yet read is asked for in the same
    /// round trip, and bounds the move ([`LEAST_BYTES_PER_SEC`]). Messages that carry
    /// itrelay's prefix without its key are not events: they are counted in a warning,
    /// never relayed.
    pub async fn run(&self) -> Result<i64, IngestError> {
        let started = Instant::now();
        let taken = self.move_events().await?;
        // A move of a third of the limit in events may have stopped at the limit: more
        // may be waiting.
        let full = taken.saturating_mul(3) >= i64::from(self.limit);
        let now = Instant::now();
        *self.next_at() = if full {
            now
        } else {
            now + now.duration_since(started) * IDLE_MOVE_SPACING
        };
        Ok(taken)
    }

    async fn move_events(&self) -> Result<i64, IngestError> {
        let client = &self.session.client;
        let params: [&(dyn ToSql + Sync); 1] = [&self.limit];
        let unread = client.query_one(&self.unread, &[]);
        let moved = client.query_one(&self.statement, &params);
        tokio::pin!(unread, moved);
        // Polled in this order, both are sent at once, the size first.
        let unread_bytes: i64 = tokio::select! {
            biased;
            row = tokio::time::timeout(self.query_timeout, &mut unread) => {
                let timeout = IngestError::Timeout { limit: self.query_timeout, unread_bytes: 0 };
                row.map_err(|_| timeout)??.try_get(0)?
            }
            // Answered before the size: only an error can be.
            row = &mut moved => return Ok(Self::taken(&row?)?),
        };
        let limit = self.query_timeout
            + Duration::from_secs(u64::try_from(unread_bytes / LEAST_BYTES_PER_SEC).unwrap_or(0));
        let row =
            tokio::time::timeout(limit, moved)
                .await
                .map_err(|_| IngestError::Timeout {
                    limit,
                    unread_bytes,
                })??;
        Ok(Self::taken(&row)?)
    }

    fn taken(row: &tokio_postgres::Row) -> Result<i64, tokio_postgres::Error> {
        let refused: i64 = row.try_get(1)?;
        if refused > 0 {
            warn!(
                refused,
                "logical messages with itrelay's prefix but not its key were ignored: \
                 something other than itrelay.enqueue emits them"
            );
        }
        row.try_get(0)
    }
}

/// The slot's figures, for `status` and `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Slot {
    pub name: String,
    /// WAL the server keeps for the slot: from its restart point to the current position.
    pub retained_bytes: i64,
    /// WAL not yet moved into `itrelay.events`: from the last move to the current position.
    pub unread_bytes: i64,
    /// Whether the server already dropped WAL the slot needs (`max_slot_wal_keep_size`
    /// exceeded): events in it are lost to the relay.
    pub lost: bool,
}

/// The slot of this database, if it exists (never before an install with WAL capture).
pub async fn slot(client: &Client) -> Result<Option<Slot>, tokio_postgres::Error> {
    let installed: bool = client
        .query_one(
            "SELECT to_regclass('itrelay.wal_progress') IS NOT NULL",
            &[],
        )
        .await?
        .try_get(0)?;
    if !installed {
        return Ok(None);
    }
    let row = client
        .query_opt(
            "SELECT s.slot_name::text,
                    coalesce(pg_current_wal_lsn() - s.restart_lsn, 0)::bigint,
                    greatest(pg_current_wal_lsn() - greatest(p.lsn, s.confirmed_flush_lsn), 0)::bigint,
                    coalesce(s.wal_status = 'lost', false)
             FROM pg_replication_slots AS s, itrelay.wal_progress AS p
             WHERE s.slot_name = itrelay.wal_slot()",
            &[],
        )
        .await?;
    row.map(|row| {
        Ok(Slot {
            name: row.try_get(0)?,
            retained_bytes: row.try_get(1)?,
            unread_bytes: row.try_get(2)?,
            lost: row.try_get(3)?,
        })
    })
    .transpose()
}

/// How long `install` waits, after switching back to the outbox, for the transactions
/// begun before the switch to end.
pub const RETIRE_WAIT: Duration = Duration::from_secs(60);

/// How often `install` looks whether the transactions begun before a switch back to
/// the outbox have ended.
const RETIRE_POLL: Duration = Duration::from_millis(100);

/// Makes the installed mode `capture`, once sql/install.sql is applied. To WAL: creates
/// the slot first (a slot cannot be created in a transaction that wrote anything), then
/// switches. To the outbox: switches (which moves what is in the slot), waits up to
/// `wait` for the transactions begun before the switch to end, moves what they left in
/// the slot, then drops the slot, so the server no longer keeps WAL for it.
pub async fn install(client: &Client, capture: Capture, wait: Duration) -> anyhow::Result<()> {
    if capture == Capture::Wal {
        let (_, wal_level) = installed(client).await?;
        if wal_level != "logical" {
            anyhow::bail!(CaptureError::WalLevel(wal_level));
        }
        let created = client
            .query(
                "SELECT pg_create_logical_replication_slot(itrelay.wal_slot(), 'pgoutput')
                 WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots
                                   WHERE slot_name = itrelay.wal_slot())",
                &[],
            )
            .await?;
        if !created.is_empty() {
            info!("created the replication slot for WAL capture");
        }
    }
    let before: String = client
        .query_one("SELECT itrelay.set_capture($1)", &[&capture.as_str()])
        .await?
        .try_get(0)?;
    if before != capture.as_str() {
        info!(from = %before, to = capture.as_str(), "capture switched");
    }
    if capture == Capture::Outbox && slot(client).await?.is_some() {
        retire(client, wait).await?;
    }
    Ok(())
}

/// Waits up to `wait` for every transaction begun before now to end, then retires the
/// slot (`itrelay.wal_retire`): a transaction that took its snapshot before the switch
/// may still record to WAL.
async fn retire(client: &Client, wait: Duration) -> anyhow::Result<()> {
    let switched: OffsetDateTime = client
        .query_one("SELECT clock_timestamp()", &[])
        .await?
        .try_get(0)?;
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let older: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND pid <> pg_backend_pid()
                   AND xact_start < $1",
                &[&switched],
            )
            .await?
            .try_get(0)?;
        if older == 0 {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!(
                "capture is outbox now, but {older} transaction(s) begun before the switch \
                 still run after {wait:?}; the replication slot is kept until they end: run \
                 `itrelay install` again later (or SELECT itrelay.wal_retire())"
            );
        }
        tokio::time::sleep(RETIRE_POLL).await;
    }
    let moved: i64 = client
        .query_one("SELECT itrelay.wal_retire()", &[])
        .await?
        .try_get(0)?;
    info!(
        moved,
        "dropped the replication slot of WAL capture, after moving what was left in it"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[test]
    fn wal_capture_needs_logical_wal_and_a_matching_install() {
        let cases = [
            (Capture::Outbox, Capture::Outbox, "replica", Ok(())),
            (Capture::Wal, Capture::Wal, "logical", Ok(())),
            (
                Capture::Wal,
                Capture::Wal,
                "replica",
                Err(CaptureError::WalLevel("replica".into())),
            ),
            (
                Capture::Wal,
                Capture::Outbox,
                "logical",
                Err(CaptureError::Mismatch {
                    installed: "outbox",
                    configured: "wal",
                }),
            ),
            (
                Capture::Outbox,
                Capture::Wal,
                "logical",
                Err(CaptureError::Mismatch {
                    installed: "wal",
                    configured: "outbox",
                }),
            ),
        ];
        for (configured, installed, level, expected) in cases {
            assert_eq!(
                check(configured, installed, level),
                expected,
                "{configured:?} on {installed:?} at {level}"
            );
        }
    }

    #[test]
    fn the_errors_name_the_key_and_the_fix() {
        let level = CaptureError::WalLevel("replica".into()).to_string();
        assert!(level.contains("postgres.capture"), "{level}");
        assert!(level.contains("wal_level = replica"), "{level}");
        assert!(level.contains("wal_level = logical"), "{level}");
        let mismatch = CaptureError::Mismatch {
            installed: "outbox",
            configured: "wal",
        }
        .to_string();
        assert!(mismatch.contains("run `itrelay install`"), "{mismatch}");
    }

    #[test]
    fn a_capture_mode_is_outbox_or_wal() {
        #[derive(Deserialize)]
        struct Holder {
            capture: Capture,
        }
        let read = |text: &str| toml::from_str::<Holder>(text).map(|h| h.capture);
        assert_eq!(read("capture = \"wal\"").unwrap(), Capture::Wal);
        assert_eq!(read("capture = \"outbox\"").unwrap(), Capture::Outbox);
        let error = read("capture = \"binlog\"").err().unwrap().to_string();
        assert!(
            error.contains("\"binlog\" is not a capture mode; valid: outbox, wal"),
            "{error}"
        );
    }
}

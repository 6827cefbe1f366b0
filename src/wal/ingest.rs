//! The leader's move of the slot's messages into `itrelay.events` (`itrelay.wal_ingest`
//! in sql/install.sql), on a session of its own, bounded by the WAL it reads and paced
//! while the slot is caught up.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;
use tokio_postgres::types::ToSql;
use tokio_postgres::Statement;
use tracing::warn;

use crate::postgres::PgSession;

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
    #[error("asking how much WAL the replication slot holds unread got no answer within {0:?}")]
    SizeTimeout(Duration),
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
                row.map_err(|_| IngestError::SizeTimeout(self.query_timeout))??.try_get(0)?
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

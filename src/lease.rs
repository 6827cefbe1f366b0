//! Leadership: one relay per outbox leads. It holds a session advisory lock, and a lease
//! row (`itrelay.leader`) that it renews through that same session every third of
//! `relay.lease_secs`.
//!
//! A lock alone outlives a partition: the server keeps a silent client's session, and
//! its lock, until its TCP keepalive gives up (two hours by default), and not even then
//! when a pooler or NAT in between keeps the server's side of the connection alive. The
//! lease bounds that: a standby that cannot get the lock and finds the lease not renewed
//! for `relay.lease_secs` (by the server's clock, so the relays' clocks do not matter)
//! ends the holder's backend, which releases the lock, and takes over. The partitioned
//! leader gives up first: its renewal gets no answer within `postgres.query_timeout_secs`,
//! which ends its session, and the configuration keeps renewal period plus query timeout
//! within the lease.
//!
//! Ending another relay's backend takes the same role or membership in
//! `pg_signal_backend`.
//!
//! The lock belongs to the outbox (the database), not to the NOTIFY channel: relays
//! configured for different channels never lead the same outbox.

use std::time::Duration;

use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

/// The advisory lock's name; its key is `hashtextextended(LOCK_NAME, 0)`.
pub const LOCK_NAME: &str = "itrelay leader";

/// How often the leader renews its lease, for a lease of `lease`.
pub fn renew_every(lease: Duration) -> Duration {
    lease / 3
}

/// The lease as the database holds it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LeaseRow {
    /// The leader's backend.
    pub pid: i32,
    /// The channel the leader listens on.
    pub channel: String,
    /// Seconds since the leader last renewed it (server clock).
    pub age_seconds: f64,
}

/// Why a session could not take or keep the lease.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("{}", crate::postgres::describe(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// The lease row no longer names this session: another relay took over.
    #[error("the leader's lease was taken over by another relay")]
    Lost,
}

/// Takes the lock if no other session holds it, and then writes this session's lease.
/// True if this session leads now.
pub async fn try_take(client: &Client, channel: &str) -> Result<bool, tokio_postgres::Error> {
    let locked: bool = client
        .query_one(
            "SELECT pg_try_advisory_lock(hashtextextended($1, 0))",
            &[&LOCK_NAME],
        )
        .await?
        .try_get(0)?;
    if locked {
        client
            .execute(
                "INSERT INTO itrelay.leader (pid, backend_start, channel, renewed_at)
                 SELECT pid, backend_start, $1, now() FROM pg_stat_activity
                 WHERE pid = pg_backend_pid()
                 ON CONFLICT (singleton) DO UPDATE
                 SET pid = excluded.pid, backend_start = excluded.backend_start,
                     channel = excluded.channel, renewed_at = excluded.renewed_at",
                &[&channel],
            )
            .await?;
    }
    Ok(locked)
}

/// Renews this session's lease.
pub async fn renew(client: &Client) -> Result<(), LeaseError> {
    let renewed = client
        .execute(
            "UPDATE itrelay.leader SET renewed_at = now() WHERE pid = pg_backend_pid()",
            &[],
        )
        .await?;
    if renewed == 1 {
        Ok(())
    } else {
        Err(LeaseError::Lost)
    }
}

/// What a standby did about the leader's lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Takeover {
    /// The lease is fresh, or no session of a leader holds the lock: nothing to do.
    None,
    /// The holder's lease was older than `lease`: its backend was ended.
    Ended { pid: i32 },
    /// The lease is stale but this role may not end the holder's backend.
    NotPermitted { pid: i32 },
}

/// Ends the backend of the leader whose lease is older than `lease`, if that backend
/// really holds the leader lock (and is the one that wrote the lease, not a later
/// session with the same pid). Waits up to a second for it to exit.
pub async fn end_stale(
    client: &Client,
    lease: Duration,
) -> Result<Takeover, tokio_postgres::Error> {
    let stale = client
        .query_opt(
            "SELECT l.pid FROM itrelay.leader l
             JOIN pg_stat_activity a ON a.pid = l.pid
             JOIN pg_locks k ON k.pid = l.pid
             WHERE l.renewed_at < now() - make_interval(secs => $1)
               AND (a.backend_start IS NULL OR a.backend_start = l.backend_start)
               AND k.locktype = 'advisory' AND k.granted AND k.objsubid = 1
               AND k.database = (SELECT oid FROM pg_database WHERE datname = current_database())
               AND ((k.classid::bigint << 32) | k.objid::bigint) = hashtextextended($2, 0)",
            &[&lease.as_secs_f64(), &LOCK_NAME],
        )
        .await?;
    let Some(row) = stale else {
        return Ok(Takeover::None);
    };
    let pid: i32 = row.try_get(0)?;
    match client
        .execute("SELECT pg_terminate_backend($1, 1000)", &[&pid])
        .await
    {
        Ok(_) => Ok(Takeover::Ended { pid }),
        Err(error) if error.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => {
            Ok(Takeover::NotPermitted { pid })
        }
        Err(error) => Err(error),
    }
}

/// The lease as it stands, if a relay ever led.
pub async fn read(client: &Client) -> Result<Option<LeaseRow>, tokio_postgres::Error> {
    client
        .query_opt(
            "SELECT pid, channel, extract(epoch FROM now() - renewed_at)::float8
             FROM itrelay.leader",
            &[],
        )
        .await?
        .map(|row| {
            Ok(LeaseRow {
                pid: row.try_get(0)?,
                channel: row.try_get(1)?,
                age_seconds: row.try_get(2)?,
            })
        })
        .transpose()
}

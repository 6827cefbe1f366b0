//! `itrelay status`: the backlog and its oldest age, failures, the leader and its lease,
//! the last delivery.

use std::time::Duration;

use serde::Serialize;
use time::OffsetDateTime;
use tokio_postgres::Client;
use uuid::Uuid;

use super::rfc3339;
use crate::lease::{self, LeaseRow, LOCK_NAME};
use crate::wal;

#[derive(Debug, Serialize)]
pub struct Status {
    pub pending: i64,
    pub oldest_pending_age_seconds: Option<f64>,
    pub failed: i64,
    pub delivered: i64,
    /// Copies waiting for a retry, and copies dead-lettered for their module alone.
    pub copies_waiting: i64,
    pub copies_failed: i64,
    pub last_delivered: Option<LastDelivered>,
    /// The session holding the leader lock, if any relay leads.
    pub leader: Option<Leader>,
    /// The leader's lease, if a relay ever led.
    pub lease: Option<Lease>,
    /// How the triggers record events: `outbox` or `wal`.
    pub capture: &'static str,
    /// Under WAL capture: the replication slot and the WAL it holds.
    pub wal_slot: Option<wal::Slot>,
}

#[derive(Debug, Serialize)]
pub struct Lease {
    #[serde(flatten)]
    pub row: LeaseRow,
    /// Not renewed for longer than `relay.lease_secs`: the leader is gone or cut off, and
    /// a standby takes over.
    pub stale: bool,
}

#[derive(Debug, Serialize)]
pub struct LastDelivered {
    pub event_id: Uuid,
    pub event_type: String,
    #[serde(with = "time::serde::rfc3339")]
    pub delivered_at: OffsetDateTime,
}

#[derive(Debug, Serialize)]
pub struct Leader {
    pub pid: i32,
    pub client_address: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub connected_since: OffsetDateTime,
}

/// The outbox's state; a lease older than `lease` is flagged stale.
pub async fn status(client: &Client, lease: Duration) -> Result<Status, tokio_postgres::Error> {
    let counts = client
        .query_one(
            "SELECT (SELECT count(*) FROM itrelay.pending),
                    (SELECT extract(epoch FROM now() - min(created_at))::float8
                     FROM itrelay.pending WHERE isfinite(created_at)),
                    count(*) FILTER (WHERE state = 'failed'),
                    count(*) FILTER (WHERE state = 'delivered'),
                    (SELECT count(*) FROM itrelay.copies WHERE state = 'waiting'),
                    (SELECT count(*) FROM itrelay.copies WHERE state = 'failed')
             FROM itrelay.outbox",
            &[],
        )
        .await?;
    let last_delivered = client
        .query_opt(
            // An event delivered at the first try was delivered by the relay's last
            // record at the latest.
            "SELECT o.event_id, o.event_type, coalesce(o.delivered_at, p.recorded_at)
             FROM itrelay.outbox AS o, itrelay.progress AS p
             WHERE o.state = 'delivered' AND o.event_type <> $1
               AND coalesce(o.delivered_at, p.recorded_at) IS NOT NULL
             ORDER BY 3 DESC, o.id DESC LIMIT 1",
            &[&crate::canary::EVENT_TYPE],
        )
        .await?
        .map(|row| -> Result<_, tokio_postgres::Error> {
            Ok(LastDelivered {
                event_id: row.try_get(0)?,
                event_type: row.try_get(1)?,
                delivered_at: row.try_get(2)?,
            })
        })
        .transpose()?;
    // A bigint advisory lock is held as classid (high 32 bits) and objid (low 32 bits).
    let leader = client
        .query_opt(
            "SELECT a.pid, host(a.client_addr), a.backend_start
             FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
             WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
               AND ((l.classid::bigint << 32) | l.objid::bigint) = hashtextextended($1, 0)",
            &[&LOCK_NAME],
        )
        .await?
        .map(|row| -> Result<_, tokio_postgres::Error> {
            Ok(Leader {
                pid: row.try_get(0)?,
                client_address: row.try_get(1)?,
                connected_since: row.try_get(2)?,
            })
        })
        .transpose()?;
    let lease_row = lease::read(client).await?.map(|row| Lease {
        stale: row.age_seconds > lease.as_secs_f64(),
        row,
    });
    let (capture, _) = wal::installed(client).await?;
    let wal_slot = wal::slot(client).await?;
    Ok(Status {
        capture: capture.as_str(),
        wal_slot,
        pending: counts.try_get(0)?,
        oldest_pending_age_seconds: counts.try_get(1)?,
        failed: counts.try_get(2)?,
        delivered: counts.try_get(3)?,
        copies_waiting: counts.try_get(4)?,
        copies_failed: counts.try_get(5)?,
        last_delivered,
        leader,
        lease: lease_row,
    })
}

impl Status {
    pub fn render(&self) -> String {
        let oldest = self
            .oldest_pending_age_seconds
            .map_or(String::new(), |age| format!(" (oldest {age:.1} s)"));
        let last = self
            .last_delivered
            .as_ref()
            .map_or("none".to_owned(), |last| {
                format!(
                    "{} {} at {}",
                    last.event_type,
                    last.event_id,
                    rfc3339(last.delivered_at)
                )
            });
        let leader = self.leader.as_ref().map_or(
            "none: no relay holds the leader lock".to_owned(),
            |leader| {
                format!(
                    "backend pid {} from {} since {}",
                    leader.pid,
                    leader.client_address.as_deref().unwrap_or("local socket"),
                    rfc3339(leader.connected_since)
                )
            },
        );
        format!(
            "backlog         {} pending{oldest}\n\
             dead-lettered   {} failed, {} copies for one module\n\
             waiting copies  {} (nacked or held back, sent again)\n\
             delivered       {}\n\
             last delivered  {last}\n\
             leader          {leader}\n\
             lease           {}\n\
             capture         {}\n",
            self.pending,
            self.failed,
            self.copies_failed,
            self.copies_waiting,
            self.delivered,
            self.render_lease(),
            self.render_capture()
        )
    }

    fn render_capture(&self) -> String {
        match &self.wal_slot {
            None if self.capture == "wal" => {
                "wal, but its replication slot is missing: run `itrelay install`".to_owned()
            }
            None => self.capture.to_owned(),
            Some(slot) => format!(
                "{}, slot {}: {} bytes of WAL retained, {} bytes not yet read{}",
                self.capture,
                slot.name,
                slot.retained_bytes,
                slot.unread_bytes,
                if slot.lost {
                    " (LOST: the server removed WAL the slot needed, see max_slot_wal_keep_size)"
                } else {
                    ""
                }
            ),
        }
    }

    fn render_lease(&self) -> String {
        let Some(lease) = &self.lease else {
            return "none: no relay has led yet".to_owned();
        };
        let row = &lease.row;
        let holder = format!(
            "backend pid {} on channel {}, renewed {:.1} s ago",
            row.pid, row.channel, row.age_seconds
        );
        let holds_lock = self.leader.as_ref().is_some_and(|l| l.pid == row.pid);
        if lease.stale && holds_lock {
            format!("STALE: {holder}; the leader is gone or cut off, a standby takes over")
        } else if lease.stale {
            format!("STALE: {holder}; that session no longer leads")
        } else {
            holder
        }
    }
}

//! WAL capture (`postgres.capture = "wal"`): the triggers record each event as a
//! transactional logical message instead of an outbox row, and the leader moves the
//! messages of committed transactions from the database's replication slot into
//! `itrelay.events`, in commit order, before a claim ([`ingest`]). From there an event is
//! relayed like any other: retries, dead letters, replay and `status` are the same in
//! both modes. This module holds the mode, the start-up check, the switch made by
//! `itrelay install`, and the slot's figures for `status` and `/metrics`. See
//! docs/wal-capture.md.

mod ingest;

use std::time::Duration;

use time::OffsetDateTime;
use tokio_postgres::Client;
use tracing::info;

use crate::config::Capture;

pub use self::ingest::{Ingest, IngestError};

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

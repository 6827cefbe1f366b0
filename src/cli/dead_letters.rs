//! The failed events: `itrelay dead-letters` lists them with their reasons, `itrelay
//! replay` sends them (or delivered ones) again with the same message id.

use serde::Serialize;
use time::OffsetDateTime;
use tokio_postgres::Client;
use uuid::Uuid;

use super::rfc3339;
use crate::route::Router;

#[derive(Debug, Serialize)]
pub struct FailedEvent {
    pub outbox_id: i64,
    pub event_id: Uuid,
    pub event_type: String,
    pub source_table: String,
    /// `None` for a time the relay cannot read (infinity).
    #[serde(with = "time::serde::rfc3339::option")]
    pub created_at: Option<OffsetDateTime>,
    pub attempts: i32,
    pub reason: Option<String>,
    /// The subscriber module whose copy alone was dead-lettered; `None`: the whole event.
    pub module: Option<String>,
}

/// Failed (dead-lettered) events and copies, oldest first.
pub async fn dead_letters(
    client: &Client,
    limit: i64,
) -> Result<Vec<FailedEvent>, tokio_postgres::Error> {
    client
        .query(
            "SELECT id, event_id, event_type, source_table,
                    CASE WHEN isfinite(created_at) THEN created_at END, attempts, last_error,
                    NULL::text AS module
             FROM itrelay.events WHERE state = 'failed'
             UNION ALL
             SELECT o.id, o.event_id, o.event_type, o.source_table,
                    CASE WHEN isfinite(o.created_at) THEN o.created_at END, c.attempts,
                    c.last_error, c.module
             FROM itrelay.copies AS c JOIN itrelay.events AS o ON o.id = c.outbox_id
             WHERE c.state = 'failed'
             ORDER BY 1, 8 NULLS FIRST LIMIT $1",
            &[&limit],
        )
        .await?
        .iter()
        .map(|row| {
            Ok(FailedEvent {
                outbox_id: row.try_get(0)?,
                event_id: row.try_get(1)?,
                event_type: row.try_get(2)?,
                source_table: row.try_get(3)?,
                created_at: row.try_get(4)?,
                attempts: row.try_get(5)?,
                reason: row.try_get(6)?,
                module: row.try_get(7)?,
            })
        })
        .collect()
}

pub fn render_dead_letters(events: &[FailedEvent]) -> String {
    if events.is_empty() {
        return "no dead-lettered events\n".to_owned();
    }
    events
        .iter()
        .map(|event| {
            format!(
                "{}  {}  {:<30} {}  attempts {}{}\n    {}\n",
                event.outbox_id,
                event.event_id,
                if event.event_type.is_empty() {
                    "(none)"
                } else {
                    &event.event_type
                },
                event.created_at.map_or("-".to_owned(), rfc3339),
                event.attempts,
                event
                    .module
                    .as_ref()
                    .map_or(String::new(), |module| format!("  copy for {module}")),
                event.reason.as_deref().unwrap_or("")
            )
        })
        .collect()
}

/// Which events to send again. Every given criterion must match.
#[derive(Debug, Default, Clone)]
pub struct ReplaySelection {
    pub event_ids: Vec<Uuid>,
    pub event_type: Option<String>,
    pub since: Option<OffsetDateTime>,
    pub until: Option<OffsetDateTime>,
    /// Also delivered events, not only failed ones.
    pub include_delivered: bool,
}

impl ReplaySelection {
    pub fn is_empty(&self) -> bool {
        self.event_ids.is_empty()
            && self.event_type.is_none()
            && self.since.is_none()
            && self.until.is_none()
    }
}

/// The outbox rows a [`ReplaySelection`] selects, given [`ReplaySelection::parameters`].
/// The outbox rows a [`ReplaySelection`] looks at, given [`ReplaySelection::parameters`]:
/// failed or delivered events matching every criterion. Of those, events in a state of
/// `$5` are sent again to every module; a delivered event outside it has only its copies
/// dead-lettered for one module sent again.
const SELECTED: &str = "state IN ('failed', 'delivered')
    AND (cardinality($1::uuid[]) = 0 OR event_id = ANY($1))
    AND ($2::text IS NULL OR event_type = $2)
    AND ($3::timestamptz IS NULL OR created_at >= $3)
    AND ($4::timestamptz IS NULL OR created_at < $4)";

const FAILED: &[&str] = &["failed"];
const FAILED_OR_DELIVERED: &[&str] = &["failed", "delivered"];

impl ReplaySelection {
    /// The parameters of [`SELECTED`].
    fn parameters(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 5] {
        // The states replayed: failed, and delivered if asked.
        let states = if self.include_delivered {
            &FAILED_OR_DELIVERED
        } else {
            &FAILED
        };
        [
            &self.event_ids,
            &self.event_type,
            &self.since,
            &self.until,
            states,
        ]
    }
}

/// One event a replay would send again.
#[derive(Debug, Serialize)]
pub struct ReplayCandidate {
    pub outbox_id: i64,
    pub event_id: Uuid,
    pub event_type: String,
    pub state: String,
    /// `None` for a time the relay cannot read (infinity).
    #[serde(with = "time::serde::rfc3339::option")]
    pub created_at: Option<OffsetDateTime>,
    /// The modules whose dead-lettered copies alone would be sent again; `None`: the
    /// whole event, to every module.
    pub modules: Option<Vec<String>>,
}

/// The events [`replay`] would put back to pending, in outbox order; changes nothing.
pub async fn replay_candidates(
    client: &Client,
    selection: &ReplaySelection,
) -> Result<Vec<ReplayCandidate>, tokio_postgres::Error> {
    let query = format!(
        "SELECT id, event_id, event_type, state,
                CASE WHEN isfinite(created_at) THEN created_at END,
                CASE WHEN NOT state = ANY($5) THEN
                    (SELECT array_agg(c.module ORDER BY c.module) FROM itrelay.copies AS c
                     WHERE c.outbox_id = o.id AND c.state = 'failed')
                END
         FROM itrelay.outbox AS o
         WHERE {SELECTED}
           AND (state = ANY($5) OR (state = 'delivered' AND EXISTS (
                SELECT 1 FROM itrelay.copies AS c WHERE c.outbox_id = o.id AND c.state = 'failed')))
         ORDER BY id"
    );
    client
        .query(&query, &selection.parameters())
        .await?
        .iter()
        .map(|row| {
            Ok(ReplayCandidate {
                outbox_id: row.try_get(0)?,
                event_id: row.try_get(1)?,
                event_type: row.try_get(2)?,
                state: row.try_get(3)?,
                created_at: row.try_get(4)?,
                modules: row.try_get(5)?,
            })
        })
        .collect()
}

/// What `replay --dry-run` prints: each event and the exchanges it would go to.
pub fn render_replay_candidates(candidates: &[ReplayCandidate], router: &Router) -> String {
    let mut text: String = candidates
        .iter()
        .map(|event| {
            let exchanges: Vec<&str> = crate::catalog::find(&event.event_type)
                .map(|spec| router.destinations(spec))
                .unwrap_or_default()
                .iter()
                .filter(|destination| {
                    event
                        .modules
                        .as_ref()
                        .is_none_or(|modules| modules.contains(&destination.module))
                })
                .map(|destination| destination.exchange.as_str())
                .collect();
            format!(
                "{}  {}  {:<30} {:<9} -> {}\n",
                event.outbox_id,
                event.event_id,
                event.event_type,
                event.state,
                if exchanges.is_empty() {
                    "(no route: dead letter)".to_owned()
                } else {
                    exchanges.join(", ")
                }
            )
        })
        .collect();
    text.push_str(&format!(
        "{} events would be replayed (dry run: nothing changed)\n",
        candidates.len()
    ));
    text
}

/// Puts the selected events back to pending, so the relay sends them again with the same
/// message id, and wakes it with the lowest id put back: its next claim starts there.
/// A copy dead-lettered for one module alone is put back to waiting instead, so it is
/// sent to that module only. Returns how many events were selected.
pub async fn replay(
    client: &Client,
    channel: &str,
    selection: &ReplaySelection,
) -> Result<u64, tokio_postgres::Error> {
    let query = format!(
        "WITH selected AS (
                 SELECT id, state FROM itrelay.outbox WHERE {SELECTED}
             ), replayed AS (
                 -- Queued: pending whatever itrelay.progress says of its id. A row
                 -- delivered at the first try was published once, though not recorded.
                 UPDATE itrelay.events AS o
                 SET state = 'queued', last_error = NULL, delivered_at = NULL,
                     attempts = CASE WHEN o.state = 'pending' THEN greatest(o.attempts, 1)
                                     ELSE o.attempts END
                 FROM selected AS s
                 WHERE o.id = s.id AND s.state = ANY($5)
                 RETURNING o.id
             ), forgotten AS (
                 -- Sent again to every module: their copies start afresh.
                 DELETE FROM itrelay.copies WHERE outbox_id IN (SELECT id FROM replayed)
                 RETURNING 1
             ), copies AS (
                 UPDATE itrelay.copies AS c
                 SET state = 'waiting', last_error = NULL, next_attempt_at = now()
                 FROM selected AS s
                 WHERE c.outbox_id = s.id AND c.state = 'failed' AND s.state = 'delivered'
                   AND NOT s.state = ANY($5)
                 RETURNING c.outbox_id
             ), held AS (
                 UPDATE itrelay.events SET state = 'held', delivered_at = NULL
                 WHERE id IN (SELECT outbox_id FROM copies)
                 RETURNING id
             ), touched AS (
                 SELECT id FROM replayed UNION SELECT id FROM held
             )
             SELECT count(*) + 0 * (SELECT count(*) FROM forgotten),
                    coalesce(min(id)::text, '')
             FROM touched"
    );
    let replayed = client.query_one(&query, &selection.parameters()).await?;
    let (count, lowest_id): (i64, String) = (replayed.try_get(0)?, replayed.try_get(1)?);
    client
        .execute("SELECT pg_notify($1, $2)", &[&channel, &lowest_id])
        .await?;
    Ok(count.unsigned_abs())
}

//! The outbox in Postgres: claim pending rows in order, fetch the reference rows a batch
//! needs for enrichment, record what happened to each row, and take in whole-event
//! notifications. Values are always bind parameters.

mod claimed;
mod references;

use serde_json::Value;
use tokio_postgres::{Client, Statement};

use crate::delivery::{CopyRecord, CopyState};
use crate::floor::Probe;
use crate::mapping::Mapping;

pub(crate) use self::claimed::read_claimed;
pub use self::claimed::{claimed_id, Claimed};
pub use self::references::ReferenceLookups;

/// Source table recorded for events that arrived as whole-JSON notifications.
pub const NOTIFY_SOURCE: &str = "notify";

/// What became of a claimed row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Confirmed on every subscriber exchange but those whose copies are listed: those
    /// wait for a retry, or were dead-lettered for their module alone.
    Delivered(Vec<CopyRecord>),
    /// Dead-lettered with this reason; kept for inspection and replay.
    Failed(String),
    /// Not confirmed; stays pending and is tried again.
    Retry(String),
}

/// Copies to record, as the columns of `unnest`.
#[derive(Default)]
struct CopyColumns<'a> {
    ids: Vec<i64>,
    modules: Vec<&'a str>,
    states: Vec<&'static str>,
    errors: Vec<&'a str>,
    retry_ms: Vec<f64>,
}

impl<'a> CopyColumns<'a> {
    fn push(&mut self, id: i64, record: &'a CopyRecord) {
        self.ids.push(id);
        self.modules.push(&record.module);
        self.states.push(record.state.as_str());
        self.errors.push(&record.error);
        self.retry_ms.push(record.retry_in.as_secs_f64() * 1000.0);
    }
}

/// The outbox statements, prepared once per connection.
pub struct Outbox {
    claim: Statement,
    probe: Statement,
    set_idle: Statement,
    record: Statement,
    insert_notified: Statement,
    /// Per reference table that exists: its rows with ids in $1.
    /// The reference rows enrichment needs.
    pub references: ReferenceLookups,
}

/// Limits the planner of `client`'s session to index paths, for the sessions that read
/// the outbox. Postgres plans a prepared statement once and keeps the plan until the
/// table's statistics change, so a claim planned just after the outbox was vacuumed empty
/// would read the whole table on every call once it has grown, until autovacuum analyzes
/// it again; and without statistics (autovacuum off) the planner read every partition
/// whole to find the few queued rows. Every outbox statement has an index path. (JIT and
/// parallel workers are off on every session: [`crate::postgres`].)
pub async fn use_index_paths(client: &Client) -> Result<(), tokio_postgres::Error> {
    client.batch_execute("SET enable_seqscan = off").await
}

impl Outbox {
    /// Prepares the statements on `client`, whose planner it first limits to index
    /// paths ([`use_index_paths`]).
    pub async fn prepare(
        client: &Client,
        mapping: &Mapping,
    ) -> Result<Self, tokio_postgres::Error> {
        use_index_paths(client).await?;
        Ok(Self {
            // One index scan in id order from the floor, stepping over exactly the rows
            // in flight. The payload comes as text, parsed row by row: a payload the
            // relay cannot read is one row's dead letter, not every claim's failure.
            claim: client
                .prepare(
                    "WITH raised AS (
                         -- The floor the relay has reached is kept for the next leader:
                         -- every id below it is settled (src/floor.rs).
                         UPDATE itrelay.progress
                         SET floor = $2, settled = settled * nummultirange(numrange($2, NULL))
                         WHERE floor < $2
                         RETURNING 1
                     ), gaps AS (
                         SELECT g.ids
                         FROM itrelay.progress AS p,
                              -- Every id from the floor to the last possible one.
                              unnest(nummultirange(numrange(greatest(p.floor, $2), 9223372036854775808))
                                     - p.settled
                                     - coalesce((SELECT range_agg(numrange(f, f + 1::numeric))
                                                 FROM unnest($3::bigint[]) AS f), '{}'))
                              AS g(ids)
                     )
                     SELECT id, event_id, event_type, payload::text, source_table, created_at,
                            entity
                     FROM (SELECT e.*
                           FROM gaps, LATERAL (
                               SELECT * FROM itrelay.events AS e
                               WHERE e.id >= lower(gaps.ids)::bigint
                                 AND e.id <= (upper(gaps.ids) - 1)::bigint
                                 AND e.state = 'pending'
                               ORDER BY e.id
                               LIMIT $1) AS e
                           UNION ALL
                           SELECT * FROM itrelay.events
                           WHERE state = 'queued' AND id <> ALL($3)) AS pending
                     ORDER BY id
                     LIMIT $1",
                )
                .await?,
            probe: client
                .prepare(
                    // Not max(id), which planned on an empty outbox reads the whole index.
                    "SELECT coalesce((SELECT id FROM itrelay.events ORDER BY id DESC LIMIT 1), 0),
                            pg_snapshot_xmin(s)::text::bigint, pg_snapshot_xmax(s)::text::bigint
                     FROM pg_current_snapshot() AS s",
                )
                .await?,
            // The lock `itrelay.enqueue` tries (sql/install.sql).
            set_idle: client
                .prepare(
                    "SELECT CASE WHEN $1
                         THEN pg_try_advisory_lock(hashtextextended('itrelay idle', 0))
                         ELSE pg_advisory_unlock(hashtextextended('itrelay idle', 0)) END",
                )
                .await?,
            // Delivered rows (nearly all) by id alone, into itrelay.progress: their rows
            // are not touched. The others on their rows, with their state and error, and
            // the copies of those not confirmed. Rows are found by `id = ANY`, so the cost
            // follows the batch whatever the planner believes the table holds. Counts the
            // ids newly settled and the rows to retry.
            record: client
                .prepare(
                    "WITH recorded AS (
                         UPDATE itrelay.events AS o
                         SET state = CASE WHEN u.state = 'pending' THEN o.state ELSE u.state END,
                             attempts = o.attempts + 1,
                             last_error = u.error,
                             delivered_at = CASE WHEN u.state = 'delivered' THEN now() END
                         FROM unnest($2::bigint[], $3::text[], $4::text[]) AS u(id, state, error)
                         WHERE o.id = ANY($2) AND o.id = u.id AND o.state IN ('pending', 'queued')
                         RETURNING o.id, o.entity, u.state
                     ), requeued AS (
                         -- Replayed rows delivered: found in the few rows recorded on
                         -- their own, by the batch's id range, not an index probe per id.
                         UPDATE itrelay.events
                         SET state = 'delivered', attempts = attempts + 1, last_error = NULL,
                             delivered_at = now()
                         WHERE state = 'queued'
                           AND id BETWEEN (SELECT min(i) FROM unnest($1::bigint[]) AS i)
                                      AND (SELECT max(i) FROM unnest($1::bigint[]) AS i)
                           AND id + 0 = ANY($1)
                         RETURNING 1
                     ), copies AS (
                         INSERT INTO itrelay.copies AS c
                             (outbox_id, module, entity, state, attempts, last_error, next_attempt_at)
                         SELECT u.id, u.module, r.entity, u.state, 1, u.error,
                                now() + u.retry_ms * interval '1 millisecond'
                         FROM unnest($5::bigint[], $6::text[], $7::text[], $8::text[], $9::float8[])
                              AS u(id, module, state, error, retry_ms)
                         JOIN recorded AS r ON r.id = u.id
                         ON CONFLICT (outbox_id, module) DO UPDATE
                         SET state = excluded.state, attempts = c.attempts + 1,
                             last_error = excluded.last_error,
                             next_attempt_at = excluded.next_attempt_at
                         RETURNING 1
                     ), fresh AS (
                         SELECT (coalesce(range_agg(numrange(s.id, s.id + 1::numeric)), '{}')
                                 * nummultirange(numrange(p.floor, NULL))) - p.settled AS ids
                         FROM itrelay.progress AS p,
                              (SELECT unnest($1::bigint[])
                               UNION ALL
                               SELECT id FROM recorded WHERE state <> 'pending') AS s(id)
                         GROUP BY p.floor, p.settled
                     ), progress AS (
                         UPDATE itrelay.progress AS p
                         SET settled = p.settled + fresh.ids, recorded_at = now()
                         FROM fresh
                         WHERE NOT isempty(fresh.ids)
                         RETURNING 1
                     )
                     SELECT coalesce((SELECT sum(upper(r) - lower(r)) FROM fresh, unnest(fresh.ids) AS r), 0)::bigint
                            + (SELECT count(*) FROM recorded WHERE state = 'pending')
                            + 0 * (SELECT count(*) FROM copies) + 0 * (SELECT count(*) FROM requeued)
                            + 0 * (SELECT count(*) FROM progress)",
                )
                .await?,
            insert_notified: client
                .prepare(
                    "INSERT INTO itrelay.events (event_type, payload, source_table)
                     SELECT event_type, payload, $3
                     FROM unnest($1::text[], $2::jsonb[]) AS n(event_type, payload)",
                )
                .await?,
            references: ReferenceLookups::prepare(client, mapping).await?,
        })
    }

    /// The oldest pending rows from `floor` on, but for those `in_flight`, at most
    /// `limit`, in the order they were written (see `docs/ordering.md`).
    pub async fn claim(
        &self,
        client: &Client,
        limit: u32,
        floor: i64,
        in_flight: &[i64],
    ) -> Result<Vec<Claimed>, tokio_postgres::Error> {
        let rows = client
            .query(&self.claim, &[&i64::from(limit), &floor, &in_flight])
            .await?;
        rows.iter().map(read_claimed).collect()
    }

    /// Where the outbox ends and which transactions are running, for [`ClaimFloor`](crate::floor::ClaimFloor).
    pub async fn probe(&self, client: &Client) -> Result<Probe, tokio_postgres::Error> {
        let row = client.query_one(&self.probe, &[]).await?;
        Ok(Probe {
            max_id: row.try_get(0)?,
            xmin: row.try_get(1)?,
            xmax: row.try_get(2)?,
        })
    }

    /// Tells the triggers whether to NOTIFY: only while the relay is idle. Going idle is
    /// granted (`true`) only once no transaction that found the relay busy, and so will
    /// not NOTIFY, is still running; until then the relay must keep polling. Going busy
    /// again (`idle` false) follows a granted `true`, once.
    pub async fn set_idle(
        &self,
        client: &Client,
        idle: bool,
    ) -> Result<bool, tokio_postgres::Error> {
        client.query_one(&self.set_idle, &[&idle]).await?.try_get(0)
    }

    /// Records each row's outcome in one statement; rows no longer pending are left alone.
    pub async fn record(
        &self,
        client: &Client,
        outcomes: &[(i64, Outcome)],
    ) -> Result<u64, tokio_postgres::Error> {
        if outcomes.is_empty() {
            return Ok(0);
        }
        let mut delivered = Vec::with_capacity(outcomes.len());
        let (mut ids, mut states, mut errors) = (Vec::new(), Vec::new(), Vec::new());
        let mut copies = CopyColumns::default();
        for (id, outcome) in outcomes {
            let (state, error) = match outcome {
                Outcome::Delivered(records) if records.is_empty() => {
                    delivered.push(*id);
                    continue;
                }
                Outcome::Delivered(records) => {
                    for record in records {
                        copies.push(*id, record);
                    }
                    let waits = records.iter().any(|r| r.state == CopyState::Waiting);
                    (if waits { "held" } else { "delivered" }, None)
                }
                Outcome::Failed(reason) => ("failed", Some(reason.as_str())),
                Outcome::Retry(reason) => ("pending", Some(reason.as_str())),
            };
            ids.push(*id);
            states.push(state);
            errors.push(error);
        }
        let CopyColumns {
            ids: copy_ids,
            modules,
            states: copy_states,
            errors: copy_errors,
            retry_ms,
        } = &copies;
        let row = client
            .query_one(
                &self.record,
                &[
                    &delivered,
                    &ids,
                    &states,
                    &errors,
                    copy_ids,
                    modules,
                    copy_states,
                    copy_errors,
                    retry_ms,
                ],
            )
            .await?;
        let recorded: i64 = row.try_get(0)?;
        Ok(recorded.unsigned_abs())
    }

    /// Stores whole-event notifications ([`crate::notified::as_rows`]) as outbox rows,
    /// so they are relayed like any other event.
    pub async fn insert_notified(
        &self,
        client: &Client,
        (event_types, bodies): &(Vec<String>, Vec<Value>),
    ) -> Result<u64, tokio_postgres::Error> {
        client
            .execute(
                &self.insert_notified,
                &[event_types, bodies, &NOTIFY_SOURCE],
            )
            .await
    }
}

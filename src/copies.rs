//! Copies waiting for a retry, in Postgres (`itrelay.copies`): read them with their
//! rows, record what became of a retry, and load the [`Gates`] they make. Values are
//! always bind parameters.

use std::collections::HashSet;
use std::time::Duration;

use tokio::time::Instant;
use tokio_postgres::{Client, Statement};

use crate::delivery::{CopyState, Gates, Verdict};
use crate::outbox::{read_claimed, Claimed};

/// A copy waiting for a retry, with its outbox row.
pub struct WaitingCopy {
    pub module: String,
    /// Attempts so far.
    pub attempts: u32,
    /// Whether its next attempt is due.
    pub due: bool,
    pub row: Claimed,
}

/// What one retried copy came to, to record.
pub struct Retried<'a> {
    pub outbox_id: i64,
    pub module: &'a str,
    pub verdict: &'a Verdict,
    /// For a copy that waits again.
    pub retry_in: Duration,
}

/// The statements on waiting copies, prepared once per connection.
pub struct Copies {
    waiting: Statement,
    settle: Statement,
    gates: Statement,
}

impl Copies {
    pub async fn prepare(client: &Client) -> Result<Self, tokio_postgres::Error> {
        Ok(Self {
            // The columns of the outbox claim first, so the row is read the same way.
            waiting: client
                .prepare(
                    "SELECT o.id, o.event_id, o.event_type, o.payload::text, o.source_table,
                            o.created_at, o.entity, c.module, c.attempts,
                            c.next_attempt_at <= now()
                     FROM itrelay.copies AS c JOIN itrelay.events AS o ON o.id = c.outbox_id
                     WHERE c.state = 'waiting'
                     ORDER BY c.outbox_id, c.module
                     LIMIT $1",
                )
                .await?,
            // A confirmed copy goes; the others are kept with their new state. A held row
            // whose last waiting copy is settled now is delivered.
            settle: client
                .prepare(
                    "WITH u AS (
                         SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[],
                                              $5::float8[])
                                AS u(id, module, verdict, error, retry_ms)
                     ), done AS (
                         DELETE FROM itrelay.copies AS c USING u
                         WHERE c.outbox_id = u.id AND c.module = u.module
                           AND u.verdict = 'confirmed'
                         RETURNING 1
                     ), kept AS (
                         UPDATE itrelay.copies AS c
                         SET state = u.verdict, attempts = c.attempts + 1, last_error = u.error,
                             next_attempt_at = now() + u.retry_ms * interval '1 millisecond'
                         FROM u
                         WHERE c.outbox_id = u.id AND c.module = u.module
                           AND u.verdict <> 'confirmed'
                         RETURNING 1
                     ), finished AS (
                         UPDATE itrelay.events AS o
                         SET state = 'delivered', delivered_at = now()
                         WHERE o.id IN (SELECT id FROM u) AND o.state = 'held'
                           AND NOT EXISTS (SELECT 1 FROM u AS w
                                           WHERE w.id = o.id AND w.verdict = 'waiting')
                           AND NOT EXISTS (SELECT 1 FROM itrelay.copies AS c
                                           WHERE c.outbox_id = o.id AND c.state = 'waiting'
                                             AND NOT EXISTS (SELECT 1 FROM u AS x
                                                             WHERE x.id = c.outbox_id
                                                               AND x.module = c.module))
                         RETURNING 1
                     )
                     SELECT (SELECT count(*) FROM done) + 0 * (SELECT count(*) FROM kept)
                            + 0 * (SELECT count(*) FROM finished)",
                )
                .await?,
            // The first waiting copy of each (module, entity): what blocks, and when.
            gates: client
                .prepare(
                    "SELECT DISTINCT ON (module, coalesce(entity, outbox_id::text))
                            module, entity,
                            extract(epoch FROM next_attempt_at - now())::float8
                     FROM itrelay.copies
                     WHERE state = 'waiting'
                     ORDER BY module, coalesce(entity, outbox_id::text), outbox_id",
                )
                .await?,
        })
    }

    /// The first `limit` waiting copies, in outbox id order.
    pub async fn waiting(
        &self,
        client: &Client,
        limit: u32,
    ) -> Result<Vec<WaitingCopy>, tokio_postgres::Error> {
        let rows = client.query(&self.waiting, &[&i64::from(limit)]).await?;
        rows.iter()
            .map(|row| {
                let attempts: i32 = row.try_get(8)?;
                Ok(WaitingCopy {
                    module: row.try_get(7)?,
                    attempts: attempts.unsigned_abs(),
                    due: row.try_get(9)?,
                    row: read_claimed(row)?,
                })
            })
            .collect()
    }

    /// Records the retried copies; returns how many were confirmed.
    pub async fn settle(
        &self,
        client: &Client,
        retried: &[Retried<'_>],
    ) -> Result<u64, tokio_postgres::Error> {
        if retried.is_empty() {
            return Ok(0);
        }
        let ids: Vec<i64> = retried.iter().map(|r| r.outbox_id).collect();
        let modules: Vec<&str> = retried.iter().map(|r| r.module).collect();
        let (verdicts, errors): (Vec<&str>, Vec<Option<String>>) = retried
            .iter()
            .map(|r| match r.verdict {
                Verdict::Confirmed => ("confirmed", None),
                Verdict::Wait(reason) => (CopyState::Waiting.as_str(), Some(reason.clone())),
                Verdict::DeadLetter(rejection) => {
                    (CopyState::Failed.as_str(), Some(rejection.to_string()))
                }
            })
            .unzip();
        let retry_ms: Vec<f64> = retried
            .iter()
            .map(|r| r.retry_in.as_secs_f64() * 1000.0)
            .collect();
        let row = client
            .query_one(
                &self.settle,
                &[&ids, &modules, &verdicts, &errors, &retry_ms],
            )
            .await?;
        let confirmed: i64 = row.try_get(0)?;
        Ok(confirmed.unsigned_abs())
    }

    /// The gates the waiting copies make now.
    pub async fn gates(&self, client: &Client) -> Result<Gates, tokio_postgres::Error> {
        let now = Instant::now();
        let mut blocked = HashSet::new();
        let mut next_due: Option<Instant> = None;
        for row in client.query(&self.gates, &[]).await? {
            let module: String = row.try_get(0)?;
            let entity: Option<String> = row.try_get(1)?;
            let due_in: f64 = row.try_get(2)?;
            let due = now + Duration::try_from_secs_f64(due_in.max(0.0)).unwrap_or_default();
            next_due = Some(next_due.map_or(due, |next| next.min(due)));
            if let Some(entity) = entity {
                blocked.insert((module, entity));
            }
        }
        Ok(Gates::new(blocked, next_due))
    }
}

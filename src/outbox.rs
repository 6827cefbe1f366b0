//! The outbox in Postgres: claim pending rows in order, fetch the reference rows a batch
//! needs for enrichment, record what happened to each row, and take in whole-event
//! notifications. Values are always bind parameters.

use std::collections::BTreeSet;

use serde_json::{Map, Value};
use tokio_postgres::{Client, Statement};
use uuid::Uuid;

use crate::catalog::Reference;
use crate::enrich::{ReferenceData, ReferenceRow};
use crate::event::OutboxRow;
use crate::redact;

/// Source table recorded for events that arrived as whole-JSON notifications.
pub const NOTIFY_SOURCE: &str = "notify";

/// What became of a claimed row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Confirmed on every subscriber exchange.
    Delivered,
    /// Dead-lettered with this reason; kept for inspection and replay.
    Failed(String),
    /// Not confirmed; stays pending and is tried again.
    Retry(String),
}

/// The outbox statements, prepared once per connection.
pub struct Outbox {
    claim: Statement,
    set_idle: Statement,
    record: Statement,
    insert_notified: Statement,
}

impl Outbox {
    pub async fn prepare(client: &Client) -> Result<Self, tokio_postgres::Error> {
        Ok(Self {
            claim: client
                .prepare(
                    "SELECT id, event_id, event_type, payload, source_table, created_at
                     FROM itrelay.outbox
                     WHERE state = 'pending'
                     ORDER BY id
                     LIMIT $1",
                )
                .await?,
            set_idle: client
                .prepare(
                    "INSERT INTO itrelay.relay_state (idle) VALUES ($1)
                     ON CONFLICT (singleton) DO UPDATE SET idle = excluded.idle",
                )
                .await?,
            record: client
                .prepare(
                    "UPDATE itrelay.outbox AS o
                     SET state = u.state,
                         attempts = o.attempts + 1,
                         last_error = u.error,
                         delivered_at = CASE WHEN u.state = 'delivered' THEN now() END
                     FROM unnest($1::bigint[], $2::text[], $3::text[]) AS u(id, state, error)
                     WHERE o.id = u.id AND o.state = 'pending'",
                )
                .await?,
            insert_notified: client
                .prepare(
                    "INSERT INTO itrelay.outbox (event_type, payload, source_table)
                     SELECT event_type, payload, $3
                     FROM unnest($1::text[], $2::jsonb[]) AS n(event_type, payload)",
                )
                .await?,
        })
    }

    /// The oldest pending rows, at most `limit`, in the order they were written.
    pub async fn claim(
        &self,
        client: &Client,
        limit: u32,
    ) -> Result<Vec<OutboxRow>, tokio_postgres::Error> {
        let rows = client.query(&self.claim, &[&i64::from(limit)]).await?;
        rows.iter()
            .map(|row| {
                Ok(OutboxRow {
                    id: row.try_get(0)?,
                    event_id: row.try_get(1)?,
                    event_type: row.try_get(2)?,
                    payload: row.try_get(3)?,
                    source_table: row.try_get(4)?,
                    created_at: row.try_get(5)?,
                })
            })
            .collect()
    }

    /// Tells the triggers whether to NOTIFY: only while the relay is idle.
    pub async fn set_idle(&self, client: &Client, idle: bool) -> Result<(), tokio_postgres::Error> {
        client.execute(&self.set_idle, &[&idle]).await.map(drop)
    }

    /// Records each row's outcome in one statement; rows no longer pending are left alone.
    pub async fn record(
        &self,
        client: &Client,
        outcomes: &[(i64, Outcome)],
    ) -> Result<u64, tokio_postgres::Error> {
        let ids: Vec<i64> = outcomes.iter().map(|(id, _)| *id).collect();
        let (states, errors): (Vec<&str>, Vec<Option<&str>>) = outcomes
            .iter()
            .map(|(_, outcome)| match outcome {
                Outcome::Delivered => ("delivered", None),
                Outcome::Failed(reason) => ("failed", Some(reason.as_str())),
                Outcome::Retry(reason) => ("pending", Some(reason.as_str())),
            })
            .unzip();
        client
            .execute(&self.record, &[&ids, &states, &errors])
            .await
    }

    /// Stores whole-event notifications as outbox rows, redacted, so they are relayed
    /// like any other event. Text that is not JSON is stored as a JSON string, to be
    /// dead-lettered with the parse error.
    pub async fn insert_notified(
        &self,
        client: &Client,
        payloads: &[String],
    ) -> Result<u64, tokio_postgres::Error> {
        let (event_types, bodies): (Vec<String>, Vec<Value>) = payloads
            .iter()
            .map(|text| {
                let mut body = serde_json::from_str::<Value>(text)
                    .unwrap_or_else(|_| Value::String(text.clone()));
                redact::redact(&mut body);
                let event_type = body
                    .get("event_type")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                (event_type, body)
            })
            .unzip();
        client
            .execute(
                &self.insert_notified,
                &[&event_types, &bodies, &NOTIFY_SOURCE],
            )
            .await
    }
}

/// Fetches the reference rows enrichment asked for, one query per table.
pub async fn fetch_references(
    client: &Client,
    wanted: &BTreeSet<(Reference, Uuid)>,
) -> Result<ReferenceData, tokio_postgres::Error> {
    let mut data = ReferenceData::new();
    for reference in [Reference::Vendor, Reference::Employee, Reference::Asset] {
        let ids: Vec<Uuid> = wanted
            .iter()
            .filter(|(kind, _)| *kind == reference)
            .map(|(_, id)| *id)
            .collect();
        if ids.is_empty() {
            continue;
        }
        for row in client.query(lookup_sql(reference), &[&ids]).await? {
            let id: Uuid = row.try_get(0)?;
            let columns: Value = row.try_get(2)?;
            let columns = match columns {
                Value::Object(columns) => columns,
                _ => Map::new(),
            };
            data.insert(
                (reference, id),
                ReferenceRow {
                    organization_id: row.try_get(1)?,
                    columns,
                },
            );
        }
    }
    Ok(data)
}

/// id, organization_id and the columns enrichment copies, for the rows with ids in $1.
fn lookup_sql(reference: Reference) -> &'static str {
    match reference {
        Reference::Vendor => {
            "SELECT vendor_id, organization_id, jsonb_build_object('vendor_name', vendor_name)
             FROM it_vendors WHERE vendor_id = ANY($1)"
        }
        Reference::Employee => {
            "SELECT employee_id, organization_id, jsonb_strip_nulls(jsonb_build_object(
                 'employee_name', employee_name, 'email', email))
             FROM employees WHERE employee_id = ANY($1)"
        }
        Reference::Asset => {
            "SELECT asset_id, organization_id, jsonb_strip_nulls(jsonb_build_object(
                 'asset_tag', asset_tag, 'asset_name', asset_name, 'asset_type', asset_type,
                 'location', CASE WHEN site_id IS NOT NULL THEN jsonb_build_object(
                     'site_id', site_id, 'building', building, 'room', room) END))
             FROM it_assets WHERE asset_id = ANY($1)"
        }
    }
}

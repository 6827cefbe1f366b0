//! The reference rows enrichment needs (vendors, employees, assets), looked up by id in
//! the tables `[mapping]` names, one prepared statement per table.

use std::collections::BTreeSet;

use futures_util::future::try_join_all;
use serde_json::{Map, Value};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Statement};
use tracing::warn;
use uuid::Uuid;

use crate::catalog::Reference;
use crate::enrich::{ReferenceData, ReferenceRow};
use crate::mapping::Mapping;

/// The lookup of each reference table that exists, prepared once per connection.
pub struct ReferenceLookups(Vec<(Reference, Statement)>);

impl ReferenceLookups {
    /// Prepares the lookup of each reference table, by its mapped name. A table that
    /// does not exist is left out, with a warning: events that need a row of it are
    /// dead-lettered at enrichment.
    pub async fn prepare(
        client: &Client,
        mapping: &Mapping,
    ) -> Result<Self, tokio_postgres::Error> {
        let mut lookups = Vec::new();
        for reference in Reference::ALL {
            match client.prepare(&lookup_sql(reference, mapping)).await {
                Ok(statement) => lookups.push((reference, statement)),
                Err(error) if error.code() == Some(&SqlState::UNDEFINED_TABLE) => {
                    warn!(table = %mapping.table_sql(reference.table()), "reference table not found; events that need a row of it are dead-lettered at enrichment");
                }
                Err(error) => return Err(error),
            }
        }
        Ok(Self(lookups))
    }

    /// Fetches the reference rows enrichment asked for: one query per table, sent
    /// together.
    pub async fn fetch(
        &self,
        client: &Client,
        wanted: &BTreeSet<(Reference, Uuid)>,
    ) -> Result<ReferenceData, tokio_postgres::Error> {
        let lookups = self.0.iter().filter_map(|(reference, statement)| {
            let ids: Vec<Uuid> = wanted
                .iter()
                .filter(|(kind, _)| kind == reference)
                .map(|(_, id)| *id)
                .collect();
            (!ids.is_empty()).then_some(async move {
                let rows = client.query(statement, &[&ids]).await?;
                Ok::<_, tokio_postgres::Error>((*reference, rows))
            })
        });
        let mut data = ReferenceData::new();
        for (reference, rows) in try_join_all(lookups).await? {
            for row in rows {
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
}

/// id, organization_id and the columns enrichment copies, for the rows with ids in $1.
fn lookup_sql(reference: Reference, mapping: &Mapping) -> String {
    let table = reference.table();
    let c = |column: &str| mapping.column_sql(table, column);
    let (id, fields) = match reference {
        Reference::Vendor => (
            c("vendor_id"),
            format!("jsonb_build_object('vendor_name', {})", c("vendor_name")),
        ),
        Reference::Employee => (
            c("employee_id"),
            format!(
                "jsonb_strip_nulls(jsonb_build_object('employee_name', {}, 'email', {}))",
                c("employee_name"),
                c("email")
            ),
        ),
        Reference::Asset => (
            c("asset_id"),
            format!(
                "jsonb_strip_nulls(jsonb_build_object(
                     'asset_tag', {}, 'asset_name', {}, 'asset_type', {},
                     'location', CASE WHEN {site} IS NOT NULL THEN jsonb_build_object(
                         'site_id', {site}, 'building', {}, 'room', {}) END))",
                c("asset_tag"),
                c("asset_name"),
                c("asset_type"),
                c("building"),
                c("room"),
                site = c("site_id"),
            ),
        ),
    };
    format!(
        "SELECT {id}, {}, {fields} FROM {} WHERE {id} = ANY($1)",
        c("organization_id"),
        mapping.table_sql(table)
    )
}

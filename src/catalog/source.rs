//! The catalog's source files (`catalog/<event_type>.toml`, its JSON Schema
//! `<event_type>.v1.json`, and `<event_type>.sql`, the body of the trigger function it
//! owns), read and checked.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, ensure, Context};
use serde::Deserialize;

/// One event type, as `catalog/<event_type>.toml` states it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventDef {
    pub event_type: String,
    /// Human name, e.g. "IT Asset Purchased".
    pub name: String,
    /// The IT sub-module that owns it.
    pub category: String,
    /// The contract's status: implemented, in progress, planned.
    pub status: String,
    /// Payload field naming the entity events are ordered by.
    pub entity_key: String,
    /// Whether `itrelay.enqueue` locks the entity: where the business write does not lock
    /// the entity's own row (another table's row, a time-based scan).
    pub lock_entity: bool,
    /// Default subscriber modules (`[routes]`).
    pub subscribers: Vec<String>,
    pub source: SourceDef,
    #[serde(default)]
    pub enrichments: Vec<EnrichmentDef>,
    /// Fields of its payload that are secrets, wherever they appear in any payload.
    #[serde(default)]
    pub sensitive: Vec<SensitiveDef>,
    /// `<event_type>.v1.json`.
    #[serde(skip)]
    pub schema: String,
    /// `<event_type>.sql`: the body of the trigger function, for the event owning one.
    #[serde(skip)]
    pub body: Option<String>,
}

/// A secret field: removed from every payload at any depth and replaced by
/// `<field>_ref` = `<record>/<the payload's id field>/<field>`, a reference to the record
/// that holds it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SensitiveDef {
    pub field: String,
    /// The table whose row holds the secret, e.g. `it_licenses`.
    pub record: String,
    /// The payload field naming that row, e.g. `license_id`.
    pub id: String,
}

/// Where an event comes from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceDef {
    /// The reference table whose rows the event is about.
    pub table: String,
    /// When it fires, in words.
    pub condition: String,
    /// The time-based scan function recording it (`itrelay.<scan>`), or ...
    pub scan: Option<String>,
    /// ... the trigger function recording it (`itrelay.itrelay_notify_<function>`).
    pub function: Option<String>,
    /// The triggers calling that function: on the event owning it (with its `.sql`).
    #[serde(default)]
    pub triggers: Vec<TriggerDef>,
}

/// One row trigger.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerDef {
    pub on: Operation,
    /// The trigger's WHEN condition over NEW and OLD, reference column names.
    pub when: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    Insert,
    Update,
}

impl Operation {
    pub fn sql(self) -> &'static str {
        match self {
            Operation::Insert => "INSERT",
            Operation::Update => "UPDATE",
        }
    }
}

/// Payload fields the relay fills from a reference row.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrichmentDef {
    /// Payload field holding the reference row's id.
    pub key: String,
    /// `it_vendors`, `employees` or `it_assets`.
    pub reference: String,
    /// Payload field → reference column.
    pub fills: BTreeMap<String, String>,
}

/// The reference tables enrichment reads.
pub const REFERENCE_TABLES: [&str; 3] = ["it_vendors", "employees", "it_assets"];

/// A trigger function and the triggers calling it.
#[derive(Debug)]
pub struct TriggerFunction<'a> {
    pub name: &'a str,
    /// The event whose `.sql` holds the body.
    pub owner: &'a str,
    pub table: &'a str,
    pub body: &'a str,
    pub triggers: &'a [TriggerDef],
    /// Every event it records.
    pub events: Vec<&'a EventDef>,
}

impl TriggerFunction<'_> {
    /// The name of `trigger`: `itrelay_<function>_trigger`, but for the insert trigger of a
    /// function with both an insert and an update trigger, `itrelay_<function>_insert_trigger`.
    pub fn trigger_name(&self, trigger: &TriggerDef) -> String {
        let both = self.triggers.iter().any(|t| t.on == Operation::Insert)
            && self.triggers.iter().any(|t| t.on == Operation::Update);
        match (both, trigger.on) {
            (true, Operation::Insert) => format!("itrelay_{}_insert_trigger", self.name),
            _ => format!("itrelay_{}_trigger", self.name),
        }
    }
}

/// The whole catalog, in event-type order.
#[derive(Debug, Clone)]
pub struct Catalog {
    pub events: Vec<EventDef>,
}

impl Catalog {
    /// Every sensitive field of the catalog, once, by field name.
    pub fn sensitive(&self) -> Vec<&SensitiveDef> {
        let mut fields: Vec<&SensitiveDef> =
            self.events.iter().flat_map(|e| &e.sensitive).collect();
        fields.sort_by(|a, b| a.field.cmp(&b.field));
        fields.dedup_by(|a, b| a.field == b.field);
        fields
    }

    /// Reads a catalog directory.
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "toml") {
                let stem = path.file_stem().unwrap_or_default().to_string_lossy();
                let read = |name: String| std::fs::read_to_string(dir.join(name));
                let toml = read(format!("{stem}.toml"))?;
                let schema = read(format!("{stem}.v1.json"))
                    .with_context(|| format!("{stem}: no schema {stem}.v1.json"))?;
                let body = read(format!("{stem}.sql")).ok();
                files.push((stem.into_owned(), toml, schema, body));
            }
        }
        Self::parse(files)
    }

    /// Parses `(event type, toml, schema, trigger body)` of each event.
    pub fn parse(files: Vec<(String, String, String, Option<String>)>) -> anyhow::Result<Self> {
        let mut events = Vec::new();
        for (event_type, toml, schema, body) in files {
            let mut event: EventDef =
                toml::from_str(&toml).with_context(|| format!("catalog/{event_type}.toml"))?;
            ensure!(
                event.event_type == event_type,
                "catalog/{event_type}.toml: event_type is {:?}, not its file name",
                event.event_type
            );
            event.schema = schema;
            event.body = body;
            events.push(event);
        }
        events.sort_by(|a, b| a.event_type.cmp(&b.event_type));
        let catalog = Self { events };
        catalog.check()?;
        Ok(catalog)
    }

    fn check(&self) -> anyhow::Result<()> {
        for event in &self.events {
            let name = &event.event_type;
            let source = &event.source;
            match (&source.scan, &source.function) {
                (Some(_), None) => ensure!(
                    source.triggers.is_empty() && event.body.is_none(),
                    "{name}: a scanned event has no triggers and no .sql"
                ),
                (None, Some(_)) => ensure!(
                    source.triggers.is_empty() == event.body.is_none(),
                    "{name}: an event with triggers has its function's body in {name}.sql, and only then"
                ),
                _ => bail!("{name}: [source] names exactly one of scan and function"),
            }
            ensure!(!event.subscribers.is_empty(), "{name}: no subscribers");
            for enrichment in &event.enrichments {
                ensure!(
                    REFERENCE_TABLES.contains(&enrichment.reference.as_str()),
                    "{name}: enrichment from {}, not one of {REFERENCE_TABLES:?}",
                    enrichment.reference
                );
            }
        }
        for event in &self.events {
            for sensitive in &event.sensitive {
                ensure!(
                    [&sensitive.field, &sensitive.record, &sensitive.id]
                        .iter()
                        .all(|name| is_plain_name(name)),
                    "{}: a sensitive field, its record and its id are lower-case identifiers",
                    event.event_type
                );
                ensure!(
                    self.events
                        .iter()
                        .flat_map(|other| &other.sensitive)
                        .all(|other| other.field != sensitive.field || other == sensitive),
                    "sensitive field {} is declared differently in two events",
                    sensitive.field
                );
            }
        }
        for function in self.trigger_functions() {
            ensure!(
                function
                    .events
                    .iter()
                    .all(|e| e.source.table == function.table),
                "function {}: its events name different tables",
                function.name
            );
        }
        let functions: Vec<_> = self
            .events
            .iter()
            .filter_map(|e| e.source.function.as_deref())
            .collect();
        for name in functions {
            let owners = self
                .events
                .iter()
                .filter(|e| e.source.function.as_deref() == Some(name) && e.body.is_some())
                .count();
            ensure!(
                owners == 1,
                "function {name}: {owners} events own it (need one with triggers and a .sql)"
            );
        }
        Ok(())
    }

    /// Every trigger function, with the triggers calling it and the events it records.
    pub fn trigger_functions(&self) -> Vec<TriggerFunction<'_>> {
        self.events
            .iter()
            .filter_map(|owner| {
                let name = owner.source.function.as_deref()?;
                Some(TriggerFunction {
                    name,
                    owner: &owner.event_type,
                    table: &owner.source.table,
                    body: owner.body.as_deref()?,
                    triggers: &owner.source.triggers,
                    events: self
                        .events
                        .iter()
                        .filter(|e| e.source.function.as_deref() == Some(name))
                        .collect(),
                })
            })
            .collect()
    }

    /// The names of every trigger the install creates.
    pub fn trigger_names(&self) -> Vec<String> {
        self.trigger_functions()
            .iter()
            .flat_map(|f| f.triggers.iter().map(|t| f.trigger_name(t)))
            .collect()
    }
}

/// A lower-case SQL identifier: safe inside generated SQL and regular expressions.
fn is_plain_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

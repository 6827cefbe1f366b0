//! The event catalog: what each IT event type is, where it comes from, and its schema.
//!
//! The single source is `catalog/` (one `<event_type>.toml` per event beside its JSON
//! Schema, and the SQL body of the trigger function an event owns). [`EVENTS`] is
//! generated from it (`catalog/events.rs`), as are the triggers of `sql/install.sql`, the
//! default `[routes]` of `config/default.toml` and `docs/catalog.md`; a test regenerates
//! them and fails on any difference.

// Generated: rustfmt leaves it as the generator writes it.
#[rustfmt::skip]
mod events;
#[cfg(test)]
mod regen;
pub mod render;
pub mod source;

pub use events::{EVENTS, SENSITIVE};

/// A reference table the relay reads to fill in names a trigger does not carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reference {
    /// `it_vendors`, by `vendor_id`: `vendor_name`.
    Vendor,
    /// `employees`, by `employee_id`: `employee_name`, `email`.
    Employee,
    /// `it_assets`, by `asset_id`: `asset_tag`, `asset_name`, `asset_type`, `location`.
    Asset,
}

impl Reference {
    pub const ALL: [Reference; 3] = [Reference::Vendor, Reference::Employee, Reference::Asset];

    /// The columns its lookup reads (`crate::outbox`), by their reference names.
    pub fn columns(self) -> &'static [&'static str] {
        match self {
            Reference::Vendor => &["vendor_id", "organization_id", "vendor_name"],
            Reference::Employee => &["employee_id", "organization_id", "employee_name", "email"],
            Reference::Asset => &[
                "asset_id",
                "organization_id",
                "asset_tag",
                "asset_name",
                "asset_type",
                "site_id",
                "building",
                "room",
            ],
        }
    }

    pub fn table(self) -> &'static str {
        match self {
            Reference::Vendor => "it_vendors",
            Reference::Employee => "employees",
            Reference::Asset => "it_assets",
        }
    }
}

/// Fill payload fields from the reference row whose id is in `key`.
#[derive(Debug)]
pub struct Enrichment {
    /// Payload field holding the reference row's id (a UUID).
    pub key: &'static str,
    pub reference: Reference,
    /// `(payload field, reference column)` pairs, filled when the payload lacks them.
    pub fills: &'static [(&'static str, &'static str)],
}

/// A secret field (`[[sensitive]]` in the catalog): removed from every payload, at any
/// depth, and replaced by `<field>_ref` = `<record>/<the payload's id field>/<field>`.
#[derive(Debug)]
pub struct Sensitive {
    pub field: &'static str,
    /// The table whose row holds the secret.
    pub record: &'static str,
    /// The payload field naming that row.
    pub id: &'static str,
}

/// One event type of the catalog.
#[derive(Debug)]
pub struct EventSpec {
    pub event_type: &'static str,
    /// Human name, e.g. "IT Asset Purchased".
    pub name: &'static str,
    /// The IT sub-module that owns it, e.g. "IT-01 Asset Management".
    pub category: &'static str,
    /// The business table whose trigger records it.
    pub source_table: &'static str,
    /// When the trigger fires, in words.
    pub condition: &'static str,
    /// Payload field naming the entity events are ordered by.
    pub entity_key: &'static str,
    pub enrichments: &'static [Enrichment],
    /// The JSON Schema of the published body (`catalog/<event_type>.v1.json`).
    pub schema: &'static str,
}

impl EventSpec {
    /// The versioned schema reference, `payload.<PascalName>.v1`.
    pub fn schema_ref(&self) -> String {
        let pascal: String = self
            .event_type
            .split('_')
            .map(|word| {
                let mut chars = word.chars();
                chars
                    .next()
                    .map(|first| first.to_ascii_uppercase().to_string() + chars.as_str())
                    .unwrap_or_default()
            })
            .collect();
        format!("payload.{pascal}.v1")
    }

    /// The JSON Schema, parsed (`Null` if it did not parse, which the catalog's tests rule
    /// out).
    pub fn schema_value(&self) -> serde_json::Value {
        serde_json::from_str(self.schema).unwrap_or(serde_json::Value::Null)
    }

    /// The schema's `x-itrelay-status`: `contract` (from the contract) or `draft` (ours);
    /// `unknown` if it has none.
    pub fn schema_status(&self) -> String {
        self.schema_value()
            .get("x-itrelay-status")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("unknown")
            .to_owned()
    }
}

/// The catalog's source files as embedded in the binary.
pub fn sources() -> anyhow::Result<source::Catalog> {
    source::Catalog::parse(
        events::SOURCES
            .iter()
            .map(|(name, toml, schema, body)| {
                (
                    (*name).to_owned(),
                    (*toml).to_owned(),
                    (*schema).to_owned(),
                    body.map(str::to_owned),
                )
            })
            .collect(),
    )
}

/// The catalog entry of an event type.
pub fn find(event_type: &str) -> Option<&'static EventSpec> {
    EVENTS.iter().find(|spec| spec.event_type == event_type)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_ref_is_pascal_case_and_versioned() {
        assert_eq!(
            find("it_asset_purchased").unwrap().schema_ref(),
            "payload.ItAssetPurchased.v1"
        );
        assert_eq!(
            find("it_ticket_status_changed").unwrap().schema_ref(),
            "payload.ItTicketStatusChanged.v1"
        );
    }

    #[test]
    fn every_schema_names_its_event_and_ref() {
        for spec in EVENTS {
            let schema: serde_json::Value = serde_json::from_str(spec.schema).unwrap();
            assert_eq!(schema["title"], spec.schema_ref(), "{}", spec.event_type);
            assert_eq!(
                schema["properties"]["event_type"]["const"], spec.event_type,
                "{}",
                spec.event_type
            );
        }
    }

    #[test]
    fn event_types_are_unique() {
        let mut names: Vec<_> = EVENTS.iter().map(|spec| spec.event_type).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), EVENTS.len());
    }
}

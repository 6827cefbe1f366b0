//! Enrichment: names the trigger does not carry (vendor, employee, asset) are filled in
//! from reference rows the relay fetched for the batch, and `timestamp` from the time
//! the event was written. Pure: the rows are looked up elsewhere ([`crate::outbox`]).

use std::collections::HashMap;

use serde_json::{Map, Value};
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

use crate::catalog::{Enrichment, Reference};
use crate::event::{Event, Rejection, Stage};

/// A reference row: its organization and the columns enrichment may copy.
#[derive(Debug, Clone, PartialEq)]
pub struct ReferenceRow {
    pub organization_id: Uuid,
    pub columns: Map<String, Value>,
}

/// Reference rows fetched for a batch, by table and id.
pub type ReferenceData = HashMap<(Reference, Uuid), ReferenceRow>;

/// The reference rows `event` needs: one per enrichment that has fields left to fill.
pub fn wanted(event: &Event) -> impl Iterator<Item = (Reference, Uuid)> + '_ {
    event
        .spec
        .enrichments
        .iter()
        .filter_map(|enrichment| Some((enrichment.reference, needed_key(event, enrichment)?)))
}

/// The id to look up, when the payload names one and lacks a field it would fill.
fn needed_key(event: &Event, enrichment: &Enrichment) -> Option<Uuid> {
    let missing = enrichment
        .fills
        .iter()
        .any(|(field, _)| !event.payload.contains_key(*field));
    if !missing {
        return None;
    }
    // A missing or malformed id is left for validation to report.
    let id = event.payload.get(enrichment.key)?.as_str()?;
    Uuid::parse_str(id).ok()
}

pub fn enrich(event: &mut Event, references: &ReferenceData) -> Result<(), Rejection> {
    for enrichment in event.spec.enrichments {
        let Some(id) = needed_key(event, enrichment) else {
            continue;
        };
        let table = enrichment.reference.table();
        let row = references.get(&(enrichment.reference, id)).ok_or_else(|| {
            Rejection::new(
                Stage::Enrich,
                format!("{} {id} not found in {table}", enrichment.key),
            )
        })?;
        if row.organization_id != event.organization_id {
            return Err(Rejection::new(
                Stage::Enrich,
                format!(
                    "{} {id} in {table} belongs to another organization",
                    enrichment.key
                ),
            ));
        }
        for (field, column) in enrichment.fills {
            if !event.payload.contains_key(*field) {
                if let Some(value) = row.columns.get(*column) {
                    event.payload.insert((*field).to_owned(), value.clone());
                }
            }
        }
    }
    if !event.payload.contains_key("timestamp") {
        // Cannot fail: every OffsetDateTime within Postgres's range formats as RFC 3339.
        let stamp = event.occurred_at.format(&Rfc3339).unwrap_or_default();
        event
            .payload
            .insert("timestamp".to_owned(), Value::String(stamp));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use time::macros::datetime;

    use super::*;
    use crate::catalog;

    const ORG: Uuid = Uuid::from_u128(0x11);
    const OTHER_ORG: Uuid = Uuid::from_u128(0x22);
    const VENDOR: Uuid = Uuid::from_u128(0x33);

    fn purchased(payload: Value) -> Event {
        Event {
            outbox_id: 1,
            event_id: Uuid::nil(),
            spec: catalog::find("it_asset_purchased").unwrap(),
            organization_id: ORG,
            source_table: "it_assets".into(),
            occurred_at: datetime!(2026-03-01 12:30:00 UTC),
            entity: None,
            payload: payload.as_object().unwrap().clone(),
        }
    }

    fn vendor_row(organization_id: Uuid) -> ReferenceData {
        let columns = json!({"vendor_name": "Acme"}).as_object().unwrap().clone();
        HashMap::from([(
            (Reference::Vendor, VENDOR),
            ReferenceRow {
                organization_id,
                columns,
            },
        )])
    }

    #[test]
    fn fills_names_and_timestamp() {
        let mut event = purchased(json!({"vendor_id": VENDOR.to_string()}));
        assert_eq!(
            wanted(&event).collect::<Vec<_>>(),
            [(Reference::Vendor, VENDOR)]
        );
        enrich(&mut event, &vendor_row(ORG)).unwrap();
        assert_eq!(event.payload["vendor_name"], "Acme");
        assert_eq!(event.payload["timestamp"], "2026-03-01T12:30:00Z");
    }

    #[test]
    fn fields_already_present_are_kept_and_not_looked_up() {
        let mut event = purchased(json!({
            "vendor_id": VENDOR.to_string(), "vendor_name": "Given", "timestamp": "2026-01-01T00:00:00Z"
        }));
        assert_eq!(wanted(&event).count(), 0);
        enrich(&mut event, &ReferenceData::new()).unwrap();
        assert_eq!(event.payload["vendor_name"], "Given");
        assert_eq!(event.payload["timestamp"], "2026-01-01T00:00:00Z");
    }

    #[test]
    fn missing_reference_row_is_rejected() {
        let mut event = purchased(json!({"vendor_id": VENDOR.to_string()}));
        let rejection = enrich(&mut event, &ReferenceData::new()).unwrap_err();
        assert_eq!(rejection.stage, Stage::Enrich);
        assert_eq!(
            rejection.reason,
            format!("vendor_id {VENDOR} not found in it_vendors")
        );
    }

    #[test]
    fn reference_row_of_another_organization_is_rejected() {
        let mut event = purchased(json!({"vendor_id": VENDOR.to_string()}));
        let rejection = enrich(&mut event, &vendor_row(OTHER_ORG)).unwrap_err();
        assert!(rejection.reason.contains("another organization"));
    }

    #[test]
    fn malformed_ids_are_left_for_validation() {
        let mut event = purchased(json!({"vendor_id": "not-a-uuid"}));
        assert_eq!(wanted(&event).count(), 0);
        enrich(&mut event, &ReferenceData::new()).unwrap();
        assert!(!event.payload.contains_key("vendor_name"));
    }
}

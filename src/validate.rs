//! Validation: the body about to be published must match its event type's JSON Schema
//! (`catalog/`), formats (uuid, date, date-time) included.

use std::collections::HashMap;

use jsonschema::error::ValidationErrorKind;
use jsonschema::ValidationError;
use serde_json::Value;

use crate::catalog::{self, EventSpec};
use crate::event::{truncate, Event, Rejection, Stage};

/// How many schema violations a rejection lists, and how long each may be.
const ERRORS_SHOWN: usize = 5;
const ERROR_MAX: usize = 160;

/// A compiled validator per event type of the catalog.
pub struct Validators {
    by_type: HashMap<&'static str, jsonschema::Validator>,
}

impl Validators {
    /// Compiles every catalog schema; fails only if a shipped schema is broken.
    pub fn for_catalog() -> anyhow::Result<Self> {
        let by_type = catalog::EVENTS
            .iter()
            .map(|spec| Ok((spec.event_type, compile(spec)?)))
            .collect::<anyhow::Result<_>>()?;
        Ok(Self { by_type })
    }

    pub fn validate(&self, event: &mut Event) -> Result<(), Rejection> {
        let validator = self
            .by_type
            .get(event.spec.event_type)
            .ok_or_else(|| Rejection::new(Stage::Validate, "no schema for this event type"))?;
        let body = Value::Object(std::mem::take(&mut event.payload));
        // The quick check first: errors are collected only for a body that fails it.
        let errors: Vec<String> = if validator.is_valid(&body) {
            Vec::new()
        } else {
            validator
                .iter_errors(&body)
                .take(ERRORS_SHOWN + 1)
                .map(|error| truncate(&describe(&error), ERROR_MAX))
                .collect()
        };
        if let Value::Object(payload) = body {
            event.payload = payload;
        }
        if errors.is_empty() {
            return Ok(());
        }
        let mut reason = format!(
            "does not match {}: {}",
            event.spec.schema_ref(),
            errors[..errors.len().min(ERRORS_SHOWN)].join("; ")
        );
        if errors.len() > ERRORS_SHOWN {
            reason.push_str("; …");
        }
        Err(Rejection::new(Stage::Validate, reason))
    }
}

/// A violation as its path in the body and the rule it breaks, from the schema: never
/// the offending value, which may be anything (a secret under a misspelt name).
fn describe(error: &ValidationError) -> String {
    let path = error.instance_path().to_string();
    let at = if path.is_empty() { "/" } else { &path };
    let rule = match error.kind() {
        ValidationErrorKind::Required { property } => {
            format!("required property {property} is missing")
        }
        ValidationErrorKind::Format { format } => format!("is not a valid {format}"),
        ValidationErrorKind::AdditionalProperties { unexpected } => {
            let names: Vec<&str> = unexpected
                .iter()
                .map(|name| {
                    if is_plain_name(name) {
                        name.as_str()
                    } else {
                        "(not shown)"
                    }
                })
                .collect();
            format!("properties the schema does not allow: {}", names.join(", "))
        }
        kind => format!("breaks `{}`", kind.keyword()),
    };
    format!("{at}: {rule} (schema {})", error.schema_path())
}

/// A property name short and plain enough to show: lower-case letters, digits and `_`.
fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn compile(spec: &EventSpec) -> anyhow::Result<jsonschema::Validator> {
    let schema: Value = serde_json::from_str(spec.schema)
        .map_err(|e| anyhow::anyhow!("schema of {} is not JSON: {e}", spec.event_type))?;
    jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&schema)
        .map_err(|e| anyhow::anyhow!("schema of {} does not compile: {e}", spec.event_type))
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use time::OffsetDateTime;
    use uuid::Uuid;

    use super::*;

    fn disposed(payload: Value) -> Event {
        Event {
            outbox_id: 1,
            event_id: Uuid::nil(),
            spec: catalog::find("it_asset_disposed").unwrap(),
            organization_id: Uuid::nil(),
            source_table: "it_assets".into(),
            occurred_at: OffsetDateTime::UNIX_EPOCH,
            entity: None,
            payload: payload.as_object().unwrap().clone(),
        }
    }

    fn valid_disposed() -> Value {
        json!({
            "event_type": "it_asset_disposed",
            "asset_id": "0b5f3c9e-3f0a-4a8e-9c55-5e1d2b7a9f10",
            "asset_tag": "LT-0042",
            "asset_name": "Laptop",
            "disposal_method": "recycled",
            "disposal_date": "2026-03-01",
            "disposed_by": "7d7f3b1a-2c4e-4f6a-8b9c-0d1e2f3a4b5c",
            "organization_id": "7f1c1c4e-8a2b-4d53-9a55-2a1e7b0c9d11",
            "timestamp": "2026-03-01T12:00:00Z"
        })
    }

    #[test]
    fn every_catalog_schema_compiles() {
        Validators::for_catalog().unwrap();
    }

    #[test]
    fn valid_body_passes_and_is_kept() {
        let validators = Validators::for_catalog().unwrap();
        let mut event = disposed(valid_disposed());
        validators.validate(&mut event).unwrap();
        assert_eq!(Value::Object(event.payload), valid_disposed());
    }

    #[test]
    fn violations_are_named_with_their_path() {
        let validators = Validators::for_catalog().unwrap();
        let cases: &[(&str, Value, &str)] = &[
            ("disposal_method", json!("burned"), "/disposal_method"),
            ("disposal_date", json!("2026-13-45"), "/disposal_date"),
            ("asset_id", json!("LT-0042"), "/asset_id"),
            ("timestamp", json!("yesterday"), "/timestamp"),
            ("disposal_value", json!("12.50"), "/disposal_value"),
            ("unexpected", json!(1), "unexpected"),
        ];
        for (field, value, expected) in cases {
            let mut body = valid_disposed();
            body[*field] = value.clone();
            let rejection = validators.validate(&mut disposed(body)).unwrap_err();
            assert_eq!(rejection.stage, Stage::Validate);
            assert!(rejection.reason.contains("payload.ItAssetDisposed.v1"));
            assert!(rejection.reason.contains(expected), "{}", rejection.reason);
        }
    }

    #[test]
    fn violations_never_quote_the_offending_value() {
        let validators = Validators::for_catalog().unwrap();
        for field in [
            "asset_id",
            "disposal_method",
            "disposal_date",
            "disposal_value",
        ] {
            for value in [
                json!("SECRET-VALUE"),
                json!({"k": "SECRET-VALUE"}),
                json!(["SECRET-VALUE"]),
            ] {
                let mut body = valid_disposed();
                body[field] = value;
                let rejection = validators.validate(&mut disposed(body)).unwrap_err();
                assert!(
                    !rejection.reason.contains("SECRET"),
                    "{field}: {}",
                    rejection.reason
                );
                assert!(
                    rejection.reason.contains(&format!("/{field}")),
                    "{}",
                    rejection.reason
                );
            }
        }
        let mut body = valid_disposed();
        body["SECRET-VALUE"] = json!(1);
        let rejection = validators.validate(&mut disposed(body)).unwrap_err();
        assert!(!rejection.reason.contains("SECRET"), "{}", rejection.reason);
    }

    #[test]
    fn missing_required_field_is_named() {
        let validators = Validators::for_catalog().unwrap();
        let mut body = valid_disposed();
        body.as_object_mut().unwrap().remove("disposed_by");
        let rejection = validators.validate(&mut disposed(body)).unwrap_err();
        assert!(
            rejection.reason.contains("disposed_by"),
            "{}",
            rejection.reason
        );
    }

    #[test]
    fn huge_values_do_not_make_huge_reasons() {
        let validators = Validators::for_catalog().unwrap();
        let mut body = valid_disposed();
        body["disposal_method"] = json!("é".repeat(100_000));
        let rejection = validators.validate(&mut disposed(body)).unwrap_err();
        assert!(rejection.reason.len() < 1_000);
    }
}

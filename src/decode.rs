//! Decoding: a redacted outbox row becomes a typed [`Event`], or a [`Rejection`] that says
//! what was wrong with it.

use serde_json::Value;
use uuid::Uuid;

use crate::catalog::{self, EventSpec};
use crate::event::{truncate, DeadLetter, Event, OutboxRow, Rejection, Stage};

/// Longest piece of untrusted input quoted back in a rejection.
const QUOTE_MAX: usize = 80;

pub fn decode(mut row: OutboxRow) -> Result<Event, Box<DeadLetter>> {
    let reject = |reason: String| Rejection::new(Stage::Decode, reason);
    if let Value::String(text) = &row.payload {
        // Notifications that did not parse are kept as text so they can be dead-lettered.
        match serde_json::from_str(text) {
            Ok(parsed) => row.payload = parsed,
            Err(e) => {
                let rejection = reject(format!("payload is not valid JSON: {e}"));
                return Err(dead_letter(row, rejection));
            }
        }
    }
    let (spec, organization_id) = match inspect(&row) {
        Ok(found) => found,
        Err(rejection) => return Err(dead_letter(row, rejection)),
    };
    match row.payload {
        Value::Object(payload) => Ok(Event {
            outbox_id: row.id,
            event_id: row.event_id,
            spec,
            organization_id,
            source_table: row.source_table,
            occurred_at: row.created_at,
            entity: row.entity,
            payload,
        }),
        other => {
            row.payload = other;
            let rejection = reject("payload is not a JSON object".into());
            Err(dead_letter(row, rejection))
        }
    }
}

/// The event type and organization of a parsed payload, or what is wrong with it.
fn inspect(row: &OutboxRow) -> Result<(&'static EventSpec, Uuid), Rejection> {
    let reject = |reason: String| Rejection::new(Stage::Decode, reason);
    let Value::Object(payload) = &row.payload else {
        return Err(reject(format!(
            "payload is a JSON {}, expected an object",
            json_kind(&row.payload)
        )));
    };
    let event_type = match payload.get("event_type") {
        None if row.event_type.is_empty() => return Err(reject("event_type is missing".into())),
        None => &row.event_type,
        Some(Value::String(named)) if row.event_type.is_empty() || *named == row.event_type => {
            named
        }
        Some(Value::String(named)) => {
            return Err(reject(format!(
                "payload event_type {:?} differs from the outbox row's {:?}",
                truncate(named, QUOTE_MAX),
                row.event_type
            )))
        }
        Some(other) => {
            return Err(reject(format!(
                "event_type is a JSON {}, expected a string",
                json_kind(other)
            )))
        }
    };
    let spec = catalog::find(event_type).ok_or_else(|| {
        reject(format!(
            "unknown event type {:?}",
            truncate(event_type, QUOTE_MAX)
        ))
    })?;
    let organization_id = payload
        .get("organization_id")
        .and_then(Value::as_str)
        .and_then(|id| Uuid::parse_str(id).ok())
        .ok_or_else(|| reject("organization_id is missing or not a UUID".into()))?;
    Ok((spec, organization_id))
}

fn dead_letter(row: OutboxRow, rejection: Rejection) -> Box<DeadLetter> {
    Box::new(DeadLetter {
        outbox_id: row.id,
        event_id: row.event_id,
        event_type: row.event_type,
        source_table: row.source_table,
        body: row.payload,
        rejection,
        module: None,
    })
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use time::OffsetDateTime;

    use super::*;

    const ORG: &str = "7f1c1c4e-8a2b-4d53-9a55-2a1e7b0c9d11";

    fn row(event_type: &str, payload: Value) -> OutboxRow {
        OutboxRow {
            id: 7,
            event_id: Uuid::nil(),
            event_type: event_type.into(),
            payload,
            source_table: "it_assets".into(),
            created_at: OffsetDateTime::UNIX_EPOCH,
            entity: None,
        }
    }

    #[test]
    fn decodes_a_known_event() {
        let event = decode(row(
            "it_asset_disposed",
            json!({"event_type": "it_asset_disposed", "organization_id": ORG}),
        ))
        .unwrap();
        assert_eq!(event.spec.event_type, "it_asset_disposed");
        assert_eq!(event.organization_id.to_string(), ORG);
        assert_eq!(event.outbox_id, 7);
    }

    #[test]
    fn event_type_may_come_from_the_row_or_the_payload() {
        let from_row = decode(row("it_asset_disposed", json!({"organization_id": ORG}))).unwrap();
        assert_eq!(from_row.spec.event_type, "it_asset_disposed");
        let from_payload = decode(row(
            "",
            json!({"event_type": "it_ticket_created", "organization_id": ORG}),
        ))
        .unwrap();
        assert_eq!(from_payload.spec.event_type, "it_ticket_created");
    }

    #[test]
    fn rejections_say_what_was_wrong() {
        let cases = [
            (row("", json!("{\"event_type\": ")), "not valid JSON"),
            (row("", json!([1, 2])), "JSON array, expected an object"),
            (
                row("", json!({"organization_id": ORG})),
                "event_type is missing",
            ),
            (
                row("", json!({"event_type": 5})),
                "event_type is a JSON number",
            ),
            (
                row("", json!({"event_type": "it_nope", "organization_id": ORG})),
                "unknown event type \"it_nope\"",
            ),
            (
                row(
                    "it_asset_disposed",
                    json!({"event_type": "it_ticket_created"}),
                ),
                "differs from the outbox row's",
            ),
            (
                row(
                    "it_asset_disposed",
                    json!({"organization_id": "not-a-uuid"}),
                ),
                "organization_id is missing or not a UUID",
            ),
        ];
        for (input, expected) in cases {
            let rejection = decode(input).unwrap_err().rejection;
            assert_eq!(rejection.stage, Stage::Decode);
            assert!(
                rejection.reason.contains(expected),
                "{} lacks {expected}",
                rejection.reason
            );
        }
    }

    #[test]
    fn rejected_rows_keep_their_body_for_the_dead_letter() {
        let dead = decode(row("it_asset_disposed", json!("{oops"))).unwrap_err();
        assert_eq!(dead.body, json!("{oops"));
        assert_eq!(dead.event_type, "it_asset_disposed");
        assert_eq!(dead.outbox_id, 7);
    }

    #[test]
    fn long_unknown_types_are_quoted_short() {
        let long = "x".repeat(10_000);
        let rejection = decode(row("", json!({"event_type": long})))
            .unwrap_err()
            .rejection;
        assert!(rejection.reason.len() < 200);
    }
}

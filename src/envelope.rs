//! The message for an event: JSON body, id, type, time and headers, including the
//! CloudEvents binding headers. Dead letters get the same treatment plus a reason.
//! Sink-neutral: each sink carries it its own way ([`crate::sink`]).

use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::cloudevents::CloudEventsSettings;
use crate::event::{DeadLetter, Event, OutboxRow};
use crate::outbox::NOTIFY_SOURCE;
use crate::sink::{Header, Message};

/// Header names a consumer can rely on.
pub mod headers {
    pub const SCHEMA_REF: &str = "schema_ref";
    pub const ORGANIZATION_ID: &str = "organization_id";
    pub const SOURCE_TABLE: &str = "source_table";
    pub const OUTBOX_ID: &str = "outbox_id";
    pub const REJECTED_AT_STAGE: &str = "x-rejected-stage";
    pub const REJECTION_REASON: &str = "x-rejection-reason";
    /// On a dead letter that stands for one subscriber's copy: that subscriber module.
    pub const REJECTED_FOR_MODULE: &str = "x-rejected-for-module";
    /// `true` on events that arrived as a whole JSON notification, which any role that
    /// can connect may send (`relay.accept_notify_events`).
    pub const UNAUTHENTICATED: &str = "x-unauthenticated";
}

/// The message every subscriber of `event` receives; `cloudevents` names the CloudEvents
/// headers and the `type` attribute.
pub fn envelope(event: &Event, cloudevents: &CloudEventsSettings) -> Message {
    let event_type = event.spec.event_type;
    let schema_ref = event.spec.schema_ref();
    let time = rfc3339(event.occurred_at);
    let mut headers = Vec::with_capacity(14);
    let mut put = |name: &str, value: Header| headers.push((name.to_owned(), value));
    put(headers::SCHEMA_REF, long_string(&schema_ref));
    put(
        headers::ORGANIZATION_ID,
        long_string(&event.organization_id.to_string()),
    );
    put(headers::SOURCE_TABLE, long_string(&event.source_table));
    if event.source_table == NOTIFY_SOURCE {
        put(headers::UNAUTHENTICATED, Header::Bool(true));
    }
    put(headers::OUTBOX_ID, Header::Int(event.outbox_id));
    let ce = |attribute: &str| cloudevents.header(attribute);
    put(&ce("specversion"), long_string("1.0"));
    put(&ce("id"), long_string(&event.event_id.to_string()));
    put(
        &ce("type"),
        long_string(&cloudevents.event_type(event_type)),
    );
    put(
        &ce("source"),
        long_string(&format!("/itrelay/{}", event.source_table)),
    );
    put(&ce("time"), long_string(&time));
    put(
        &ce("dataschema"),
        long_string(&format!("urn:itrelay:schema:{schema_ref}")),
    );
    if let Some(subject) = event
        .payload
        .get(event.spec.entity_key)
        .and_then(Value::as_str)
    {
        put(&ce("subject"), long_string(subject));
    }
    // Cannot fail: a map of JSON values always serializes.
    let body = serde_json::to_vec(&event.payload).unwrap_or_default();
    Message {
        routing_key: event_type.to_owned(),
        body,
        id: event.event_id.to_string(),
        kind: event_type.to_owned(),
        timestamp: unix_seconds(event.occurred_at),
        headers,
    }
}

/// The message sent to the dead-letter exchange for a rejected event. Its routing key is
/// the event type (`unknown` when there was none), its body what was received (redacted).
pub fn dead_letter(dead: &DeadLetter, now: OffsetDateTime) -> Message {
    let routing_key = if dead.event_type.is_empty() {
        "unknown".to_owned()
    } else {
        dead.event_type.clone()
    };
    let mut headers = Vec::with_capacity(6);
    let mut put = |name: &str, value: Header| headers.push((name.to_owned(), value));
    put(
        headers::REJECTED_AT_STAGE,
        long_string(dead.rejection.stage.as_str()),
    );
    put(
        headers::REJECTION_REASON,
        long_string(&dead.rejection.reason),
    );
    put(headers::SOURCE_TABLE, long_string(&dead.source_table));
    if dead.source_table == NOTIFY_SOURCE {
        put(headers::UNAUTHENTICATED, Header::Bool(true));
    }
    put(headers::OUTBOX_ID, Header::Int(dead.outbox_id));
    if let Some(module) = &dead.module {
        put(headers::REJECTED_FOR_MODULE, long_string(module));
    }
    let body = match &dead.body {
        Value::String(text) => text.clone().into_bytes(),
        // Cannot fail: a JSON value always serializes.
        other => serde_json::to_vec(other).unwrap_or_default(),
    };
    Message {
        id: dead.event_id.to_string(),
        kind: routing_key.clone(),
        timestamp: unix_seconds(now),
        headers,
        routing_key,
        body,
    }
}

/// The message for a canary row: its payload as is, to the relay's canary exchange.
pub fn canary(row: &OutboxRow) -> Message {
    Message {
        routing_key: row.event_type.clone(),
        // Cannot fail: a JSON value always serializes.
        body: serde_json::to_vec(&row.payload).unwrap_or_default(),
        id: row.event_id.to_string(),
        kind: row.event_type.clone(),
        timestamp: unix_seconds(row.created_at),
        headers: Vec::new(),
    }
}

fn unix_seconds(at: OffsetDateTime) -> u64 {
    at.unix_timestamp().max(0) as u64
}

fn rfc3339(at: OffsetDateTime) -> String {
    // Cannot fail: every OffsetDateTime within Postgres's range formats as RFC 3339.
    at.format(&Rfc3339).unwrap_or_default()
}

fn long_string(value: &str) -> Header {
    Header::Text(value.to_owned())
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use time::macros::datetime;
    use uuid::Uuid;

    use super::*;
    use crate::catalog;
    use crate::event::{Rejection, Stage};

    const EVENT_ID: Uuid = Uuid::from_u128(0xabc);

    fn header<'a>(message: &'a Message, name: &str) -> &'a Header {
        message
            .header(name)
            .unwrap_or_else(|| panic!("no header {name}"))
    }

    fn text(value: &Header) -> String {
        match value {
            Header::Text(s) => s.clone(),
            other => panic!("not a text: {other:?}"),
        }
    }

    #[test]
    fn event_message_carries_ids_schema_and_cloudevents_headers() {
        let payload = json!({"event_type": "it_asset_disposed", "asset_id": "A-1"});
        let event = Event {
            outbox_id: 42,
            event_id: EVENT_ID,
            spec: catalog::find("it_asset_disposed").unwrap(),
            organization_id: Uuid::from_u128(0x1),
            source_table: "it_assets".into(),
            occurred_at: datetime!(2026-03-01 12:00:00 UTC),
            entity: None,
            payload: payload.as_object().unwrap().clone(),
        };
        let message = envelope(&event, &CloudEventsSettings::default());
        let p = &message;
        assert_eq!(message.routing_key, "it_asset_disposed");
        assert_eq!(
            serde_json::from_slice::<Value>(&message.body).unwrap(),
            payload
        );
        assert_eq!(p.id, EVENT_ID.to_string());
        assert_eq!(p.kind, "it_asset_disposed");
        // Persistence, content type and app id are the sink's: sink::amqp::message.
        assert_eq!(p.timestamp, 1_772_366_400);
        assert_eq!(text(header(p, "schema_ref")), "payload.ItAssetDisposed.v1");
        assert_eq!(
            text(header(p, "organization_id")),
            Uuid::from_u128(0x1).to_string()
        );
        assert_eq!(text(header(p, "source_table")), "it_assets");
        assert_eq!(*header(p, "outbox_id"), Header::Int(42));
        assert_eq!(text(header(p, "cloudEvents_id")), EVENT_ID.to_string());
        assert_eq!(text(header(p, "cloudEvents_type")), "it_asset_disposed");
        assert_eq!(text(header(p, "cloudEvents_specversion")), "1.0");
        assert_eq!(text(header(p, "cloudEvents_time")), "2026-03-01T12:00:00Z");
        assert_eq!(text(header(p, "cloudEvents_source")), "/itrelay/it_assets");
        assert_eq!(text(header(p, "cloudEvents_subject")), "A-1");

        // The older header form and a type prefix, as configured.
        let legacy = CloudEventsSettings {
            header_prefix: crate::cloudevents::HeaderPrefix::Colon,
            type_prefix: "com.example.it".into(),
        };
        let message = envelope(&event, &legacy);
        let p = &message;
        assert_eq!(
            text(header(p, "cloudEvents:type")),
            "com.example.it.it_asset_disposed"
        );
        assert_eq!(text(header(p, "cloudEvents:id")), EVENT_ID.to_string());
        assert!(p.header("cloudEvents_id").is_none());
        assert_eq!(message.routing_key, "it_asset_disposed");
        assert_eq!(p.kind, "it_asset_disposed");
    }

    #[test]
    fn dead_letter_carries_reason_and_raw_body() {
        let dead = DeadLetter {
            outbox_id: 9,
            event_id: EVENT_ID,
            event_type: String::new(),
            source_table: "notify".into(),
            body: json!("{not json"),
            rejection: Rejection::new(Stage::Decode, "payload is not valid JSON"),
            module: None,
        };
        let message = dead_letter(&dead, datetime!(2026-03-01 12:00:00 UTC));
        assert_eq!(message.routing_key, "unknown");
        assert_eq!(message.body, b"{not json");
        let p = &message;
        assert_eq!(p.id, EVENT_ID.to_string());
        assert_eq!(text(header(p, "x-rejected-stage")), "decode");
        assert_eq!(
            text(header(p, "x-rejection-reason")),
            "payload is not valid JSON"
        );
        assert_eq!(*header(p, "x-unauthenticated"), Header::Bool(true));
    }
}

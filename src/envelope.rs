//! The AMQP message for an event: JSON body, properties and headers, including the
//! CloudEvents AMQP binding headers. Dead letters get the same treatment plus a reason.

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::BasicProperties;
use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::cloudevents::CloudEventsSettings;
use crate::event::{DeadLetter, Event, OutboxRow};
use crate::outbox::NOTIFY_SOURCE;

/// A message ready to publish to one or more exchanges.
#[derive(Debug, Clone)]
pub struct Message {
    pub routing_key: String,
    pub body: Vec<u8>,
    pub properties: BasicProperties,
}

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
pub fn envelope(event: &Event, app_id: &str, cloudevents: &CloudEventsSettings) -> Message {
    let event_type = event.spec.event_type;
    let schema_ref = event.spec.schema_ref();
    let time = rfc3339(event.occurred_at);
    let mut table = FieldTable::default();
    let mut put = |name: &str, value: AMQPValue| {
        table.insert(ShortString::from(name), value);
    };
    put(headers::SCHEMA_REF, long_string(&schema_ref));
    put(
        headers::ORGANIZATION_ID,
        long_string(&event.organization_id.to_string()),
    );
    put(headers::SOURCE_TABLE, long_string(&event.source_table));
    if event.source_table == NOTIFY_SOURCE {
        put(headers::UNAUTHENTICATED, AMQPValue::Boolean(true));
    }
    put(headers::OUTBOX_ID, AMQPValue::LongLongInt(event.outbox_id));
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
        properties: properties(
            event.event_id.to_string(),
            event_type,
            event.occurred_at,
            app_id,
        )
        .with_headers(table),
    }
}

/// The message sent to the dead-letter exchange for a rejected event. Its routing key is
/// the event type (`unknown` when there was none), its body what was received (redacted).
pub fn dead_letter(dead: &DeadLetter, app_id: &str, now: OffsetDateTime) -> Message {
    let routing_key = if dead.event_type.is_empty() {
        "unknown".to_owned()
    } else {
        dead.event_type.clone()
    };
    let mut table = FieldTable::default();
    let mut put = |name: &str, value: AMQPValue| {
        table.insert(ShortString::from(name), value);
    };
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
        put(headers::UNAUTHENTICATED, AMQPValue::Boolean(true));
    }
    put(headers::OUTBOX_ID, AMQPValue::LongLongInt(dead.outbox_id));
    if let Some(module) = &dead.module {
        put(headers::REJECTED_FOR_MODULE, long_string(module));
    }
    let body = match &dead.body {
        Value::String(text) => text.clone().into_bytes(),
        // Cannot fail: a JSON value always serializes.
        other => serde_json::to_vec(other).unwrap_or_default(),
    };
    Message {
        properties: properties(dead.event_id.to_string(), &routing_key, now, app_id)
            .with_headers(table),
        routing_key,
        body,
    }
}

/// The message for a canary row: its payload as is, to the relay's canary exchange.
pub fn canary(row: &OutboxRow, app_id: &str) -> Message {
    Message {
        routing_key: row.event_type.clone(),
        // Cannot fail: a JSON value always serializes.
        body: serde_json::to_vec(&row.payload).unwrap_or_default(),
        properties: properties(
            row.event_id.to_string(),
            &row.event_type,
            row.created_at,
            app_id,
        ),
    }
}

fn properties(message_id: String, kind: &str, at: OffsetDateTime, app_id: &str) -> BasicProperties {
    BasicProperties::default()
        .with_message_id(ShortString::from(message_id))
        .with_type(ShortString::from(kind))
        .with_timestamp(at.unix_timestamp().max(0) as u64)
        .with_content_type(ShortString::from("application/json"))
        .with_delivery_mode(2)
        .with_app_id(ShortString::from(app_id))
}

fn rfc3339(at: OffsetDateTime) -> String {
    // Cannot fail: every OffsetDateTime within Postgres's range formats as RFC 3339.
    at.format(&Rfc3339).unwrap_or_default()
}

fn long_string(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
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

    fn header<'a>(properties: &'a BasicProperties, name: &str) -> &'a AMQPValue {
        properties
            .headers()
            .as_ref()
            .and_then(|table| table.inner().get(name))
            .unwrap_or_else(|| panic!("no header {name}"))
    }

    fn text(value: &AMQPValue) -> String {
        match value {
            AMQPValue::LongString(s) => s.to_string(),
            other => panic!("not a long string: {other:?}"),
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
        let message = envelope(&event, "itrelay", &CloudEventsSettings::default());
        let p = &message.properties;
        assert_eq!(message.routing_key, "it_asset_disposed");
        assert_eq!(
            serde_json::from_slice::<Value>(&message.body).unwrap(),
            payload
        );
        assert_eq!(
            p.message_id().as_ref().unwrap().as_str(),
            EVENT_ID.to_string()
        );
        assert_eq!(p.kind().as_ref().unwrap().as_str(), "it_asset_disposed");
        assert_eq!(*p.delivery_mode(), Some(2));
        assert_eq!(*p.timestamp(), Some(1_772_366_400));
        assert_eq!(
            p.content_type().as_ref().unwrap().as_str(),
            "application/json"
        );
        assert_eq!(p.app_id().as_ref().unwrap().as_str(), "itrelay");
        assert_eq!(text(header(p, "schema_ref")), "payload.ItAssetDisposed.v1");
        assert_eq!(
            text(header(p, "organization_id")),
            Uuid::from_u128(0x1).to_string()
        );
        assert_eq!(text(header(p, "source_table")), "it_assets");
        assert_eq!(*header(p, "outbox_id"), AMQPValue::LongLongInt(42));
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
        let message = envelope(&event, "itrelay", &legacy);
        let p = &message.properties;
        assert_eq!(
            text(header(p, "cloudEvents:type")),
            "com.example.it.it_asset_disposed"
        );
        assert_eq!(text(header(p, "cloudEvents:id")), EVENT_ID.to_string());
        assert!(p
            .headers()
            .as_ref()
            .unwrap()
            .inner()
            .get("cloudEvents_id")
            .is_none());
        assert_eq!(message.routing_key, "it_asset_disposed");
        assert_eq!(p.kind().as_ref().unwrap().as_str(), "it_asset_disposed");
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
        let message = dead_letter(&dead, "itrelay", datetime!(2026-03-01 12:00:00 UTC));
        assert_eq!(message.routing_key, "unknown");
        assert_eq!(message.body, b"{not json");
        let p = &message.properties;
        assert_eq!(
            p.message_id().as_ref().unwrap().as_str(),
            EVENT_ID.to_string()
        );
        assert_eq!(text(header(p, "x-rejected-stage")), "decode");
        assert_eq!(
            text(header(p, "x-rejection-reason")),
            "payload is not valid JSON"
        );
        assert_eq!(*header(p, "x-unauthenticated"), AMQPValue::Boolean(true));
    }
}

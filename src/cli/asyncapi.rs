//! `itrelay asyncapi`: the machine-readable contract as an AsyncAPI 3.0 document (JSON).
//!
//! One channel per exchange (AMQP 0-9-1 binding: durable topic exchange), one send
//! operation per event type and exchange (routing key = event type), one message per
//! event type with its AMQP properties and headers (as [`crate::envelope`] sets them),
//! and the catalog's payload schemas under `components.schemas`, referenced by `$ref`.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::catalog::{self, EventSpec};
use crate::cloudevents::CloudEventsSettings;
use crate::config::Settings;
use crate::envelope::headers;
use crate::route::Router;

/// The version of the AMQP bindings this document uses.
const AMQP_BINDING_VERSION: &str = "0.3.0";
/// Component names of the shared schemas.
const HEADERS: &str = "MessageHeaders";
const PROPERTIES: &str = "MessageProperties";
const DEAD_LETTER: &str = "dead_letter";

/// The AsyncAPI document of what this configuration publishes.
pub fn document(settings: &Settings) -> Value {
    document_for(catalog::EVENTS, settings)
}

/// The AsyncAPI document of `events` (the catalog, or a catalog being built).
pub fn document_for(events: &'static [EventSpec], settings: &Settings) -> Value {
    let router = Router::for_events(events, settings);
    let mut channels = BTreeMap::new();
    let mut operations = Map::new();
    let mut messages = Map::new();
    let mut schemas = Map::new();
    let ce = &settings.cloudevents;
    schemas.insert(HEADERS.into(), headers_schema(ce));
    schemas.insert(PROPERTIES.into(), properties_schema(&settings.amqp.app_id));
    for spec in events {
        messages.insert(spec.event_type.into(), message(spec, ce));
        schemas.insert(spec.schema_ref(), spec.schema_value());
        for destination in router.destinations(spec) {
            let exchange = destination.exchange.as_str();
            channel_entry(&mut channels, exchange, || {
                format!("Exchange of subscriber module {}.", destination.module)
            })
            .insert(spec.event_type.into(), message_ref(spec.event_type));
            operations.insert(
                format!("{}.{exchange}", spec.event_type),
                operation(
                    exchange,
                    spec.event_type,
                    &[spec.event_type],
                    spec.name,
                    format!("To subscriber module {}.", destination.module),
                ),
            );
        }
    }
    let dead_letter = router.dead_letter();
    channel_entry(&mut channels, dead_letter, || {
        "Dead letters: events rejected by decoding, validation, enrichment or routing, \
         with the reason in x-rejection-reason; routing key = event type (or `unknown`)."
            .to_owned()
    })
    .insert(DEAD_LETTER.into(), message_ref(DEAD_LETTER));
    let mut routing_keys: Vec<&str> = events.iter().map(|s| s.event_type).collect();
    routing_keys.push("unknown");
    operations.insert(
        DEAD_LETTER.into(),
        operation(
            dead_letter,
            DEAD_LETTER,
            &routing_keys,
            "Dead letter",
            "To operators: a rejected event, under its event type.".to_owned(),
        ),
    );
    messages.insert(DEAD_LETTER.into(), dead_letter_message());
    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": "itrelay: IT-module events",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Events of the IT module, relayed from the Postgres outbox to one durable \
                topic exchange per subscriber module. Routing key = event type. At least once, in \
                order per entity; message_id is stable across redeliveries.",
        },
        "defaultContentType": "application/json",
        "channels": channels
            .into_iter()
            .map(|(exchange, assembled)| {
                let value = channel(&exchange, assembled);
                (exchange, value)
            })
            .collect::<Map<String, Value>>(),
        "operations": operations,
        "components": { "messages": messages, "schemas": schemas },
    })
}

/// A channel (exchange) being assembled: what it is and the messages sent to it.
struct Channel {
    description: String,
    messages: Map<String, Value>,
}

/// The messages of the channel for `exchange`, created on first use.
fn channel_entry<'a>(
    channels: &'a mut BTreeMap<String, Channel>,
    exchange: &str,
    description: impl FnOnce() -> String,
) -> &'a mut Map<String, Value> {
    &mut channels
        .entry(exchange.to_owned())
        .or_insert_with(|| Channel {
            description: description(),
            messages: Map::new(),
        })
        .messages
}

fn channel(exchange: &str, channel: Channel) -> Value {
    json!({
        "address": exchange,
        "description": channel.description,
        "messages": channel.messages,
        "bindings": { "amqp": {
            "is": "routingKey",
            "exchange": {
                "name": exchange,
                "type": "topic",
                "durable": true,
                "autoDelete": false,
            },
            "bindingVersion": AMQP_BINDING_VERSION,
        }},
    })
}

fn message_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/messages/{name}") })
}

/// Sending `message` to `exchange` with one of `routing_keys`.
fn operation(
    exchange: &str,
    message: &str,
    routing_keys: &[&str],
    title: &str,
    summary: String,
) -> Value {
    json!({
        "action": "send",
        "title": title,
        "summary": summary,
        "channel": { "$ref": format!("#/channels/{}", pointer_escape(exchange)) },
        "messages": [{
            "$ref": format!("#/channels/{}/messages/{message}", pointer_escape(exchange)),
        }],
        "bindings": { "amqp": {
            "cc": routing_keys,
            "deliveryMode": 2,
            "mandatory": true,
            "timestamp": true,
            "bindingVersion": AMQP_BINDING_VERSION,
        }},
    })
}

fn message(spec: &EventSpec, ce: &CloudEventsSettings) -> Value {
    let schema_ref = spec.schema_ref();
    let status = spec.schema_status();
    json!({
        "name": spec.event_type,
        "title": spec.name,
        "summary": spec.condition,
        "contentType": "application/json",
        "tags": [{ "name": spec.category }],
        "headers": {
            "allOf": [
                { "$ref": format!("#/components/schemas/{HEADERS}") },
                { "type": "object", "properties": {
                    headers::SCHEMA_REF: { "const": schema_ref },
                    headers::SOURCE_TABLE: { "const": spec.source_table },
                    ce.header("type"): { "const": ce.event_type(spec.event_type) },
                }},
            ],
        },
        "payload": { "$ref": format!("#/components/schemas/{schema_ref}") },
        "bindings": { "amqp": {
            "messageType": spec.event_type,
            "bindingVersion": AMQP_BINDING_VERSION,
        }},
        "x-amqp-properties": { "$ref": format!("#/components/schemas/{PROPERTIES}") },
        "x-itrelay-status": status,
        "x-itrelay-entity-key": spec.entity_key,
    })
}

fn dead_letter_message() -> Value {
    json!({
        "name": DEAD_LETTER,
        "title": "Dead letter",
        "summary": "An event the relay could not deliver as valid: kept in the outbox as failed, replayable.",
        "contentType": "application/json",
        "headers": { "type": "object", "properties": {
            headers::REJECTED_AT_STAGE: { "type": "string" },
            headers::REJECTION_REASON: { "type": "string" },
            headers::SOURCE_TABLE: { "type": "string" },
            headers::OUTBOX_ID: { "type": "integer" },
        }},
        "payload": { "description": "The event as received, secrets redacted; not necessarily valid JSON." },
        "x-amqp-properties": { "$ref": format!("#/components/schemas/{PROPERTIES}") },
    })
}

fn headers_schema(ce: &CloudEventsSettings) -> Value {
    let h = |attribute: &str| ce.header(attribute);
    let string = |description: &str| json!({ "type": "string", "description": description });
    json!({
        "type": "object",
        "description": "AMQP headers of every event message, with the CloudEvents AMQP binding.",
        "required": [
            headers::SCHEMA_REF, headers::ORGANIZATION_ID, headers::SOURCE_TABLE, headers::OUTBOX_ID,
            h("specversion"), h("id"), h("type"), h("source"), h("time"), h("dataschema"),
        ],
        "properties": {
            headers::SCHEMA_REF: string("Versioned payload schema, e.g. payload.ItAssetPurchased.v1."),
            headers::ORGANIZATION_ID: { "type": "string", "format": "uuid" },
            headers::SOURCE_TABLE: string("The business table the event came from."),
            headers::OUTBOX_ID: { "type": "integer", "description": "The itrelay.outbox row id." },
            h("specversion"): { "const": "1.0" },
            h("id"): { "type": "string", "format": "uuid", "description": "Same as message_id." },
            h("type"): string("The event type, after cloudevents.type_prefix and a dot when one is set."),
            h("source"): string("/itrelay/<source table>."),
            h("time"): { "type": "string", "format": "date-time" },
            h("dataschema"): string("urn:itrelay:schema:<schema_ref>: the $id of the payload schema."),
            h("subject"): string("The id of the entity the event is about, when it has one."),
        },
    })
}

fn properties_schema(app_id: &str) -> Value {
    json!({
        "type": "object",
        "description": "AMQP basic properties of every message.",
        "required": ["message_id", "type", "content_type", "delivery_mode", "app_id", "timestamp"],
        "properties": {
            "message_id": { "type": "string", "format": "uuid",
                "description": "The event's id, fixed when it was written: the same on every redelivery, so consumers can de-duplicate." },
            "type": { "type": "string", "description": "The event type (the routing key)." },
            "content_type": { "const": "application/json" },
            "delivery_mode": { "const": 2, "description": "Persistent." },
            "app_id": { "const": app_id },
            "timestamp": { "type": "integer", "description": "Unix seconds when the event was written." },
        },
    })
}

/// Escapes a name for use as one JSON Pointer segment (RFC 6901).
fn pointer_escape(name: &str) -> String {
    name.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings::load_with_env(None, Some(Default::default())).unwrap()
    }

    #[test]
    fn one_operation_per_event_and_exchange_plus_dead_letters() {
        let settings = settings();
        let router = Router::from_settings(&settings);
        let doc = document(&settings);
        let routed: usize = catalog::EVENTS
            .iter()
            .map(|spec| router.destinations(spec).len())
            .sum();
        assert_eq!(doc["operations"].as_object().unwrap().len(), routed + 1);
        let op = &doc["operations"]["it_sla_breached.it.it-02"];
        assert_eq!(op["channel"]["$ref"], "#/channels/it.it-02");
        assert_eq!(op["bindings"]["amqp"]["cc"], json!(["it_sla_breached"]));
        assert_eq!(
            doc["channels"]["it.pf-10"]["bindings"]["amqp"]["exchange"]["type"],
            "topic"
        );
    }

    #[test]
    fn pointer_segments_are_escaped() {
        assert_eq!(pointer_escape("a/b~c"), "a~1b~0c");
        assert_eq!(pointer_escape("it.pf-10"), "it.pf-10");
    }
}

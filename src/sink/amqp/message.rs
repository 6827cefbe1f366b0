//! A [`Message`] as AMQP carries it: persistent, JSON, with its id, type, timestamp and
//! headers as properties, and the relay's `app_id`.

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::BasicProperties;

use crate::sink::{Header, Message};

/// The properties `message` is published with.
pub fn properties(message: &Message, app_id: &str) -> BasicProperties {
    let mut table = FieldTable::default();
    for (name, value) in &message.headers {
        table.insert(ShortString::from(name.as_str()), value_of(value));
    }
    BasicProperties::default()
        .with_message_id(ShortString::from(message.id.as_str()))
        .with_type(ShortString::from(message.kind.as_str()))
        .with_timestamp(message.timestamp)
        .with_content_type(ShortString::from("application/json"))
        .with_delivery_mode(2)
        .with_app_id(ShortString::from(app_id))
        .with_headers(table)
}

fn value_of(header: &Header) -> AMQPValue {
    match header {
        Header::Text(text) => AMQPValue::LongString(LongString::from(text.as_str())),
        Header::Int(number) => AMQPValue::LongLongInt(*number),
        Header::Bool(flag) => AMQPValue::Boolean(*flag),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_becomes_persistent_json_with_its_headers() {
        let message = Message {
            routing_key: "it_asset_disposed".into(),
            body: b"{}".to_vec(),
            id: "e1".into(),
            kind: "it_asset_disposed".into(),
            timestamp: 1_772_366_400,
            headers: vec![
                ("schema_ref".into(), Header::Text("payload.X.v1".into())),
                ("outbox_id".into(), Header::Int(42)),
                ("x-unauthenticated".into(), Header::Bool(true)),
            ],
        };
        let p = properties(&message, "itrelay");
        assert_eq!(p.message_id().as_ref().unwrap().as_str(), "e1");
        assert_eq!(p.kind().as_ref().unwrap().as_str(), "it_asset_disposed");
        assert_eq!(*p.delivery_mode(), Some(2));
        assert_eq!(*p.timestamp(), Some(1_772_366_400));
        assert_eq!(
            p.content_type().as_ref().unwrap().as_str(),
            "application/json"
        );
        assert_eq!(p.app_id().as_ref().unwrap().as_str(), "itrelay");
        let headers = p.headers().as_ref().unwrap().inner();
        assert_eq!(
            headers.get("schema_ref"),
            Some(&AMQPValue::LongString("payload.X.v1".into()))
        );
        assert_eq!(headers.get("outbox_id"), Some(&AMQPValue::LongLongInt(42)));
        assert_eq!(
            headers.get("x-unauthenticated"),
            Some(&AMQPValue::Boolean(true))
        );
    }
}

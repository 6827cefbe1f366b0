//! The values that flow through the pipeline: a claimed outbox row, a decoded event,
//! and the rejection that sends an event to the dead-letter exchange.

use std::fmt;

use serde_json::{Map, Value};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::catalog::EventSpec;

/// A row of `itrelay.outbox`, as claimed, before anything is trusted about its payload.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    pub id: i64,
    pub event_id: Uuid,
    pub event_type: String,
    pub payload: Value,
    pub source_table: String,
    pub created_at: OffsetDateTime,
    /// The entity the event is about (`<key field>:<value>`), as the outbox recorded it.
    pub entity: Option<String>,
}

/// An event of a known type with an object payload and an organization.
#[derive(Debug, Clone)]
pub struct Event {
    pub outbox_id: i64,
    /// Fixed when the row was written: the AMQP `message_id` of every copy.
    pub event_id: Uuid,
    pub spec: &'static EventSpec,
    pub organization_id: Uuid,
    pub source_table: String,
    /// When the business transaction wrote the event.
    pub occurred_at: OffsetDateTime,
    /// The entity whose events reach each subscriber in order; `None` orders nothing.
    pub entity: Option<String>,
    pub payload: Map<String, Value>,
}

impl Event {
    /// Turns the event away: what is dead-lettered in its place.
    pub fn into_dead_letter(self, rejection: Rejection) -> DeadLetter {
        DeadLetter {
            outbox_id: self.outbox_id,
            event_id: self.event_id,
            event_type: self.spec.event_type.to_owned(),
            source_table: self.source_table,
            body: Value::Object(self.payload),
            rejection,
            module: None,
        }
    }

    /// What is dead-lettered in place of the copy for one subscriber `module`; the event
    /// itself goes on to its other subscribers.
    pub fn copy_dead_letter(&self, module: &str, rejection: Rejection) -> DeadLetter {
        DeadLetter {
            module: Some(module.to_owned()),
            ..self.clone().into_dead_letter(rejection)
        }
    }
}

/// An event turned away, with the (redacted) body it had when it was rejected.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub outbox_id: i64,
    pub event_id: Uuid,
    /// As the row or payload named it; empty when neither did.
    pub event_type: String,
    pub source_table: String,
    /// The payload as far as it was decoded: an object, other JSON, or unparsable text.
    pub body: Value,
    pub rejection: Rejection,
    /// The subscriber module whose copy alone was turned away; `None`: the whole event.
    pub module: Option<String>,
}

/// The pipeline stage that turned an event away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Decode,
    Enrich,
    Validate,
    /// The broker returned the message: no queue is bound for it.
    Unroutable,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Decode => "decode",
            Stage::Enrich => "enrich",
            Stage::Validate => "validate",
            Stage::Unroutable => "unroutable",
        }
    }
}

/// Why an event is dead-lettered instead of delivered. Never holds a secret: it is
/// built from redacted payloads only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub stage: Stage,
    pub reason: String,
}

impl Rejection {
    pub fn new(stage: Stage, reason: impl Into<String>) -> Self {
        Self {
            stage,
            reason: reason.into(),
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.stage.as_str(), self.reason)
    }
}

/// Cuts `text` to at most `max` bytes on a character boundary, marking the cut.
pub fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_respects_multibyte_boundaries() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("ééé", 3), "é…");
        assert_eq!(truncate("abcdef", 3), "abc…");
    }
}

//! The pure pipeline: a claimed row in, an event ready to route or its dead letter out,
//! through redact → decode → enrich → validate. No I/O: the reference rows enrichment
//! reads are fetched by the caller between the two halves ([`decode_row`] names them
//! through [`crate::enrich::wanted`], [`complete`] uses them), or handed in whole to
//! [`process`].

use std::collections::BTreeSet;

use uuid::Uuid;

use crate::canary;
use crate::catalog::Reference;
use crate::decode::decode;
use crate::enrich::{self, enrich, ReferenceData};
use crate::event::{DeadLetter, Event, OutboxRow};
use crate::outbox::Claimed;
use crate::redact::redact;
use crate::validate::Validators;

/// One row through the whole pipeline.
pub fn process(
    row: OutboxRow,
    references: &ReferenceData,
    validators: &Validators,
) -> Result<Event, Box<DeadLetter>> {
    decode_row(row).and_then(|event| complete(event, references, validators))
}

/// The first half: redact, then decode. Redaction comes first so that no later stage,
/// log line or dead letter sees a secret.
pub fn decode_row(mut row: OutboxRow) -> Result<Event, Box<DeadLetter>> {
    redact(&mut row.payload);
    decode(row)
}

/// The second half: enrich from `references`, then validate exactly the body consumers
/// get.
pub fn complete(
    mut event: Event,
    references: &ReferenceData,
    validators: &Validators,
) -> Result<Event, Box<DeadLetter>> {
    match enrich(&mut event, references).and_then(|()| validators.validate(&mut event)) {
        Ok(()) => Ok(event),
        Err(rejection) => Err(Box::new(event.into_dead_letter(rejection))),
    }
}

/// Rows through the pipeline: events ready to publish, dead letters, canaries.
#[derive(Debug, Default)]
pub struct Processed {
    pub events: Vec<Event>,
    pub dead: Vec<DeadLetter>,
    pub canaries: Vec<OutboxRow>,
}

/// Claimed rows through the first half, waiting for the reference rows they name.
#[derive(Debug, Default)]
pub struct Decoded {
    events: Vec<Event>,
    processed: Processed,
}

impl Decoded {
    /// Sorts claimed rows into decoded events, dead letters (rows that could not be read
    /// or decoded) and canaries, keeping their order.
    pub fn new(rows: Vec<Claimed>) -> Self {
        let mut decoded = Self::default();
        for row in rows {
            let row = match row {
                Ok(row) => row,
                Err(unreadable) => {
                    decoded.processed.dead.push(*unreadable);
                    continue;
                }
            };
            if row.event_type == canary::EVENT_TYPE {
                decoded.processed.canaries.push(row);
                continue;
            }
            match decode_row(row) {
                Ok(event) => decoded.events.push(event),
                Err(dead) => decoded.processed.dead.push(*dead),
            }
        }
        decoded
    }

    /// The reference rows the events need, to fetch in one go.
    pub fn wanted(&self) -> BTreeSet<(Reference, Uuid)> {
        self.events.iter().flat_map(enrich::wanted).collect()
    }

    /// The second half for every event, with the reference rows fetched.
    pub fn complete(self, references: &ReferenceData, validators: &Validators) -> Processed {
        let Self {
            events,
            mut processed,
        } = self;
        processed.events.reserve(events.len());
        for event in events {
            match complete(event, references, validators) {
                Ok(event) => processed.events.push(event),
                Err(dead) => processed.dead.push(*dead),
            }
        }
        processed
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use serde_json::{json, Value};
    use time::OffsetDateTime;

    use super::*;
    use crate::enrich::ReferenceRow;
    use crate::event::Stage;

    const ORG: &str = "7f1c1c4e-8a2b-4d53-9a55-2a1e7b0c9d11";
    const REQUESTER: &str = "22222222-2222-4222-8222-222222222222";

    fn row(id: i64, event_type: &str, payload: Value) -> OutboxRow {
        OutboxRow {
            id,
            event_id: Uuid::from_u128(id as u128),
            event_type: event_type.to_owned(),
            payload,
            source_table: "it_tickets".to_owned(),
            created_at: OffsetDateTime::UNIX_EPOCH,
            entity: None,
        }
    }

    fn ticket(id: i64) -> OutboxRow {
        row(
            id,
            "it_ticket_created",
            json!({
                "event_type": "it_ticket_created",
                "ticket_id": "33333333-3333-4333-8333-333333333333",
                "ticket_number": "INC-000001",
                "category": "hardware",
                "priority": "medium",
                "subject": "Laptop does not wake",
                "description": "Stays black after opening the lid.",
                "requester_id": REQUESTER,
                "organization_id": ORG,
            }),
        )
    }

    fn requester() -> ReferenceData {
        let columns = json!({"employee_name": "Dana Reyes", "email": "dana@example.com"});
        HashMap::from([(
            (Reference::Employee, Uuid::parse_str(REQUESTER).unwrap()),
            ReferenceRow {
                organization_id: Uuid::parse_str(ORG).unwrap(),
                columns: columns.as_object().unwrap().clone(),
            },
        )])
    }

    fn validators() -> Validators {
        Validators::for_catalog().unwrap()
    }

    #[test]
    fn a_valid_row_becomes_an_enriched_event() {
        let event = process(ticket(5), &requester(), &validators()).unwrap();
        assert_eq!(event.outbox_id, 5);
        assert_eq!(event.spec.event_type, "it_ticket_created");
        assert_eq!(event.payload["requester_name"], "Dana Reyes");
        assert_eq!(event.payload["timestamp"], "1970-01-01T00:00:00Z");
    }

    #[test]
    fn each_stage_turns_away_what_it_cannot_pass() {
        let validators = validators();
        let cases = [
            (
                row(1, "no_such_event", json!({})),
                &requester(),
                Stage::Decode,
            ),
            (ticket(2), &ReferenceData::new(), Stage::Enrich),
            (
                row(3, "it_ticket_created", {
                    let mut payload = ticket(3).payload;
                    payload["priority"] = json!(7);
                    payload
                }),
                &requester(),
                Stage::Validate,
            ),
        ];
        for (row, references, stage) in cases {
            let id = row.id;
            let dead = process(row, references, &validators).unwrap_err();
            assert_eq!(dead.outbox_id, id);
            assert_eq!(dead.rejection.stage, stage, "row {id}: {}", dead.rejection);
        }
    }

    #[test]
    fn secrets_are_redacted_before_any_stage_can_reject() {
        let mut secret = ticket(4);
        secret.payload["license_key"] = json!("ABCD-SECRET");
        let dead = process(secret, &requester(), &validators()).unwrap_err();
        assert!(!dead.body.to_string().contains("ABCD-SECRET"));
    }

    #[test]
    fn a_batch_is_sorted_in_order_and_names_the_references_it_needs() {
        let unreadable = DeadLetter {
            outbox_id: 2,
            event_id: Uuid::nil(),
            event_type: String::new(),
            source_table: String::new(),
            body: Value::Null,
            rejection: crate::event::Rejection::new(Stage::Decode, "payload unreadable"),
            module: None,
        };
        let rows = vec![
            Ok(ticket(1)),
            Err(Box::new(unreadable)),
            Ok(row(3, canary::EVENT_TYPE, json!({}))),
            Ok(ticket(4)),
            Ok(row(5, "no_such_event", json!({}))),
        ];
        let decoded = Decoded::new(rows);
        assert_eq!(
            decoded.wanted().into_iter().collect::<Vec<_>>(),
            [(Reference::Employee, Uuid::parse_str(REQUESTER).unwrap())]
        );
        let processed = decoded.complete(&requester(), &validators());
        let events: Vec<i64> = processed.events.iter().map(|e| e.outbox_id).collect();
        let dead: Vec<i64> = processed.dead.iter().map(|d| d.outbox_id).collect();
        let canaries: Vec<i64> = processed.canaries.iter().map(|r| r.id).collect();
        assert_eq!((events, dead, canaries), (vec![1, 4], vec![2, 5], vec![3]));
    }
}

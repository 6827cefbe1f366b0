//! The benchmarks' typical event: an `it_ticket_created` row as the trigger writes it,
//! the employee row enrichment reads, and the pure pipeline that turns it into a message.

use std::collections::HashMap;

use itrelay::catalog::Reference;
use itrelay::cloudevents::CloudEventsSettings;
use itrelay::enrich::{ReferenceData, ReferenceRow};
use itrelay::envelope::envelope;
use itrelay::event::OutboxRow;
use itrelay::pipeline::process;
use itrelay::sink::Message;
use itrelay::validate::Validators;
use serde_json::{json, Map, Value};
use time::OffsetDateTime;
use uuid::Uuid;

pub const ORG: &str = "7f1c1c4e-8a2b-4d53-9a55-2a1e7b0c9d11";
pub const REQUESTER: &str = "22222222-2222-4222-8222-222222222222";
pub const REQUESTER_NAME: &str = "Dana Reyes";
pub const REQUESTER_EMAIL: &str = "dana@example.com";
pub const SITE: &str = "55555555-5555-4555-8555-555555555555";
pub const CATEGORY: &str = "hardware";
pub const SUBCATEGORY: &str = "laptop";
pub const PRIORITY: &str = "medium";
pub const SUBJECT: &str = "Laptop does not wake from sleep";
pub const DESCRIPTION: &str = "Since this morning's update the laptop stays black after \
    opening the lid; an external monitor shows nothing either. Restarting helps for an hour.";

/// The outbox row the `it_ticket_created` trigger writes for ticket `ticket_number`.
pub fn ticket_row(outbox_id: i64, ticket_number: &str) -> OutboxRow {
    OutboxRow {
        id: outbox_id,
        event_id: Uuid::new_v4(),
        event_type: "it_ticket_created".to_owned(),
        payload: json!({
            "event_type": "it_ticket_created",
            "ticket_id": Uuid::new_v4().to_string(),
            "ticket_number": ticket_number,
            "category": CATEGORY,
            "subcategory": SUBCATEGORY,
            "priority": PRIORITY,
            "subject": SUBJECT,
            "description": DESCRIPTION,
            "requester_id": REQUESTER,
            "organization_id": ORG,
            "site_id": SITE,
        }),
        source_table: "it_tickets".to_owned(),
        created_at: OffsetDateTime::now_utc(),
        entity: None,
    }
}

/// The requester's `employees` row, as the relay fetches it for a batch.
pub fn references() -> Result<ReferenceData, uuid::Error> {
    let columns: Map<String, Value> = [
        ("employee_name", REQUESTER_NAME),
        ("email", REQUESTER_EMAIL),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), Value::String(v.to_owned())))
    .collect();
    Ok(HashMap::from([(
        (Reference::Employee, Uuid::parse_str(REQUESTER)?),
        ReferenceRow {
            organization_id: Uuid::parse_str(ORG)?,
            columns,
        },
    )]))
}

/// One event through the relay's pure pipeline ([`itrelay::pipeline::process`]), then
/// into its message.
pub fn pipeline(
    row: OutboxRow,
    references: &ReferenceData,
    validators: &Validators,
) -> Result<Message, String> {
    let event = process(row, references, validators).map_err(|dead| dead.rejection.to_string())?;
    Ok(envelope(&event, &CloudEventsSettings::default()))
}

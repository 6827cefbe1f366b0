//! A claimed row as the relay reads it: only its id must be readable; anything else that
//! cannot be read makes the row a dead letter of its own.

use serde_json::Value;
use uuid::Uuid;

use crate::event::{DeadLetter, OutboxRow, Rejection, Stage};

/// A claimed row as the claim read it: readable, or what could not be read of it.
pub type Claimed = Result<OutboxRow, Box<DeadLetter>>;

/// The outbox id of a claimed row, readable or not.
pub fn claimed_id(row: &Claimed) -> i64 {
    match row {
        Ok(row) => row.id,
        Err(unreadable) => unreadable.outbox_id,
    }
}

/// Reads one claimed row. Only its id must be readable; a column the driver cannot read
/// (a time out of range) or a payload that does not parse (nested too deep, a number
/// beyond what the relay reads) makes the row a dead letter of its own, with a reason
/// that names the column and the error, never its value.
pub(crate) fn read_claimed(row: &tokio_postgres::Row) -> Result<Claimed, tokio_postgres::Error> {
    let id: i64 = row.try_get(0)?;
    let event_id: Uuid = row.try_get(1)?;
    let event_type: String = row.try_get(2).unwrap_or_default();
    let source_table: String = row.try_get(4).unwrap_or_default();
    let unreadable = |reason: String| {
        Box::new(DeadLetter {
            outbox_id: id,
            event_id,
            event_type: event_type.clone(),
            source_table: source_table.clone(),
            body: Value::Null,
            rejection: Rejection::new(Stage::Decode, reason),
            module: None,
        })
    };
    let text: String = match row.try_get(3) {
        Ok(text) => text,
        Err(error) => return Ok(Err(unreadable(format!("payload unreadable: {error}")))),
    };
    let payload = match serde_json::from_str(&text) {
        Ok(payload) => payload,
        Err(error) => {
            return Ok(Err(unreadable(format!(
                "payload cannot be read as JSON: {}",
                json_error_position(&error)
            ))))
        }
    };
    let created_at = match row.try_get(5) {
        Ok(created_at) => created_at,
        Err(error) => return Ok(Err(unreadable(format!("created_at unreadable: {error}")))),
    };
    Ok(Ok(OutboxRow {
        id,
        event_id,
        event_type: event_type.clone(),
        payload,
        source_table: source_table.clone(),
        created_at,
        entity: row.try_get(6).unwrap_or_default(),
    }))
}

/// What went wrong parsing a payload, and where. The parser's own messages ("recursion
/// limit exceeded", "number out of range", "expected value") never quote the input;
/// a data error might, so it is named only.
fn json_error_position(error: &serde_json::Error) -> String {
    match error.classify() {
        serde_json::error::Category::Data => format!(
            "unexpected data at line {} column {}",
            error.line(),
            error.column()
        ),
        _ => error.to_string(),
    }
}

//! Sending waiting copies again. A copy waits after a nack (or a return under the `wait`
//! policy), and later copies of its entity for its module wait behind it. When the first
//! copy of a (module, entity) is due, the relay sends that group's copies again, in
//! outbox id order, through the pipeline once more; the first one not confirmed and
//! every copy after it in the group wait again, with a longer backoff.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use tokio_postgres::Client;
use tracing::info;

use super::batch::Outgoing;
use super::dispatch::Dispatch;
use super::SessionError;
use crate::copies::{Copies, Retried, WaitingCopy};
use crate::delivery::{retry_delay, Gates, Verdict};
use crate::event::{DeadLetter, Rejection, Stage};
use crate::outbox::{claimed_id, Claimed, Outbox};
use crate::sink::Sink;

/// A waiting copy's group: its module and entity (or, with no entity, its own row).
type Group = (String, String);

/// Sends again the waiting copies whose group is due, records what became of them,
/// and returns the gates the copies still waiting make.
pub(super) async fn retry_waiting<S: Sink>(
    dispatch: &Dispatch<'_, S>,
    client: &Client,
    outbox: &Outbox,
    copies: &Copies,
) -> Result<Gates, SessionError> {
    let relay = dispatch.relay;
    let limit = relay.settings.relay.batch_size;
    let due = due_copies(relay.bounded(copies.waiting(client, limit)).await?);
    if !due.is_empty() {
        let retried = resend(dispatch, client, outbox, &due).await?;
        let records: Vec<Retried> = due
            .iter()
            .zip(&retried)
            .map(|(copy, verdict)| Retried {
                outbox_id: copy.outbox_id,
                module: &copy.module,
                verdict,
                retry_in: retry_delay(
                    copy.attempts,
                    Duration::from_millis(relay.settings.delivery.retry_min_ms),
                    Duration::from_millis(relay.settings.delivery.retry_max_ms),
                ),
            })
            .collect();
        let confirmed = relay.bounded(copies.settle(client, &records)).await?;
        info!(copies = due.len(), confirmed, "sent waiting copies again");
    }
    relay.bounded(copies.gates(client)).await
}

/// Publishes the due copies in order, in rounds, and judges them; a row that no
/// longer passes the pipeline, or a module that no longer subscribes, dead-letters
/// the copy.
async fn resend<S: Sink>(
    dispatch: &Dispatch<'_, S>,
    client: &Client,
    outbox: &Outbox,
    due: &[DueCopy],
) -> Result<Vec<Verdict>, SessionError> {
    let rows: BTreeMap<i64, Claimed> = due
        .iter()
        .map(|copy| (copy.outbox_id, copy.row.clone()))
        .collect();
    let processed = dispatch
        .process(client, outbox, rows.into_values().collect())
        .await?;
    let index: HashMap<i64, usize> = processed
        .events
        .iter()
        .enumerate()
        .map(|(i, e)| (e.outbox_id, i))
        .collect();
    let rejected: HashMap<i64, &DeadLetter> =
        processed.dead.iter().map(|d| (d.outbox_id, d)).collect();
    // Per due copy: its place among the copies to publish, or the dead letter it
    // already is.
    let mut copies = Vec::new();
    let mut fates: Vec<Result<(), DeadLetter>> = Vec::with_capacity(due.len());
    for copy in due {
        let fate = match (index.get(&copy.outbox_id), rejected.get(&copy.outbox_id)) {
            (Some(&i), _) => {
                let event = &processed.events[i];
                match dispatch.relay.router.destination(event.spec, &copy.module) {
                    Some(destination) => {
                        copies.push((i, destination));
                        Ok(())
                    }
                    None => Err(event.copy_dead_letter(
                        &copy.module,
                        Rejection::new(
                            Stage::Unroutable,
                            "the module no longer subscribes to this event type",
                        ),
                    )),
                }
            }
            (None, Some(dead)) => Err(DeadLetter {
                module: Some(copy.module.clone()),
                ..(*dead).clone()
            }),
            // A canary row: canaries have no subscriber copies to wait.
            (None, None) => Err(DeadLetter {
                outbox_id: copy.outbox_id,
                event_id: uuid::Uuid::nil(),
                event_type: String::new(),
                source_table: String::new(),
                body: serde_json::Value::Null,
                rejection: Rejection::new(Stage::Decode, "not an event of the catalog"),
                module: Some(copy.module.clone()),
            }),
        };
        fates.push(fate);
    }
    let messages = dispatch.messages(&processed);
    let outgoing = Outgoing::new(processed.events, messages, copies);
    let first_round = dispatch.publish(&outgoing.round(0).1).await?;
    let mut judged = dispatch
        .publish_rounds(&outgoing, first_round)
        .await?
        .into_iter();
    let mut verdicts = Vec::with_capacity(due.len());
    let mut letters = Vec::new();
    for fate in fates {
        match fate {
            // Cannot fail: one verdict per copy published, in the order they were
            // listed.
            Ok(()) => verdicts.push(judged.next().unwrap_or(Verdict::Confirmed)),
            Err(letter) => {
                verdicts.push(Verdict::DeadLetter(letter.rejection.clone()));
                letters.push((verdicts.len() - 1, letter));
            }
        }
    }
    dispatch.dead_letter_copies(verdicts, letters).await
}

/// A waiting copy whose group is due.
struct DueCopy {
    outbox_id: i64,
    module: String,
    attempts: u32,
    row: Claimed,
}

/// The copies of the groups whose first copy is due, in outbox id order.
fn due_copies(waiting: Vec<WaitingCopy>) -> Vec<DueCopy> {
    let mut seen: HashSet<Group> = HashSet::new();
    let mut due: HashSet<Group> = HashSet::new();
    let mut chosen = Vec::new();
    for copy in waiting {
        let outbox_id = claimed_id(&copy.row);
        let entity = copy.row.as_ref().ok().and_then(|row| row.entity.clone());
        let group = (
            copy.module.clone(),
            entity.unwrap_or_else(|| format!("#{outbox_id}")),
        );
        if seen.insert(group.clone()) && copy.due {
            due.insert(group.clone());
        }
        if due.contains(&group) {
            chosen.push(DueCopy {
                outbox_id,
                module: copy.module,
                attempts: copy.attempts,
                row: copy.row,
            });
        }
    }
    chosen
}

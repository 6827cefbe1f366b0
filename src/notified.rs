//! Whole-event notifications: events sent as the JSON payload of a NOTIFY.
//!
//! Any role that can connect may NOTIFY, so such an event proves nothing about who made
//! it, and one sent while no relay listens is gone. They are refused unless
//! `relay.accept_notify_events` is on; refused ones are dropped with a warning at most
//! once a minute that counts them and never shows a payload.

use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;
use tracing::warn;

use crate::redact;

/// The shortest time between two warnings about refused notifications.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// Decides what happens to whole-event notifications.
#[derive(Debug)]
pub struct NotifyEvents {
    accept: bool,
    refused_unreported: u64,
    last_warning: Option<Instant>,
}

impl NotifyEvents {
    pub fn new(accept: bool) -> Self {
        Self {
            accept,
            refused_unreported: 0,
            last_warning: None,
        }
    }

    /// Says at start what whole-event notifications will do, loudly when they are accepted.
    pub fn announce(&self, channel: &str) {
        if self.accept {
            warn!(
                %channel,
                "relay.accept_notify_events is on: whole JSON events sent with NOTIFY are relayed, \
                 marked source_table \"notify\" and header x-unauthenticated; any role that can \
                 connect can send them (unauthenticated) and those sent while no relay listens \
                 are lost (lossy)"
            );
        }
    }

    /// Keeps `notified` to be stored when accepted; otherwise empties it, and warns when
    /// a warning is due. Returns whether a warning was logged.
    pub fn admit(&mut self, notified: &mut Vec<String>, now: Instant) -> bool {
        if self.accept || notified.is_empty() {
            return false;
        }
        self.refused_unreported += notified.len() as u64;
        notified.clear();
        if self
            .last_warning
            .is_some_and(|last| now.duration_since(last) < WARN_EVERY)
        {
            return false;
        }
        warn!(
            refused = self.refused_unreported,
            "whole-event notifications ignored: events come only from the installed triggers \
             and itrelay.enqueue (set relay.accept_notify_events = true to accept them, \
             unauthenticated)"
        );
        self.refused_unreported = 0;
        self.last_warning = Some(now);
        true
    }
}

/// Whole-event notifications as the outbox stores them: each one's event type and its
/// body, redacted. Text that is not JSON is kept as a JSON string, to be dead-lettered
/// with the parse error.
pub fn as_rows(texts: &[String]) -> (Vec<String>, Vec<Value>) {
    texts
        .iter()
        .map(|text| {
            let mut body =
                serde_json::from_str::<Value>(text).unwrap_or_else(|_| Value::String(text.clone()));
            redact::redact(&mut body);
            let event_type = body
                .get("event_type")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            (event_type, body)
        })
        .unzip()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_notifications_are_dropped_with_a_warning_at_most_once_a_minute() {
        let mut gate = NotifyEvents::new(false);
        let start = Instant::now();
        let mut notified = vec!["{\"event_type\":\"x\"}".to_owned()];
        assert!(gate.admit(&mut notified, start));
        assert!(notified.is_empty());
        notified.push("{}".to_owned());
        assert!(!gate.admit(&mut notified, start + Duration::from_secs(30)));
        assert!(notified.is_empty());
        assert_eq!(gate.refused_unreported, 1);
        notified.push("{}".to_owned());
        assert!(gate.admit(&mut notified, start + Duration::from_secs(61)));
        assert_eq!(gate.refused_unreported, 0);
    }

    #[test]
    fn accepted_notifications_are_kept() {
        let mut gate = NotifyEvents::new(true);
        let mut notified = vec!["{}".to_owned()];
        assert!(!gate.admit(&mut notified, Instant::now()));
        assert_eq!(notified.len(), 1);
    }

    #[test]
    fn notified_events_are_stored_redacted_and_text_that_is_not_json_as_a_string() {
        let texts = [
            r#"{"event_type":"it_license_created","license_key":"SECRET-KEY-1"}"#.to_owned(),
            "not json SECRET".to_owned(),
        ];
        let (event_types, bodies) = as_rows(&texts);
        assert_eq!(event_types, ["it_license_created", ""]);
        assert!(
            !bodies[0].to_string().contains("SECRET-KEY-1"),
            "{}",
            bodies[0]
        );
        assert_eq!(bodies[0]["event_type"], "it_license_created");
        assert!(bodies[1].is_string());
    }
}

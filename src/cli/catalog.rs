//! `itrelay catalog`: every event type with its schema, source and subscribers, as the
//! running configuration routes it; a table for people, JSON for tools.

use serde::Serialize;

use crate::catalog;
use crate::config::Settings;
use crate::route::Router;

/// One event type as this configuration publishes it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventDescription {
    pub event_type: &'static str,
    pub name: &'static str,
    pub category: &'static str,
    pub schema_ref: String,
    /// `x-itrelay-status` of the schema: `contract` (from the contract) or `draft` (ours).
    pub schema_status: String,
    pub source_table: &'static str,
    pub condition: &'static str,
    /// Subscriber modules, from `[routes]`.
    pub subscribers: Vec<String>,
    /// Their exchanges, in the same order.
    pub exchanges: Vec<String>,
}

/// Every catalog event type, in catalog order.
pub fn describe(settings: &Settings) -> Vec<EventDescription> {
    let router = Router::from_settings(settings);
    catalog::EVENTS
        .iter()
        .map(|spec| {
            let destinations = router.destinations(spec);
            EventDescription {
                event_type: spec.event_type,
                name: spec.name,
                category: spec.category,
                schema_ref: spec.schema_ref(),
                schema_status: spec.schema_status(),
                source_table: spec.source_table,
                condition: spec.condition,
                subscribers: destinations.iter().map(|d| d.module.clone()).collect(),
                exchanges: destinations.iter().map(|d| d.exchange.clone()).collect(),
            }
        })
        .collect()
}

/// A plain-text table, one event per line; the condition, the longest, comes last.
pub fn table(events: &[EventDescription]) -> String {
    let header = [
        "EVENT TYPE",
        "NAME",
        "CATEGORY",
        "SCHEMA",
        "STATUS",
        "SOURCE",
        "SUBSCRIBERS (EXCHANGE)",
        "CONDITION",
    ];
    let rows: Vec<[String; 8]> = events
        .iter()
        .map(|event| {
            let subscribers: Vec<String> = event
                .subscribers
                .iter()
                .zip(&event.exchanges)
                .map(|(module, exchange)| format!("{module} ({exchange})"))
                .collect();
            [
                event.event_type.to_owned(),
                event.name.to_owned(),
                event.category.to_owned(),
                event.schema_ref.clone(),
                event.schema_status.clone(),
                event.source_table.to_owned(),
                subscribers.join(", "),
                event.condition.to_owned(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: &[&str]| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        text.trim_end().to_owned() + "\n"
    };
    let mut out = line(&header);
    for row in &rows {
        out.push_str(&line(&row.each_ref().map(String::as_str)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events() -> Vec<EventDescription> {
        describe(&Settings::load_with_env(None, Some(Default::default())).unwrap())
    }

    #[test]
    fn every_event_has_a_status_subscribers_and_their_exchanges() {
        let events = events();
        assert_eq!(events.len(), catalog::EVENTS.len());
        for event in &events {
            assert!(
                ["contract", "draft"].contains(&event.schema_status.as_str()),
                "{}: {}",
                event.event_type,
                event.schema_status
            );
            assert!(!event.subscribers.is_empty(), "{}", event.event_type);
            assert_eq!(event.subscribers.len(), event.exchanges.len());
        }
        let sla = events
            .iter()
            .find(|e| e.event_type == "it_sla_breached")
            .unwrap();
        assert_eq!(sla.subscribers, ["PF-10", "IT-02"]);
        assert_eq!(sla.exchanges, ["it.pf-10", "it.it-02"]);
        assert_eq!(sla.schema_ref, "payload.ItSlaBreached.v1");
    }

    #[test]
    fn the_table_has_a_header_and_a_line_per_event() {
        let events = events();
        let text = table(&events);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), events.len() + 1);
        assert!(lines[0].starts_with("EVENT TYPE"));
        for (line, event) in lines[1..].iter().zip(&events) {
            assert!(line.starts_with(event.event_type), "{line}");
            assert!(line.contains(&event.schema_ref), "{line}");
        }
    }
}

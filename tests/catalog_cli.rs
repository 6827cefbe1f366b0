//! The machine-readable contract from the binary: `itrelay asyncapi` is an AsyncAPI 3.0
//! document naming every catalog event whose every `$ref` resolves inside it, and
//! `itrelay catalog` lists every event with the exchanges this configuration uses.

use std::process::Command;

use itrelay::catalog::EVENTS;
use serde_json::Value;

/// Runs the binary with a custom exchange prefix and an exchange override, so that the
/// output visibly follows the configuration; returns stdout.
fn itrelay(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_itrelay"))
        .args(args)
        .env("ITRELAY__AMQP__EXCHANGE_PREFIX", "cat.")
        .env("ITRELAY__AMQP__EXCHANGES__GR", "governance.it")
        .output()
        .expect("run itrelay");
    assert!(output.status.success(), "{args:?}: {output:?}");
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

fn json_of(args: &[&str]) -> Value {
    serde_json::from_str(&itrelay(args)).expect("JSON output")
}

/// Every `$ref` string anywhere in `value`.
fn refs(value: &Value, found: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                match (key.as_str(), inner) {
                    ("$ref", Value::String(target)) => found.push(target.clone()),
                    _ => refs(inner, found),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| refs(item, found)),
        _ => {}
    }
}

#[test]
fn asyncapi_document_covers_every_event_and_its_refs_resolve() {
    let doc = json_of(&["asyncapi"]);
    assert_eq!(doc["asyncapi"], "3.0.0");
    for spec in EVENTS {
        let message = &doc["components"]["messages"][spec.event_type];
        assert_eq!(message["name"], spec.event_type);
        let schema = &doc["components"]["schemas"][spec.schema_ref()];
        assert_eq!(schema["title"], spec.schema_ref(), "{}", spec.event_type);
        let operations = doc["operations"].as_object().expect("operations");
        assert!(
            operations
                .values()
                .any(|op| op["bindings"]["amqp"]["cc"][0] == spec.event_type),
            "no operation sends {}",
            spec.event_type
        );
    }
    let governance = &doc["channels"]["governance.it"];
    assert_eq!(governance["bindings"]["amqp"]["exchange"]["type"], "topic");
    assert_eq!(governance["bindings"]["amqp"]["exchange"]["durable"], true);
    assert!(doc["channels"]["cat.pf-10"].is_object());

    let mut found = Vec::new();
    refs(&doc, &mut found);
    assert!(found.len() > EVENTS.len() * 3, "{} refs", found.len());
    for target in found {
        let pointer = target
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("{target} points outside the document"));
        assert!(doc.pointer(pointer).is_some(), "{target} does not resolve");
    }
}

#[test]
fn catalog_json_lists_every_event_with_its_exchanges() {
    let listed = json_of(&["catalog", "--json"]);
    let listed = listed.as_array().expect("an array of events");
    assert_eq!(listed.len(), EVENTS.len());
    for spec in EVENTS {
        let event = listed
            .iter()
            .find(|e| e["event_type"] == spec.event_type)
            .unwrap_or_else(|| panic!("{} missing", spec.event_type));
        assert!(
            ["contract", "draft"].contains(&event["schema_status"].as_str().unwrap_or("")),
            "{event}"
        );
        let exchanges = event["exchanges"].as_array().expect("exchanges");
        assert!(!exchanges.is_empty(), "{event}");
        assert_eq!(
            exchanges.len(),
            event["subscribers"].as_array().map_or(0, Vec::len)
        );
    }
    let disposed = listed
        .iter()
        .find(|e| e["event_type"] == "it_asset_disposed")
        .expect("it_asset_disposed");
    assert_eq!(
        disposed["exchanges"],
        serde_json::json!(["cat.fa", "governance.it"])
    );
}

#[test]
fn catalog_table_lists_every_event() {
    let table = itrelay(&["catalog"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), EVENTS.len() + 1, "{table}");
    for spec in EVENTS {
        assert!(
            lines
                .iter()
                .any(|line| line.starts_with(spec.event_type) && line.contains(&spec.schema_ref())),
            "{} missing:\n{table}",
            spec.event_type
        );
    }
}

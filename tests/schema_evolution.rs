//! The schema evolution policy (docs/schema-evolution.md), checked against the last
//! released schemas (tests/fixtures/schemas-released/): within a version, every message
//! the relay sends under the new schema must still be valid under the released one, for
//! a consumer that ignores properties it does not know. A change that breaks this needs a
//! new version (`.v2`), a new file; the released file stays.
//!
//! On a release, copy `catalog/*.json` over the fixtures.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

fn dir(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn read(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Keywords that must keep their value: they say what a value is.
const FIXED: &[&str] = &["const", "format", "$ref", "$id", "title", "pattern"];
/// Lower bounds that may rise, never fall; upper bounds the other way.
const LOWER: &[&str] = &["minLength", "minimum", "exclusiveMinimum", "minItems"];
const UPPER: &[&str] = &["maxLength", "maximum", "exclusiveMaximum", "maxItems"];

/// The ways `new` breaks a consumer of `old` at `at` (a JSON pointer), empty if none.
fn breaks(old: &Value, new: &Value, at: &str) -> Vec<String> {
    let mut found = Vec::new();
    let (Some(old), Some(new)) = (old.as_object(), new.as_object()) else {
        if old != new {
            found.push(format!("{at}: changed from {old} to {new}"));
        }
        return found;
    };
    let mut say = |what: String| found.push(format!("{at}: {what}"));
    for key in FIXED {
        if old.get(*key) != new.get(*key) {
            say(format!("{key} changed"));
        }
    }
    let set = |schema: &serde_json::Map<String, Value>, key: &str| -> Option<BTreeSet<String>> {
        let value = schema.get(key)?;
        let items = match value {
            Value::Array(items) => items.iter().map(Value::to_string).collect(),
            single => BTreeSet::from([single.to_string()]),
        };
        Some(items)
    };
    // Types and enumerations may narrow, never widen; a new constraint narrows too.
    for key in ["type", "enum"] {
        match (set(old, key), set(new, key)) {
            (Some(before), Some(after)) => {
                let added: Vec<&String> = after.difference(&before).collect();
                if !added.is_empty() {
                    say(format!("{key} gained {added:?}"));
                }
            }
            (Some(_), None) => say(format!("{key} dropped")),
            _ => {}
        }
    }
    let number = |schema: &serde_json::Map<String, Value>, key: &str| schema.get(key)?.as_f64();
    for (keys, may_rise) in [(LOWER, true), (UPPER, false)] {
        for key in keys {
            match (number(old, key), number(new, key)) {
                (Some(before), Some(after)) if (after < before) == may_rise && after != before => {
                    say(format!("{key} loosened from {before} to {after}"))
                }
                (Some(_), None) => say(format!("{key} dropped")),
                _ => {}
            }
        }
    }
    let names = |schema: &serde_json::Map<String, Value>| -> BTreeSet<String> {
        schema
            .get("required")
            .and_then(Value::as_array)
            .map(|names| {
                names
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    };
    for name in names(old).difference(&names(new)) {
        say(format!("{name} is no longer required"));
    }
    let empty = serde_json::Map::new();
    let properties = |schema: &serde_json::Map<String, Value>| {
        schema
            .get("properties")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or(empty.clone())
    };
    let new_properties = properties(new);
    for (name, before) in properties(old) {
        match new_properties.get(&name) {
            Some(after) => found.extend(breaks(&before, after, &format!("{at}/{name}"))),
            None => found.push(format!("{at}/{name}: removed")),
        }
    }
    for key in ["items", "additionalProperties"] {
        if let (Some(before), Some(after)) = (old.get(key), new.get(key)) {
            if before.is_object() || after.is_object() {
                found.extend(breaks(before, after, &format!("{at}/{key}")));
            }
        }
    }
    found
}

#[test]
fn every_released_schema_is_kept_or_changed_compatibly() {
    let released_dir = dir("tests/fixtures/schemas-released");
    let mut checked = 0;
    let mut problems = Vec::new();
    for entry in std::fs::read_dir(&released_dir).unwrap() {
        let released = entry.unwrap().path();
        let name = released.file_name().unwrap().to_string_lossy().into_owned();
        let current = dir("catalog").join(&name);
        if !current.exists() {
            problems.push(format!(
                "{name}: removed; a released version stays while consumers may use it"
            ));
            continue;
        }
        for problem in breaks(&read(&released), &read(&current), "") {
            problems.push(format!("{name}{problem}"));
        }
        checked += 1;
    }
    assert!(checked >= 31, "only {checked} released schemas found");
    assert!(
        problems.is_empty(),
        "schema changes that need a new version (docs/schema-evolution.md):\n{}",
        problems.join("\n")
    );
}

#[test]
fn every_schema_points_consumers_at_the_policy() {
    for entry in std::fs::read_dir(dir("catalog")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let comment = read(&path)["$comment"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(
            comment.contains("docs/schema-evolution.md") && comment.contains("ignore properties"),
            "{}: no evolution note in $comment",
            path.display()
        );
    }
}

#[test]
fn the_check_tells_compatible_changes_from_breaking_ones() {
    let released = serde_json::json!({
        "type": "object",
        "required": ["id", "state"],
        "properties": {
            "id": {"type": "string", "format": "uuid"},
            "state": {"type": "string", "enum": ["open", "closed"]},
            "note": {"type": ["string", "null"], "maxLength": 100},
            "tags": {"type": "array", "items": {"type": "string"}}
        }
    });
    type Edit<'a> = &'a dyn Fn(&mut Value);
    let change = |edit: Edit| {
        let mut schema = released.clone();
        edit(&mut schema);
        breaks(&released, &schema, "")
    };
    // Compatible: a new optional or required property, narrower values.
    let compatible: [Edit; 4] = [
        &|s| s["properties"]["extra"] = serde_json::json!({"type": "string"}),
        &|s| {
            s["properties"]["extra"] = serde_json::json!({"type": "integer"});
            s["required"].as_array_mut().unwrap().push("extra".into());
        },
        &|s| s["properties"]["state"]["enum"] = serde_json::json!(["open"]),
        &|s| s["properties"]["note"]["maxLength"] = serde_json::json!(50),
    ];
    for (i, edit) in compatible.iter().enumerate() {
        assert_eq!(change(edit), Vec::<String>::new(), "compatible change {i}");
    }
    // Breaking: each needs a .v2.
    let breaking: [(&str, Edit); 7] = [
        ("/id: removed", &|s| {
            s["properties"].as_object_mut().unwrap().remove("id");
        }),
        ("state is no longer required", &|s| {
            s["required"] = serde_json::json!(["id"])
        }),
        ("/state: enum gained", &|s| {
            s["properties"]["state"]["enum"] = serde_json::json!(["open", "closed", "lost"])
        }),
        ("/id: type gained", &|s| {
            s["properties"]["id"]["type"] = serde_json::json!(["string", "null"])
        }),
        ("/id: format changed", &|s| {
            s["properties"]["id"]["format"] = serde_json::json!("uri")
        }),
        ("/note: maxLength loosened", &|s| {
            s["properties"]["note"]["maxLength"] = serde_json::json!(200)
        }),
        ("/tags/items: type gained", &|s| {
            s["properties"]["tags"]["items"]["type"] = serde_json::json!(["string", "integer"])
        }),
    ];
    for (expected, edit) in breaking {
        let found = change(edit);
        assert!(
            found.iter().any(|problem| problem.contains(expected)),
            "{expected}: found {found:?}"
        );
    }
}

//! Redaction: secrets leave the payload before any other stage sees it.
//!
//! Structural: a field whose name is a sensitive one (`[[sensitive]]` in the catalog,
//! compared ignoring case) is removed at any depth, in objects inside arrays too, and
//! replaced by `<field>_ref`, an opaque reference to the record that holds the secret. A
//! string that is itself JSON (a payload sent as text, JSON kept inside a field) is parsed
//! and redacted the same way, so decoding it later cannot bring a secret back. Text that
//! is not JSON but uses a sensitive field name as a key (escapes such as `\u005f` decoded)
//! is masked from that name to its end: where its value stops cannot be known.
//! `itrelay.redact` in `sql/install.sql` applies the same rules, from the same catalog,
//! before an event is stored. No log line, error, dead letter, outbox row or published
//! body downstream can carry the secret.

use serde_json::{Map, Value};

use crate::catalog::{Sensitive, SENSITIVE};

/// What masked text shows in place of a secret and everything after it.
pub const MASK: &str = "***";

/// Removes every sensitive field from `payload`, at any depth and inside JSON text.
pub fn redact(payload: &mut Value) {
    match payload {
        Value::Object(object) => redact_object(object),
        Value::Array(items) => items.iter_mut().for_each(redact),
        Value::String(text) => {
            if let Some(redacted) = redact_string(text) {
                *text = redacted;
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// The catalog's sensitive field named `name`, ignoring case.
pub fn sensitive(name: &str) -> Option<&'static Sensitive> {
    SENSITIVE
        .iter()
        .find(|sensitive| sensitive.field.eq_ignore_ascii_case(name))
}

fn redact_object(object: &mut Map<String, Value>) {
    let found: Vec<(String, &Sensitive)> = object
        .keys()
        .filter_map(|key| Some((key.clone(), sensitive(key)?)))
        .collect();
    for (key, sensitive) in found {
        object.remove(&key);
        let record_id = match object.get(sensitive.id).and_then(Value::as_str) {
            Some(id) if is_plain_id(id) => id,
            _ => "unknown",
        };
        let reference = format!("{}/{record_id}/{}", sensitive.record, sensitive.field);
        object.insert(format!("{}_ref", sensitive.field), Value::String(reference));
    }
    object.values_mut().for_each(redact);
}

/// An id safe to show in a reference: letters, digits, `-` and `_`, at most 64.
fn is_plain_id(id: &str) -> bool {
    id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The redacted form of a string, or `None` when it holds no secret.
fn redact_string(text: &str) -> Option<String> {
    let trimmed = text.trim_start();
    if trimmed.starts_with(['{', '[', '"']) {
        if let Ok(mut parsed) = serde_json::from_str::<Value>(text) {
            let before = parsed.clone();
            redact(&mut parsed);
            // Cannot fail: a JSON value always serializes.
            return (parsed != before).then(|| serde_json::to_string(&parsed).unwrap_or_default());
        }
    }
    let masked = redact_text(text);
    (masked != text).then_some(masked)
}

/// Masks text that may not parse as JSON: from the first sensitive field name used as a
/// key (any case, JSON escapes of letters, digits and `_` decoded; followed by `:` or
/// `=` past quotes, backslashes and blanks) to the end, which becomes [`MASK`]. A name
/// merely mentioned (as in a `license_key_ref` value) is left alone.
pub fn redact_text(text: &str) -> String {
    let decoded = decode_name_escapes(text);
    let lower = decoded.to_ascii_lowercase();
    let found = SENSITIVE
        .iter()
        .filter_map(|sensitive| {
            let field = sensitive.field;
            lower
                .match_indices(field)
                .map(|(at, _)| at)
                .find(|at| used_as_key(&lower[at + field.len()..]))
        })
        .min();
    match found {
        None => text.to_owned(),
        Some(at) => format!("{}{MASK}", &decoded[..at]),
    }
}

/// Whether text right after a field name makes it a key: `:` or `=` after any quotes,
/// backslashes and blanks.
fn used_as_key(after: &str) -> bool {
    after
        .trim_start_matches(|c: char| matches!(c, '"' | '\'' | '\\') || c.is_whitespace())
        .starts_with([':', '='])
}

/// `text` with `\uXXXX` escapes of ASCII letters, digits and `_` replaced by the
/// character, so that an escaped field name reads as the name.
fn decode_name_escapes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("\\u") {
        out.push_str(&rest[..at]);
        let escape = &rest[at..];
        let decoded = escape
            .get(2..6)
            .and_then(|hex| u8::from_str_radix(hex, 16).ok())
            .map(char::from)
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_');
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &escape[6..];
            }
            None => {
                out.push_str("\\u");
                rest = &escape[2..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const SECRET: &str = "ABCD-SECRET";

    fn leaks(value: &Value) -> bool {
        value.to_string().contains(SECRET) || value.to_string().contains("SECRET")
    }

    #[test]
    fn license_key_becomes_a_reference() {
        let mut payload =
            json!({"license_id": "L1", "license_key": "ABCD-SECRET", "software_name": "X"});
        redact(&mut payload);
        assert_eq!(
            payload,
            json!({"license_id": "L1", "license_key_ref": "it_licenses/L1/license_key", "software_name": "X"})
        );
    }

    #[test]
    fn payload_without_secrets_is_unchanged() {
        let mut payload = json!({"asset_id": "A", "notes": "{not json", "list": [1, "x"]});
        let before = payload.clone();
        redact(&mut payload);
        assert_eq!(payload, before);
    }

    #[test]
    fn secrets_go_at_any_depth_in_any_case_and_inside_json_text() {
        let cases = [
            json!({"a": {"b": {"license_key": SECRET}}}),
            json!({"items": [{"x": 1}, {"License_Key": SECRET}]}),
            json!({"LICENSE_KEY": SECRET}),
            json!([[{"license_KEY": {"nested": SECRET}}]]),
            json!({"notes": format!("{{\"license_key\": \"{SECRET}\"}}")}),
            json!(format!("{{\"license\\u005fkey\": \"{SECRET}\"}}")),
            json!(format!("\"{{\\\"license_key\\\": \\\"{SECRET}\\\"}}\"")),
            json!({"deep": [format!("[{{\"a\": {{\"LICENSE_KEY\": \"{SECRET}\"}}}}]")]}),
        ];
        for case in cases {
            let mut payload = case.clone();
            redact(&mut payload);
            assert!(!leaks(&payload), "{case} -> {payload}");
        }
    }

    #[test]
    fn a_nested_key_becomes_a_reference_in_its_own_object() {
        let mut payload = json!({"license": {"license_id": "L2", "License_Key": SECRET}});
        redact(&mut payload);
        assert_eq!(
            payload,
            json!({"license": {"license_id": "L2", "license_key_ref": "it_licenses/L2/license_key"}})
        );
    }

    #[test]
    fn malformed_text_is_masked_to_its_end() {
        let cases = [
            r#"{"license_key": "ABCD-SECRET", "x": 1"#,
            r#"{"license_key":"ABCD-SECRET"#,
            r#"{"license_key": "AB\"CD-SECRET", "license_key": 'ABCD-SECRET'}"#,
            r#"license_key=ABCD-SECRET"#,
            r#"{"license_key": AB,CD}-SECRET, "x": 1"#,
            r#"{"LICENSE_KEY": ABCD-SECRET"#,
            r#"{"license\u005fkey": "ABCD-SECRET""#,
            r#"{"\u006cicense_key": "ABCD-SECRET""#,
            r#"{\"license_key\" : \"ABCD-SECRET"#,
        ];
        for case in cases {
            let masked = redact_text(case);
            assert!(!masked.contains("SECRET"), "{case} -> {masked}");
            assert!(masked.ends_with(MASK), "{case} -> {masked}");
        }
    }

    #[test]
    fn text_without_secrets_is_unchanged() {
        assert_eq!(redact_text("{not json"), "{not json");
        let reference = "it_licenses/L1/license_key";
        assert_eq!(redact_text(reference), reference);
        assert_eq!(redact_text(r#"{"a": "\u00e9\n"}"#), r#"{"a": "\u00e9\n"}"#);
    }
}

//! Redaction: secrets leave the payload before any other stage sees it.
//!
//! `license_key` is replaced by `license_key_ref`, an opaque reference to the license
//! record that holds the key, so no log line, error, dead letter or published body can
//! carry it. Payloads that are not even JSON are masked textually.

use serde_json::{Map, Value};

/// Payload fields that are secrets.
pub const SENSITIVE_FIELDS: &[&str] = &["license_key"];

/// Removes every sensitive field from `payload` (an object, or unparsed text).
pub fn redact(payload: &mut Value) {
    match payload {
        Value::Object(object) => redact_object(object),
        Value::String(text) => *text = redact_text(text),
        _ => {}
    }
}

fn redact_object(object: &mut Map<String, Value>) {
    for field in SENSITIVE_FIELDS {
        if object.remove(*field).is_some() {
            let reference = match object.get("license_id").and_then(Value::as_str) {
                Some(license_id) => format!("it_licenses/{license_id}/{field}"),
                None => format!("it_licenses/unknown/{field}"),
            };
            object.insert(format!("{field}_ref"), Value::String(reference));
        }
    }
}

/// Masks the value after each sensitive field name in text that may not parse as JSON.
pub fn redact_text(text: &str) -> String {
    let mut out = text.to_owned();
    for field in SENSITIVE_FIELDS {
        let mut from = 0;
        while let Some(found) = out[from..].find(field) {
            let value_start = from + found + field.len();
            let (masked, resume) = mask_value_after(&out, value_start);
            out = masked;
            from = resume;
        }
    }
    out
}

/// Replaces the value that follows a field name (after an optional closing quote,
/// colon and blanks) up to the next `,` or `}` with `***`.
fn mask_value_after(text: &str, start: usize) -> (String, usize) {
    let rest = &text[start..];
    let value_offset = rest
        .char_indices()
        .find(|(_, c)| !matches!(c, '"' | ':' | ' ' | '\t' | '\n' | '\r'))
        .map_or(rest.len(), |(i, _)| i);
    let value = &rest[value_offset..];
    let value_len = if let Some(quoted) = value.strip_prefix('"') {
        closing_quote(quoted).map_or(value.len(), |end| end + 2)
    } else {
        value.find([',', '}']).unwrap_or(value.len())
    };
    let value_start = start + value_offset;
    let masked = format!(
        "{}\"***\"{}",
        &text[..value_start],
        &text[value_start + value_len..]
    );
    (masked, value_start + 5)
}

/// Byte offset of the first unescaped `"` in `text`.
fn closing_quote(text: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        match c {
            '\\' if !escaped => escaped = true,
            '"' if !escaped => return Some(i),
            _ => escaped = false,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

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
        let mut payload = json!({"asset_id": "A"});
        redact(&mut payload);
        assert_eq!(payload, json!({"asset_id": "A"}));
    }

    #[test]
    fn malformed_text_is_masked() {
        let cases = [
            r#"{"license_key": "ABCD-SECRET", "x": 1"#,
            r#"{"license_key":"ABCD-SECRET"#,
            r#"{"license_key": "AB\"CD-SECRET", "license_key": 'ABCD-SECRET'}"#,
            r#"license_key=ABCD-SECRET"#,
        ];
        for case in cases {
            let masked = redact_text(case);
            assert!(!masked.contains("SECRET"), "{case} -> {masked}");
            assert!(masked.contains("***"), "{case} -> {masked}");
        }
    }

    #[test]
    fn text_without_secrets_is_unchanged() {
        assert_eq!(redact_text("{not json"), "{not json");
    }
}

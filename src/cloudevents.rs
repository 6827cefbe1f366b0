//! How the CloudEvents AMQP binding appears on each message: the header prefix
//! (`cloudEvents_`, the binding's current form, or the older `cloudEvents:` for consumers
//! written against it) and an optional reverse-DNS prefix of the `type` attribute.

use serde::Deserialize;

/// The `[cloudevents]` settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudEventsSettings {
    /// `cloudEvents_` (default) or `cloudEvents:`.
    pub header_prefix: HeaderPrefix,
    /// Reverse-DNS prefix of the `type` attribute (`com.example.it` gives
    /// `com.example.it.it_ticket_created`); empty for the bare event type.
    pub type_prefix: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum HeaderPrefix {
    /// The AMQP binding's current form: header names that are valid in every AMQP client.
    #[serde(rename = "cloudEvents_")]
    Underscore,
    /// The binding's older form, for consumers that read it.
    #[serde(rename = "cloudEvents:")]
    Colon,
}

impl Default for CloudEventsSettings {
    fn default() -> Self {
        Self {
            header_prefix: HeaderPrefix::Underscore,
            type_prefix: String::new(),
        }
    }
}

impl CloudEventsSettings {
    /// The header carrying the CloudEvents attribute `attribute` (`id`, `type`, ...).
    pub fn header(&self, attribute: &str) -> String {
        let prefix = match self.header_prefix {
            HeaderPrefix::Underscore => "cloudEvents_",
            HeaderPrefix::Colon => "cloudEvents:",
        };
        format!("{prefix}{attribute}")
    }

    /// The CloudEvents `type` of `event_type`.
    pub fn event_type(&self, event_type: &str) -> String {
        if self.type_prefix.is_empty() {
            event_type.to_owned()
        } else {
            format!("{}.{event_type}", self.type_prefix)
        }
    }

    /// Checks `type_prefix`: empty, or a reverse-DNS name of at least two labels.
    pub fn check(&self) -> Result<(), String> {
        let prefix = &self.type_prefix;
        if prefix.is_empty() {
            return Ok(());
        }
        let label_ok = |label: &str| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        };
        if prefix.split('.').count() >= 2 && prefix.split('.').all(label_ok) {
            Ok(())
        } else {
            Err(format!(
                "{prefix:?} is not a reverse-DNS name such as \"com.example.it\": two or more \
                 dot-separated labels of lower-case letters, digits and '-'"
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(header_prefix: HeaderPrefix, type_prefix: &str) -> CloudEventsSettings {
        CloudEventsSettings {
            header_prefix,
            type_prefix: type_prefix.to_owned(),
        }
    }

    #[test]
    fn header_names_and_types() {
        let default = CloudEventsSettings::default();
        assert_eq!(default.header("id"), "cloudEvents_id");
        assert_eq!(default.event_type("it_ticket_created"), "it_ticket_created");
        let legacy = with(HeaderPrefix::Colon, "com.example.it");
        assert_eq!(legacy.header("type"), "cloudEvents:type");
        assert_eq!(
            legacy.event_type("it_ticket_created"),
            "com.example.it.it_ticket_created"
        );
    }

    #[test]
    fn type_prefix_must_be_reverse_dns() {
        for good in ["", "com.example", "com.example.it", "io.acme-corp.it2"] {
            assert_eq!(
                with(HeaderPrefix::Underscore, good).check(),
                Ok(()),
                "{good}"
            );
        }
        for bad in [
            "com",
            "Com.Example",
            "com..example",
            "com.example.",
            "com.-x",
            "com.ex ample",
        ] {
            let error = with(HeaderPrefix::Underscore, bad).check().unwrap_err();
            assert!(error.contains("reverse-DNS"), "{bad}: {error}");
        }
    }
}

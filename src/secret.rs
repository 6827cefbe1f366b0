//! Connection URLs that carry a password: shown with the password masked, never in clear.

use std::fmt;

use serde::Deserialize;

/// A connection URL whose password must not reach a log line, an error or `Debug` output.
///
/// `Display` and `Debug` print the URL with its password replaced by `***`; only
/// [`SecretUrl::expose`] hands out the real value, for the one call that connects.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// The URL in clear, for the driver that connects with it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with any password masked; unparsable input is masked whole.
    pub fn redacted(&self) -> String {
        match url::Url::parse(&self.0) {
            Ok(mut url) => {
                if url.password().is_some() {
                    // Cannot fail: a URL that has a password can hold one.
                    let _ = url.set_password(Some("***"));
                }
                url.to_string()
            }
            Err(_) => "<unparsable URL, not shown>".to_owned(),
        }
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretUrl({})", self.redacted())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_is_masked_everywhere_but_expose() {
        let url = SecretUrl::new("amqp://guest:hunter2@broker:5672/%2f");
        for shown in [url.to_string(), format!("{url:?}"), url.redacted()] {
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(shown.contains("***"), "{shown}");
        }
        assert!(url.expose().contains("hunter2"));
    }

    #[test]
    fn url_without_password_is_shown_as_is() {
        let url = SecretUrl::new("postgres://postgres@127.0.0.1:5432/test");
        assert_eq!(url.to_string(), "postgres://postgres@127.0.0.1:5432/test");
    }

    #[test]
    fn unparsable_url_is_not_echoed() {
        let url = SecretUrl::new("host=db password=hunter2");
        assert!(!url.to_string().contains("hunter2"));
    }
}

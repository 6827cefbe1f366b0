//! Secrets: connection URLs shown with the password masked, and passwords (from the
//! environment or a file) that are never shown at all.

use std::fmt;
use std::path::Path;

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

/// A password: `Debug` and `Display` print `***`; only [`Secret::expose`] gives the value.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value in clear, for the driver that authenticates with it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Reads a secret file (a mounted Docker secret, a systemd credential): its content
    /// without the trailing newline. The error says what is wrong, never the content.
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let content = std::fs::read_to_string(path)
            .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
        let value = content.trim_end_matches(['\n', '\r']);
        if value.is_empty() {
            return Err(format!("{} is empty", path.display()));
        }
        Ok(Self(value.to_owned()))
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
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

    #[test]
    fn secrets_are_never_shown() {
        let secret = Secret::new("hunter2");
        assert_eq!(secret.to_string(), "***");
        assert_eq!(format!("{secret:?}"), "Secret(***)");
        assert_eq!(secret.expose(), "hunter2");
    }

    #[test]
    fn secret_files_lose_only_the_trailing_newline() {
        let dir = std::env::temp_dir().join(format!("itrelay-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("password");
        std::fs::write(&path, " pass word \n").unwrap();
        assert_eq!(Secret::from_file(&path).unwrap().expose(), " pass word ");
        std::fs::write(&path, "\n").unwrap();
        assert!(Secret::from_file(&path).unwrap_err().contains("empty"));
        let missing = dir.join("missing");
        assert!(Secret::from_file(&missing)
            .unwrap_err()
            .contains("cannot read"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! The two services' sections, `[postgres]` and `[amqp]`, and their checks: a bad URL
//! or TLS file stops the start, named by its key.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::{one_of, ConfigError};
use crate::connect::{self, SettingError, TlsFiles};
use crate::secret::{Secret, SecretUrl};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSettings {
    pub url: SecretUrl,
    pub channel: String,
    /// How the triggers record events: an outbox row, or a logical message the relay
    /// reads from a replication slot ([`crate::wal`]).
    pub capture: Capture,
    /// A query unanswered this long means the connection is dead (e.g. a silent network).
    pub query_timeout_secs: u64,
    /// Replaces the URL's password; after loading, also holds `password_file`'s content.
    pub password: Option<Secret>,
    pub password_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
}

/// How events are recorded: the key `postgres.capture`, and the installed mode
/// (`crate::wal`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Capture {
    /// A row in `itrelay.events`, written by the trigger.
    #[default]
    Outbox,
    /// A transactional logical message, moved into `itrelay.events` by the relay.
    Wal,
}

impl Capture {
    const NAMES: [(&'static str, Capture); 2] =
        [("outbox", Capture::Outbox), ("wal", Capture::Wal)];

    pub fn as_str(self) -> &'static str {
        match self {
            Capture::Outbox => "outbox",
            Capture::Wal => "wal",
        }
    }

    /// The mode of that name, in any case.
    pub fn parse(name: &str) -> Option<Self> {
        Self::NAMES
            .iter()
            .find(|(known, _)| known.eq_ignore_ascii_case(name))
            .map(|(_, capture)| *capture)
    }
}

impl<'de> Deserialize<'de> for Capture {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        one_of(deserializer, "capture mode", &Self::NAMES)
    }
}

impl PostgresSettings {
    pub fn tls_files(&self) -> TlsFiles<'_> {
        TlsFiles {
            section: "postgres",
            ca_file: self.ca_file.as_deref(),
            client_cert_file: self.client_cert_file.as_deref(),
            client_key_file: self.client_key_file.as_deref(),
        }
    }

    /// What connecting takes (see [`connect::postgres::options`]), reading the TLS files.
    pub fn connect_options(&self) -> Result<connect::postgres::PostgresOptions, SettingError> {
        connect::postgres::options(
            self.url.expose(),
            self.password.as_ref().map(Secret::expose),
            self.tls_files(),
        )
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSettings {
    pub url: SecretUrl,
    pub exchange_prefix: String,
    pub dead_letter: String,
    /// The dead-letter queue's name after the prefix; unset: the exchange's.
    pub dead_letter_queue: Option<String>,
    pub dead_letter_queue_type: QueueType,
    /// Most messages the dead-letter queue keeps (the oldest go first); 0: no limit.
    pub dead_letter_max_length: u64,
    pub app_id: String,
    pub confirm_timeout_secs: u64,
    /// Bound of each step of setting up: connecting (TCP, TLS, AMQP handshake), opening
    /// a channel, turning on confirms, each declare and bind; and of closing.
    pub connect_timeout_secs: u64,
    /// Module → exchange name, overriding the prefixed default (module matched ignoring case).
    pub exchanges: HashMap<String, String>,
    /// Replaces the URL's password; after loading, also holds `password_file`'s content.
    pub password: Option<Secret>,
    pub password_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
}

/// The kind of queue the relay declares for its dead letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueType {
    Classic,
    Quorum,
}

impl QueueType {
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
        }
    }
}

impl<'de> Deserialize<'de> for QueueType {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        one_of(
            deserializer,
            "queue type",
            &[
                ("classic", QueueType::Classic),
                ("quorum", QueueType::Quorum),
            ],
        )
    }
}

impl AmqpSettings {
    /// The dead-letter queue: `<exchange_prefix><dead_letter_queue or dead_letter>`.
    pub fn dead_letter_queue(&self) -> String {
        let name = self
            .dead_letter_queue
            .as_deref()
            .unwrap_or(&self.dead_letter);
        format!("{}{name}", self.exchange_prefix)
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_secs)
    }

    pub fn tls_files(&self) -> TlsFiles<'_> {
        TlsFiles {
            section: "amqp",
            ca_file: self.ca_file.as_deref(),
            client_cert_file: self.client_cert_file.as_deref(),
            client_key_file: self.client_key_file.as_deref(),
        }
    }

    /// What connecting takes (see [`connect::amqp::options`]), reading the TLS files.
    pub fn connect_options(&self) -> Result<connect::amqp::AmqpOptions, SettingError> {
        connect::amqp::options(
            self.url.expose(),
            self.password.as_ref().map(Secret::expose),
            self.tls_files(),
        )
    }
}

impl PostgresSettings {
    /// Builds what connecting needs, reading the TLS files, so a bad one stops the start.
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        self.connect_options()?;
        check_channel(&self.channel)
            .map_err(|reason| ConfigError::invalid("postgres.channel", reason))?;
        if self.query_timeout_secs == 0 {
            return Err(ConfigError::invalid(
                "postgres.query_timeout_secs",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

impl AmqpSettings {
    /// As [`PostgresSettings::check`]; and every exchange and queue name the relay
    /// declares.
    pub(super) fn check(&self, dead_letter_exchange: &str) -> Result<(), ConfigError> {
        self.connect_options()?;
        // Empty, every module's exchange would be the bare module name, shared with
        // anything else on the broker that publishes there.
        check_not_empty(&self.exchange_prefix)
            .and_then(|()| check_exchange_name(&format!("{}{}", self.exchange_prefix, "x")))
            .map_err(|reason| ConfigError::invalid("amqp.exchange_prefix", reason))?;
        check_exchange_name(dead_letter_exchange)
            .map_err(|reason| ConfigError::invalid("amqp.dead_letter", reason))?;
        check_exchange_name(&self.dead_letter_queue())
            .map_err(|reason| ConfigError::invalid("amqp.dead_letter_queue", reason))?;
        check_not_empty(&self.app_id).map_err(|r| ConfigError::invalid("amqp.app_id", r))?;
        for (key, value) in [
            ("amqp.confirm_timeout_secs", self.confirm_timeout_secs),
            ("amqp.connect_timeout_secs", self.connect_timeout_secs),
        ] {
            if value == 0 {
                return Err(ConfigError::invalid(key, "must be at least 1"));
            }
        }
        for (module, exchange) in &self.exchanges {
            check_exchange_name(exchange).map_err(|reason| {
                ConfigError::invalid(format!("amqp.exchanges.{module}"), reason)
            })?;
        }
        Ok(())
    }
}

impl From<SettingError> for ConfigError {
    fn from(error: SettingError) -> Self {
        ConfigError::invalid(error.key, error.reason)
    }
}

pub(super) fn check_not_empty(value: &str) -> Result<(), String> {
    if value.trim().is_empty() {
        Err("must not be empty".to_owned())
    } else {
        Ok(())
    }
}

/// A LISTEN channel: a plain lower-case identifier, so it is the same name quoted or not.
pub fn check_channel(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let starts_well = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if name.len() > 63 {
        Err(format!("{name:?} is longer than 63 bytes"))
    } else if !(starts_well && rest_ok) {
        Err(format!(
            "{name:?} is not a plain identifier (lower-case letters, digits and `_`, not starting with a digit)"
        ))
    } else {
        Ok(())
    }
}

/// An AMQP exchange name: 1 to 255 of letters, digits, `-`, `_`, `.`, `:`.
pub fn check_exchange_name(name: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "-_.:".contains(c);
    if name.is_empty() || name.len() > 255 {
        Err(format!("{name:?} must be 1 to 255 characters"))
    } else if let Some(bad) = name.chars().find(|c| !allowed(*c)) {
        Err(format!(
            "{name:?} has {bad:?}; exchange names take letters, digits, `-`, `_`, `.` and `:`"
        ))
    } else {
        Ok(())
    }
}

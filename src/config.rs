//! The configuration tree: built-in defaults, an optional file, `ITRELAY__*` variables.
//!
//! Every key is documented in `config/default.toml`, which is also the one place
//! defaults live (it is compiled in as the first layer). Unknown keys are rejected and
//! every value is checked here, before anything connects, with the key in the error.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use crate::catalog;
use crate::secret::SecretUrl;

/// The compiled-in defaults, `config/default.toml`.
pub const DEFAULTS: &str = include_str!("../config/default.toml");

/// Prefix of environment variables; sections and keys are joined with `__`.
pub const ENV_PREFIX: &str = "ITRELAY";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("configuration key `{key}`: {reason}")]
    Invalid { key: String, reason: String },
}

impl ConfigError {
    fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub postgres: PostgresSettings,
    pub amqp: AmqpSettings,
    pub relay: RelaySettings,
    pub log: LogSettings,
    /// Event type → subscriber modules.
    pub routes: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSettings {
    pub url: SecretUrl,
    pub channel: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSettings {
    pub url: SecretUrl,
    pub exchange_prefix: String,
    pub dead_letter: String,
    pub app_id: String,
    pub confirm_timeout_secs: u64,
    /// Module → exchange name, overriding the prefixed default (module matched ignoring case).
    pub exchanges: HashMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelaySettings {
    pub batch_size: u32,
    pub poll_interval_ms: u64,
    pub reconnect_min_ms: u64,
    pub reconnect_max_ms: u64,
    pub standby_retry_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
}

impl Settings {
    /// Defaults, then `file`, then the process environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with_env(file, None)
    }

    /// As [`Settings::load`], with the environment given as a map (`None`: the process's).
    pub fn load_with_env(
        file: Option<&Path>,
        env: Option<HashMap<String, String>>,
    ) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder()
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml));
        if let Some(path) = file {
            builder = builder.add_source(config::File::from(path).required(true));
        }
        // Route lists come from the environment as comma-separated module names.
        let environment = catalog::EVENTS.iter().fold(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .list_separator(",")
                .source(env),
            |environment, spec| {
                environment.with_list_parse_key(&format!("routes.{}", spec.event_type))
            },
        );
        let settings: Settings = builder.add_source(environment).build()?.try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks every value that the types alone do not.
    fn validate(&self) -> Result<(), ConfigError> {
        tokio_postgres::Config::from_str(self.postgres.url.expose())
            .map_err(|e| ConfigError::invalid("postgres.url", unparsable_url(&e)))?;
        check_channel(&self.postgres.channel)
            .map_err(|reason| ConfigError::invalid("postgres.channel", reason))?;
        lapin::uri::AMQPUri::from_str(self.amqp.url.expose())
            .map_err(|_| ConfigError::invalid("amqp.url", "not an amqp:// or amqps:// URL"))?;
        check_exchange_name(&format!("{}{}", self.amqp.exchange_prefix, "x"))
            .map_err(|reason| ConfigError::invalid("amqp.exchange_prefix", reason))?;
        check_exchange_name(&self.dead_letter_exchange())
            .map_err(|reason| ConfigError::invalid("amqp.dead_letter", reason))?;
        check_not_empty(&self.amqp.app_id).map_err(|r| ConfigError::invalid("amqp.app_id", r))?;
        if self.amqp.confirm_timeout_secs == 0 {
            return Err(ConfigError::invalid(
                "amqp.confirm_timeout_secs",
                "must be at least 1",
            ));
        }
        for (module, exchange) in &self.amqp.exchanges {
            check_exchange_name(exchange).map_err(|reason| {
                ConfigError::invalid(format!("amqp.exchanges.{module}"), reason)
            })?;
        }
        self.validate_relay()?;
        self.validate_routes()
    }

    fn validate_relay(&self) -> Result<(), ConfigError> {
        let relay = &self.relay;
        if !(1..=10_000).contains(&relay.batch_size) {
            return Err(ConfigError::invalid(
                "relay.batch_size",
                "must be between 1 and 10000",
            ));
        }
        for (key, value) in [
            ("relay.poll_interval_ms", relay.poll_interval_ms),
            ("relay.reconnect_min_ms", relay.reconnect_min_ms),
            ("relay.standby_retry_ms", relay.standby_retry_ms),
        ] {
            if value == 0 {
                return Err(ConfigError::invalid(key, "must be at least 1"));
            }
        }
        if relay.reconnect_max_ms < relay.reconnect_min_ms {
            return Err(ConfigError::invalid(
                "relay.reconnect_max_ms",
                "must not be below relay.reconnect_min_ms",
            ));
        }
        Ok(())
    }

    fn validate_routes(&self) -> Result<(), ConfigError> {
        for (event_type, modules) in &self.routes {
            let key = format!("routes.{event_type}");
            if catalog::find(event_type).is_none() {
                return Err(ConfigError::invalid(
                    key,
                    "not an event type of the catalog",
                ));
            }
            if modules.is_empty() {
                return Err(ConfigError::invalid(key, "names no subscriber module"));
            }
            for module in modules {
                check_not_empty(module).map_err(|r| ConfigError::invalid(&key, r))?;
                check_exchange_name(&self.exchange_for(module)).map_err(|reason| {
                    ConfigError::invalid(&key, format!("module {module:?}: {reason}"))
                })?;
            }
        }
        if let Some(spec) = catalog::EVENTS
            .iter()
            .find(|spec| !self.routes.contains_key(spec.event_type))
        {
            return Err(ConfigError::invalid(
                format!("routes.{}", spec.event_type),
                "missing: every event type needs at least one subscriber module",
            ));
        }
        Ok(())
    }

    /// The exchange a subscriber module's events are published to. Module names match
    /// case-insensitively, as environment variables arrive in lower case.
    pub fn exchange_for(&self, module: &str) -> String {
        self.amqp
            .exchanges
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(module))
            .map(|(_, exchange)| exchange.clone())
            .unwrap_or_else(|| format!("{}{}", self.amqp.exchange_prefix, module.to_lowercase()))
    }

    /// The dead-letter exchange (and the name of the queue bound to it).
    pub fn dead_letter_exchange(&self) -> String {
        format!("{}{}", self.amqp.exchange_prefix, self.amqp.dead_letter)
    }

    pub fn confirm_timeout(&self) -> Duration {
        Duration::from_secs(self.amqp.confirm_timeout_secs)
    }
}

/// The driver's own parse error can quote the input, password included: say less.
fn unparsable_url(error: &tokio_postgres::Error) -> String {
    let reason = error.to_string();
    if reason.contains("password") {
        "not a valid connection URL".to_owned()
    } else {
        format!("not a valid connection URL ({reason})")
    }
}

fn check_not_empty(value: &str) -> Result<(), String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn load(env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::load_with_env(None, Some(env))
    }

    fn error_of(env: &[(&str, &str)]) -> String {
        load(env)
            .expect_err("expected a configuration error")
            .to_string()
    }

    #[test]
    fn defaults_load_and_route_every_catalog_event() {
        let settings = load(&[]).unwrap();
        assert_eq!(settings.postgres.channel, "it_events");
        assert_eq!(settings.exchange_for("PF-10"), "it.pf-10");
        assert_eq!(settings.dead_letter_exchange(), "it.dead-letter");
        assert_eq!(settings.routes["it_asset_disposed"], ["FA", "GR"]);
    }

    #[test]
    fn environment_overrides_nested_keys() {
        let settings = load(&[
            ("ITRELAY__POSTGRES__URL", "postgres://relay:pw@db:5432/it"),
            ("ITRELAY__AMQP__EXCHANGE_PREFIX", "test."),
            ("ITRELAY__RELAY__BATCH_SIZE", "50"),
        ])
        .unwrap();
        assert_eq!(
            settings.postgres.url.expose(),
            "postgres://relay:pw@db:5432/it"
        );
        assert_eq!(settings.relay.batch_size, 50);
        assert_eq!(settings.exchange_for("FA"), "test.fa");
    }

    #[test]
    fn routes_from_the_environment_are_comma_separated() {
        let settings = load(&[
            ("ITRELAY__ROUTES__IT_ASSET_PURCHASED", "FA,GR"),
            ("ITRELAY__ROUTES__IT_ASSET_DISPOSED", "GR"),
            ("ITRELAY__AMQP__APP_ID", "1234"),
        ])
        .unwrap();
        assert_eq!(settings.routes["it_asset_purchased"], ["FA", "GR"]);
        assert_eq!(settings.routes["it_asset_disposed"], ["GR"]);
        assert_eq!(settings.amqp.app_id, "1234");
    }

    #[test]
    fn exchange_override_per_module() {
        let settings = load(&[("ITRELAY__AMQP__EXCHANGES__FA", "finance.events")]).unwrap();
        assert_eq!(settings.exchange_for("FA"), "finance.events");
    }

    #[test]
    fn bad_values_name_their_key_and_reason() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[("ITRELAY__POSTGRES__CHANNEL", "it_events; DROP TABLE x")],
                "postgres.channel",
            ),
            (
                &[("ITRELAY__POSTGRES__CHANNEL", "\"quoted\"")],
                "postgres.channel",
            ),
            (
                &[("ITRELAY__POSTGRES__URL", "postgres://u:pw@host:notaport/db")],
                "postgres.url",
            ),
            (&[("ITRELAY__AMQP__URL", "http://broker")], "amqp.url"),
            (
                &[("ITRELAY__AMQP__EXCHANGE_PREFIX", "it events")],
                "amqp.exchange_prefix",
            ),
            (
                &[("ITRELAY__AMQP__DEAD_LETTER", "dead;letter")],
                "amqp.dead_letter",
            ),
            (&[("ITRELAY__RELAY__BATCH_SIZE", "0")], "relay.batch_size"),
            (
                &[("ITRELAY__RELAY__RECONNECT_MAX_MS", "1")],
                "relay.reconnect_max_ms",
            ),
        ];
        for (env, key) in cases {
            let message = error_of(env);
            assert!(message.contains(key), "{message} should name {key}");
        }
    }

    #[test]
    fn errors_never_show_the_password() {
        let message = error_of(&[("ITRELAY__POSTGRES__URL", "postgres://u:hunter2@host:x/db")]);
        assert!(!message.contains("hunter2"), "{message}");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let message = error_of(&[("ITRELAY__POSTGRES__HOSTNAME", "db")]);
        assert!(message.contains("hostname"), "{message}");
    }

    #[test]
    fn unparsable_number_names_the_key() {
        let message = error_of(&[("ITRELAY__RELAY__BATCH_SIZE", "many")]);
        assert!(message.contains("batch_size"), "{message}");
    }

    #[test]
    fn channel_names() {
        assert!(check_channel("it_events").is_ok());
        assert!(check_channel("_x1").is_ok());
        for bad in [
            "",
            "1abc",
            "It_Events",
            "a-b",
            "a\"b",
            "a;b",
            &"x".repeat(64),
        ] {
            assert!(check_channel(bad).is_err(), "{bad:?} accepted");
        }
    }
}

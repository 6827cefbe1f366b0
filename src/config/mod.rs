//! The configuration tree: built-in defaults, an optional file, `ITRELAY__*` variables.
//!
//! Every key is documented in `config/default.toml`, which is also the one place
//! defaults live (it is compiled in as the first layer). Unknown keys are rejected and
//! every value is checked here, before anything connects, with the key in the error.

mod operations;
mod relay;
mod routes;
mod services;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

pub use self::operations::{
    CanarySettings, HttpSettings, LogFormat, LogSettings, RetentionSettings, ScanSettings,
};
pub use self::relay::{DeliverySettings, RelaySettings, Unroutable};
pub use self::services::{
    check_channel, check_exchange_name, AmqpSettings, Capture, PostgresSettings, QueueType,
};
use crate::catalog;
use crate::secret::Secret;

/// The compiled-in defaults, `config/default.toml`.
pub const DEFAULTS: &str = include_str!("../../config/default.toml");

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
    pub http: HttpSettings,
    pub retention: RetentionSettings,
    pub canary: CanarySettings,
    pub scan: ScanSettings,
    pub delivery: DeliverySettings,
    pub cloudevents: crate::cloudevents::CloudEventsSettings,
    /// Event type → subscriber modules.
    pub routes: BTreeMap<String, Vec<String>>,
    /// The reference tables and columns mapped onto the database's real ones.
    #[serde(default)]
    pub mapping: crate::mapping::Mapping,
    /// What `itrelay install` adds: roles granted the durable API.
    #[serde(default)]
    pub install: crate::sql::InstallSettings,
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
        let mut env = env.unwrap_or_else(process_env);
        let passwords = take_passwords(&mut env);
        // Route lists come from the environment as comma-separated module names.
        let environment = catalog::EVENTS.iter().fold(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .list_separator(",")
                .source(Some(env)),
            |environment, spec| {
                environment.with_list_parse_key(&format!("routes.{}", spec.event_type))
            },
        );
        let mut builder = builder.add_source(environment);
        for (key, value) in passwords {
            builder = builder.set_override(key, value)?;
        }
        let mut settings: Settings = builder.build()?.try_deserialize()?;
        settings.read_password_files()?;
        settings.resolve_exchange_overrides()?;
        settings.validate()?;
        Ok(settings)
    }

    /// Reads each `<section>.password_file` into `<section>.password`, once, at start.
    fn read_password_files(&mut self) -> Result<(), ConfigError> {
        for (section, password, file) in [
            (
                "postgres",
                &mut self.postgres.password,
                &self.postgres.password_file,
            ),
            ("amqp", &mut self.amqp.password, &self.amqp.password_file),
        ] {
            let Some(path) = file else { continue };
            let key = format!("{section}.password_file");
            if password.is_some() {
                return Err(ConfigError::invalid(
                    key,
                    format!(
                        "set either `{section}.password` or `{section}.password_file`, not both"
                    ),
                ));
            }
            *password =
                Some(Secret::from_file(path).map_err(|reason| ConfigError::invalid(key, reason))?);
        }
        Ok(())
    }

    /// Checks every value that the types alone do not: each section its own, then what
    /// spans sections.
    fn validate(&self) -> Result<(), ConfigError> {
        self.postgres.check()?;
        self.amqp.check(&self.dead_letter_exchange())?;
        self.cloudevents
            .check()
            .map_err(|reason| ConfigError::invalid("cloudevents.type_prefix", reason))?;
        self.check_install()?;
        self.http.check()?;
        self.retention.check()?;
        self.canary.check()?;
        self.relay.check(self.postgres.query_timeout_secs)?;
        let modules: Vec<&String> = self.routes.values().flatten().collect();
        self.delivery.check(&modules)?;
        self.scan.check()?;
        self.check_routes()
    }

    fn check_install(&self) -> Result<(), ConfigError> {
        let catalog = catalog::sources()
            .map_err(|error| ConfigError::invalid("mapping", format!("{error:#}")))?;
        self.mapping
            .check(&catalog::render::reference_columns(&catalog))
            .and_then(|()| self.install.check())
            .map_err(|error| ConfigError::invalid(error.key, error.reason))
    }

    pub fn query_timeout(&self) -> Duration {
        Duration::from_secs(self.postgres.query_timeout_secs)
    }

    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.relay.lease_secs)
    }

    pub fn confirm_timeout(&self) -> Duration {
        Duration::from_secs(self.amqp.confirm_timeout_secs)
    }

    pub fn stop_timeout(&self) -> Duration {
        Duration::from_secs(self.relay.stop_timeout_secs)
    }

    pub fn scan_interval(&self) -> Duration {
        Duration::from_secs(self.scan.interval_secs)
    }
}

/// The process environment, leaving out variables that are not UTF-8.
fn process_env() -> HashMap<String, String> {
    std::env::vars_os()
        .filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)))
        .collect()
}

/// Takes the password variables out of `env`, to be used exactly as given: the
/// environment source would read a password such as `007` as the number 7.
fn take_passwords(env: &mut HashMap<String, String>) -> Vec<(&'static str, String)> {
    ["postgres.password", "amqp.password"]
        .into_iter()
        .filter_map(|key| {
            let variable = format!("{ENV_PREFIX}__{}", key.replace('.', "__"));
            let name = env
                .keys()
                .find(|name| name.eq_ignore_ascii_case(&variable))?
                .clone();
            env.remove(&name).map(|value| (key, value))
        })
        .collect()
}

/// One of `choices` by name (any case); an error lists the valid names.
fn one_of<'de, D: Deserializer<'de>, T: Copy>(
    deserializer: D,
    what: &str,
    choices: &[(&str, T)],
) -> Result<T, D::Error> {
    let given = String::deserialize(deserializer)?;
    choices
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(&given))
        .map(|(_, value)| *value)
        .ok_or_else(|| {
            let names: Vec<&str> = choices.iter().map(|(name, _)| *name).collect();
            serde::de::Error::custom(format!(
                "{given:?} is not a {what}; valid: {}",
                names.join(", ")
            ))
        })
}

/// Whether a module name given as a key names `module`: case-insensitively, and with `_`
/// for `-`, as environment variables cannot hold `-` in a name (`PF_10` is `PF-10`).
fn same_module(key: &str, module: &str) -> bool {
    key.len() == module.len()
        && key
            .bytes()
            .zip(module.bytes())
            .all(|(k, m)| k.eq_ignore_ascii_case(&m) || (k == b'_' && m == b'-'))
}

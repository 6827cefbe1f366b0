//! The configuration tree: built-in defaults, an optional file, `ITRELAY__*` variables.
//!
//! Every key is documented in `config/default.toml`, which is also the one place
//! defaults live (it is compiled in as the first layer). Unknown keys are rejected and
//! every value is checked here, before anything connects, with the key in the error.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::catalog;
use crate::secret::{Secret, SecretUrl};
use crate::tls::{self, SettingError, TlsFiles};

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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSettings {
    pub url: SecretUrl,
    pub channel: String,
    /// How the triggers record events: an outbox row, or a logical message the relay
    /// reads from a replication slot ([`crate::wal`]).
    pub capture: crate::wal::Capture,
    /// A query unanswered this long means the connection is dead (e.g. a silent network).
    pub query_timeout_secs: u64,
    /// Replaces the URL's password; after loading, also holds `password_file`'s content.
    pub password: Option<Secret>,
    pub password_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
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

    /// What connecting takes (see [`tls::postgres`]), reading the TLS files.
    pub fn connect_options(&self) -> Result<tls::PostgresOptions, SettingError> {
        tls::postgres(
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

    /// What connecting takes (see [`tls::amqp`]), reading the TLS files.
    pub fn connect_options(&self) -> Result<tls::AmqpOptions, SettingError> {
        tls::amqp(
            self.url.expose(),
            self.password.as_ref().map(Secret::expose),
            self.tls_files(),
        )
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelaySettings {
    pub batch_size: u32,
    pub poll_interval_ms: u64,
    pub reconnect_min_ms: u64,
    pub reconnect_max_ms: u64,
    pub standby_retry_ms: u64,
    /// After SIGTERM or SIGINT, the process ends within this, finished or not.
    pub stop_timeout_secs: u64,
    /// Relay whole JSON events sent with NOTIFY (unauthenticated, lossy); off by default.
    pub accept_notify_events: bool,
    /// A leader's lease not renewed this long lets a standby end its session and take over.
    pub lease_secs: u64,
}

/// What becomes of copies (event × subscriber module) not confirmed at the first try.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliverySettings {
    pub retry_min_ms: u64,
    pub retry_max_ms: u64,
    /// Policy for a copy the broker returns because no queue is bound.
    pub unroutable: Unroutable,
    /// Per subscriber module, overriding `unroutable`.
    pub unroutable_by_module: HashMap<String, Unroutable>,
}

impl DeliverySettings {
    /// The unroutable policy of `module` (names match as for [`Settings::exchange_for`]).
    pub fn unroutable_for(&self, module: &str) -> Unroutable {
        self.unroutable_by_module
            .iter()
            .find(|(name, _)| same_module(name, module))
            .map_or(self.unroutable, |(_, policy)| *policy)
    }
}

/// What a copy returned as unroutable (its module's exchange has no queue bound for the
/// event type) becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Unroutable {
    /// Published to the dead-letter exchange for that module alone and kept as a failed
    /// copy, to replay once a queue is bound.
    DeadLetter,
    /// Kept waiting and retried with the delivery backoff until a queue is bound; later
    /// events of the same entity wait behind it for that module.
    Wait,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl<'de> Deserialize<'de> for LogFormat {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        one_of(
            deserializer,
            "log format",
            &[("text", LogFormat::Text), ("json", LogFormat::Json)],
        )
    }
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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanarySettings {
    pub enabled: bool,
    pub interval_secs: u64,
    pub stall_after_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSettings {
    pub enabled: bool,
    pub delivered_max_age_hours: u32,
    pub batch_size: u32,
    pub interval_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    pub enabled: bool,
    /// `host:port` of /healthz, /readyz and /metrics.
    pub listen: String,
}

impl HttpSettings {
    /// The listen address; checked at load time.
    pub fn address(&self) -> Result<std::net::SocketAddr, ConfigError> {
        self.listen.parse().map_err(|_| {
            ConfigError::invalid(
                "http.listen",
                format!("{:?} is not a host:port address", self.listen),
            )
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
}

/// The due-event scheduler ([`crate::scan`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScanSettings {
    /// Run `itrelay.scan_due_events()` from the daemon; off when pg_cron runs it instead.
    pub enabled: bool,
    /// Seconds between two scans.
    pub interval_secs: u64,
    /// Days after its purchase_date during which a license is not reported under-utilized.
    pub license_grace_days: i32,
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

    /// Names the modules of `amqp.exchanges` exactly as the routes do. Environment
    /// variables arrive in lower case and cannot hold `-`: `PF_10` (any case) stands for
    /// the module `PF-10`. An override for a module no route names is an error.
    fn resolve_exchange_overrides(&mut self) -> Result<(), ConfigError> {
        let modules: BTreeSet<&String> = self.routes.values().flatten().collect();
        let mut resolved = HashMap::new();
        for (given, exchange) in &self.amqp.exchanges {
            let key = format!("amqp.exchanges.{given}");
            let module = modules
                .iter()
                .find(|module| same_module(given, module))
                .ok_or_else(|| {
                    let valid: Vec<&str> = modules.iter().map(|m| m.as_str()).collect();
                    ConfigError::invalid(
                        &key,
                        format!(
                            "no routed module of that name; valid modules: {}",
                            valid.join(", ")
                        ),
                    )
                })?;
            if resolved
                .insert((*module).clone(), exchange.clone())
                .is_some()
            {
                return Err(ConfigError::invalid(
                    key,
                    format!("module {module} is given more than one exchange"),
                ));
            }
        }
        self.amqp.exchanges = resolved;
        Ok(())
    }

    /// Checks every value that the types alone do not.
    fn validate(&self) -> Result<(), ConfigError> {
        // Builds what connecting needs, reading the TLS files, so a bad one stops the start.
        self.postgres
            .connect_options()
            .map_err(|e| ConfigError::invalid(e.key, e.reason))?;
        check_channel(&self.postgres.channel)
            .map_err(|reason| ConfigError::invalid("postgres.channel", reason))?;
        self.amqp
            .connect_options()
            .map_err(|e| ConfigError::invalid(e.key, e.reason))?;
        // Empty, every module's exchange would be the bare module name, shared with
        // anything else on the broker that publishes there.
        check_not_empty(&self.amqp.exchange_prefix)
            .and_then(|()| check_exchange_name(&format!("{}{}", self.amqp.exchange_prefix, "x")))
            .map_err(|reason| ConfigError::invalid("amqp.exchange_prefix", reason))?;
        check_exchange_name(&self.dead_letter_exchange())
            .map_err(|reason| ConfigError::invalid("amqp.dead_letter", reason))?;
        check_exchange_name(&self.amqp.dead_letter_queue())
            .map_err(|reason| ConfigError::invalid("amqp.dead_letter_queue", reason))?;
        check_not_empty(&self.amqp.app_id).map_err(|r| ConfigError::invalid("amqp.app_id", r))?;
        self.cloudevents
            .check()
            .map_err(|reason| ConfigError::invalid("cloudevents.type_prefix", reason))?;
        self.check_install()?;
        if self.postgres.query_timeout_secs == 0 {
            return Err(ConfigError::invalid(
                "postgres.query_timeout_secs",
                "must be at least 1",
            ));
        }
        for (key, value) in [
            ("amqp.confirm_timeout_secs", self.amqp.confirm_timeout_secs),
            ("amqp.connect_timeout_secs", self.amqp.connect_timeout_secs),
        ] {
            if value == 0 {
                return Err(ConfigError::invalid(key, "must be at least 1"));
            }
        }
        for (module, exchange) in &self.amqp.exchanges {
            check_exchange_name(exchange).map_err(|reason| {
                ConfigError::invalid(format!("amqp.exchanges.{module}"), reason)
            })?;
        }
        self.http.address()?;
        if !(1..=100_000).contains(&self.retention.batch_size) {
            return Err(ConfigError::invalid(
                "retention.batch_size",
                "must be between 1 and 100000",
            ));
        }
        for (key, value) in [
            ("canary.interval_secs", self.canary.interval_secs),
            ("canary.stall_after_secs", self.canary.stall_after_secs),
        ] {
            if value == 0 {
                return Err(ConfigError::invalid(key, "must be at least 1"));
            }
        }
        if self.retention.interval_secs == 0 {
            return Err(ConfigError::invalid(
                "retention.interval_secs",
                "must be at least 1",
            ));
        }
        self.validate_relay()?;
        self.validate_delivery()?;
        if !(0..=3650).contains(&self.scan.license_grace_days) {
            return Err(ConfigError::invalid(
                "scan.license_grace_days",
                "must be between 0 and 3650 (ten years)",
            ));
        }
        if !(1..=86_400).contains(&self.scan.interval_secs) {
            return Err(ConfigError::invalid(
                "scan.interval_secs",
                "must be between 1 and 86400 (a day)",
            ));
        }
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
            ("relay.stop_timeout_secs", relay.stop_timeout_secs),
        ] {
            if value == 0 {
                return Err(ConfigError::invalid(key, "must be at least 1"));
            }
        }
        // The leader renews every third of the lease; a renewal unanswered within the
        // query timeout ends its session. Both together fit in the lease, so a
        // partitioned leader has given up before a standby takes over.
        if relay.lease_secs * 2 < self.postgres.query_timeout_secs * 3 {
            return Err(ConfigError::invalid(
                "relay.lease_secs",
                format!(
                    "must be at least 1.5 × postgres.query_timeout_secs ({}), so that a partitioned leader gives up before a standby takes over",
                    self.postgres.query_timeout_secs
                ),
            ));
        }
        if relay.reconnect_max_ms < relay.reconnect_min_ms {
            return Err(ConfigError::invalid(
                "relay.reconnect_max_ms",
                "must not be below relay.reconnect_min_ms",
            ));
        }
        Ok(())
    }

    fn validate_delivery(&self) -> Result<(), ConfigError> {
        let delivery = &self.delivery;
        if delivery.retry_min_ms == 0 {
            return Err(ConfigError::invalid(
                "delivery.retry_min_ms",
                "must be at least 1",
            ));
        }
        if delivery.retry_max_ms < delivery.retry_min_ms {
            return Err(ConfigError::invalid(
                "delivery.retry_max_ms",
                "must not be below delivery.retry_min_ms",
            ));
        }
        let modules: Vec<&String> = self.routes.values().flatten().collect();
        for name in delivery.unroutable_by_module.keys() {
            if !modules.iter().any(|module| same_module(name, module)) {
                let mut known: Vec<&str> = modules.iter().map(|m| m.as_str()).collect();
                known.sort_unstable();
                known.dedup();
                return Err(ConfigError::invalid(
                    format!("delivery.unroutable_by_module.{name}"),
                    format!("no route names this module; modules: {}", known.join(", ")),
                ));
            }
        }
        Ok(())
    }

    fn check_install(&self) -> Result<(), ConfigError> {
        let catalog = catalog::sources()
            .map_err(|error| ConfigError::invalid("mapping", format!("{error:#}")))?;
        self.mapping
            .check(&catalog::render::reference_columns(&catalog))
            .and_then(|()| self.install.check())
            .map_err(|error| ConfigError::invalid(error.key, error.reason))
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

/// Whether a module name given as a key names `module`: case-insensitively, and with `_`
/// for `-`, as environment variables cannot hold `-` in a name (`PF_10` is `PF-10`).
fn same_module(key: &str, module: &str) -> bool {
    key.len() == module.len()
        && key
            .bytes()
            .zip(module.bytes())
            .all(|(k, m)| k.eq_ignore_ascii_case(&m) || (k == b'_' && m == b'-'))
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
    fn unroutable_policies_are_per_module_and_name_known_modules() {
        let settings = load(&[("ITRELAY__DELIVERY__UNROUTABLE_BY_MODULE__PF_10", "wait")])
            .expect("a policy for PF-10");
        assert_eq!(settings.delivery.unroutable_for("PF-10"), Unroutable::Wait);
        assert_eq!(
            settings.delivery.unroutable_for("FA"),
            Unroutable::DeadLetter
        );
        let error = error_of(&[("ITRELAY__DELIVERY__UNROUTABLE_BY_MODULE__PF_11X", "wait")]);
        assert!(
            error.contains("delivery.unroutable_by_module.pf_11x")
                && error.contains("no route names this module")
                && error.contains("PF-10"),
            "{error}"
        );
        let error = error_of(&[("ITRELAY__DELIVERY__RETRY_MAX_MS", "10")]);
        assert!(error.contains("delivery.retry_max_ms"), "{error}");
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
    fn exchange_override_for_a_hyphenated_module_from_the_environment() {
        let settings = load(&[
            ("ITRELAY__AMQP__EXCHANGES__PF_10", "projects.events"),
            ("ITRELAY__AMQP__EXCHANGES__hr_03", "people.events"),
        ])
        .unwrap();
        assert_eq!(settings.exchange_for("PF-10"), "projects.events");
        assert_eq!(settings.exchange_for("HR-03"), "people.events");
        assert_eq!(settings.exchange_for("FA-04"), "it.fa-04");
    }

    #[test]
    fn exchange_override_for_an_unknown_module_names_the_valid_ones() {
        let message = error_of(&[("ITRELAY__AMQP__EXCHANGES__PF10", "projects.events")]);
        assert!(message.contains("`amqp.exchanges.pf10`"), "{message}");
        assert!(message.contains("valid modules: "), "{message}");
        assert!(message.contains("PF-10"), "{message}");
        let path = std::env::temp_dir().join(format!("itrelay-twice-{}.toml", std::process::id()));
        std::fs::write(
            &path,
            "[amqp.exchanges]\n\"PF-10\" = \"a\"\nPF_10 = \"b\"\n",
        )
        .unwrap();
        let twice = Settings::load_with_env(Some(&path), Some(HashMap::new()))
            .expect_err("one module, two exchanges")
            .to_string();
        std::fs::remove_file(&path).unwrap();
        assert!(twice.contains("more than one exchange"), "{twice}");
    }

    #[test]
    fn a_bad_choice_lists_the_valid_ones() {
        let message = error_of(&[("ITRELAY__LOG__FORMAT", "yaml")]);
        assert!(
            message.contains("\"yaml\" is not a log format; valid: text, json"),
            "{message}"
        );
        assert!(message.contains("log.format"), "{message}");
        let message = error_of(&[("ITRELAY__AMQP__DEAD_LETTER_QUEUE_TYPE", "stream")]);
        assert!(message.contains("valid: classic, quorum"), "{message}");
        assert!(message.contains("dead_letter_queue_type"), "{message}");
        let settings = load(&[("ITRELAY__LOG__FORMAT", "JSON")]).unwrap();
        assert_eq!(settings.log.format, LogFormat::Json);
    }

    #[test]
    fn dead_letter_queue_defaults_to_quorum_under_the_exchange_name() {
        let settings = load(&[]).unwrap();
        assert_eq!(settings.amqp.dead_letter_queue(), "it.dead-letter");
        assert_eq!(settings.amqp.dead_letter_queue_type, QueueType::Quorum);
        assert_eq!(settings.amqp.dead_letter_max_length, 0);
        let settings = load(&[
            ("ITRELAY__AMQP__DEAD_LETTER_QUEUE", "rejected"),
            ("ITRELAY__AMQP__DEAD_LETTER_QUEUE_TYPE", "classic"),
            ("ITRELAY__AMQP__DEAD_LETTER_MAX_LENGTH", "1000"),
        ])
        .unwrap();
        assert_eq!(settings.amqp.dead_letter_queue(), "it.rejected");
        assert_eq!(settings.amqp.dead_letter_queue_type, QueueType::Classic);
        assert_eq!(settings.amqp.dead_letter_max_length, 1000);
        let bad = error_of(&[("ITRELAY__AMQP__DEAD_LETTER_QUEUE", "dead letters")]);
        assert!(bad.contains("amqp.dead_letter_queue"), "{bad}");
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
                &[("ITRELAY__AMQP__EXCHANGE_PREFIX", "")],
                "amqp.exchange_prefix",
            ),
            (
                &[("ITRELAY__AMQP__DEAD_LETTER", "dead;letter")],
                "amqp.dead_letter",
            ),
            (&[("ITRELAY__RELAY__BATCH_SIZE", "0")], "relay.batch_size"),
            (
                &[("ITRELAY__SCAN__INTERVAL_SECS", "0")],
                "scan.interval_secs",
            ),
            (&[("ITRELAY__HTTP__LISTEN", "localhost")], "http.listen"),
            (
                &[("ITRELAY__RELAY__RECONNECT_MAX_MS", "1")],
                "relay.reconnect_max_ms",
            ),
            (&[("ITRELAY__RELAY__LEASE_SECS", "14")], "relay.lease_secs"),
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
    fn passwords_from_the_environment_are_taken_as_given() {
        let settings = load(&[
            ("ITRELAY__POSTGRES__PASSWORD", "007"),
            ("itrelay__amqp__password", "1e5"),
        ])
        .unwrap();
        assert_eq!(settings.postgres.password.unwrap().expose(), "007");
        assert_eq!(settings.amqp.password.unwrap().expose(), "1e5");
    }

    #[test]
    fn password_files_are_read_at_start() {
        let path = std::env::temp_dir().join(format!("itrelay-pw-{}", std::process::id()));
        std::fs::write(&path, "s3cret\n").unwrap();
        let file = path.display().to_string();
        let settings = load(&[("ITRELAY__AMQP__PASSWORD_FILE", &file)]).unwrap();
        assert_eq!(settings.amqp.password.unwrap().expose(), "s3cret");
        let both = error_of(&[
            ("ITRELAY__POSTGRES__PASSWORD_FILE", &file),
            ("ITRELAY__POSTGRES__PASSWORD", "other"),
        ]);
        assert!(both.contains("postgres.password_file"), "{both}");
        std::fs::remove_file(&path).unwrap();
        let missing = error_of(&[("ITRELAY__POSTGRES__PASSWORD_FILE", &file)]);
        assert!(missing.contains("`postgres.password_file`"), "{missing}");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let message = error_of(&[("ITRELAY__POSTGRES__HOSTNAME", "db")]);
        assert!(message.contains("hostname"), "{message}");
    }

    #[test]
    fn cloudevents_settings_load_and_are_checked() {
        let settings = load(&[
            ("ITRELAY__CLOUDEVENTS__HEADER_PREFIX", "cloudEvents:"),
            ("ITRELAY__CLOUDEVENTS__TYPE_PREFIX", "com.example.it"),
        ])
        .unwrap();
        assert_eq!(settings.cloudevents.header("id"), "cloudEvents:id");
        let message = error_of(&[("ITRELAY__CLOUDEVENTS__TYPE_PREFIX", "Example")]);
        assert!(message.contains("cloudevents.type_prefix"), "{message}");
        let message = error_of(&[("ITRELAY__CLOUDEVENTS__HEADER_PREFIX", "ce_")]);
        assert!(message.contains("header_prefix"), "{message}");
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

//! Running it: `[log]`, `[http]`, `[canary]`, `[retention]`, `[scan]`, and their checks.

use serde::{Deserialize, Deserializer};

use super::{one_of, ConfigError};

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

impl HttpSettings {
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        self.address().map(drop)
    }
}

impl CanarySettings {
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        for (key, value) in [
            ("canary.interval_secs", self.interval_secs),
            ("canary.stall_after_secs", self.stall_after_secs),
        ] {
            if value == 0 {
                return Err(ConfigError::invalid(key, "must be at least 1"));
            }
        }
        Ok(())
    }
}

impl RetentionSettings {
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        if !(1..=100_000).contains(&self.batch_size) {
            return Err(ConfigError::invalid(
                "retention.batch_size",
                "must be between 1 and 100000",
            ));
        }
        if self.interval_secs == 0 {
            return Err(ConfigError::invalid(
                "retention.interval_secs",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

impl ScanSettings {
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        if !(0..=3650).contains(&self.license_grace_days) {
            return Err(ConfigError::invalid(
                "scan.license_grace_days",
                "must be between 0 and 3650 (ten years)",
            ));
        }
        if !(1..=86_400).contains(&self.interval_secs) {
            return Err(ConfigError::invalid(
                "scan.interval_secs",
                "must be between 1 and 86400 (a day)",
            ));
        }
        Ok(())
    }
}

//! How the relay runs and delivers: `[relay]` and `[delivery]`, and their checks.

use std::collections::HashMap;

use serde::Deserialize;

use super::{same_module, ConfigError};

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

impl RelaySettings {
    /// `query_timeout_secs`: the lease must outlast a renewal that goes unanswered.
    pub(super) fn check(&self, query_timeout_secs: u64) -> Result<(), ConfigError> {
        let relay = self;
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
        if relay.lease_secs * 2 < query_timeout_secs * 3 {
            return Err(ConfigError::invalid(
                "relay.lease_secs",
                format!(
                    "must be at least 1.5 × postgres.query_timeout_secs ({}), so that a partitioned leader gives up before a standby takes over",
                    query_timeout_secs
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
}

impl DeliverySettings {
    /// `modules`: the subscriber modules the routes name.
    pub(super) fn check(&self, modules: &[&String]) -> Result<(), ConfigError> {
        let delivery = self;
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
}

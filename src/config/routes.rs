//! `[routes]` and the exchanges they name: every catalog event type routed to at least
//! one subscriber module, each module's exchange, `amqp.exchanges` overrides.

use std::collections::{BTreeSet, HashMap};

use super::services::{check_exchange_name, check_not_empty};
use super::{same_module, ConfigError, Settings};
use crate::catalog;

impl Settings {
    /// Names the modules of `amqp.exchanges` exactly as the routes do. Environment
    /// variables arrive in lower case and cannot hold `-`: `PF_10` (any case) stands for
    /// the module `PF-10`. An override for a module no route names is an error.
    pub(super) fn resolve_exchange_overrides(&mut self) -> Result<(), ConfigError> {
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

    pub(super) fn check_routes(&self) -> Result<(), ConfigError> {
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
}

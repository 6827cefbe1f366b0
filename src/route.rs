//! Routing: event type → subscriber modules → their exchanges. Routing key = event type.

use std::collections::{BTreeSet, HashMap};

use crate::catalog::{self, EventSpec};
use crate::config::Settings;

/// One subscriber module's exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub module: String,
    pub exchange: String,
}

/// Where each event type goes, fixed at start from the configuration.
#[derive(Debug, Clone)]
pub struct Router {
    routes: HashMap<&'static str, Vec<Destination>>,
    dead_letter: String,
    canary: String,
}

impl Router {
    /// Configuration validation guarantees a non-empty route for every catalog event.
    pub fn from_settings(settings: &Settings) -> Self {
        Self::for_events(catalog::EVENTS, settings)
    }

    /// The routes of `events` (the catalog, or a catalog being built) as `settings` say.
    pub fn for_events(events: &'static [EventSpec], settings: &Settings) -> Self {
        let routes = events
            .iter()
            .map(|spec| {
                let modules = settings
                    .routes
                    .get(spec.event_type)
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                let destinations = modules
                    .iter()
                    .map(|module| Destination {
                        module: module.clone(),
                        exchange: settings.exchange_for(module),
                    })
                    .collect();
                (spec.event_type, destinations)
            })
            .collect();
        Self {
            routes,
            dead_letter: settings.dead_letter_exchange(),
            canary: format!("{}canary", settings.amqp.exchange_prefix),
        }
    }

    pub fn destinations(&self, spec: &EventSpec) -> &[Destination] {
        self.routes
            .get(spec.event_type)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// The destination of `spec`'s copy for `module`, if `module` subscribes to it.
    pub fn destination(&self, spec: &EventSpec, module: &str) -> Option<&Destination> {
        self.destinations(spec).iter().find(|d| d.module == module)
    }

    /// Every subscriber exchange, once each, for declaring at start.
    pub fn exchanges(&self) -> BTreeSet<&str> {
        self.routes
            .values()
            .flatten()
            .map(|destination| destination.exchange.as_str())
            .collect()
    }

    pub fn dead_letter(&self) -> &str {
        &self.dead_letter
    }

    /// The relay's own exchange for canary events; no subscriber is bound to it.
    pub fn canary(&self) -> &str {
        &self.canary
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router() -> Router {
        Router::from_settings(&Settings::load_with_env(None, Some(Default::default())).unwrap())
    }

    #[test]
    fn default_routes_follow_the_contract() {
        let router = router();
        let cases = [
            ("it_asset_purchased", vec!["it.fa"]),
            ("it_asset_assigned", vec!["it.pf-10", "it.hr"]),
            ("it_asset_disposed", vec!["it.fa", "it.gr"]),
            ("it_ticket_created", vec!["it.pf-10"]),
            ("it_ticket_status_changed", vec!["it.pf-10"]),
            ("it_license_renewed", vec!["it.fa"]),
        ];
        for (event_type, exchanges) in cases {
            let spec = catalog::find(event_type).unwrap();
            let got: Vec<_> = router
                .destinations(spec)
                .iter()
                .map(|d| d.exchange.as_str())
                .collect();
            assert_eq!(got, exchanges, "{event_type}");
        }
    }

    #[test]
    fn exchanges_are_listed_once() {
        let router = router();
        assert_eq!(
            router.exchanges().into_iter().collect::<Vec<_>>(),
            [
                "it.audit", "it.fa", "it.fa-04", "it.fm", "it.fw-34", "it.gr", "it.hr", "it.hr-03",
                "it.it-01", "it.it-02", "it.it-07", "it.pf-10", "it.pf-11"
            ]
        );
        assert_eq!(router.dead_letter(), "it.dead-letter");
    }
}

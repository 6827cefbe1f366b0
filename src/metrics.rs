//! The relay's metrics, in one registry scraped at `/metrics`. Label values are event
//! types of the catalog, module names, stages, service names and the version: never
//! payload data. Readiness is not read from here but from [`crate::health`].

use std::sync::LazyLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    Postgres,
    Rabbitmq,
}

impl Service {
    pub fn as_str(self) -> &'static str {
        match self {
            Service::Postgres => "postgres",
            Service::Rabbitmq => "rabbitmq",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RelayedLabels {
    pub event_type: &'static str,
    pub module: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DeadLetterLabels {
    /// A catalog event type, or `unknown`.
    pub event_type: String,
    pub stage: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ServiceLabels {
    /// [`Service::as_str`].
    pub service: &'static str,
}

impl From<Service> for ServiceLabels {
    fn from(service: Service) -> Self {
        Self {
            service: service.as_str(),
        }
    }
}

pub struct Metrics {
    registry: Registry,
    pub relayed: Family<RelayedLabels, Counter>,
    pub dead_lettered: Family<DeadLetterLabels, Counter>,
    pub notified_events: Counter,
    pub publish_seconds: Histogram,
    pub confirm_seconds: Histogram,
    pub backlog_rows: Gauge,
    pub backlog_oldest_age_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub reconnects: Family<ServiceLabels, Counter>,
    pub connected: Family<ServiceLabels, Gauge>,
    pub leader: Gauge,
    pub standby: Gauge,
    pub scan_runs: Counter,
    pub scan_failures: Counter,
    pub failed_rows: Gauge,
    pub failed_copies: Gauge,
    /// Under WAL capture: the WAL the replication slot holds back, in bytes.
    pub wal_retained_bytes: Gauge,
    pub canary_seconds: Histogram,
    pub canary_stalled: Gauge,
    pub broker_blocked: Gauge,
    pub build_info: Family<BuildLabels, Gauge>,
}

/// The OpenMetrics content type, for scrapers that ask for it.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The Prometheus text format 0.0.4, for every other client.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Both services, so that their series exist from the start.
const SERVICES: [Service; 2] = [Service::Postgres, Service::Rabbitmq];

/// The process's metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

impl Metrics {
    fn new() -> Self {
        let latency = || Histogram::new(exponential_buckets(0.000_25, 2.0, 16));
        let metrics = Self {
            registry: Registry::default(),
            relayed: Family::default(),
            dead_lettered: Family::default(),
            notified_events: Counter::default(),
            publish_seconds: latency(),
            confirm_seconds: latency(),
            backlog_rows: Gauge::default(),
            backlog_oldest_age_seconds: Gauge::default(),
            reconnects: Family::default(),
            connected: Family::default(),
            leader: Gauge::default(),
            standby: Gauge::default(),
            scan_runs: Counter::default(),
            scan_failures: Counter::default(),
            failed_rows: Gauge::default(),
            failed_copies: Gauge::default(),
            wal_retained_bytes: Gauge::default(),
            canary_seconds: latency(),
            canary_stalled: Gauge::default(),
            broker_blocked: Gauge::default(),
            build_info: Family::default(),
        };
        let mut metrics = metrics;
        for service in SERVICES {
            drop(metrics.reconnects.get_or_create(&service.into()));
            drop(metrics.connected.get_or_create(&service.into()));
        }
        metrics
            .build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        metrics
            .registry
            .register_collector(Box::new(crate::process::ProcessCollector));
        let registry = metrics.registry.sub_registry_with_prefix("itrelay");
        registry.register(
            "events_relayed",
            "Events confirmed by the broker, per event type and subscriber module",
            metrics.relayed.clone(),
        );
        registry.register(
            "events_dead_lettered",
            "Events sent to the dead-letter exchange, per event type and stage (returned ones: stage unroutable)",
            metrics.dead_lettered.clone(),
        );
        registry.register(
            "notified_events",
            "Whole-event notifications taken into the outbox (best effort)",
            metrics.notified_events.clone(),
        );
        registry.register(
            "publish_seconds",
            "Time to hand one batch of messages to the broker",
            metrics.publish_seconds.clone(),
        );
        registry.register(
            "confirm_seconds",
            "Time from the end of a batch's publish to its last confirm",
            metrics.confirm_seconds.clone(),
        );
        registry.register(
            "outbox_backlog_rows",
            "Pending outbox rows",
            metrics.backlog_rows.clone(),
        );
        registry.register(
            "outbox_oldest_age_seconds",
            "Age of the oldest pending outbox row",
            metrics.backlog_oldest_age_seconds.clone(),
        );
        registry.register(
            "reconnects",
            "Connections lost and retried, per service",
            metrics.reconnects.clone(),
        );
        registry.register(
            "connected",
            "1 while connected to the service",
            metrics.connected.clone(),
        );
        registry.register("leader", "1 while this relay leads", metrics.leader.clone());
        registry.register(
            "standby",
            "1 while this relay stands by for the leader lock",
            metrics.standby.clone(),
        );
        registry.register(
            "scan_runs",
            "Runs of the due-event scan",
            metrics.scan_runs.clone(),
        );
        registry.register(
            "scan_failures",
            "Runs of the due-event scan that failed (connection lost, SQL error, timeout)",
            metrics.scan_failures.clone(),
        );
        registry.register(
            "wal_retained_bytes",
            "WAL the replication slot of WAL capture holds back (current position minus the slot's restart point); 0 under outbox capture",
            metrics.wal_retained_bytes.clone(),
        );
        registry.register(
            "outbox_failed_rows",
            "Outbox rows dead-lettered and not replayed (state failed)",
            metrics.failed_rows.clone(),
        );
        registry.register(
            "outbox_failed_copies",
            "Copies dead-lettered for one subscriber alone (itrelay.copies state failed), not replayed",
            metrics.failed_copies.clone(),
        );
        registry.register(
            "broker_blocked",
            "1 while RabbitMQ blocks this relay's publishing (a memory or disk alarm)",
            metrics.broker_blocked.clone(),
        );
        registry.register(
            "build_info",
            "Always 1; the label says which version runs",
            metrics.build_info.clone(),
        );
        registry.register(
            "canary_seconds",
            "Canary round trip: from its commit through the outbox and the broker back to this relay",
            metrics.canary_seconds.clone(),
        );
        registry.register(
            "canary_stalled",
            "1 while a canary has not come back within canary.stall_after_secs",
            metrics.canary_stalled.clone(),
        );
        metrics
    }

    /// Every metric in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Cannot fail: writing to a String does not fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    /// Every metric in the format an `Accept` header asks for (OpenMetrics if it names
    /// it, else the Prometheus text format): the content type and the text.
    pub fn negotiate(&self, accept: Option<&str>) -> (&'static str, String) {
        let text = self.encode();
        if accept.is_some_and(|accept| accept.contains("application/openmetrics-text")) {
            (OPENMETRICS, text)
        } else {
            (PROMETHEUS_TEXT, prometheus_text(&text))
        }
    }

    /// Creates a zero `itrelay_events_relayed_total` series for every event type and
    /// subscriber module `router` knows, so that each exists before its first event.
    pub fn prime(&self, router: &crate::route::Router) {
        for spec in crate::catalog::EVENTS {
            for destination in router.destinations(spec) {
                drop(self.relayed.get_or_create(&RelayedLabels {
                    event_type: spec.event_type,
                    module: destination.module.clone(),
                }));
            }
        }
    }

    pub fn set_connected(&self, service: Service, connected: bool) {
        self.connected
            .get_or_create(&service.into())
            .set(i64::from(connected));
    }
}

/// The Prometheus text format 0.0.4 of an OpenMetrics text: a counter family is named
/// with its `_total` suffix, and there are no `# UNIT` or `# EOF` lines.
pub fn prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut text = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let descriptor = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|prefix| Some((prefix, line.strip_prefix(prefix)?)));
        match descriptor {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let suffix = if counters.contains(name) {
                    "_total"
                } else {
                    ""
                };
                text.push_str(&format!("{prefix}{name}{suffix} {tail}"));
            }
            None => text.push_str(line),
        }
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_names_counters_with_their_suffix() {
        let openmetrics = "# HELP a_runs Runs.\n# TYPE a_runs counter\na_runs_total 3\n\
                           # HELP b Bytes.\n# TYPE b gauge\n# UNIT b bytes\nb 1\n# EOF\n";
        assert_eq!(
            prometheus_text(openmetrics),
            "# HELP a_runs_total Runs.\n# TYPE a_runs_total counter\na_runs_total 3\n\
             # HELP b Bytes.\n# TYPE b gauge\nb 1\n"
        );
    }

    #[test]
    fn counters_and_build_info_exist_from_the_start() {
        let text = METRICS.encode();
        for series in [
            "itrelay_reconnects_total{service=\"postgres\"} 0",
            "itrelay_reconnects_total{service=\"rabbitmq\"} 0",
            "itrelay_scan_runs_total 0",
            "itrelay_scan_failures_total 0",
            "itrelay_build_info{version=\"",
            "process_resident_memory_bytes ",
            "process_cpu_seconds_total ",
            "process_open_fds ",
        ] {
            assert!(text.contains(series), "{series} missing from\n{text}");
        }
    }

    #[test]
    fn the_scraper_gets_the_format_it_asks_for() {
        let prometheus =
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";
        let (content_type, text) = METRICS.negotiate(Some(prometheus));
        assert_eq!(content_type, OPENMETRICS);
        assert!(text.ends_with("# EOF\n"));
        let (content_type, text) = METRICS.negotiate(None);
        assert_eq!(content_type, PROMETHEUS_TEXT);
        assert!(!text.contains("# EOF"));
        assert!(text.contains("# TYPE itrelay_reconnects_total counter"));
    }
}

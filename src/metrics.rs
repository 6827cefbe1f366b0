//! The relay's metrics, in one registry scraped at `/metrics`, and the readiness they
//! imply. Label values are event types of the catalog, module names, stages and service
//! names: never payload data.

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
    pub canary_seconds: Histogram,
    pub canary_stalled: Gauge,
}

/// The process's metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

impl Metrics {
    fn new() -> Self {
        let latency = || Histogram::new(exponential_buckets(0.000_25, 2.0, 16));
        let metrics = Self {
            registry: Registry::with_prefix("itrelay"),
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
            canary_seconds: latency(),
            canary_stalled: Gauge::default(),
        };
        let mut metrics = metrics;
        let registry = &mut metrics.registry;
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

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Cannot fail: writing to a String does not fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    pub fn set_connected(&self, service: Service, connected: bool) {
        self.connected
            .get_or_create(&service.into())
            .set(i64::from(connected));
    }

    fn is_connected(&self, service: Service) -> bool {
        self.connected.get_or_create(&service.into()).get() == 1
    }

    /// Ready: connected to both services, either leading or standing by, and canaries
    /// coming back.
    pub fn ready(&self) -> bool {
        self.is_connected(Service::Postgres)
            && self.is_connected(Service::Rabbitmq)
            && (self.leader.get() == 1 || self.standby.get() == 1)
            && self.canary_stalled.get() == 0
    }
}

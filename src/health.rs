//! Readiness: one shared handle that the relay, the canary and the broker watch set, and
//! that `/readyz` reads. Each setter also updates the matching gauge, so `/metrics`
//! exports the same state; readiness itself never reads a metric.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tracing::{info, warn};

use crate::metrics::{Service, METRICS};

/// What the relay does about the leader lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Not connected, or not yet asked.
    None = 0,
    Leader = 1,
    /// Another relay leads; this one takes over when it goes.
    Standby = 2,
}

#[derive(Debug, Default)]
struct State {
    postgres: AtomicBool,
    rabbitmq: AtomicBool,
    role: AtomicU8,
    canary_overdue: AtomicBool,
    broker_blocked: AtomicBool,
}

/// The readiness state, cheap to clone and share between tasks.
#[derive(Debug, Clone, Default)]
pub struct Health(Arc<State>);

/// One check of [`Readiness`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: &'static str,
}

/// The answer of `/readyz`: ready when every check passes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Readiness {
    pub ready: bool,
    pub checks: Vec<Check>,
}

impl Health {
    pub fn set_connected(&self, service: Service, connected: bool) {
        let flag = match service {
            Service::Postgres => &self.0.postgres,
            Service::Rabbitmq => &self.0.rabbitmq,
        };
        flag.store(connected, Ordering::Relaxed);
        METRICS.set_connected(service, connected);
    }

    pub fn set_role(&self, role: Role) {
        self.0.role.store(role as u8, Ordering::Relaxed);
        METRICS.leader.set(i64::from(role == Role::Leader));
        METRICS.standby.set(i64::from(role == Role::Standby));
    }

    pub fn role(&self) -> Role {
        match self.0.role.load(Ordering::Relaxed) {
            1 => Role::Leader,
            2 => Role::Standby,
            _ => Role::None,
        }
    }

    /// Whether a canary is overdue; true when this changed it.
    pub fn set_canary_overdue(&self, overdue: bool) -> bool {
        METRICS.canary_stalled.set(i64::from(overdue));
        self.0.canary_overdue.swap(overdue, Ordering::Relaxed) != overdue
    }

    /// Whether the broker blocks publishing (a memory or disk alarm); logs each change.
    pub fn set_broker_blocked(&self, blocked: bool) {
        METRICS.broker_blocked.set(i64::from(blocked));
        if self.0.broker_blocked.swap(blocked, Ordering::Relaxed) == blocked {
            return;
        }
        if blocked {
            warn!("RabbitMQ blocks publishing (a memory or disk alarm): not ready");
        } else {
            info!("RabbitMQ publishes again: the broker lifted its block");
        }
    }

    /// Every check, in a fixed order.
    pub fn readiness(&self) -> Readiness {
        let state = &self.0;
        let connected = |flag: &AtomicBool| {
            if flag.load(Ordering::Relaxed) {
                (true, "connected")
            } else {
                (false, "not connected")
            }
        };
        let leadership = match self.role() {
            Role::Leader => (true, "leading"),
            Role::Standby => (true, "standing by for the leader lock"),
            Role::None => (false, "neither leading nor standing by"),
        };
        let canary = if state.canary_overdue.load(Ordering::Relaxed) {
            (false, "a canary is overdue")
        } else {
            (true, "no canary overdue")
        };
        let blocked = if state.broker_blocked.load(Ordering::Relaxed) {
            (false, "the broker blocks publishing (memory or disk alarm)")
        } else {
            (true, "publishing allowed")
        };
        let checks: Vec<Check> = [
            ("postgres", connected(&state.postgres)),
            ("rabbitmq", connected(&state.rabbitmq)),
            ("leadership", leadership),
            ("canary", canary),
            ("broker_blocked", blocked),
        ]
        .into_iter()
        .map(|(name, (ok, detail))| Check { name, ok, detail })
        .collect();
        Readiness {
            ready: checks.iter().all(|check| check.ok),
            checks,
        }
    }

    /// Polls `blocked` (the broker connection's blocked state) every `every` and records
    /// it, until the future is dropped; clears the state when dropped with it.
    pub async fn watch_broker(&self, every: Duration, blocked: impl Fn() -> bool) {
        let _clear = ClearBlocked(self);
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            self.set_broker_blocked(blocked());
        }
    }
}

/// A connection that is gone blocks nothing: clears the flag when its watch ends.
struct ClearBlocked<'a>(&'a Health);

impl Drop for ClearBlocked<'_> {
    fn drop(&mut self) {
        self.0.set_broker_blocked(false);
    }
}

impl Readiness {
    /// One line: `ready`, or `not ready:` and the failed checks' details.
    pub fn summary(&self) -> String {
        if self.ready {
            return "ready".to_owned();
        }
        let failed: Vec<String> = self
            .checks
            .iter()
            .filter(|check| !check.ok)
            .map(|check| format!("{}: {}", check.name, check.detail))
            .collect();
        format!("not ready: {}", failed.join("; "))
    }

    /// `ready` or `not ready`, then one line per check.
    pub fn text(&self) -> String {
        let mut text = String::from(if self.ready { "ready\n" } else { "not ready\n" });
        for check in &self.checks {
            let mark = if check.ok { "ok  " } else { "FAIL" };
            text.push_str(&format!("{mark} {}: {}\n", check.name, check.detail));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failing(health: &Health) -> Vec<&'static str> {
        let readiness = health.readiness();
        assert_eq!(readiness.ready, readiness.checks.iter().all(|c| c.ok));
        readiness
            .checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| c.name)
            .collect()
    }

    fn healthy() -> Health {
        let health = Health::default();
        health.set_connected(Service::Postgres, true);
        health.set_connected(Service::Rabbitmq, true);
        health.set_role(Role::Leader);
        health
    }

    #[test]
    fn a_fresh_relay_is_not_ready_and_says_why() {
        assert_eq!(
            failing(&Health::default()),
            ["postgres", "rabbitmq", "leadership"]
        );
    }

    #[test]
    fn each_check_fails_readiness_on_its_own() {
        assert!(failing(&healthy()).is_empty());
        type Break = fn(&Health);
        let cases: [(&str, Break); 6] = [
            ("postgres", |h| h.set_connected(Service::Postgres, false)),
            ("rabbitmq", |h| h.set_connected(Service::Rabbitmq, false)),
            ("leadership", |h| h.set_role(Role::None)),
            ("canary", |h| {
                h.set_canary_overdue(true);
            }),
            ("broker_blocked", |h| h.set_broker_blocked(true)),
            ("", |h| h.set_role(Role::Standby)),
        ];
        for (name, break_it) in cases {
            let health = healthy();
            break_it(&health);
            let expected: Vec<&str> = [name].into_iter().filter(|n| !n.is_empty()).collect();
            assert_eq!(failing(&health), expected, "{name}");
        }
    }

    #[test]
    fn text_and_json_name_the_failed_check() {
        let health = healthy();
        health.set_broker_blocked(true);
        let readiness = health.readiness();
        let text = readiness.text();
        assert!(text.starts_with("not ready\n"), "{text}");
        assert!(
            text.contains("FAIL broker_blocked: the broker blocks publishing"),
            "{text}"
        );
        assert!(text.contains("ok   postgres: connected"), "{text}");
        assert_eq!(
            readiness.summary(),
            "not ready: broker_blocked: the broker blocks publishing (memory or disk alarm)"
        );
        let json = serde_json::to_value(&readiness).unwrap();
        assert_eq!(json["ready"], false);
        assert_eq!(json["checks"][4]["name"], "broker_blocked");
        assert_eq!(json["checks"][4]["ok"], false);
    }

    #[test]
    fn canary_overdue_reports_changes_only() {
        let health = healthy();
        assert!(health.set_canary_overdue(true));
        assert!(!health.set_canary_overdue(true));
        assert!(health.set_canary_overdue(false));
    }

    #[tokio::test(start_paused = true)]
    async fn the_broker_watch_follows_the_connection_and_clears_when_it_ends() {
        let health = healthy();
        let blocked = Arc::new(AtomicBool::new(false));
        let source = blocked.clone();
        let watch = {
            let health = health.clone();
            tokio::spawn(async move {
                health
                    .watch_broker(Duration::from_secs(1), move || {
                        source.load(Ordering::Relaxed)
                    })
                    .await
            })
        };
        let settle = || tokio::time::sleep(Duration::from_millis(1500));
        settle().await;
        assert!(health.readiness().ready);
        blocked.store(true, Ordering::Relaxed);
        settle().await;
        assert_eq!(failing(&health), ["broker_blocked"]);
        blocked.store(false, Ordering::Relaxed);
        settle().await;
        assert!(health.readiness().ready);
        blocked.store(true, Ordering::Relaxed);
        settle().await;
        watch.abort();
        let _ = watch.await;
        assert!(health.readiness().ready, "a watch that ended left a block");
    }
}

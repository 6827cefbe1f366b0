//! The results of a run: the machine, every figure, each target met or its gap with the
//! reason; written as JSON and as a Markdown table.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;
use tokio_postgres::Client;

use crate::broker::Ceiling;
use crate::compare::{Flow, Side};
use crate::pgbench::{median, DbCost};
use crate::phases::RelayRun;
use crate::watch::Usage;

#[derive(Debug, Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub memory_mib: u64,
    pub postgres: String,
    pub rabbitmq: String,
}

impl Machine {
    pub async fn describe(client: &Client) -> Result<Self> {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let postgres: String = client.query_one("SHOW server_version", &[]).await?.get(0);
        let rabbitmq = tokio::process::Command::new("rabbitmqctl")
            .args(["version"])
            .output()
            .await
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
            .unwrap_or_else(|_| "unknown".to_owned());
        Ok(Self {
            nproc: std::thread::available_parallelism().map_or(1, usize::from),
            cpu_model: field(&cpuinfo, "model name")
                .unwrap_or("unknown")
                .to_owned(),
            memory_mib: field(&meminfo, "MemTotal")
                .and_then(|v| v.trim_end_matches("kB").trim().parse::<u64>().ok())
                .map_or(0, |kib| kib / 1024),
            postgres,
            rabbitmq,
        })
    }
}

fn field<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.lines()
        .find(|line| line.starts_with(name))
        .and_then(|line| line.split_once(':'))
        .map(|(_, value)| value.trim())
}

#[derive(Debug, Serialize)]
pub struct Results {
    pub date: String,
    pub mode: &'static str,
    pub command: String,
    /// The whole run, setup and cleanup aside.
    pub run_seconds: f64,
    pub machine: Machine,
    pub ceiling: Ceiling,
    pub relay: RelayRun,
    /// The peer's side of the comparison (None: `ITRELAY_BENCH_PEER` unset).
    pub peer: Option<Side>,
    /// itrelay / peer, when the peer ran.
    pub ratios: Option<Ratios>,
    pub targets: Vec<Target>,
}

/// itrelay's figures over the peer's, from the same run; None where the peer's figure
/// is zero (CPU below the clock tick) or missing.
#[derive(Debug, Serialize)]
pub struct Ratios {
    /// Events per second, end to end (above 1: itrelay faster).
    pub end_to_end: Option<f64>,
    /// Events per second after one large transaction.
    pub burst: Option<f64>,
    pub latency_p50: Option<f64>,
    pub latency_p99: Option<f64>,
    /// CPU per event after one large transaction (above 1: itrelay spends more).
    pub relay_cpu: Option<f64>,
    pub relay_postgres_cpu: Option<f64>,
    pub broker_cpu: Option<f64>,
    /// Business tx/s against no trigger, relay stopped and running.
    pub writes_relay_stopped: Option<f64>,
    pub writes_relay_running: Option<f64>,
}

/// `a / b` when both are known and `b` is above zero.
fn over(a: impl Into<Option<f64>>, b: impl Into<Option<f64>>) -> Option<f64> {
    match (a.into(), b.into()) {
        (Some(a), Some(b)) if b > 0.0 && a.is_finite() => Some(a / b),
        _ => None,
    }
}

impl Ratios {
    fn of(itrelay: &Side, peer: &Side) -> Self {
        let per_event =
            |side: &Side, cpu: Option<f64>| cpu.map(|cpu| cpu / side.burst.received.max(1) as f64);
        let relay = |side: &Side| per_event(side, Some(side.burst.usage.relay_cpu_seconds));
        let postgres =
            |side: &Side| per_event(side, Some(side.burst.usage.relay_postgres_cpu_seconds));
        let broker = |side: &Side| per_event(side, side.burst.usage.broker_cpu_seconds);
        Self {
            end_to_end: over(
                itrelay.end_to_end.events_per_s,
                peer.end_to_end.events_per_s,
            ),
            burst: over(itrelay.burst.events_per_s, peer.burst.events_per_s),
            latency_p50: over(itrelay.latency.millis.p50, peer.latency.millis.p50),
            latency_p99: over(itrelay.latency.millis.p99, peer.latency.millis.p99),
            relay_cpu: over(relay(itrelay), relay(peer)),
            relay_postgres_cpu: over(postgres(itrelay), postgres(peer)),
            broker_cpu: over(broker(itrelay), broker(peer)),
            writes_relay_stopped: over(
                itrelay.db_cost.stopped_ratio(),
                peer.db_cost.stopped_ratio(),
            ),
            writes_relay_running: over(itrelay.db_cost.ratio(), peer.db_cost.ratio()),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Target {
    pub name: &'static str,
    pub goal: &'static str,
    pub measured: String,
    /// None: reported only, no threshold.
    pub met: Option<bool>,
    /// Why it was missed (or what to know), from this run's figures.
    pub note: String,
}

/// KiB in a MB (10^6 bytes), the unit of the memory target.
const KIB_PER_MB: f64 = 1e6 / 1024.0;
/// The memory target, in MB.
const RSS_LIMIT_MB: f64 = 30.0;
/// Resident memory that still counts as flat while the broker is away.
const FLAT_KIB: u64 = 1024;
/// Issue 17's targets.
const DRAIN_SHARE: f64 = 0.95;
const LATENCY_P50_MS: f64 = 1.5;
const LATENCY_P99_MS: f64 = 4.0;
const WRITES_SHARE: f64 = 0.85;
const POSTGRES_US_PER_EVENT: f64 = 5.0;

/// CPU seconds spread over `events`, in µs each.
fn micros_per_event(cpu_seconds: f64, events: f64) -> f64 {
    cpu_seconds * 1e6 / events.max(1.0)
}

fn us_per_event(usage: &Usage, events: f64) -> f64 {
    micros_per_event(usage.relay_cpu_seconds, events)
}

/// CPU per event of the relay, of its Postgres sessions and of RabbitMQ.
fn cpu_split(usage: &Usage, events: f64) -> String {
    let broker = usage.broker_cpu_seconds.map_or(String::new(), |cpu| {
        format!(", RabbitMQ {:.0} µs", micros_per_event(cpu, events))
    });
    format!(
        "relay {:.0} µs, its Postgres sessions {:.0} µs{broker}",
        us_per_event(usage, events),
        micros_per_event(usage.relay_postgres_cpu_seconds, events)
    )
}

/// What the running relay took from the machine during the pgbench rounds (medians).
fn relay_shares(db: &DbCost) -> String {
    let broker = if db.broker_core_share.is_empty() {
        String::new()
    } else {
        format!(", RabbitMQ {:.0}%", median(&db.broker_core_share) * 100.0)
    };
    format!(
        "CPU used: the relay {:.0}%, its Postgres sessions {:.0}%{broker} of a core",
        median(&db.relay_core_share) * 100.0,
        median(&db.relay_postgres_core_share) * 100.0
    )
}

/// CPU seconds per 1,000 events of a flow: relay, its Postgres sessions, RabbitMQ.
fn per_thousand(flow: &Flow) -> (f64, f64, Option<f64>) {
    let per = |cpu: f64| cpu * 1_000.0 / flow.received.max(1) as f64;
    (
        per(flow.usage.relay_cpu_seconds),
        per(flow.usage.relay_postgres_cpu_seconds),
        flow.usage.broker_cpu_seconds.map(per),
    )
}

/// "relay a s, its Postgres sessions b s, RabbitMQ c s" per 1,000 events of a flow.
fn thousand_split(flow: &Flow) -> String {
    let (relay, postgres, broker) = per_thousand(flow);
    let broker = broker.map_or(String::new(), |b| format!(", RabbitMQ {b:.3} s"));
    format!("relay {relay:.3} s, its Postgres sessions {postgres:.3} s{broker}")
}

fn flow_rate(flow: &Flow) -> String {
    let lost = flow.events.saturating_sub(flow.received);
    if lost == 0 {
        format!("{:.0} ev/s", flow.events_per_s)
    } else {
        format!(
            "{:.0} ev/s ({lost} of {} never arrived)",
            flow.events_per_s, flow.events
        )
    }
}

impl Results {
    /// Judges each of issue 17's targets against this run's figures.
    pub fn judge(&mut self) {
        let c = &self.ceiling;
        let r = &self.relay;
        let d = &r.drain;
        let side = &r.compared;
        let peer = self.peer.as_ref();
        self.ratios = peer.map(|peer| Ratios::of(side, peer));
        let busy = |u: &Usage| format!("{:.0}%", u.machine_busy * 100.0);
        let drain_ratio = d.events_per_s / c.confirmed_per_s;
        let drain_met = drain_ratio >= DRAIN_SHARE;
        let drain_note = if drain_met {
            String::new()
        } else {
            let batch = c.confirm_batch as f64;
            let batch_ms = batch / d.events_per_s * 1e3;
            let broker_ms = batch / c.confirmed_per_s * 1e3;
            format!(
                "a batch of {} took {batch_ms:.0} ms where the broker alone needs {broker_ms:.0} \
                 ms; the claim, lookup and record statements overlap the broker's confirms, so \
                 the difference is the relay's own work and Postgres competing with RabbitMQ \
                 for the machine's {} cores ({} busy; CPU per event: {})",
                c.confirm_batch,
                self.machine.nproc,
                busy(&d.usage),
                cpu_split(&d.usage, d.delivered as f64),
            )
        };
        let mut targets = vec![Target {
            name: "1. drain",
            goal: "≥ 0.95 × broker ceiling (confirmed, same channel count)",
            measured: format!(
                "{:.0} ev/s = {:.2} × {:.0} msg/s",
                d.events_per_s, drain_ratio, c.confirmed_per_s
            ),
            met: Some(drain_met),
            note: drain_note,
        }];
        let e2e = &side.end_to_end;
        let e2e_ratio = self.ratios.as_ref().and_then(|r| r.end_to_end);
        targets.push(match (peer, e2e_ratio) {
            (Some(p), Some(ratio)) => {
                let met = ratio >= 1.0;
                Target {
                    name: "2. end to end",
                    goal: "≥ 1.0 × pg-amqp-bridge (50k events in transactions of 500)",
                    measured: format!(
                        "itrelay {} vs the peer's {} = {ratio:.2} ×",
                        flow_rate(e2e),
                        flow_rate(&p.end_to_end),
                    ),
                    met: Some(met),
                    note: if met {
                        String::new()
                    } else {
                        let lag = e2e.seconds - e2e.commit_seconds;
                        // Within a tenth of the commit time: the relay kept up with the writes.
                        let pace = if lag <= e2e.commit_seconds / 10.0 {
                            "the writes set itrelay's pace"
                        } else {
                            "itrelay fell behind the writes"
                        };
                        format!(
                            "the business transactions took {:.2} s to commit with itrelay's \
                             trigger and the relay running, {:.2} s with the peer's notify \
                             trigger and the peer running, and the last message arrived {lag:.2} \
                             s after the last commit for itrelay, {:.2} s for the peer: {pace}; \
                             per 1,000 events itrelay used {} against the peer's {}, on a \
                             machine {} busy against {} (the peer publishes without confirms, \
                             which the broker takes at {:.0} msg/s against {:.0} confirmed)",
                            e2e.commit_seconds,
                            p.end_to_end.commit_seconds,
                            p.end_to_end.seconds - p.end_to_end.commit_seconds,
                            thousand_split(e2e),
                            thousand_split(&p.end_to_end),
                            busy(&e2e.usage),
                            busy(&p.end_to_end.usage),
                            c.unconfirmed_per_s,
                            c.confirmed_per_s,
                        )
                    },
                }
            }
            _ => Target {
                name: "2. end to end",
                goal: "≥ 1.0 × pg-amqp-bridge (50k events in transactions of 500)",
                measured: flow_rate(e2e),
                met: None,
                note: String::new(),
            },
        });
        let lat = &side.latency;
        let l = &lat.millis;
        let latency_met = l.p50 <= LATENCY_P50_MS && l.p99 <= LATENCY_P99_MS && lat.missing == 0;
        let peer_latency = peer.map_or(String::new(), |p| {
            format!(
                "; the peer: p50 {:.2} ms, p99 {:.2} ms",
                p.latency.millis.p50, p.latency.millis.p99
            )
        });
        targets.push(Target {
            name: "2. latency",
            goal: "at 1,000 ev/s, commit → consumer: p50 ≤ 1.5 ms, p99 ≤ 4 ms",
            measured: format!("p50 {:.2} ms, p99 {:.2} ms{peer_latency}", l.p50, l.p99),
            met: Some(latency_met),
            note: if latency_met {
                String::new()
            } else {
                format!(
                    "the broker alone confirms one persistent message in p50 {:.2} \
                     / p99 {:.2} ms, the rest is the wake-up, the claim, lookup and record \
                     statements and queueing on a machine {} busy (relay CPU {:.0} µs per \
                     event at this rate); {} events missing",
                    c.confirm_rtt_ms.p50,
                    c.confirm_rtt_ms.p99,
                    busy(&lat.usage),
                    us_per_event(&lat.usage, lat.sent as f64),
                    lat.missing
                )
            },
        });
        let db = &side.db_cost;
        let stopped_ratio = db.stopped_ratio();
        let writes_met = stopped_ratio >= WRITES_SHARE;
        let peer_writes = peer.map_or(String::new(), |p| {
            format!(
                "; the peer's notify trigger: {:.2} × stopped, {:.2} × running",
                p.db_cost.stopped_ratio(),
                p.db_cost.ratio()
            )
        });
        targets.push(Target {
            name: "3. business writes",
            goal: "itrelay capturing (triggers on, relay stopped) ≥ 0.85 × no trigger",
            measured: format!(
                "{:.0} vs {:.0} tx/s = {stopped_ratio:.2} ×; relay running {:.2} ×{peer_writes}",
                median(&db.triggers_relay_stopped_tps),
                median(&db.no_triggers_tps),
                db.ratio()
            ),
            met: Some(writes_met),
            note: if writes_met {
                String::new()
            } else {
                format!(
                    "the trigger's work in each business transaction: the outbox row and its \
                     indexes, written in the business transaction; with the relay running the \
                     rest goes to the relay's work on a machine of {} cores ({})",
                    self.machine.nproc,
                    relay_shares(db)
                )
            },
        });
        let postgres_us = micros_per_event(d.usage.relay_postgres_cpu_seconds, d.delivered as f64);
        let postgres_met = postgres_us <= POSTGRES_US_PER_EVENT;
        let peer_postgres = peer.map_or(String::new(), |p| {
            format!(
                "; the peer's sessions {:.1} µs (burst)",
                micros_per_event(
                    p.burst.usage.relay_postgres_cpu_seconds,
                    p.burst.received as f64
                )
            )
        });
        targets.push(Target {
            name: "3. relay's Postgres CPU",
            goal: "≤ 5 µs per event while draining",
            measured: format!("{postgres_us:.1} µs per event{peer_postgres}"),
            met: Some(postgres_met),
            note: if postgres_met {
                String::new()
            } else {
                format!(
                    "the Postgres processes of the relay's sessions spent {:.2} s over the \
                     drain of {} events ({:.1} s): the claims (reading each event back), the \
                     reference lookups and the delivered records; the peer's session only \
                     hands out notifications",
                    d.usage.relay_postgres_cpu_seconds, d.delivered, d.wall_seconds
                )
            },
        });
        let keep = [&r.keep_up_1_row, &r.keep_up_100_rows];
        let full_hwm = [
            &d.usage,
            &keep[0].usage,
            &keep[1].usage,
            &side.end_to_end.usage,
            &side.burst.usage,
        ]
        .iter()
        .map(|u| u.hwm_kib)
        .max()
        .unwrap_or(0);
        let o = &r.outage;
        let growth = o.usage.rss_max_kib.saturating_sub(o.rss_before_kib);
        let small_met = (full_hwm as f64) <= RSS_LIMIT_MB * KIB_PER_MB && growth <= FLAT_KIB;
        targets.push(Target {
            name: "4. small",
            goal: "RSS ≤ 30 MB at full speed, flat while the broker is away (≤ 1 MiB growth)",
            measured: format!(
                "peak {:.1} MB; outage {:.1} → max {:.1} MB over {:.0} s ({} events waiting)",
                full_hwm as f64 / KIB_PER_MB,
                o.rss_before_kib as f64 / KIB_PER_MB,
                o.usage.rss_max_kib as f64 / KIB_PER_MB,
                o.seconds,
                o.events_written
            ),
            met: Some(small_met),
            note: if small_met {
                String::new()
            } else {
                format!(
                    "peak {:.1} MB (limit {RSS_LIMIT_MB}; drain {:.1}, keep-up {:.1} / {:.1}, \
                     end to end {:.1}, after one transaction {:.1}); with no connection open \
                     (broker cut) it fell to {:.1} MB, so the rest is held by the Postgres and \
                     AMQP sessions and the batches in flight; growth while cut {growth} KiB \
                     (flat: ≤ {FLAT_KIB})",
                    full_hwm as f64 / KIB_PER_MB,
                    d.usage.hwm_kib as f64 / KIB_PER_MB,
                    keep[0].usage.hwm_kib as f64 / KIB_PER_MB,
                    keep[1].usage.hwm_kib as f64 / KIB_PER_MB,
                    side.end_to_end.usage.hwm_kib as f64 / KIB_PER_MB,
                    side.burst.usage.hwm_kib as f64 / KIB_PER_MB,
                    o.usage.rss_min_kib as f64 / KIB_PER_MB
                )
            },
        });
        targets.push(Target {
            name: "keep up",
            goal: "reported: oldest pending event at the producers' top rate",
            measured: keep
                .iter()
                .map(|k| {
                    format!(
                        "{}-row: max {:.2} s (p99 {:.2} s), {:.0} ev/s offered, {:.0} delivered",
                        k.produced.rows_per_tx,
                        k.backlog_age.max,
                        k.backlog_age.p99,
                        k.produced.events_per_s,
                        k.delivered_per_s
                    )
                })
                .collect::<Vec<_>>()
                .join("; "),
            met: None,
            note: String::new(),
        });
        targets.push(Target {
            name: "CPU per event",
            goal: "reported",
            measured: format!(
                "drain: {}; keep-up (relay) 1-row {:.0} µs, 100-row {:.0} µs",
                cpu_split(&d.usage, d.delivered as f64),
                us_per_event(&keep[0].usage, keep[0].produced.events as f64),
                us_per_event(&keep[1].usage, keep[1].produced.events as f64),
            ),
            met: None,
            note: String::new(),
        });
        self.targets = targets;
    }

    /// The side-by-side table: the peer, itrelay, itrelay / peer.
    fn comparison(&self) -> Vec<[String; 4]> {
        let i = &self.relay.compared;
        let p = self.peer.as_ref();
        let ratios = self.ratios.as_ref();
        let dash = || "—".to_owned();
        let peer_cell = |f: &dyn Fn(&Side) -> String| p.map_or_else(dash, f);
        let ratio = |f: &dyn Fn(&Ratios) -> Option<f64>, times: bool| match ratios.and_then(f) {
            Some(r) if times => format!("{r:.1}×"),
            Some(r) => format!("{r:.2}"),
            None => dash(),
        };
        let lat = |s: &Side| {
            format!(
                "p50 {:.2} / p99 {:.2} ms",
                s.latency.millis.p50, s.latency.millis.p99
            )
        };
        let cpu = |s: &Side, which: usize| {
            let (relay, postgres, broker) = per_thousand(&s.burst);
            match which {
                0 => format!("{relay:.3} s"),
                1 => format!("{postgres:.3} s"),
                _ => broker.map_or_else(dash, |b| format!("{b:.3} s")),
            }
        };
        let writes = |s: &Side| {
            format!(
                "{:.2} / {:.2}",
                s.db_cost.stopped_ratio(),
                s.db_cost.ratio()
            )
        };
        let events = self.relay.compared.end_to_end.events;
        let rows = self.relay.compared.end_to_end.rows_per_tx;
        vec![
            [
                format!("end to end, {events} events in transactions of {rows}"),
                peer_cell(&|s| flow_rate(&s.end_to_end)),
                flow_rate(&i.end_to_end),
                ratio(&|r| r.end_to_end, false),
            ],
            [
                format!("drain after one {events}-row transaction"),
                peer_cell(&|s| flow_rate(&s.burst)),
                flow_rate(&i.burst),
                ratio(&|r| r.burst, false),
            ],
            [
                "latency at 1,000 ev/s, commit → consumer".to_owned(),
                peer_cell(&lat),
                lat(i),
                ratio(&|r| r.latency_p50, false) + " / " + &ratio(&|r| r.latency_p99, false),
            ],
            [
                "relay CPU per 1,000 events (drain after one transaction)".to_owned(),
                peer_cell(&|s| cpu(s, 0)),
                cpu(i, 0),
                ratio(&|r| r.relay_cpu, true),
            ],
            [
                "relay's Postgres sessions, CPU per 1,000 events".to_owned(),
                peer_cell(&|s| cpu(s, 1)),
                cpu(i, 1),
                ratio(&|r| r.relay_postgres_cpu, true),
            ],
            [
                "RabbitMQ CPU per 1,000 events".to_owned(),
                peer_cell(&|s| cpu(s, 2)),
                cpu(i, 2),
                ratio(&|r| r.broker_cpu, true),
            ],
            [
                "business tx/s, relay stopped / running, vs no trigger".to_owned(),
                peer_cell(&writes),
                writes(i),
                ratio(&|r| r.writes_relay_stopped, false)
                    + " / "
                    + &ratio(&|r| r.writes_relay_running, false),
            ],
            [
                "message body (mean)".to_owned(),
                peer_cell(&|s| format!("{:.0} B", s.body_bytes)),
                format!("{:.0} B", i.body_bytes),
                String::new(),
            ],
            [
                "relay peak RSS (drain after one transaction)".to_owned(),
                peer_cell(&|s| format!("{:.1} MB", s.burst.usage.hwm_kib as f64 / KIB_PER_MB)),
                format!("{:.1} MB", i.burst.usage.hwm_kib as f64 / KIB_PER_MB),
                String::new(),
            ],
        ]
    }

    pub fn write(&self, dir: &Path, stem: &str) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let json = serde_json::to_string_pretty(self)?;
        std::fs::write(dir.join(format!("{stem}.json")), json + "\n")?;
        std::fs::write(dir.join(format!("{stem}.md")), self.markdown())?;
        Ok(())
    }

    pub fn markdown(&self) -> String {
        let m = &self.machine;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Run {} ({} mode, `{}`, {:.0} s) on {} × {}, {} MiB RAM, PostgreSQL {}, \
             RabbitMQ {}; relay defaults (`relay.batch_size` 250, one channel, batches \
             claimed and published while earlier ones' confirms are on their way, at most \
             two batches' rows unconfirmed){}.\n",
            self.date,
            self.mode,
            self.command,
            self.run_seconds,
            m.nproc,
            m.cpu_model,
            m.memory_mib,
            m.postgres,
            m.rabbitmq,
            if self.relay.settings.is_empty() {
                String::new()
            } else {
                format!(", with {}", self.relay.settings.join(", "))
            }
        );
        out.push_str("| target | goal | measured | status |\n|---|---|---|---|\n");
        for t in &self.targets {
            let status = match t.met {
                Some(true) => "met".to_owned(),
                Some(false) => format!("**gap**: {}", t.note),
                None => "reported".to_owned(),
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} |",
                t.name, t.goal, t.measured, status
            );
        }
        let _ = writeln!(
            out,
            "\nSide by side with {} (LISTEN/NOTIFY → AMQP, no outbox, no confirms; \
             persistent messages to a durable queue), the same tickets, in one run:\n",
            if self.peer.is_some() {
                "pg-amqp-bridge"
            } else {
                "pg-amqp-bridge (not run: `ITRELAY_BENCH_PEER` unset)"
            }
        );
        out.push_str("| | pg-amqp-bridge | itrelay | itrelay / peer |\n|---|---|---|---|\n");
        for [name, peer, itrelay, ratio] in self.comparison() {
            let _ = writeln!(out, "| {name} | {peer} | {itrelay} | {ratio} |");
        }
        out.push_str("\n| figure | value |\n|---|---|\n");
        for (name, value) in self.figures() {
            let _ = writeln!(out, "| {name} | {value} |");
        }
        out
    }

    fn figures(&self) -> Vec<(String, String)> {
        let c = &self.ceiling;
        let r = &self.relay;
        let d = &r.drain;
        let l = &r.compared.latency;
        let db = &r.compared.db_cost;
        let o = &r.outage;
        let mb = |kib: u64| format!("{:.1} MB", kib as f64 / KIB_PER_MB);
        let tps = |v: &[f64]| {
            let each: Vec<String> = v.iter().map(|t| format!("{t:.0}")).collect();
            format!(
                "{:.0} tx/s (median of rounds: {})",
                median(v),
                each.join(", ")
            )
        };
        let mut rows = vec![
            (
                "broker ceiling, confirmed".to_owned(),
                format!(
                    "{:.0} msg/s ({} msgs, {} B body, batches of {}, two in flight)",
                    c.confirmed_per_s, c.messages, c.body_bytes, c.confirm_batch
                ),
            ),
            (
                "broker ceiling, no confirms".to_owned(),
                format!("{:.0} msg/s", c.unconfirmed_per_s),
            ),
            (
                "broker confirm round trip, one message".to_owned(),
                format!(
                    "p50 {:.2} ms, p99 {:.2} ms",
                    c.confirm_rtt_ms.p50, c.confirm_rtt_ms.p99
                ),
            ),
            (
                "drain".to_owned(),
                format!(
                    "{} events: {:.0} ev/s steady, {:.1} s from start to empty ({} failed), relay CPU {:.0} µs/event, peak RSS {}, machine {:.0}% busy",
                    d.events,
                    d.events_per_s,
                    d.wall_seconds,
                    d.failed,
                    us_per_event(&d.usage, d.delivered as f64),
                    mb(d.usage.hwm_kib),
                    d.usage.machine_busy * 100.0
                ),
            ),
        ];
        rows.push((
            "drain, storage".to_owned(),
            format!(
                "WAL {:.0} B/event writing the events, {:.0} B/event draining them; after the drain the itrelay tables hold {:.1} MB of heap, {} live and {} dead rows",
                d.storage.write_wal_bytes_per_event,
                d.storage.relay_wal_bytes_per_event,
                d.storage.heap_bytes as f64 / 1e6,
                d.storage.live_rows,
                d.storage.dead_rows
            ),
        ));
        for k in [&r.keep_up_1_row, &r.keep_up_100_rows] {
            rows.push((
                format!("keep up, {}-row transactions", k.produced.rows_per_tx),
                format!(
                    "{} clients committed {:.0} ev/s for {:.0} s; relay delivered {:.0} ev/s; oldest pending p50 {:.3} s, p99 {:.3} s, max {:.3} s; {} pending at the end, caught up in {}; relay CPU {:.0} µs/event, peak RSS {}, machine {:.0}% busy",
                    k.produced.clients,
                    k.produced.events_per_s,
                    k.produced.seconds,
                    k.delivered_per_s,
                    k.backlog_age.p50,
                    k.backlog_age.p99,
                    k.backlog_age.max,
                    k.pending_at_end,
                    k.catch_up_seconds.map_or("(not within the limit)".to_owned(), |s| format!("{s:.1} s")),
                    us_per_event(&k.usage, k.produced.events as f64),
                    mb(k.usage.hwm_kib),
                    k.usage.machine_busy * 100.0
                ),
            ));
        }
        for side in std::iter::once(&r.compared).chain(self.peer.as_ref()) {
            for (what, flow) in [
                ("end to end", &side.end_to_end),
                ("after one transaction", &side.burst),
            ] {
                rows.push((
                    format!("{}, {what}", side.subject),
                    format!(
                        "{} events in transactions of {}: commits took {:.2} s, the last message arrived {:.2} s after the first commit: {}; per 1,000 events {}; peak RSS {}, machine {:.0}% busy",
                        flow.events,
                        flow.rows_per_tx,
                        flow.commit_seconds,
                        flow.seconds,
                        flow_rate(flow),
                        thousand_split(flow),
                        mb(flow.usage.hwm_kib),
                        flow.usage.machine_busy * 100.0
                    ),
                ));
            }
        }
        rows.extend([
            (
                format!("itrelay, latency at {:.0} ev/s", l.target_per_s),
                format!(
                    "p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms ({} measured after warm-up, {} missing, {:.0} ev/s achieved); relay CPU {:.0} µs/event, machine {:.0}% busy",
                    l.millis.p50, l.millis.p90, l.millis.p99, l.millis.p999, l.millis.max,
                    l.measured, l.missing, l.achieved_per_s,
                    us_per_event(&l.usage, l.sent as f64),
                    l.usage.machine_busy * 100.0
                ),
            ),
            (
                "pgbench, no trigger".to_owned(),
                tps(&db.no_triggers_tps),
            ),
            (
                "pgbench, itrelay triggers, relay stopped".to_owned(),
                tps(&db.triggers_relay_stopped_tps),
            ),
            (
                "pgbench, itrelay triggers, relay running".to_owned(),
                format!(
                    "{} ({} clients, {} s per round; {})",
                    tps(&db.triggers_relay_running_tps),
                    db.clients,
                    db.seconds,
                    relay_shares(db)
                ),
            ),
            (
                "broker unreachable".to_owned(),
                format!(
                    "RSS {} before, {} → {} (min {}, max {}) over {:.0} s while {} events were written; delivered {} after the broker came back",
                    mb(o.rss_before_kib),
                    mb(o.usage.rss_first_kib),
                    mb(o.usage.rss_last_kib),
                    mb(o.usage.rss_min_kib),
                    mb(o.usage.rss_max_kib),
                    o.seconds,
                    o.events_written,
                    o.recovery_seconds.map_or("(not within the limit)".to_owned(), |s| format!("{s:.1} s")),
                ),
            ),
        ]);
        if let Some(p) = &self.peer {
            let pl = &p.latency;
            let pdb = &p.db_cost;
            rows.extend([
                (
                    format!("pg-amqp-bridge, latency at {:.0} ev/s", pl.target_per_s),
                    format!(
                        "p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms ({} measured after warm-up, {} missing); its CPU {:.0} µs/event, its Postgres sessions {:.0} µs/event",
                        pl.millis.p50, pl.millis.p90, pl.millis.p99, pl.millis.p999, pl.millis.max,
                        pl.measured, pl.missing,
                        us_per_event(&pl.usage, pl.sent as f64),
                        micros_per_event(pl.usage.relay_postgres_cpu_seconds, pl.sent as f64),
                    ),
                ),
                ("pgbench (peer's rounds), no trigger".to_owned(), tps(&pdb.no_triggers_tps)),
                (
                    "pgbench, the peer's notify trigger, peer stopped".to_owned(),
                    tps(&pdb.triggers_relay_stopped_tps),
                ),
                (
                    "pgbench, the peer's notify trigger, peer running".to_owned(),
                    format!("{} ({})", tps(&pdb.triggers_relay_running_tps), relay_shares(pdb)),
                ),
            ]);
        }
        rows
    }
}

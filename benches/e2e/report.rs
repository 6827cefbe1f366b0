//! The results of a run: the machine, every figure, each target met or its gap with the
//! reason; written as JSON and as a Markdown table.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;
use tokio_postgres::Client;

use crate::broker::Ceiling;
use crate::pgbench::{median, DbCost};
use crate::phases::{Drain, KeepUp, Latency, Outage};
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
    pub drain: Drain,
    pub keep_up_1_row: KeepUp,
    pub keep_up_100_rows: KeepUp,
    pub latency: Latency,
    pub db_cost: DbCost,
    pub outage: Outage,
    pub targets: Vec<Target>,
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

impl Results {
    /// Judges each target of the issue against this run's figures.
    pub fn judge(&mut self) {
        let c = &self.ceiling;
        let d = &self.drain;
        let busy = |u: &Usage| format!("{:.0}%", u.machine_busy * 100.0);
        let drain_ratio = d.events_per_s / c.confirmed_per_s;
        let drain_note = if drain_ratio >= 0.9 {
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
            goal: "≥ 0.90 × broker ceiling (confirmed, same channel count)",
            measured: format!(
                "{:.0} ev/s = {:.2} × {:.0} msg/s",
                d.events_per_s, drain_ratio, c.confirmed_per_s
            ),
            met: Some(drain_ratio >= 0.9),
            note: drain_note,
        }];
        let keep = [&self.keep_up_1_row, &self.keep_up_100_rows];
        let keep_met = keep.iter().all(|k| k.backlog_age.max < 1.0);
        let keep_note = keep
            .iter()
            .filter(|k| k.backlog_age.max >= 1.0)
            .map(|k| {
                format!(
                    "{}-row: producers committed {:.0} ev/s, the relay delivered {:.0} ev/s \
                     (ceiling {:.0}), so the backlog grew to {} events; producers, Postgres, \
                     RabbitMQ and the relay shared the {} cores, {} busy (CPU per event: {})",
                    k.produced.rows_per_tx,
                    k.produced.events_per_s,
                    k.delivered_per_s,
                    c.confirmed_per_s,
                    k.pending_at_end,
                    self.machine.nproc,
                    busy(&k.usage),
                    cpu_split(&k.usage, k.produced.events as f64),
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        targets.push(Target {
            name: "2. keep up",
            goal: "oldest pending event < 1 s at the producers' top rate",
            measured: keep
                .iter()
                .map(|k| {
                    format!(
                        "{}-row: max {:.2} s (p99 {:.2} s)",
                        k.produced.rows_per_tx, k.backlog_age.max, k.backlog_age.p99
                    )
                })
                .collect::<Vec<_>>()
                .join("; "),
            met: Some(keep_met),
            note: keep_note,
        });
        let l = &self.latency.millis;
        let latency_met = l.p50 <= 2.0 && l.p99 <= 5.0 && self.latency.missing == 0;
        targets.push(Target {
            name: "3. latency",
            goal: "at 1,000 ev/s: p50 ≤ 2 ms, p99 ≤ 5 ms",
            measured: format!("p50 {:.2} ms, p99 {:.2} ms", l.p50, l.p99),
            met: Some(latency_met),
            note: if latency_met {
                String::new()
            } else {
                format!(
                    "the broker alone confirms one persistent message in p50 {:.2} \
                     / p99 {:.2} ms, the rest is the wake-up, the claim, lookup and record \
                     statements and queueing on a machine {} busy; {} events missing",
                    c.confirm_rtt_ms.p50,
                    c.confirm_rtt_ms.p99,
                    busy(&self.latency.usage),
                    self.latency.missing
                )
            },
        });
        let db = &self.db_cost;
        let db_ratio = db.ratio();
        let stopped_ratio = median(&db.triggers_relay_stopped_tps) / median(&db.no_triggers_tps);
        targets.push(Target {
            name: "4. light on the database",
            goal: "with triggers + relay ≥ 0.85 × no trigger",
            measured: format!(
                "{:.0} vs {:.0} tx/s = {:.2} ×",
                median(&db.triggers_relay_running_tps),
                median(&db.no_triggers_tps),
                db_ratio
            ),
            met: Some(db_ratio >= 0.85),
            note: if db_ratio >= 0.85 {
                String::new()
            } else {
                format!(
                    "with the triggers and the relay stopped: {stopped_ratio:.2} × (the \
                     trigger's work in each business transaction: the outbox row and its \
                     indexes); the rest is what the running relay takes from the business \
                     writes on a machine of {} cores ({})",
                    self.machine.nproc,
                    relay_shares(db)
                )
            },
        });
        let full_hwm = [&d.usage, &keep[0].usage, &keep[1].usage]
            .iter()
            .map(|u| u.hwm_kib)
            .max()
            .unwrap_or(0);
        let o = &self.outage;
        let growth = o.usage.rss_max_kib.saturating_sub(o.rss_before_kib);
        let small_met = (full_hwm as f64) <= RSS_LIMIT_MB * KIB_PER_MB && growth <= FLAT_KIB;
        targets.push(Target {
            name: "5. small",
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
                    "peak {:.1} MB (limit {RSS_LIMIT_MB}); with no connection open (broker cut) \
                     it fell to {:.1} MB, so the rest is held by the Postgres and AMQP sessions \
                     and the batch in flight; growth while cut {growth} KiB (flat: ≤ {FLAT_KIB})",
                    full_hwm as f64 / KIB_PER_MB,
                    o.usage.rss_min_kib as f64 / KIB_PER_MB
                )
            },
        });
        targets.push(Target {
            name: "5. CPU per event",
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
             RabbitMQ {}; relay defaults (`relay.batch_size` 500, one channel, a batch's \
             confirms awaited while the next is claimed and published).\n",
            self.date,
            self.mode,
            self.command,
            self.run_seconds,
            m.nproc,
            m.cpu_model,
            m.memory_mib,
            m.postgres,
            m.rabbitmq
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
        out.push_str("\n| figure | value |\n|---|---|\n");
        for (name, value) in self.figures() {
            let _ = writeln!(out, "| {name} | {value} |");
        }
        out
    }

    fn figures(&self) -> Vec<(String, String)> {
        let c = &self.ceiling;
        let d = &self.drain;
        let l = &self.latency;
        let db = &self.db_cost;
        let o = &self.outage;
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
        for k in [&self.keep_up_1_row, &self.keep_up_100_rows] {
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
        rows.extend([
            (
                format!("latency at {:.0} ev/s", l.target_per_s),
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
        rows
    }
}

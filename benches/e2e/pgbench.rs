//! What a relay costs the business writes: pgbench inserting single-ticket transactions
//! from several clients, without a trigger, with the relay's capture trigger and the relay
//! stopped, and with it and the relay running.

use anyhow::{bail, Context, Result};
use serde::Serialize;
use tokio::process::Command;

use crate::compare::{Kind, Subject};
use crate::env::BenchEnv;
use crate::sample;
use crate::Sizes;

#[derive(Debug, Default, Serialize)]
pub struct DbCost {
    pub clients: u32,
    pub jobs: u32,
    pub seconds: u32,
    /// Transactions per second of each round, per configuration.
    pub no_triggers_tps: Vec<f64>,
    pub triggers_relay_stopped_tps: Vec<f64>,
    pub triggers_relay_running_tps: Vec<f64>,
    /// Share of one core the relay used while pgbench ran, per round.
    pub relay_core_share: Vec<f64>,
    /// Share of one core the Postgres sessions of the relay used, per round.
    pub relay_postgres_core_share: Vec<f64>,
    /// Share of one core RabbitMQ used, per round (empty: not on this machine).
    pub broker_core_share: Vec<f64>,
    /// After each round with itrelay running: until it had delivered everything (the
    /// peer has no backlog to see).
    pub relay_catch_up_seconds: Vec<Option<f64>>,
}

impl DbCost {
    /// With the relay running, against no trigger.
    pub fn ratio(&self) -> f64 {
        median(&self.triggers_relay_running_tps) / median(&self.no_triggers_tps)
    }

    /// With the capture trigger and the relay stopped, against no trigger.
    pub fn stopped_ratio(&self) -> f64 {
        median(&self.triggers_relay_stopped_tps) / median(&self.no_triggers_tps)
    }
}

/// The middle round (the mean of the middle two for an even count): one disturbed round
/// does not move it.
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// Rounds of the three configurations, interleaved so drift hits each alike.
pub async fn measure(env: &BenchEnv, sizes: &Sizes, subject: &Subject) -> Result<DbCost> {
    let script = std::env::temp_dir().join(format!("{}.pgbench.sql", env.database));
    std::fs::write(&script, script_text()).context("write the pgbench script")?;
    let run = |label: &'static str| run_pgbench(env, sizes, &script, label);
    let mut cost = DbCost {
        clients: sizes.pgbench_clients,
        jobs: 2,
        seconds: sizes.pgbench_seconds,
        ..DbCost::default()
    };
    for _ in 0..sizes.pgbench_rounds {
        subject.capture(env, false).await?;
        cost.no_triggers_tps.push(run("no triggers").await?);
        subject.capture(env, true).await?;
        cost.triggers_relay_stopped_tps
            .push(run("triggers, relay stopped").await?);
        let mut watched = subject.start("pgbench")?;
        subject.wait_ready(env, &mut watched).await?;
        let window = watched.open(&env.client).await?;
        cost.triggers_relay_running_tps
            .push(run("triggers, relay running").await?);
        let usage = watched.close(window, &env.client).await?;
        let seconds = f64::from(sizes.pgbench_seconds);
        cost.relay_core_share
            .push(usage.relay_cpu_seconds / seconds);
        cost.relay_postgres_core_share
            .push(usage.relay_postgres_cpu_seconds / seconds);
        cost.broker_core_share
            .extend(usage.broker_cpu_seconds.map(|cpu| cpu / seconds));
        if subject.kind == Kind::Itrelay {
            let caught_up = watched
                .wait_drained(&env.client, sizes.catch_up_limit)
                .await;
            cost.relay_catch_up_seconds
                .push(caught_up.ok().map(|waited| waited.as_secs_f64()));
        }
        watched.stop().await?;
        env.purge(&subject.queue).await?;
    }
    let _ = std::fs::remove_file(&script);
    Ok(cost)
}

/// One ticket per transaction, the same columns the other phases write.
fn script_text() -> String {
    let quote = |text: &str| format!("'{}'", text.replace('\'', "''"));
    format!(
        "\\set n random(1, 1000000000)\n\
         INSERT INTO it_tickets (organization_id, ticket_number, category, subcategory, priority, \
         subject, description, requester_id, site_id) VALUES ({}, 'PGB-' || :n, {}, {}, {}, {}, {}, {}, {});\n",
        quote(sample::ORG),
        quote(sample::CATEGORY),
        quote(sample::SUBCATEGORY),
        quote(sample::PRIORITY),
        quote(sample::SUBJECT),
        quote(sample::DESCRIPTION),
        quote(sample::REQUESTER),
        quote(sample::SITE),
    )
}

async fn run_pgbench(
    env: &BenchEnv,
    sizes: &Sizes,
    script: &std::path::Path,
    label: &str,
) -> Result<f64> {
    env.reset_tables().await?;
    let output = Command::new("pgbench")
        .arg("-n")
        .args(["-c", &sizes.pgbench_clients.to_string(), "-j", "2"])
        .args(["-T", &sizes.pgbench_seconds.to_string()])
        .arg("-f")
        .arg(script)
        // A connection URL as the database name: the setup's server, whichever it is.
        .arg(&env.db_url)
        .output()
        .await
        .context("run pgbench (is it installed?)")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "pgbench ({label}) failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let tps = stdout
        .lines()
        .find_map(|line| line.strip_prefix("tps = "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|tps| tps.parse().ok())
        .with_context(|| format!("no tps in pgbench output:\n{stdout}"))?;
    eprintln!("  pgbench {label}: {tps:.0} tx/s");
    Ok(tps)
}

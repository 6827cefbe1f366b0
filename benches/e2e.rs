//! End-to-end benchmark: how fast itrelay moves events and how much it slows the
//! database, side by side in one run against the local Postgres and RabbitMQ.
//!
//! `cargo bench --bench e2e` measures and writes `bench/results/latest.{json,md}`;
//! `cargo bench --bench e2e -- --smoke` runs every step with tiny sizes (for CI) and
//! writes under the target directory instead. The relay runs as a child process
//! (`itrelay run`) configured by `ITRELAY__*` variables, in a scratch database
//! `itrelay_bench_*` with its own exchange prefix; both are removed at the end, also
//! after a failure or Ctrl-C.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use itrelay::validate::Validators;

#[path = "e2e/broker.rs"]
mod broker;
#[path = "e2e/env.rs"]
mod env;
#[path = "e2e/load.rs"]
mod load;
#[path = "e2e/pgbench.rs"]
mod pgbench;
#[path = "e2e/phases.rs"]
mod phases;
#[path = "e2e/process.rs"]
mod process;
// The fault tests' TCP proxy; the benchmark uses only part of it.
#[allow(dead_code)]
#[path = "../tests/common/proxy.rs"]
mod proxy;
#[path = "e2e/report.rs"]
mod report;
#[path = "common/sample.rs"]
mod sample;
#[path = "e2e/stats.rs"]
mod stats;
#[path = "e2e/watch.rs"]
mod watch;

use env::BenchEnv;
use report::{Machine, Results};

/// How much each phase does.
pub struct Sizes {
    pub smoke: bool,
    pub ceiling_messages: usize,
    pub confirm_round_trips: usize,
    /// Messages in flight before waiting for confirms: the relay's default batch.
    pub batch: usize,
    pub drain_events: usize,
    /// Concurrent producer connections at full speed.
    pub producers: usize,
    pub keep_up: Duration,
    pub latency_rate: f64,
    pub latency: Duration,
    pub latency_warmup: Duration,
    pub pgbench_clients: u32,
    pub pgbench_seconds: u32,
    pub pgbench_rounds: usize,
    pub outage: Duration,
    /// Longest wait for the relay to empty a backlog.
    pub catch_up_limit: Duration,
}

impl Sizes {
    fn full() -> Self {
        Self {
            smoke: false,
            ceiling_messages: 100_000,
            confirm_round_trips: 2_000,
            batch: 500,
            drain_events: 100_000,
            producers: 4,
            keep_up: Duration::from_secs(10),
            latency_rate: 1_000.0,
            latency: Duration::from_secs(15),
            latency_warmup: Duration::from_secs(1),
            pgbench_clients: 4,
            pgbench_seconds: 10,
            pgbench_rounds: 3,
            outage: Duration::from_secs(15),
            catch_up_limit: Duration::from_secs(180),
        }
    }

    fn smoke() -> Self {
        Self {
            smoke: true,
            ceiling_messages: 2_000,
            confirm_round_trips: 100,
            batch: 500,
            drain_events: 2_000,
            producers: 2,
            keep_up: Duration::from_secs(2),
            latency_rate: 1_000.0,
            latency: Duration::from_secs(2),
            latency_warmup: Duration::from_millis(500),
            pgbench_clients: 4,
            pgbench_seconds: 2,
            pgbench_rounds: 1,
            outage: Duration::from_secs(2),
            catch_up_limit: Duration::from_secs(60),
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    // `cargo bench` passes `--bench`; only `--smoke` matters here.
    let sizes = if std::env::args().any(|arg| arg == "--smoke") {
        Sizes::smoke()
    } else {
        Sizes::full()
    };
    let (database, prefix) = BenchEnv::names();
    let mut run = tokio::spawn(run(database.clone(), prefix.clone(), sizes));
    let outcome = tokio::select! {
        joined = &mut run => joined.map_err(anyhow::Error::from).and_then(|result| result),
        _ = tokio::signal::ctrl_c() => {
            run.abort(); // Drops the relay child, which kills it.
            let _ = run.await;
            Err(anyhow!("interrupted"))
        }
    };
    eprintln!("e2e: removing {database} and {prefix}*");
    env::cleanup(&database, &prefix).await;
    match outcome {
        Ok(written) => {
            eprintln!("e2e: results in {}", written.display());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("e2e benchmark failed: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Every phase in order; returns where the results were written.
async fn run(database: String, prefix: String, sizes: Sizes) -> Result<PathBuf> {
    let started = Instant::now();
    let step = |name: &str| eprintln!("e2e [{:>6.1} s] {name}", started.elapsed().as_secs_f64());
    step(&format!("database {database}, exchange prefix {prefix}"));
    let env = BenchEnv::create(&database, &prefix).await?;
    let machine = Machine::describe(&env.client).await?;
    let message = sample::pipeline(
        sample::ticket_row(1, "PRE0-1"),
        &sample::references()?,
        &Validators::for_catalog()?,
    )
    .map_err(|reason| anyhow!("the sample ticket does not pass the pipeline: {reason}"))?;
    step("broker ceiling");
    let ceiling = broker::measure(
        &env,
        &message,
        sizes.ceiling_messages,
        sizes.batch,
        sizes.confirm_round_trips,
    )
    .await?;
    env.cli(&["install"]).await?;
    step("drain");
    let drain = phases::drain(&env, &sizes).await?;
    step("keep up, 1-row transactions");
    let keep_up_1_row = phases::keep_up(&env, &sizes, 1).await?;
    step("keep up, 100-row transactions");
    let keep_up_100_rows = phases::keep_up(&env, &sizes, 100).await?;
    step("latency");
    let latency = phases::latency(&env, &sizes).await?;
    step("database cost (pgbench)");
    let db_cost = pgbench::measure(&env, &sizes).await?;
    step("broker unreachable");
    let outage = phases::outage(&env, &sizes).await?;
    step("done");
    let mut results = Results {
        date: time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)?,
        mode: if sizes.smoke { "smoke" } else { "full" },
        command: if sizes.smoke {
            "cargo bench --bench e2e -- --smoke".to_owned()
        } else {
            "cargo bench --bench e2e".to_owned()
        },
        run_seconds: started.elapsed().as_secs_f64(),
        machine,
        ceiling,
        drain,
        keep_up_1_row,
        keep_up_100_rows,
        latency,
        db_cost,
        outage,
        targets: Vec::new(),
    };
    results.judge();
    println!("{}", results.markdown());
    let (dir, stem) = if sizes.smoke {
        (PathBuf::from(env!("CARGO_TARGET_TMPDIR")), "e2e-smoke")
    } else {
        (
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("bench/results"),
            "latest",
        )
    };
    results.write(&dir, stem)?;
    Ok(dir.join(format!("{stem}.md")))
}

//! End-to-end benchmark: how fast itrelay moves events and how much it slows the
//! database, side by side in one run against the local Postgres and RabbitMQ.
//!
//! `cargo bench --bench e2e` measures and writes `bench/results/latest.{json,md}`;
//! `cargo bench --bench e2e -- --smoke` runs every step with tiny sizes (for CI) and
//! writes under the target directory instead. The relay runs as a child process
//! (`itrelay run`) configured by `ITRELAY__*` variables, in a scratch database
//! `itrelay_bench_*` with its own exchange prefix; both are removed at the end, also
//! after a failure or Ctrl-C. `ITRELAY_BENCH_PEER=<pg-amqp-bridge binary>` adds the peer's
//! side of the comparison; `ITRELAY_BENCH_POSTGRES` and `ITRELAY_BENCH_RELAY_SETTINGS`
//! choose the server and extra relay settings ([`env::RelaySetup`]).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use itrelay::validate::Validators;

#[path = "e2e/broker.rs"]
mod broker;
#[path = "e2e/compare.rs"]
mod compare;
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

use compare::Subject;
use env::{BenchEnv, RelaySetup};
use report::{Machine, Results};

/// How much each phase does.
pub struct Sizes {
    pub smoke: bool,
    pub ceiling_messages: usize,
    pub confirm_round_trips: usize,
    /// Messages in flight before waiting for confirms: the relay's default batch.
    pub batch: usize,
    pub drain_events: usize,
    /// Events of the end-to-end and burst phases (itrelay and the peer alike).
    pub flow_events: usize,
    /// Rows per transaction end to end.
    pub flow_rows_per_tx: usize,
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
            flow_events: 50_000,
            flow_rows_per_tx: 500,
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
            flow_events: 2_000,
            flow_rows_per_tx: 500,
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
    let setup = match RelaySetup::from_environment() {
        Ok(setup) => setup,
        Err(error) => {
            eprintln!("e2e benchmark: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    let peer = std::env::var_os("ITRELAY_BENCH_PEER").map(PathBuf::from);
    let (database, prefix) = BenchEnv::names();
    let server_url = setup.server_url.clone();
    let mut run = tokio::spawn(run(setup, database.clone(), prefix.clone(), sizes, peer));
    let outcome = tokio::select! {
        joined = &mut run => joined.map_err(anyhow::Error::from).and_then(|result| result),
        _ = tokio::signal::ctrl_c() => {
            run.abort(); // Drops the relay child, which kills it.
            let _ = run.await;
            Err(anyhow!("interrupted"))
        }
    };
    eprintln!("e2e: removing {database} and {prefix}*");
    env::cleanup(&server_url, &database, &prefix).await;
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

/// Every phase in order; the peer's when given its binary. Returns where the results
/// were written.
async fn run(
    setup: RelaySetup,
    database: String,
    prefix: String,
    sizes: Sizes,
    peer: Option<PathBuf>,
) -> Result<PathBuf> {
    let started = Instant::now();
    let step = |name: &str| eprintln!("e2e [{:>6.1} s] {name}", started.elapsed().as_secs_f64());
    step(&format!("database {database}, exchange prefix {prefix}"));
    let env = BenchEnv::create(&setup, &database, &prefix).await?;
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
    let relay = phases::relay_run(&env, &sizes, &step).await?;
    let peer = match peer {
        Some(binary) => {
            let subject = Subject::peer(&env, binary).await?;
            let side = compare::side(&env, &sizes, &subject, &step).await;
            Subject::remove_peer(&env).await?;
            Some(side?)
        }
        None => {
            step("no peer (ITRELAY_BENCH_PEER unset)");
            None
        }
    };
    step("done");
    let mut results = Results {
        date: time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)?,
        mode: if sizes.smoke { "smoke" } else { "full" },
        command: command(&sizes, peer.is_some()),
        run_seconds: started.elapsed().as_secs_f64(),
        machine,
        ceiling,
        relay,
        peer,
        ratios: None,
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

/// The command that reproduces this run, as the report shows it.
fn command(sizes: &Sizes, with_peer: bool) -> String {
    let mut command = String::new();
    for name in ["ITRELAY_BENCH_POSTGRES", "ITRELAY_BENCH_RELAY_SETTINGS"] {
        if std::env::var_os(name).is_some() {
            command.push_str(&format!("{name}=… "));
        }
    }
    if with_peer {
        command.push_str("ITRELAY_BENCH_PEER=<pg-amqp-bridge> ");
    }
    command.push_str("cargo bench --bench e2e");
    if sizes.smoke {
        command.push_str(" -- --smoke");
    }
    command
}

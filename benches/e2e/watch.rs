//! A relay under watch: started as a child process, with its CPU time, resident memory
//! and the machine's busy share measured over a window the phase chooses, and beside it
//! the CPU time of the Postgres sessions serving the relay and of the RabbitMQ broker.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::load::{self, BacklogAge, TicketWriter};
use crate::process::{broker_pid, cpu_seconds, memory, sample_rss, MachineCpu, RelayProcess};

/// What the relay and the machine used over a window.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Usage {
    pub seconds: f64,
    pub relay_cpu_seconds: f64,
    /// The Postgres server processes of the relay's sessions (claims, lookups, records).
    pub relay_postgres_cpu_seconds: f64,
    /// The RabbitMQ server process, all its work (None: not on this machine).
    pub broker_cpu_seconds: Option<f64>,
    /// Resident memory sampled every 100 ms: first, lowest, highest, last (KiB).
    pub rss_first_kib: u64,
    pub rss_min_kib: u64,
    pub rss_max_kib: u64,
    pub rss_last_kib: u64,
    /// Peak resident memory of the process so far (`VmHWM`).
    pub hwm_kib: u64,
    /// Share of both cores busy (all processes), 0..1.
    pub machine_busy: f64,
}

pub struct Watched {
    pub relay: RelayProcess,
    /// `application_name` of the relay's Postgres sessions.
    application_name: String,
}

/// The start of a measured window.
pub struct Window {
    cpu: f64,
    /// CPU so far of each relay session open at the start.
    postgres: HashMap<u32, f64>,
    broker: Option<(u32, f64)>,
    machine: MachineCpu,
    started: Instant,
    stop: CancellationToken,
    rss: JoinHandle<Vec<u64>>,
}

/// The server processes of the relay's sessions (those named `application_name`) on
/// `client`'s database.
async fn relay_sessions(client: &Client, application_name: &str) -> Result<Vec<u32>> {
    let rows = client
        .query(
            "SELECT pid FROM pg_stat_activity
             WHERE datname = current_database() AND application_name = $1",
            &[&application_name],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| row.get::<_, i32>(0).unsigned_abs())
        .collect())
}

impl Watched {
    /// Starts `itrelay run` with `env` (`ITRELAY__*` variables).
    pub fn start(env: &[(String, String)], name: &str) -> Result<Self> {
        Self::spawn(
            Path::new(env!("CARGO_BIN_EXE_itrelay")),
            &["run".to_owned()],
            env,
            name,
            "itrelay",
        )
    }

    /// Starts any relay whose Postgres sessions are named `application_name`.
    pub fn spawn(
        program: &Path,
        args: &[String],
        env: &[(String, String)],
        name: &str,
        application_name: &str,
    ) -> Result<Self> {
        Ok(Self {
            relay: RelayProcess::spawn(program, args, env, name)?,
            application_name: application_name.to_owned(),
        })
    }

    /// Opens a window; `client` is on the relay's database.
    pub async fn open(&self, client: &Client) -> Result<Window> {
        let stop = CancellationToken::new();
        let mut postgres = HashMap::new();
        for pid in relay_sessions(client, &self.application_name).await? {
            // A session ending just now (a reconnect) has no /proc entry left.
            if let Ok(cpu) = cpu_seconds(pid) {
                postgres.insert(pid, cpu);
            }
        }
        let broker = broker_pid()
            .map(|pid| cpu_seconds(pid).map(|cpu| (pid, cpu)))
            .transpose()?;
        Ok(Window {
            cpu: cpu_seconds(self.relay.pid())?,
            postgres,
            broker,
            machine: MachineCpu::now()?,
            started: Instant::now(),
            rss: sample_rss(self.relay.pid(), Duration::from_millis(100), stop.clone()),
            stop,
        })
    }

    pub async fn close(&mut self, window: Window, client: &Client) -> Result<Usage> {
        self.relay.ensure_running()?;
        let pid = self.relay.pid();
        let relay_cpu_seconds = cpu_seconds(pid)? - window.cpu;
        // Sessions opened within the window count whole; one that ended within it (a
        // reconnect) is left out.
        let mut relay_postgres_cpu_seconds = 0.0;
        for pid in relay_sessions(client, &self.application_name).await? {
            let before = window.postgres.get(&pid).copied().unwrap_or(0.0);
            if let Ok(cpu) = cpu_seconds(pid) {
                relay_postgres_cpu_seconds += cpu - before;
            }
        }
        let broker_cpu_seconds = window
            .broker
            .map(|(pid, before)| cpu_seconds(pid).map(|cpu| cpu - before))
            .transpose()?;
        let machine_busy = MachineCpu::now()?.busy_since(&window.machine);
        let hwm_kib = memory(pid)?.hwm_kib;
        window.stop.cancel();
        let samples = window.rss.await?;
        Ok(Usage {
            seconds: window.started.elapsed().as_secs_f64(),
            relay_cpu_seconds,
            relay_postgres_cpu_seconds,
            broker_cpu_seconds,
            rss_first_kib: samples.first().copied().unwrap_or(0),
            rss_min_kib: samples.iter().copied().min().unwrap_or(0),
            rss_max_kib: samples.iter().copied().max().unwrap_or(0),
            rss_last_kib: samples.last().copied().unwrap_or(0),
            hwm_kib,
            machine_busy,
        })
    }

    /// Waits until no event is pending, failing if the relay exits or `limit` passes;
    /// how long that took.
    pub async fn wait_drained(&mut self, client: &Client, limit: Duration) -> Result<Duration> {
        let start = Instant::now();
        let age = BacklogAge::prepare(client).await?;
        loop {
            self.relay.ensure_running()?;
            if age.seconds(client).await? == 0.0 {
                return Ok(start.elapsed());
            }
            if start.elapsed() > limit {
                let (pending, _, _) = load::outbox_states(client).await?;
                bail!("{pending} events still pending after {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Writes one ticket and waits until the relay has delivered everything: it is up.
    pub async fn wait_ready(&mut self, client: &Client, writer: &TicketWriter) -> Result<()> {
        writer.write("READY", 1).await?;
        self.wait_drained(client, Duration::from_secs(60)).await?;
        Ok(())
    }

    pub async fn stop(self) -> Result<()> {
        self.relay.stop().await
    }
}

//! A relay as a child process (the real `itrelay run`, or the peer the comparison runs
//! beside it), and what `/proc` says about it and about the machine: resident memory, CPU
//! time, how busy the cores were.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

pub struct RelayProcess {
    child: Child,
    pid: u32,
    log: PathBuf,
}

impl RelayProcess {
    /// Starts `program args` with `env` added to the environment; its output goes to
    /// `<tmp>/<name>.log`.
    pub fn spawn(
        program: &Path,
        args: &[String],
        env: &[(String, String)],
        name: &str,
    ) -> Result<Self> {
        let log = std::env::temp_dir().join(format!("{name}.log"));
        let file = std::fs::File::create(&log)
            .with_context(|| format!("create relay log {}", log.display()))?;
        let child = Command::new(program)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {}", program.display()))?;
        let pid = child.id().context("the relay exited at once")?;
        Ok(Self { child, pid, log })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Fails, with the end of the relay's log, if it is no longer running.
    pub fn ensure_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("the relay exited ({status}); log:\n{}", self.log_tail());
        }
        Ok(())
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Stops the relay with SIGTERM, as ops would; kills it if it does not exit in 15 s.
    pub async fn stop(mut self) -> Result<()> {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .await?;
        if !status.success() {
            bail!("kill -TERM {} failed", self.pid);
        }
        match tokio::time::timeout(Duration::from_secs(15), self.child.wait()).await {
            Ok(exit) => {
                exit?;
                Ok(())
            }
            Err(_) => {
                self.child.kill().await?;
                bail!("the relay did not stop within 15 s of SIGTERM")
            }
        }
    }
}

/// `VmRSS` and `VmHWM` of a process, in KiB.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    pub rss_kib: u64,
    pub hwm_kib: u64,
}

pub fn memory(pid: u32) -> Result<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Result<u64> {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .with_context(|| format!("{name} in /proc/{pid}/status"))
    };
    Ok(Memory {
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
    })
}

/// User plus system CPU time of a process, in seconds.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which may hold spaces: state is the first,
    // utime the 12th and stime the 13th.
    let after_name = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("malformed /proc/PID/stat")?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|t| t.parse().ok())
            .context("utime/stime in /proc/PID/stat")
    };
    Ok((ticks(11)? + ticks(12)?) as f64 / clock_ticks() as f64)
}

/// The RabbitMQ server on this machine: of the Erlang VMs (`beam.smp`; `rabbitmqctl` runs
/// short-lived ones too), the one that has worked longest.
pub fn broker_pid() -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|entry| {
            let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            (comm.trim_end() == "beam.smp").then_some((pid, cpu_seconds(pid).ok()?))
        })
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(pid, _)| pid)
}

/// Clock ticks per second (`getconf CLK_TCK`), 100 when it cannot be asked.
fn clock_ticks() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8_lossy(&out.stdout).trim().parse().ok())
        .unwrap_or(100)
}

/// Aggregate CPU counters of the machine (`/proc/stat`): busy and total ticks.
#[derive(Debug, Clone, Copy)]
pub struct MachineCpu {
    busy: u64,
    total: u64,
}

impl MachineCpu {
    pub fn now() -> Result<Self> {
        let stat = std::fs::read_to_string("/proc/stat")?;
        let line = stat.lines().next().context("empty /proc/stat")?;
        let ticks: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|t| t.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal ...
        let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
        let total: u64 = ticks.iter().take(8).sum();
        Ok(Self {
            busy: total - idle,
            total,
        })
    }

    /// Share of all cores busy since `earlier`, 0..1.
    pub fn busy_since(&self, earlier: &Self) -> f64 {
        let total = self.total.saturating_sub(earlier.total);
        if total == 0 {
            return 0.0;
        }
        self.busy.saturating_sub(earlier.busy) as f64 / total as f64
    }
}

/// Waits until the machine is nearly idle (under 15% busy over half a second) or `limit`
/// passed, so that leftovers of one phase (RabbitMQ's disk work, checkpoints, autovacuum)
/// are not measured in the next. Says so when the machine stayed busy.
pub async fn settle(limit: Duration) -> Result<()> {
    let start = std::time::Instant::now();
    loop {
        let before = MachineCpu::now()?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let busy = MachineCpu::now()?.busy_since(&before);
        if busy < 0.15 {
            return Ok(());
        }
        if start.elapsed() > limit {
            eprintln!(
                "  machine still {:.0}% busy after {limit:?}: figures may be noisy",
                busy * 100.0
            );
            return Ok(());
        }
    }
}

/// Samples a process's RSS every `every` until `stop` is cancelled; returns the samples
/// in KiB.
pub fn sample_rss(
    pid: u32,
    every: Duration,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<Vec<u64>> {
    tokio::spawn(async move {
        let mut samples = Vec::new();
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return samples,
                _ = tick.tick() => match memory(pid) {
                    Ok(memory) => samples.push(memory.rss_kib),
                    Err(_) => return samples,
                },
            }
        }
    })
}

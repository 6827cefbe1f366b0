//! Process metrics read from `/proc/self` at each scrape, under the names Prometheus
//! client libraries use: `process_cpu_seconds_total`, `process_resident_memory_bytes`,
//! `process_open_fds`, `process_max_fds`, `process_start_time_seconds`. Off Linux there
//! is no `/proc`, and none are exported.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// `/proc` counts CPU time in USER_HZ ticks, which the kernel ABI fixes at 100 a second.
const TICKS_PER_SECOND: f64 = 100.0;

/// One reading of the process's resources.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub cpu_seconds: f64,
    pub resident_bytes: i64,
    pub open_fds: i64,
    pub max_fds: Option<i64>,
    pub start_time_seconds: Option<f64>,
}

/// Reads this process's sample; `None` where `/proc/self` cannot be read.
pub fn sample() -> Option<Sample> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let (ticks, start_ticks) = cpu_ticks(&stat)?;
    let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as i64;
    let limits = std::fs::read_to_string("/proc/self/limits").ok();
    let boot_time = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|text| boot_time(&text));
    Some(Sample {
        cpu_seconds: ticks as f64 / TICKS_PER_SECOND,
        resident_bytes: resident_kib(&status)? * 1024,
        // The directory listing itself holds one descriptor while it is read.
        open_fds: (open_fds - 1).max(0),
        max_fds: limits.as_deref().and_then(max_open_files),
        start_time_seconds: boot_time.map(|boot| boot + start_ticks as f64 / TICKS_PER_SECOND),
    })
}

/// User plus system CPU ticks, and the start time in ticks after boot, from
/// `/proc/self/stat`. The command name (field 2) may hold spaces and parentheses: the
/// fields are counted from the last `)`.
fn cpu_ticks(stat: &str) -> Option<(u64, u64)> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Field 3 (state) is fields[0]: utime is field 14, stime 15, starttime 22.
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some((field(14)? + field(15)?, field(22)?))
}

/// `VmRSS` of `/proc/self/status`, in KiB.
fn resident_kib(status: &str) -> Option<i64> {
    first_number_after(status, "VmRSS:")
}

/// The soft limit on open files, from `/proc/self/limits`.
fn max_open_files(limits: &str) -> Option<i64> {
    first_number_after(limits, "Max open files")
}

/// The first word after `label` on the line that starts with it, as a number.
fn first_number_after(text: &str, label: &str) -> Option<i64> {
    text.lines()
        .find_map(|line| line.strip_prefix(label))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `btime` of `/proc/stat`: when the machine booted, in seconds since the epoch.
fn boot_time(stat: &str) -> Option<f64> {
    stat.lines()
        .find_map(|line| line.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

/// Exports [`sample`] at each scrape.
#[derive(Debug)]
pub struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(sample) = sample() else {
            return Ok(());
        };
        let cpu = ConstCounter::new(sample.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            cpu.metric_type(),
        )?)?;
        let mut gauges = vec![
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                sample.resident_bytes as f64,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                sample.open_fds as f64,
            ),
        ];
        if let Some(max) = sample.max_fds {
            gauges.push((
                "process_max_fds",
                "Maximum number of open file descriptors",
                max as f64,
            ));
        }
        if let Some(start) = sample.start_time_seconds {
            gauges.push((
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds",
                start,
            ));
        }
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        let stat =
            "4242 (it relay) (x)) S 1 4242 4242 0 -1 4194560 1 0 0 0 250 130 0 0 20 0 3 0 9000 1 2";
        assert_eq!(cpu_ticks(stat), Some((380, 9000)));
        assert_eq!(
            resident_kib("Name:\titrelay\nVmRSS:\t   10240 kB\n"),
            Some(10240)
        );
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(max_open_files(limits), Some(1024));
        assert_eq!(
            boot_time("cpu 1 2\nbtime 1700000000\n"),
            Some(1_700_000_000.0)
        );
        assert_eq!(cpu_ticks("no name"), None);
    }

    #[test]
    fn this_process_has_a_sample() {
        let sample = sample().expect("/proc/self is readable on Linux");
        assert!(sample.resident_bytes > 0);
        assert!(sample.open_fds > 0);
        assert!(sample.max_fds.is_some());
    }
}

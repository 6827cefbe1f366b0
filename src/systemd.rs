//! systemd integration for `Type=notify` units: `READY=1` once the relay is first ready
//! (connected to both services, leading or standing by), `WATCHDOG=1` at half the
//! unit's `WatchdogSec=` while the runtime runs, `STATUS=` with the readiness line, and
//! `STOPPING=1` on shutdown. Outside systemd (`NOTIFY_SOCKET` unset) it does nothing.
//! The protocol is one datagram per message on a Unix socket (sd_notify(3)).

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::health::Health;

/// How often readiness is looked at when there is no watchdog to keep.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// The socket systemd listens on for this service.
pub struct Notifier {
    socket: UnixDatagram,
    target: SocketAddr,
}

impl Notifier {
    /// From `NOTIFY_SOCKET` (a path, or `@name` for an abstract socket); `None` when unset
    /// or unusable (said once in the log).
    pub fn from_env() -> Option<Self> {
        let name = std::env::var_os("NOTIFY_SOCKET")?;
        let name = name.to_string_lossy();
        let connect = || -> std::io::Result<Self> {
            let target = match name.strip_prefix('@') {
                Some(abstract_name) => abstract_address(abstract_name.as_bytes())?,
                None => SocketAddr::from_pathname(&*name)?,
            };
            let socket = UnixDatagram::unbound()?;
            // A full queue must not stall the runtime: the message is then dropped.
            socket.set_nonblocking(true)?;
            Ok(Self { socket, target })
        };
        match connect() {
            Ok(notifier) => Some(notifier),
            Err(error) => {
                warn!(%error, socket = %name, "NOTIFY_SOCKET unusable: no systemd notifications");
                None
            }
        }
    }

    /// Sends `state` (newline-separated `KEY=value` lines); a failure is only logged.
    pub fn send(&self, state: &str) {
        if let Err(error) = self.socket.send_to_addr(state.as_bytes(), &self.target) {
            debug!(%error, "systemd notification not sent");
        }
    }
}

#[cfg(target_os = "linux")]
fn abstract_address(name: &[u8]) -> std::io::Result<SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    SocketAddr::from_abstract_name(name)
}

#[cfg(not(target_os = "linux"))]
fn abstract_address(_name: &[u8]) -> std::io::Result<SocketAddr> {
    Err(std::io::Error::other(
        "abstract sockets exist on Linux only",
    ))
}

/// The watchdog interval systemd asks for (`WATCHDOG_USEC`), if it is meant for this
/// process (`WATCHDOG_PID` unset or ours).
pub fn watchdog(usec: Option<&str>, pid: Option<&str>) -> Option<Duration> {
    if pid.is_some_and(|pid| pid.parse::<u32>().ok() != Some(std::process::id())) {
        return None;
    }
    let usec: u64 = usec?.parse().ok().filter(|&usec| usec > 0)?;
    Some(Duration::from_micros(usec))
}

/// Notifies systemd until `shutdown`, if run under it.
pub async fn run(health: Health, shutdown: CancellationToken) {
    let Some(notifier) = Notifier::from_env() else {
        return;
    };
    let watchdog = watchdog(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
    );
    let every = watchdog.map_or(LOOK_EVERY, |interval| (interval / 2).min(LOOK_EVERY));
    let mut tick = tokio::time::interval(every);
    let mut told_ready = false;
    let mut status = String::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => {
                notifier.send("STOPPING=1\nSTATUS=stopping: finishing the batch in flight");
                return;
            }
            _ = tick.tick() => {}
        }
        let readiness = health.readiness();
        let line = readiness.summary();
        let mut message = String::new();
        if readiness.ready && !told_ready {
            told_ready = true;
            message.push_str("READY=1\n");
        }
        if line != status {
            message.push_str(&format!("STATUS={line}\n"));
            status = line;
        }
        if watchdog.is_some() {
            message.push_str("WATCHDOG=1\n");
        }
        if !message.is_empty() {
            notifier.send(&message);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_is_for_this_process_only() {
        let ours = std::process::id().to_string();
        assert_eq!(
            watchdog(Some("30000000"), None),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            watchdog(Some("30000000"), Some(&ours)),
            Some(Duration::from_secs(30))
        );
        assert_eq!(watchdog(Some("30000000"), Some("1")), None);
        assert_eq!(watchdog(Some("0"), None), None);
        assert_eq!(watchdog(None, None), None);
        assert_eq!(watchdog(Some("soon"), None), None);
    }
}

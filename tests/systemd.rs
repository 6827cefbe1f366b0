//! Under systemd (`Type=notify`): the relay tells the socket in `NOTIFY_SOCKET` that it
//! is ready, keeps the watchdog fed, and says when it stops. The test binds that socket.

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use common::process::*;
use common::*;

/// Receives datagrams until one holds `wanted`; every message received so far.
fn receive_until(socket: &UnixDatagram, wanted: &str, seen: &mut Vec<String>) {
    let deadline = std::time::Instant::now() + WAIT;
    let mut buffer = [0u8; 4096];
    while !seen
        .iter()
        .any(|message| message.lines().any(|line| line == wanted))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no {wanted} within {WAIT:?}; received {seen:?}"
        );
        if let Ok(length) = socket.recv(&mut buffer) {
            seen.push(String::from_utf8_lossy(&buffer[..length]).into_owned());
        }
    }
}

#[tokio::test]
async fn notifies_ready_feeds_the_watchdog_and_says_stopping() {
    let env = TestEnv::new().await;
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("notify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("notify.sock");
    let _ = std::fs::remove_file(&path);
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let relay = spawn_relay(
        &env,
        &[
            ("NOTIFY_SOCKET", path.display().to_string()),
            ("WATCHDOG_USEC", "400000".to_owned()),
        ],
    );
    let mut seen = Vec::new();
    // Blocking here is fine: the relay is another process.
    receive_until(&socket, "READY=1", &mut seen);
    assert!(seen.iter().any(|m| m.contains("STATUS=ready")), "{seen:?}");
    // Fed at half the interval: several within a few intervals of READY.
    seen.clear();
    for _ in 0..3 {
        receive_until(&socket, "WATCHDOG=1", &mut seen);
        seen.retain(|m| !m.contains("WATCHDOG=1"));
    }
    assert_eq!(unsafe_kill(relay.id().unwrap() as i32, 15), 0);
    receive_until(&socket, "STOPPING=1", &mut seen);
    std::fs::remove_dir_all(&dir).unwrap();
}

//! The relay as a process serving HTTP, from a test: a free port, a GET, polling for a
//! status or a metric.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};

use super::{TestEnv, WAIT};

/// `itrelay run` with this test's settings and `extra`, serving HTTP on `port`; logs
/// dropped, killed when dropped.
pub fn spawn_serving(env: &TestEnv, port: u16, extra: &[(&str, &str)]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_itrelay"))
        .arg("run")
        .envs(env.env_vars())
        .env("ITRELAY__HTTP__ENABLED", "true")
        .env("ITRELAY__HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .envs(extra.iter().copied())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn itrelay run")
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GETs `path` from the relay's HTTP endpoint: status and body.
pub async fn get(port: u16, path: &str) -> Option<(u16, String)> {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    Some((status, body))
}

/// Polls `path` until it answers `status`.
pub async fn wait_for_status(port: u16, path: &str, status: u16) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some((got, _)) = get(port, path).await {
            if got == status {
                return;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path} never answered {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of the unlabelled metric `name` on the relay's `/metrics`, if it answers.
pub async fn metric(port: u16, name: &str) -> Option<i64> {
    let (_, text) = get(port, "/metrics").await?;
    text.lines().find_map(|line| {
        line.strip_prefix(name)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Polls `/metrics` until `name` is `value`.
pub async fn wait_for_metric(port: u16, name: &str, value: i64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while metric(port, name).await != Some(value) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} never became {value}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

//! Running the `itrelay` binary in tests: spawn it, call it, GET its HTTP endpoint.

use std::process::{Output, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

use super::{TestEnv, WAIT};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The variables that serve the HTTP endpoint on `port`.
pub fn http_on(port: u16) -> [(&'static str, String); 2] {
    [
        ("ITRELAY__HTTP__ENABLED", "true".to_owned()),
        ("ITRELAY__HTTP__LISTEN", format!("127.0.0.1:{port}")),
    ]
}

/// The variable that sends the relay's AMQP through `proxy`, with 1 s heartbeats so that a
/// cut is noticed quickly.
pub fn amqp_through(proxy: &super::proxy::Proxy) -> (&'static str, String) {
    (
        "ITRELAY__AMQP__URL",
        format!(
            "amqp://guest:guest@127.0.0.1:{}/%2f?heartbeat=1",
            proxy.port
        ),
    )
}

/// `itrelay run` with this test's settings and `extra`, serving HTTP on `port`; logs
/// dropped, killed when dropped.
pub fn spawn_serving(env: &TestEnv, port: u16, extra: &[(&str, &str)]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_itrelay"))
        .arg("run")
        .envs(env.env_vars())
        .envs(http_on(port))
        .envs(extra.iter().copied())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn itrelay run")
}

pub fn spawn_relay(env: &TestEnv, extra: &[(&str, String)]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_itrelay"))
        .args(["--log-format", "json", "run"])
        .envs(env.env_vars())
        .envs(extra.iter().map(|(k, v)| (*k, v.as_str())))
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn itrelay run")
}

pub async fn itrelay(env: &TestEnv, args: &[&str], extra: &[(&str, String)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_itrelay"))
        .args(args)
        .envs(env.env_vars())
        .envs(extra.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .await
        .expect("run itrelay")
}

/// GETs `path` from the relay's HTTP endpoint: status and body.
pub async fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let (status, _, body) = get_with(port, path, &[]).await?;
    Some((status, body))
}

/// GETs `path` with extra request `headers`: status, response headers and body.
pub async fn get_with(
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
) -> Option<(u16, String, String)> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let extra: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: test\r\n{extra}\r\n").as_bytes())
        .await
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    Some((status, head.to_owned(), body.to_owned()))
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

/// Sends `signal` to `pid` via the `kill` command (no libc dependency in the tests).
pub fn unsafe_kill(pid: i32, signal: i32) -> i32 {
    std::process::Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .map(|status| status.code().unwrap_or(1))
        .unwrap_or(1)
}

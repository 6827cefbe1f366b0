//! What a running relay tells its operators: `/readyz` names the failed check in text and
//! JSON, `/metrics` moves and passes `promtool`, in the format the scraper asks for, and
//! the Grafana dashboard and Prometheus rules under `deploy/` use only exported names.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use common::process::*;
use common::proxy::{Mode, Proxy};
use common::*;
use serde_json::Value;

/// The files whose metric names must all be exported.
const USERS_OF_METRICS: &[&str] = &[
    "deploy/grafana/itrelay-dashboard.json",
    "deploy/prometheus/itrelay-rules.yml",
];

/// The value of the first sample of `series` (a name, or a name with labels).
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

/// Polls `/metrics` until `done` holds of it; the last text.
async fn metrics_until(port: u16, what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, metrics) = get(port, "/metrics").await.unwrap_or_default();
        if done(&metrics) {
            return metrics;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never {what}:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `/readyz?format=json`, parsed: readiness and the names of the failed checks.
async fn readiness(port: u16) -> (bool, Vec<String>) {
    let (_, body) = get(port, "/readyz?format=json").await.expect("/readyz");
    let json: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    let failed = json["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .filter(|check| check["ok"] == false)
        .map(|check| check["name"].as_str().unwrap().to_owned())
        .collect();
    (json["ready"].as_bool().expect("ready"), failed)
}

/// Every name a sample line or a `# TYPE` line of the Prometheus text carries.
fn exported_names(metrics: &str) -> BTreeSet<String> {
    metrics
        .lines()
        .filter_map(|line| match line.strip_prefix("# TYPE ") {
            Some(rest) => rest.split_whitespace().next(),
            None if line.starts_with('#') => None,
            None => line.split(['{', ' ']).next(),
        })
        .map(str::to_owned)
        .collect()
}

/// Every `itrelay_*` or `process_*` metric name in `text`.
fn names_used(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let is_name = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_';
    for (start, _) in text.match_indices(['i', 'p']) {
        let preceded = text[..start].chars().next_back().is_some_and(is_name);
        let tail = &text[start..];
        if preceded || !(tail.starts_with("itrelay_") || tail.starts_with("process_")) {
            continue;
        }
        let end = tail.find(|c| !is_name(c)).unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
    }
    names
}

/// `promtool check metrics` on `text`: `None` when promtool is not installed.
fn promtool(text: &str) -> Option<std::process::Output> {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .ok()?;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    Some(child.wait_with_output().unwrap())
}

#[tokio::test]
async fn readiness_metrics_and_dashboards_tell_the_truth() {
    let env = TestEnv::new().await;
    env.seed().await;
    let rabbitmq = Proxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let port = free_port();
    let [enabled, listen] = http_on(port);
    let extra = [
        enabled,
        listen,
        ("ITRELAY__SCAN__ENABLED", "true".to_owned()),
        ("ITRELAY__SCAN__INTERVAL_SECS", "1".to_owned()),
        amqp_through(&rabbitmq),
    ];
    let relay = spawn_relay(&env, &extra);
    wait_for_status(port, "/readyz", 200).await;

    // Ready: every check passes, in JSON (asked by query or by Accept) and in text.
    assert_eq!(readiness(port).await, (true, vec![]));
    let (status, head, body) = get_with(port, "/readyz", &[("Accept", "application/json")])
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(head.contains("application/json"), "{head}");
    let json: Value = serde_json::from_str(&body).unwrap();
    let names: Vec<&str> = json["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "postgres",
            "rabbitmq",
            "leadership",
            "canary",
            "broker_blocked"
        ]
    );
    let (_, text) = get(port, "/readyz").await.unwrap();
    assert!(
        text.starts_with("ready\n") && text.contains("ok   leadership: leading"),
        "{text}"
    );

    // Counters exist at 0 before anything happened.
    let (_, first) = get(port, "/metrics").await.unwrap();
    for series in [
        "itrelay_reconnects_total{service=\"postgres\"} 0",
        "itrelay_reconnects_total{service=\"rabbitmq\"} 0",
        "itrelay_events_relayed_total{event_type=\"it_ticket_created\",module=\"PF-10\"} 0",
        "itrelay_build_info{version=\"",
    ] {
        assert!(first.contains(series), "{series} missing from\n{first}");
    }

    // A delivered and a dead-lettered event; scans run.
    env.execute(&format!(
        "UPDATE it_assets SET status = 'disposed', disposal_method = 'burned', disposal_date = '2026-03-02',
             updated_by = '{ACTOR}' WHERE asset_id = '{ASSET}';
         INSERT INTO it_tickets (organization_id, ticket_number, category, priority, subject, description, requester_id)
             VALUES ('{ORG}', 'TCK-T1', 'network', 'medium', 'VPN', 'VPN drops', '{EMPLOYEE}')"
    ))
    .await;
    let metrics = metrics_until(port, "counted the failed row and two scans", |m| {
        sample(m, "itrelay_outbox_failed_rows") == Some(1.0)
            && sample(m, "itrelay_scan_runs_total").is_some_and(|runs| runs >= 2.0)
            && sample(
                m,
                "itrelay_events_relayed_total{event_type=\"it_ticket_created\",module=\"PF-10\"}",
            ) == Some(1.0)
    })
    .await;
    assert_eq!(sample(&metrics, "itrelay_scan_failures_total"), Some(0.0));
    assert!(sample(&metrics, "process_resident_memory_bytes").is_some_and(|rss| rss > 0.0));
    assert!(sample(&metrics, "process_open_fds").is_some_and(|fds| fds > 0.0));
    assert!(
        metrics.contains("itrelay_events_dead_lettered_total{"),
        "{metrics}"
    );

    // The Prometheus text by default, OpenMetrics when asked; promtool finds nothing.
    let (_, head, _) = get_with(port, "/metrics", &[]).await.unwrap();
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    let (_, head, openmetrics) = get_with(
        port,
        "/metrics",
        &[(
            "Accept",
            "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
        )],
    )
    .await
    .unwrap();
    assert!(head.contains("application/openmetrics-text"), "{head}");
    assert!(openmetrics.ends_with("# EOF\n"), "{openmetrics}");
    match promtool(&metrics) {
        None => println!("promtool is not installed: `promtool check metrics` skipped"),
        Some(output) => assert!(
            output.status.success() && output.stdout.is_empty() && output.stderr.is_empty(),
            "promtool check metrics: {}{}\n{metrics}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    }

    // The dashboard and the alert rules use exported names only.
    let exported = exported_names(&metrics);
    for file in USERS_OF_METRICS {
        let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file))
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        let used = names_used(&text);
        assert!(used.len() >= 6, "{file}: only {used:?}");
        let unknown: Vec<&String> = used.difference(&exported).collect();
        assert!(
            unknown.is_empty(),
            "{file} uses names the relay does not export: {unknown:?}"
        );
    }

    // RabbitMQ unreachable: not ready, and /readyz says why.
    rabbitmq.set(Mode::Refuse);
    wait_for_status(port, "/readyz", 503).await;
    let (ready, failed) = readiness(port).await;
    assert!(!ready);
    assert!(failed.contains(&"rabbitmq".to_owned()), "{failed:?}");
    let (_, text) = get(port, "/readyz").await.unwrap();
    assert!(
        text.starts_with("not ready\n") && text.contains("FAIL rabbitmq: not connected"),
        "{text}"
    );
    rabbitmq.set(Mode::Forward);
    wait_for_status(port, "/readyz", 200).await;
    drop(relay);
}

#[test]
fn names_are_found_whole() {
    let used = names_used("rate(itrelay_events_relayed_total[5m]) / x_itrelay_no + process_open_fds{a=\"b\"} itrelay.outbox");
    assert_eq!(
        used.into_iter().collect::<Vec<_>>(),
        ["itrelay_events_relayed_total", "process_open_fds"]
    );
}

/// Runs the relay with `args` until it leads, stops it with SIGTERM, and returns its
/// stderr: the logs as a file or a journal would get them (not a terminal).
async fn logs_of_a_run(env: &TestEnv, args: &[&str]) -> String {
    use tokio::io::AsyncReadExt;
    let port = free_port();
    let mut relay = tokio::process::Command::new(env!("CARGO_BIN_EXE_itrelay"))
        .args(args)
        .envs(env.env_vars())
        .envs(http_on(port))
        // Postgres here trusts local connections: the password is only carried.
        .env("ITRELAY__POSTGRES__PASSWORD", "pg-secret-4711")
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn itrelay run");
    wait_for_status(port, "/readyz", 200).await;
    assert_eq!(unsafe_kill(relay.id().unwrap() as i32, 15), 0);
    let status = tokio::time::timeout(WAIT, relay.wait())
        .await
        .expect("exits after SIGTERM")
        .unwrap();
    assert_eq!(status.code(), Some(0));
    let mut logs = String::new();
    let mut stderr = relay.stderr.take().unwrap();
    stderr.read_to_string(&mut logs).await.unwrap();
    assert!(
        !logs.contains("pg-secret-4711"),
        "a password in the logs:\n{logs}"
    );
    logs
}

#[tokio::test]
async fn logs_say_start_and_stop_without_colour_or_secrets() {
    let env = TestEnv::new().await;
    let text = logs_of_a_run(&env, &["--log-format", "text", "run"]).await;
    assert!(
        !text.contains('\u{1b}'),
        "colour codes off a terminal:\n{text}"
    );
    let start = text
        .lines()
        .find(|line| line.contains("itrelay starting"))
        .unwrap_or_else(|| panic!("no start line:\n{text}"));
    for part in [
        concat!("version=\"", env!("CARGO_PKG_VERSION"), "\""),
        "listen=127.0.0.1:",
        "config=Settings {",
        "batch_size",
    ] {
        assert!(start.contains(part), "{part} missing from {start}");
    }
    // Stopped after the shutdown began (the AMQP client may still log its own close).
    let shutting_down = text.find("shutting down").expect("shutdown logged");
    assert!(text[shutting_down..].contains("itrelay stopped"), "{text}");

    let json = logs_of_a_run(&env, &["--log-format", "json", "run"]).await;
    let mut messages = Vec::new();
    for line in json.lines() {
        let value: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert_eq!(line.matches("\"message\":").count(), 1, "{line}");
        messages.push(value["message"].as_str().unwrap_or_default().to_owned());
    }
    assert_eq!(
        messages.first().map(String::as_str),
        Some("itrelay starting"),
        "{json}"
    );
    assert!(messages.iter().any(|m| m == "itrelay stopped"), "{json}");
}

#[tokio::test]
async fn readiness_fails_while_the_broker_blocks_publishing() {
    use common::proxy::{connection_blocked, connection_unblocked};
    use tokio::io::AsyncReadExt;
    let env = TestEnv::new().await;
    let rabbitmq = Proxy::start_amqp("127.0.0.1:5672".parse().unwrap()).await;
    let port = free_port();
    let [enabled, listen] = http_on(port);
    let mut relay = spawn_relay(&env, &[enabled, listen, amqp_through(&rabbitmq)]);
    wait_for_status(port, "/readyz", 200).await;

    // A memory alarm: RabbitMQ blocks the publishing connection.
    rabbitmq.inject(connection_blocked("low on memory"));
    wait_for_status(port, "/readyz", 503).await;
    assert_eq!(
        readiness(port).await,
        (false, vec!["broker_blocked".to_owned()])
    );
    let (_, metrics) = get(port, "/metrics").await.unwrap();
    assert_eq!(
        sample(&metrics, "itrelay_broker_blocked"),
        Some(1.0),
        "{metrics}"
    );

    // The alarm clears.
    rabbitmq.inject(connection_unblocked());
    wait_for_status(port, "/readyz", 200).await;

    assert_eq!(unsafe_kill(relay.id().unwrap() as i32, 15), 0);
    tokio::time::timeout(WAIT, relay.wait())
        .await
        .expect("exits after SIGTERM")
        .unwrap();
    let mut logs = String::new();
    let mut stderr = relay.stderr.take().unwrap();
    stderr.read_to_string(&mut logs).await.unwrap();
    let count = |text: &str| logs.lines().filter(|line| line.contains(text)).count();
    assert_eq!(count("RabbitMQ blocks publishing"), 1, "{logs}");
    assert_eq!(count("the broker lifted its block"), 1, "{logs}");
}

//! Operating the relay: /healthz, /readyz and /metrics on a running process, readiness
//! flipping with RabbitMQ, graceful shutdown on SIGTERM, JSON logs, and the operator
//! commands (status, dead-letters, replay) and retention.

mod common;

use std::time::Duration;

use common::process::*;
use common::proxy::{Mode, Proxy};
use common::*;
use tokio::io::AsyncReadExt;

fn ticket(number: &str) -> String {
    format!(
        "INSERT INTO it_tickets (organization_id, ticket_number, category, priority, subject, description, requester_id)
             VALUES ('{ORG}', '{number}', 'software', 'low', 'S', 'D', '{EMPLOYEE}')"
    )
}

#[tokio::test]
async fn health_readiness_metrics_and_graceful_shutdown() {
    let env = TestEnv::new().await;
    env.seed().await;
    let rabbitmq = Proxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let port = free_port();
    let [enabled, listen] = http_on(port);
    let extra = [enabled, listen, amqp_through(&rabbitmq)];
    let mut relay = spawn_relay(&env, &extra);
    wait_for_status(port, "/healthz", 200).await;
    wait_for_status(port, "/readyz", 200).await;
    let probe = itrelay(&env, &["healthcheck"], &extra).await;
    assert!(probe.status.success(), "{probe:?}");

    env.execute(&ticket("TCK-1")).await;
    env.wait_until_settled(1).await;
    let (_, metrics) = get(port, "/metrics").await.unwrap();
    for expected in [
        "itrelay_events_relayed_total{event_type=\"it_ticket_created\",module=\"PF-10\"} 1",
        "itrelay_leader 1",
        "itrelay_connected{service=\"rabbitmq\"} 1",
        "itrelay_publish_seconds_bucket",
        "itrelay_confirm_seconds_count",
        "itrelay_outbox_backlog_rows",
        "itrelay_outbox_oldest_age_seconds",
    ] {
        assert!(
            metrics.contains(expected),
            "{expected} missing from\n{metrics}"
        );
    }

    // RabbitMQ unreachable: not ready; back: ready again, and the event written meanwhile
    // is delivered.
    rabbitmq.set(Mode::Refuse);
    wait_for_status(port, "/readyz", 503).await;
    assert_eq!(get(port, "/healthz").await.unwrap().0, 200);
    env.execute(&ticket("TCK-2")).await;
    rabbitmq.set(Mode::Forward);
    wait_for_status(port, "/readyz", 200).await;
    env.wait_until_settled(2).await;
    let (_, metrics) = get(port, "/metrics").await.unwrap();
    assert!(
        metrics.contains("itrelay_reconnects_total{service=\"rabbitmq\"}"),
        "{metrics}"
    );

    // SIGTERM: exit 0, leadership released, nothing lost.
    env.execute(&ticket("TCK-3")).await;
    let pid = relay.id().expect("pid") as i32;
    assert_eq!(unsafe_kill(pid, 15), 0);
    let status = tokio::time::timeout(WAIT, relay.wait())
        .await
        .expect("exits after SIGTERM")
        .unwrap();
    assert_eq!(status.code(), Some(0));
    let mut logs = String::new();
    relay
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .await
        .unwrap();
    // The server ends the relay's backend a moment after the process has exited.
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut leaders = 1;
    while leaders > 0 && tokio::time::Instant::now() < deadline {
        leaders = env
            .count("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = (SELECT oid FROM pg_database WHERE datname = current_database())")
            .await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(leaders, 0, "leader lock still held after exit");
    let restarted = spawn_relay(&env, &[]);
    let outcome = env.reconcile("PF-10", 3).await;
    outcome.assert_nothing_lost();
    drop(restarted);

    // Logs are JSON lines; the shutdown is logged.
    for line in logs.lines() {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
    }
    assert!(logs.contains("shutting down"), "{logs}");
}

#[tokio::test]
async fn healthcheck_fails_when_no_relay_answers() {
    let env = TestEnv::new().await;
    let port = free_port();
    let output = itrelay(
        &env,
        &["healthcheck"],
        &[("ITRELAY__HTTP__LISTEN", format!("127.0.0.1:{port}"))],
    )
    .await;
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("/healthz"));
}

#[tokio::test]
async fn status_dead_letters_and_replay() {
    let mut env = TestEnv::new().await;
    env.seed().await;
    // Tickets go to a module nobody listens to yet: they are returned and dead-lettered.
    let routes = [("ITRELAY__ROUTES__IT_TICKET_CREATED", "LATER")];
    env.start_relay(&routes);
    let routes_env: Vec<(&str, String)> = routes.iter().map(|(k, v)| (*k, v.to_string())).collect();
    env.execute(&ticket("TCK-1")).await;
    env.execute(&ticket("TCK-2")).await;
    env.execute(&format!(
        "UPDATE it_assets SET status = 'disposed', disposal_method = 'recycled', disposal_date = '2026-03-02',
             updated_by = '{ACTOR}' WHERE asset_id = '{ASSET}'"
    ))
    .await;
    env.wait_until_settled(3).await;

    let status = itrelay(&env, &["status", "--json"], &routes_env).await;
    assert!(status.status.success(), "{status:?}");
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["pending"], 0);
    assert_eq!(status["failed"], 2);
    assert_eq!(status["delivered"], 1);
    assert_eq!(status["last_delivered"]["event_type"], "it_asset_disposed");
    assert!(status["leader"]["pid"].is_number(), "{status}");
    let text = itrelay(&env, &["status"], &routes_env).await;
    assert!(String::from_utf8_lossy(&text.stdout).contains("dead-lettered   2 failed"));

    let listed = itrelay(&env, &["dead-letters", "--json"], &routes_env).await;
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed[0]["reason"]
        .as_str()
        .unwrap()
        .starts_with("unroutable:"));
    let first_id = listed[0]["event_id"].as_str().unwrap().to_owned();

    // Someone now listens: replay by id, then by type; same message ids.
    env.bind_queue(&env.exchange("LATER")).await;
    let refused = itrelay(&env, &["replay"], &routes_env).await;
    assert!(!refused.status.success());
    let by_id = itrelay(&env, &["replay", "--event-id", &first_id], &routes_env).await;
    assert!(
        String::from_utf8_lossy(&by_id.stdout).contains("1 events queued"),
        "{by_id:?}"
    );
    env.wait_until_settled(3).await;
    let by_type = itrelay(
        &env,
        &["replay", "--type", "it_ticket_created"],
        &routes_env,
    )
    .await;
    assert!(
        String::from_utf8_lossy(&by_type.stdout).contains("1 events queued"),
        "{by_type:?}"
    );
    env.wait_until_settled(3).await;
    let received = env.drain(&env.exchange("LATER")).await;
    let mut ids: Vec<String> = received.iter().map(Received::message_id).collect();
    ids.sort();
    let mut expected: Vec<String> = listed
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect();
    expected.sort();
    assert_eq!(ids, expected);

    // Delivered events are replayed only when asked, by time range.
    let since = "2000-01-01T00:00:00Z";
    let again = itrelay(
        &env,
        &[
            "replay",
            "--since",
            since,
            "--type",
            "it_asset_disposed",
            "--include-delivered",
        ],
        &routes_env,
    )
    .await;
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("1 events queued"),
        "{again:?}"
    );
    env.wait_until_settled(3).await;
    assert_eq!(env.drain(&env.exchange("FA")).await.len(), 2);
}

#[tokio::test]
async fn retention_removes_only_old_delivered_rows() {
    let env = TestEnv::new().await;
    // Partitions of 2,500 ids; the old delivered rows fill [2500, 5000) and the others
    // share the next partition, the relay's floor at the pending one.
    env.execute(
        "DROP TABLE itrelay.events_0, itrelay.events_100000, itrelay.events_200000;
         UPDATE itrelay.progress SET partition_span = 2500, floor = 5002;
         ALTER TABLE itrelay.events ALTER COLUMN id RESTART WITH 2500;
         SELECT itrelay.extend_partitions(2, 2500);
         INSERT INTO itrelay.outbox (event_type, payload, source_table, state, delivered_at)
         SELECT 'it_ticket_created', '{}', 'it_tickets', 'delivered', now() - interval '10 days'
         FROM generate_series(1, 2500);
         INSERT INTO itrelay.outbox (event_type, payload, source_table, state, delivered_at)
         VALUES ('it_ticket_created', '{}', 'it_tickets', 'delivered', now() - interval '1 hour');
         INSERT INTO itrelay.outbox (event_type, payload, source_table, state, last_error)
         VALUES ('it_ticket_created', '{}', 'it_tickets', 'failed', 'validate: old');
         INSERT INTO itrelay.outbox (event_type, payload, source_table)
         VALUES ('it_ticket_created', '{}', 'it_tickets');",
    )
    .await;
    let removed = itrelay::retention::prune(&env.client, 24, 1000)
        .await
        .unwrap();
    assert_eq!(removed, 2500);
    assert_eq!(
        itrelay::retention::prune(&env.client, 24, 1000)
            .await
            .unwrap(),
        0,
        "what is left stays"
    );
    assert_eq!(
        env.outbox_states().await,
        [
            ("delivered".to_owned(), 1),
            ("failed".to_owned(), 1),
            ("pending".to_owned(), 1)
        ]
        .into_iter()
        .collect()
    );
}

#[tokio::test]
async fn canary_round_trips_and_readiness_fails_while_it_is_stuck() {
    let env = TestEnv::new().await;
    let port = free_port();
    let extra = [
        ("ITRELAY__HTTP__ENABLED", "true".to_owned()),
        ("ITRELAY__HTTP__LISTEN", format!("127.0.0.1:{port}")),
        ("ITRELAY__CANARY__ENABLED", "true".to_owned()),
        ("ITRELAY__CANARY__INTERVAL_SECS", "1".to_owned()),
        ("ITRELAY__CANARY__STALL_AFTER_SECS", "2".to_owned()),
        ("ITRELAY__POSTGRES__QUERY_TIMEOUT_SECS", "60".to_owned()),
        ("ITRELAY__RELAY__LEASE_SECS", "90".to_owned()),
    ];
    let relay = spawn_relay(&env, &extra);
    wait_for_status(port, "/readyz", 200).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, metrics) = get(port, "/metrics").await.unwrap();
        let back = metrics
            .lines()
            .find_map(|line| line.strip_prefix("itrelay_canary_seconds_count "))
            .and_then(|count| count.trim().parse::<u64>().ok())
            .unwrap_or(0);
        if back >= 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no canary came back:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (exchange, messages) in env.drain_all().await {
        assert!(messages.is_empty(), "a canary reached {exchange}");
    }

    // The outbox locked: canaries cannot get through, readiness fails; unlocked: back.
    let blocker = connect(&env.db_url).await;
    blocker
        .batch_execute("BEGIN; LOCK TABLE itrelay.outbox IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    wait_for_status(port, "/readyz", 503).await;
    blocker.batch_execute("COMMIT").await.unwrap();
    wait_for_status(port, "/readyz", 200).await;
    drop(relay);
}

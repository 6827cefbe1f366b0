//! WAL capture (`postgres.capture = "wal"`) against a Postgres this test starts with
//! `wal_level = logical` (the shared server keeps its own settings): events reach
//! consumers in commit order with the body the outbox mode gives, rollbacks emit nothing,
//! dead letters and replay work from the table, `status` and `/metrics` show the slot,
//! a relay killed or a broker cut loses nothing, and switching modes either way loses
//! nothing. On the shared server (`wal_level = replica`) the relay refuses WAL capture.

mod common;

use std::time::Duration;

use common::process::{amqp_through, free_port, itrelay, metric, spawn_serving};
use common::proxy::{Mode, Proxy};
use common::server::LocalPostgres;
use common::*;
use itrelay::config::Capture;
use itrelay::wal;
use tokio::process::{Child, Command};

const WAL: (&str, &str) = ("ITRELAY__POSTGRES__CAPTURE", "wal");

async fn logical_server() -> LocalPostgres {
    LocalPostgres::start(&["wal_level=logical"]).await
}

/// A test database on `server` with itrelay installed under WAL capture, seeded.
async fn wal_env(server: &LocalPostgres) -> TestEnv {
    let env = TestEnv::on_server(&server.admin_url(), &[WAL]).await;
    wal::install(&env.client, Capture::Wal, WAIT)
        .await
        .expect("switch to WAL capture");
    env.seed().await;
    env
}

/// A ticket insert with a fixed id: one `it_ticket_created` event for PF-10.
fn ticket(id: &str, number: &str) -> String {
    format!(
        "INSERT INTO it_tickets (ticket_id, organization_id, ticket_number, category, priority, subject, description, requester_id)
             VALUES ('{id}', '{ORG}', '{number}', 'network', 'medium', 'VPN', 'VPN drops', '{EMPLOYEE}');"
    )
}

fn numbers(messages: &[Received]) -> Vec<String> {
    messages
        .iter()
        .map(|m| {
            m.body["ticket_number"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

fn spawn_run(env: &TestEnv, extra: &[(&str, String)]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_itrelay"))
        .arg("run")
        .envs(env.env_vars())
        .envs(extra.iter().map(|(k, v)| (*k, v.as_str())))
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn itrelay run")
}

#[tokio::test]
async fn events_arrive_in_commit_order_with_the_outbox_body_and_rollbacks_emit_nothing() {
    let server = logical_server().await;
    let mut env = wal_env(&server).await;
    env.start_relay(&[]);
    let (first, second, third) = (
        "a0000000-0000-4000-8000-000000000001",
        "a0000000-0000-4000-8000-000000000002",
        "a0000000-0000-4000-8000-000000000003",
    );
    // The first transaction writes first and commits after the second.
    let early = connect(&env.db_url).await;
    early.batch_execute("BEGIN").await.unwrap();
    early
        .batch_execute(&ticket(first, "T-first"))
        .await
        .unwrap();
    env.execute(&ticket(second, "T-second")).await;
    early.batch_execute("COMMIT").await.unwrap();
    env.execute(&format!(
        "BEGIN; {} ROLLBACK;",
        ticket("a0000000-0000-4000-8000-0000000000ff", "T-rolled-back")
    ))
    .await;
    env.execute(&ticket(third, "T-third")).await;
    env.wait_until_settled(3).await;
    let messages = env.drain(&env.exchange("PF-10")).await;
    assert_eq!(numbers(&messages), ["T-second", "T-first", "T-third"]);
    assert_eq!(env.count("SELECT count(*) FROM itrelay.events").await, 3);
    let event_id: String = env
        .client
        .query_one(
            "SELECT event_id::text FROM itrelay.events WHERE payload ->> 'ticket_number' = 'T-second'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(messages[0].message_id(), event_id);

    // The same write under outbox capture, on a database of the same server.
    let mut outbox = TestEnv::on_server(&server.admin_url(), &[]).await;
    outbox.seed().await;
    outbox.start_relay(&[]);
    outbox.execute(&ticket(second, "T-second")).await;
    outbox.wait_until_settled(1).await;
    let from_outbox = outbox.drain(&outbox.exchange("PF-10")).await;
    assert_eq!(from_outbox.len(), 1);
    assert_eq!(
        without_timestamp(&messages[0].body),
        without_timestamp(&from_outbox[0].body)
    );
    for header in ["schema_ref", "source_table", "organization_id"] {
        assert_eq!(
            messages[0].header(header),
            from_outbox[0].header(header),
            "{header}"
        );
    }
    outbox.stop_relay().await;
    env.stop_relay().await;
}

#[tokio::test]
async fn dead_letters_replay_status_and_the_retained_wal_metric() {
    let server = logical_server().await;
    let mut env = wal_env(&server).await;
    // Tickets go to a module nobody listens to yet: returned, dead-lettered for it.
    let routes = [("ITRELAY__ROUTES__IT_TICKET_CREATED", "LATER")];
    let routes_env: Vec<(&str, String)> = routes.iter().map(|(k, v)| (*k, v.to_string())).collect();
    env.start_relay(&routes);
    env.stop_relay().await;
    let port = free_port();
    let mut relay = spawn_serving(&env, port, &routes);
    env.execute(&ticket("b0000000-0000-4000-8000-000000000001", "T-1"))
        .await;
    env.wait_until_settled(1).await;
    let failed: String = env
        .client
        .query_one(
            "SELECT event_id::text FROM itrelay.outbox WHERE state = 'failed'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let dead = env.drain(&env.dead_letter_exchange()).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].message_id(), failed);

    let status = itrelay(&env, &["status", "--json"], &routes_env).await;
    assert!(status.status.success(), "{status:?}");
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["failed"], 1, "{status}");
    assert_eq!(status["capture"], "wal", "{status}");
    assert!(
        status["wal_slot"]["name"]
            .as_str()
            .is_some_and(|name| name.starts_with("itrelay_")),
        "{status}"
    );
    assert!(
        status["wal_slot"]["retained_bytes"].as_i64() > Some(0),
        "{status}"
    );
    assert_eq!(status["wal_slot"]["lost"], false, "{status}");
    let text = itrelay(&env, &["status"], &routes_env).await;
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("capture         wal, slot itrelay_"),
        "{text}"
    );
    assert!(text.contains("bytes of WAL retained"), "{text}");

    let deadline = tokio::time::Instant::now() + WAIT;
    while metric(port, "itrelay_wal_retained_bytes")
        .await
        .unwrap_or(0)
        <= 0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "itrelay_wal_retained_bytes never above 0"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Someone now listens: the replay sends the event again, from the table.
    env.bind_queue(&env.exchange("LATER")).await;
    let replayed = itrelay(&env, &["replay", "--event-id", &failed], &routes_env).await;
    assert!(
        String::from_utf8_lossy(&replayed.stdout).contains("1 events queued"),
        "{replayed:?}"
    );
    env.wait_until_settled(1).await;
    let received = env.drain(&env.exchange("LATER")).await;
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].message_id(), failed);
    relay.start_kill().ok();
    relay.wait().await.ok();
}

#[tokio::test]
async fn relays_killed_mid_stream_lose_nothing_and_a_standby_takes_over() {
    let server = logical_server().await;
    let env = wal_env(&server).await;
    let total = 600;
    let writer = tokio::spawn(write_tickets(env.db_url.clone(), 0, total, Duration::ZERO));
    let mut relay = spawn_run(&env, &[]);
    let standby = spawn_run(&env, &[]);
    for kill_after in [100, 300] {
        env.wait_delivered(kill_after, WAIT).await;
        relay.start_kill().expect("SIGKILL");
        relay.wait().await.expect("reap");
        relay = spawn_run(&env, &[]);
    }
    writer.await.unwrap();
    let outcome = env.reconcile("PF-10", total as i64).await;
    println!(
        "| WAL capture: relay killed (SIGKILL) twice mid-stream, standby and restart | {} | {} | {} | – |",
        outcome.committed, outcome.lost, outcome.duplicates
    );
    outcome.assert_nothing_lost();
    drop(standby);
    relay.start_kill().ok();
}

#[tokio::test]
async fn a_broker_outage_loses_nothing() {
    let server = logical_server().await;
    let env = wal_env(&server).await;
    let proxy = Proxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let mut relay = spawn_run(&env, &[amqp_through(&proxy)]);
    let total = 300;
    let writer = tokio::spawn(write_tickets(
        env.db_url.clone(),
        0,
        total,
        Duration::from_millis(2),
    ));
    env.wait_delivered(50, WAIT).await;
    proxy.set(Mode::Refuse);
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.set(Mode::Forward);
    writer.await.unwrap();
    let outcome = env.reconcile("PF-10", total as i64).await;
    println!(
        "| WAL capture: RabbitMQ down 2 s | {} | {} | {} | – |",
        outcome.committed, outcome.lost, outcome.duplicates
    );
    outcome.assert_nothing_lost();
    relay.start_kill().ok();
}

#[tokio::test]
async fn switching_modes_either_way_relays_every_event_in_order() {
    let server = logical_server().await;
    let mut env = TestEnv::on_server(&server.admin_url(), &[]).await;
    env.seed().await;
    // Outbox capture, relay stopped: events wait as rows.
    write_tickets(env.db_url.clone(), 0, 5, Duration::ZERO).await;
    wal::install(&env.client, Capture::Wal, WAIT)
        .await
        .expect("to WAL");
    write_tickets(env.db_url.clone(), 5, 5, Duration::ZERO).await;
    assert_eq!(env.count("SELECT count(*) FROM itrelay.events").await, 5);
    env.start_relay(&[WAL]);
    env.wait_until_settled(10).await;
    env.stop_relay().await;
    // WAL capture, relay stopped: events wait in the slot; the switch moves them first.
    write_tickets(env.db_url.clone(), 10, 5, Duration::ZERO).await;
    wal::install(&env.client, Capture::Outbox, WAIT)
        .await
        .expect("to the outbox");
    assert_eq!(
        env.count("SELECT count(*) FROM pg_replication_slots").await,
        0,
        "the slot is dropped"
    );
    write_tickets(env.db_url.clone(), 15, 5, Duration::ZERO).await;
    env.start_relay(&[("ITRELAY__POSTGRES__CAPTURE", "outbox")]);
    env.wait_until_settled(20).await;
    let expected: Vec<String> = (0..20).map(|n| format!("TCK-{n}")).collect();
    assert_eq!(numbers(&env.drain(&env.exchange("PF-10")).await), expected);
    env.stop_relay().await;
}

#[tokio::test]
async fn without_logical_wal_the_relay_and_install_refuse_naming_the_key() {
    // The shared server runs with wal_level = replica.
    let env = TestEnv::new().await;
    let run = Command::new(env!("CARGO_BIN_EXE_itrelay"))
        .arg("run")
        .envs(env.env_vars())
        .env(WAL.0, WAL.1)
        .kill_on_drop(true)
        .output();
    let run = tokio::time::timeout(WAIT, run)
        .await
        .expect("the relay stops")
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "{stderr}");
    assert!(
        stderr.contains("postgres.capture is \"wal\" but the server runs with wal_level = replica"),
        "{stderr}"
    );
    let install = itrelay(&env, &["install"], &[(WAL.0, WAL.1.to_owned())]).await;
    let stderr = String::from_utf8_lossy(&install.stderr);
    assert!(!install.status.success(), "{stderr}");
    assert!(stderr.contains("postgres.capture"), "{stderr}");
    assert!(stderr.contains("wal_level = logical"), "{stderr}");
    assert_eq!(
        env.count("SELECT count(*) FROM itrelay.settings WHERE capture = 'outbox'")
            .await,
        1
    );
}

#[tokio::test]
async fn a_switch_back_waits_for_open_wal_transactions_and_keeps_their_events() {
    let server = logical_server().await;
    let env = wal_env(&server).await;
    let open = connect(&env.db_url).await;
    open.batch_execute("BEGIN").await.unwrap();
    open.batch_execute(&ticket("c0000000-0000-4000-8000-000000000001", "T-open"))
        .await
        .unwrap();
    let switcher = connect(&env.db_url).await;
    let switch = tokio::spawn(async move {
        wal::install(&switcher, Capture::Outbox, WAIT)
            .await
            .map_err(|e| format!("{e:#}"))
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !switch.is_finished(),
        "the switch did not wait for the open transaction"
    );
    open.batch_execute("COMMIT").await.unwrap();
    tokio::time::timeout(WAIT, switch)
        .await
        .expect("the switch ends once the transaction has")
        .unwrap()
        .expect("switch to the outbox");
    let moved = env
        .count("SELECT count(*) FROM itrelay.events WHERE payload ->> 'ticket_number' = 'T-open'")
        .await;
    assert_eq!(moved, 1, "the open transaction's event was moved");
    assert_eq!(
        env.count("SELECT count(*) FROM pg_replication_slots").await,
        0
    );
}

#[tokio::test]
async fn uninstall_refuses_while_the_slot_holds_events_and_keeps_the_slot() {
    let server = logical_server().await;
    let env = wal_env(&server).await;
    env.execute(&ticket("d0000000-0000-4000-8000-000000000001", "T-unread"))
        .await;
    let refused = itrelay(&env, &["uninstall"], &[]).await;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(stderr.contains("undelivered events"), "{stderr}");
    assert_eq!(
        env.count("SELECT count(*) FROM pg_replication_slots").await,
        1,
        "the slot survives a refused uninstall"
    );
    assert_eq!(
        env.count("SELECT count(*) FROM itrelay.settings WHERE capture = 'wal'")
            .await,
        1
    );
    let forced = itrelay(&env, &["uninstall", "--force"], &[]).await;
    assert!(forced.status.success(), "{forced:?}");
    assert_eq!(
        env.count("SELECT count(*) FROM pg_replication_slots").await,
        0,
        "uninstall drops the slot"
    );
}

#[tokio::test]
async fn one_transaction_too_large_to_move_within_the_query_timeout_is_moved_whole() {
    let server = logical_server().await;
    let mut env = wal_env(&server).await;
    env.start_relay(&[]);
    env.stop_relay().await;
    let total = 30_000;
    env.execute(&format!(
        "INSERT INTO it_tickets (ticket_id, organization_id, ticket_number, category, priority, subject, description, requester_id)
         SELECT gen_random_uuid(), '{ORG}', 'T-' || lpad(n::text, 6, '0'), 'network', 'medium', 'VPN', 'VPN drops', '{EMPLOYEE}'
         FROM generate_series(1, {total}) AS n"
    ))
    .await;
    // The move waits on this lock for 3 s, standing for a transaction far larger than
    // this machine moves in the 1 s that bounds every other query.
    let holder = connect(&env.db_url).await;
    holder
        .batch_execute("BEGIN; SELECT * FROM itrelay.wal_progress FOR UPDATE")
        .await
        .unwrap();
    let port = free_port();
    let mut relay = spawn_serving(
        &env,
        port,
        &[("ITRELAY__POSTGRES__QUERY_TIMEOUT_SECS", "1")],
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    holder.batch_execute("COMMIT").await.unwrap();
    env.wait_until_settled_within(total, Duration::from_secs(180))
        .await;
    // Moved in one go: no session was given up on, as one would be for a move cut short
    // by the query timeout.
    assert_eq!(
        metric(port, "itrelay_reconnects_total{service=\"postgres\"}").await,
        Some(0)
    );
    let out_of_order = env
        .count(
            "SELECT count(*) FROM (
                 SELECT payload ->> 'ticket_number' AS number,
                        lag(payload ->> 'ticket_number') OVER (ORDER BY id) AS before
                 FROM itrelay.events) AS e
             WHERE before > number",
        )
        .await;
    assert_eq!(out_of_order, 0, "events out of commit order");
    let outcome = env.reconcile("PF-10", total).await;
    println!(
        "| WAL capture: one transaction of {total} events, its move held 3 s, queries bounded by 1 s | {} | {} | {} | – |",
        outcome.committed, outcome.lost, outcome.duplicates
    );
    outcome.assert_nothing_lost();
    relay.start_kill().ok();
    relay.wait().await.ok();
}

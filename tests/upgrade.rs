//! Upgrades: `install` brings the previous release's schema (kept as a fixture,
//! `tests/fixtures/install-v1.sql`) to this version in place, keeping pending events that
//! the new relay then delivers; it refuses to downgrade, and `run` refuses a schema older
//! than its own, naming the command that fixes it.

mod common;

use common::*;

const RELEASED_INSTALL: &str = include_str!("fixtures/install-v1.sql");

/// This test's database with the previous release installed instead of this one.
async fn previous_release() -> TestEnv {
    let env = TestEnv::new().await;
    env.seed().await;
    itrelay::sql::uninstall(&env.client, true)
        .await
        .expect("uninstall this version");
    env.execute(RELEASED_INSTALL).await;
    env
}

#[tokio::test]
async fn install_upgrades_the_previous_release_and_its_pending_events_are_delivered() {
    let mut env = previous_release().await;
    insert_tickets(&env.client, "OLD", 3).await;
    assert_eq!(
        env.count("SELECT count(*) FROM itrelay.outbox WHERE state = 'pending'")
            .await,
        3
    );

    itrelay::sql::install(&env.client, "it_events")
        .await
        .expect("upgrade in place");
    assert_eq!(
        itrelay::sql::installed_version(&env.client).await.unwrap(),
        Some(itrelay::sql::SCHEMA_VERSION)
    );
    insert_tickets(&env.client, "NEW", 2).await;
    env.start_relay(&[]);
    env.wait_until_settled(5).await;
    let numbers: Vec<String> = env
        .drain(&env.exchange("PF-10"))
        .await
        .iter()
        .map(|m| m.body["ticket_number"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(numbers.len(), 5, "{numbers:?}");
    for number in ["OLD-1", "OLD-2", "OLD-3", "NEW-1", "NEW-2"] {
        assert!(
            numbers.iter().any(|n| n == number),
            "{number} missing: {numbers:?}"
        );
    }
}

#[tokio::test]
async fn install_refuses_to_downgrade_a_newer_schema() {
    let env = TestEnv::new().await;
    let newer = itrelay::sql::SCHEMA_VERSION + 1;
    env.execute(&format!(
        "INSERT INTO itrelay.schema_version (version) VALUES ({newer})"
    ))
    .await;
    let error = itrelay::sql::install(&env.client, "it_events")
        .await
        .expect_err("a downgrade is refused");
    let message = error
        .as_db_error()
        .map(|e| e.message().to_owned())
        .unwrap_or_default();
    assert!(
        message.contains(&format!("schema version {newer} is installed"))
            && message.contains("not downgrading"),
        "{error:?}"
    );
}

#[tokio::test]
async fn run_refuses_an_older_schema_naming_the_fix() {
    let env = previous_release().await;
    let mut child = spawn_run(&env, "info", &[]);
    let stderr = read_stderr(&mut child);
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("run stops at once")
        .unwrap();
    assert!(!status.success());
    let log = stderr.await.unwrap();
    assert!(
        log.contains("schema version 1 installed") && log.contains("run `itrelay install`"),
        "{log}"
    );
}

//! Install and uninstall next to the IT module's own objects, and uninstall while business
//! transactions run: itrelay touches only what it created, and drops nothing committed.

mod common;

use std::time::Duration;

use common::*;

/// Non-internal triggers as `name on table -> function`, sorted.
async fn triggers(env: &TestEnv) -> Vec<String> {
    env.client
        .query(
            "SELECT t.tgname || ' on ' || t.tgrelid::regclass || ' -> ' || t.tgfoid::regproc
             FROM pg_trigger t WHERE NOT t.tgisinternal ORDER BY 1",
            &[],
        )
        .await
        .expect("list triggers")
        .iter()
        .map(|row| row.get(0))
        .collect()
}

#[tokio::test]
async fn install_and_uninstall_leave_the_it_module_s_own_triggers_alone() {
    let env = TestEnv::new().await;
    env.seed().await;
    // The IT module's own triggers, named as the contract documents them.
    env.execute(
        "CREATE TABLE it_module_log (what text);
         CREATE FUNCTION it_module_log_row() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN INSERT INTO it_module_log VALUES (TG_NAME); RETURN NULL; END $$;
         CREATE OR REPLACE TRIGGER it_asset_purchased_trigger AFTER INSERT ON it_assets
             FOR EACH ROW EXECUTE FUNCTION it_module_log_row();
         CREATE OR REPLACE TRIGGER it_ticket_created_trigger AFTER INSERT ON it_tickets
             FOR EACH ROW EXECUTE FUNCTION it_module_log_row();",
    )
    .await;
    // What an install from before the itrelay_ names left: a trigger named like the IT
    // module's, calling a function of schema itrelay.
    env.execute(
        "CREATE OR REPLACE FUNCTION itrelay.it_notify_license_created() RETURNS trigger
             LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$;
         CREATE OR REPLACE TRIGGER it_license_created_trigger AFTER INSERT ON it_licenses
             FOR EACH ROW EXECUTE FUNCTION itrelay.it_notify_license_created();",
    )
    .await;

    itrelay::sql::install(&env.client, "it_events")
        .await
        .expect("install");
    let installed = triggers(&env).await;
    for own in [
        "it_asset_purchased_trigger on it_assets -> it_module_log_row",
        "it_ticket_created_trigger on it_tickets -> it_module_log_row",
        "itrelay_asset_purchased_trigger on it_assets -> itrelay.itrelay_notify_asset_purchased",
        "itrelay_license_created_trigger on it_licenses -> itrelay.itrelay_notify_license_created",
    ] {
        assert!(
            installed.iter().any(|t| t == own),
            "{own} missing: {installed:#?}"
        );
    }
    assert!(
        !installed
            .iter()
            .any(|t| t.starts_with("it_license_created_trigger")),
        "the old install's trigger stayed: {installed:#?}"
    );
    assert_eq!(
        env.count("SELECT count(*) FROM pg_proc WHERE proname = 'it_notify_license_created'")
            .await,
        0
    );
    // Both the IT module's trigger and itrelay's fire.
    env.execute(&format!(
        "INSERT INTO it_assets (organization_id, asset_tag, asset_name, asset_type, purchase_cost, purchase_date)
             VALUES ('{ORG}', 'MN-1', 'Monitor', 'monitor', 300, '2026-03-02')"
    ))
    .await;
    assert_eq!(env.count("SELECT count(*) FROM it_module_log").await, 1);
    assert_eq!(env.count("SELECT count(*) FROM itrelay.outbox").await, 1);

    itrelay::sql::uninstall(&env.client, true)
        .await
        .expect("uninstall");
    assert_eq!(
        triggers(&env).await,
        [
            "it_asset_purchased_trigger on it_assets -> it_module_log_row",
            "it_ticket_created_trigger on it_tickets -> it_module_log_row",
        ]
    );
}

/// One business transaction that commits a ticket while `uninstall` runs; whether it
/// committed with an event in the outbox.
async fn write_ticket(db_url: String, number: usize) -> bool {
    let mut client = connect(&db_url).await;
    let Ok(tx) = client.transaction().await else {
        return false;
    };
    let inserted = tx
        .query_one(
            &format!(
                "INSERT INTO it_tickets (organization_id, ticket_number, category, priority, subject, description, requester_id)
                     VALUES ('{ORG}', 'TCK-{number}', 'other', 'low', 'S', 'D', '{EMPLOYEE}')
                 RETURNING ticket_id::text"
            ),
            &[],
        )
        .await;
    let Ok(row) = inserted else { return false };
    let ticket_id: String = row.get(0);
    // Still at work when the uninstall starts.
    if tx.batch_execute("SELECT pg_sleep(0.5)").await.is_err() {
        return false;
    }
    let with_event = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM itrelay.outbox WHERE payload->>'ticket_id' = $1)",
            &[&ticket_id],
        )
        .await
        .is_ok_and(|row| row.get::<_, bool>(0));
    tx.commit().await.is_ok() && with_event
}

#[tokio::test]
async fn uninstall_drops_no_event_committed_during_the_call() {
    let env = TestEnv::new().await;
    env.seed().await;
    let writers: Vec<_> = (0..4)
        .map(|n| tokio::spawn(write_ticket(env.db_url.clone(), n)))
        .collect();
    // The writers have inserted their tickets, and their events, but not committed.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let outcome = itrelay::sql::uninstall(&env.client, false).await;
    let mut committed_with_event = 0;
    for writer in writers {
        if writer.await.expect("writer") {
            committed_with_event += 1;
        }
    }
    assert_eq!(
        committed_with_event, 4,
        "the writers did not commit in time"
    );
    match outcome {
        Ok(()) => panic!("uninstall dropped {committed_with_event} committed events"),
        Err(error) => {
            let message = error.as_db_error().map(|e| e.message().to_owned());
            assert_eq!(
                message.as_deref(),
                Some("itrelay.outbox still holds undelivered events"),
                "{error}"
            );
        }
    }
    assert_eq!(
        env.count("SELECT count(*) FROM itrelay.outbox WHERE state = 'pending'")
            .await,
        4
    );
    assert_eq!(
        env.count(
            "SELECT count(*) FROM pg_trigger WHERE tgname = 'itrelay_ticket_created_trigger'"
        )
        .await,
        1,
        "a refused uninstall removed a trigger"
    );
}

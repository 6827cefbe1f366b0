//! The durable API for a DBA's own triggers: `itrelay.enqueue(event_type, payload)`,
//! granted by `itrelay install` to the roles of `[install] enqueue_roles` and to no other.

mod common;

use common::role::TestRole;
use common::*;

const INSUFFICIENT_PRIVILEGE: &str = "42501";

#[tokio::test]
async fn a_dba_s_own_trigger_delivers_through_enqueue_and_only_named_roles_may_call_it() {
    let writer = TestRole::new();
    let outsider = TestRole::new();
    let mut env = TestEnv::new().await;
    env.seed().await;
    writer.create_bare();
    outsider.create_bare();
    let file = std::env::temp_dir().join(format!("itrelay-enqueue-{}.toml", env.id));
    std::fs::write(
        &file,
        format!("[install]\nenqueue_roles = [\"{}\"]\n", writer.0),
    )
    .unwrap();
    let vars = env.env_vars().into_iter().collect();
    let settings = itrelay::config::Settings::load_with_env(Some(&file), Some(vars));
    std::fs::remove_file(&file).unwrap();
    let settings = settings.expect("valid settings");
    let install = itrelay::sql::install_sql(&settings.mapping, &settings.install).unwrap();
    itrelay::sql::apply_install(&env.client, "it_events", &install)
        .await
        .expect("install granting the writer");
    // The IT module's own table and trigger, as a DBA keeps them; the function runs with
    // the rights of whoever writes the table.
    env.execute(&format!(
        "CREATE TABLE helpdesk_cases (id uuid PRIMARY KEY, number text NOT NULL);
         GRANT INSERT ON helpdesk_cases TO \"{w}\", \"{o}\";
         CREATE FUNCTION helpdesk_case_created() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             PERFORM itrelay.enqueue('it_ticket_created', jsonb_build_object(
                 'event_type', 'it_ticket_created', 'ticket_id', NEW.id, 'ticket_number', NEW.number,
                 'category', 'hardware', 'priority', 'low', 'subject', 'S', 'description', 'D',
                 'requester_id', '{EMPLOYEE}', 'organization_id', '{ORG}'));
             RETURN NULL;
         END $$;
         CREATE TRIGGER helpdesk_case_created AFTER INSERT ON helpdesk_cases
             FOR EACH ROW EXECUTE FUNCTION helpdesk_case_created();",
        w = writer.0,
        o = outsider.0,
    ))
    .await;
    env.start_relay_with(settings);

    let producer = connect(&writer.url(&env.database)).await;
    producer
        .batch_execute(
            "INSERT INTO helpdesk_cases VALUES ('e1000000-0000-4000-8000-000000000001', 'HD-1')",
        )
        .await
        .expect("a named role's write goes through its trigger");
    let stranger = connect(&outsider.url(&env.database)).await;
    let error = stranger
        .batch_execute(
            "INSERT INTO helpdesk_cases VALUES ('e1000000-0000-4000-8000-000000000002', 'HD-2')",
        )
        .await
        .expect_err("a role not named may not enqueue");
    assert_eq!(
        error.code().map(|c| c.code()),
        Some(INSUFFICIENT_PRIVILEGE),
        "{error}"
    );

    env.wait_until_settled(1).await;
    let delivered = env.drain(&env.exchange("PF-10")).await;
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0].body["ticket_number"], "HD-1");
    assert_eq!(delivered[0].body["requester_name"], "Dana Reyes");
    assert_eq!(
        delivered[0].header("source_table").as_deref(),
        Some("enqueue")
    );
}

//! The least-privileged role of sql/role.sql: applied with psql as a DBA would, it is
//! enough for the relay to deliver an event, and it cannot write a business table or
//! change the outbox's definition.

mod common;

use common::role::TestRole;
use common::*;

#[tokio::test]
async fn the_relay_role_delivers_events_and_can_do_nothing_else() {
    let role = TestRole::new();
    let mut env = TestEnv::new().await;
    env.seed().await;
    role.apply(&env.db_url);
    // Applying it again changes nothing.
    role.apply(&env.db_url);

    let attributes = env
        .client
        .query_one(
            "SELECT rolsuper, rolcreatedb, rolcreaterole, rolbypassrls, rolcanlogin
             FROM pg_roles WHERE rolname = $1",
            &[&role.0],
        )
        .await
        .expect("the role exists");
    let flags: [bool; 5] = std::array::from_fn(|i| attributes.get(i));
    assert_eq!(flags, [false, false, false, false, true]);
    let owned = env
        .count(&format!(
            "SELECT count(*) FROM pg_class WHERE relowner = '{}'::regrole",
            role.0
        ))
        .await;
    assert_eq!(owned, 0, "the role owns nothing");

    env.start_relay(&[("ITRELAY__POSTGRES__URL", &role.url(&env.database))]);
    env.execute(&format!(
        "INSERT INTO it_assets (organization_id, asset_tag, asset_name, asset_type, purchase_cost, purchase_date, vendor_id)
             VALUES ('{ORG}', 'MN-8', 'Monitor', 'monitor', 300, '2026-03-02', '{VENDOR}')"
    ))
    .await;
    env.wait_until_settled(1).await;
    assert_eq!(env.outbox_states().await.get("delivered"), Some(&1));
    let delivered = env.drain(&env.exchange("FA")).await;
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0].body["vendor_name"], "Acme Hardware");
    env.stop_relay().await;

    let relay = connect(&role.url(&env.database)).await;
    let forbidden = [
        format!("INSERT INTO it_vendors (organization_id, vendor_name) VALUES ('{ORG}', 'x')"),
        "UPDATE it_assets SET asset_name = 'x'".to_owned(),
        "DELETE FROM employees".to_owned(),
        "TRUNCATE itrelay.events".to_owned(),
        "ALTER TABLE itrelay.events ADD COLUMN x integer".to_owned(),
        "DROP TABLE itrelay.events".to_owned(),
        "DROP VIEW itrelay.outbox".to_owned(),
        "UPDATE itrelay.progress SET partition_span = 1".to_owned(),
        "CREATE TABLE itrelay.extra (x integer)".to_owned(),
        "CREATE TABLE public.extra (x integer)".to_owned(),
        "DROP TRIGGER itrelay_asset_purchased_trigger ON it_assets".to_owned(),
    ];
    for sql in &forbidden {
        let error = relay
            .batch_execute(sql)
            .await
            .expect_err(&format!("the relay role may not run: {sql}"));
        let code = error.code().map(|c| c.code().to_owned());
        assert_eq!(
            code.as_deref(),
            Some("42501"),
            "{sql}: expected insufficient privilege, got {error}"
        );
    }
}

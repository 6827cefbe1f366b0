//! The row-change triggers run once per statement, over the rows the statement changed:
//! a statement of many rows yields each row's events, in the order it changed the rows,
//! each built from its own old and new row; rows that do not meet the condition yield
//! nothing; a statement rolled back leaves nothing; and statements that lock the same
//! entities in opposite orders do not deadlock.

mod common;

use std::collections::HashMap;

use common::*;

/// The status ticket `n` is given by round `round` (none where it keeps its status).
fn status(round: i64, n: i64) -> &'static str {
    ["open", "in_progress", "on_hold", "resolved"][((n * (round + 1) + round) % 4) as usize]
}

/// `SET status = CASE ...` giving each ticket (numbered `T-<n>`) its status of `round`.
fn statuses_of(round: i64, tickets: i64) -> String {
    let cases: String = (1..=tickets)
        .map(|n| format!(" WHEN 'T-{n}' THEN '{}'", status(round, n)))
        .collect();
    format!("CASE ticket_number{cases} END")
}

#[tokio::test]
async fn one_update_of_many_rows_yields_each_row_s_event_from_its_own_old_and_new_row() {
    const TICKETS: i64 = 300;
    let env = TestEnv::new().await;
    env.seed().await;
    insert_tickets(&env.client, "T", TICKETS).await;
    let mut expected: HashMap<String, Vec<(String, String)>> = HashMap::new();
    for round in 1..=3 {
        // Every seventh ticket also gets a new key in the same statement: the rows still
        // pair by position, not by key.
        env.execute(&format!(
            "UPDATE it_tickets SET status = {},
                 ticket_id = CASE WHEN right(ticket_number, 1) = '7' THEN gen_random_uuid() ELSE ticket_id END,
                 updated_by = '{ACTOR}'",
            statuses_of(round, TICKETS)
        ))
        .await;
        for n in 1..=TICKETS {
            let old = if round == 1 {
                "open"
            } else {
                status(round - 1, n)
            };
            let new = status(round, n);
            if old != new {
                expected
                    .entry(format!("T-{n}"))
                    .or_default()
                    .push((old.to_owned(), new.to_owned()));
            }
        }
    }
    let rows = env
        .client
        .query(
            "SELECT payload->>'ticket_number', payload->>'old_status', payload->>'new_status',
                    payload->>'ticket_id', entity
             FROM itrelay.events WHERE event_type = 'it_ticket_status_changed' ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    let mut seen: HashMap<String, Vec<(String, String)>> = HashMap::new();
    for row in &rows {
        let number: String = row.get(0);
        let ticket_id: String = row.get(3);
        let entity: String = row.get(4);
        assert_eq!(entity, format!("ticket_id:{ticket_id}"));
        seen.entry(number)
            .or_default()
            .push((row.get(1), row.get(2)));
    }
    assert_eq!(seen, expected, "each ticket's transitions, in order");
    let created = env
        .count(
            "SELECT count(*) FROM itrelay.events WHERE event_type = 'it_ticket_created'
             AND (payload->>'ticket_number') = 'T-' || (id - (SELECT min(id) - 1 FROM itrelay.events))",
        )
        .await;
    assert_eq!(
        created, TICKETS,
        "one insert's events in the order of its rows"
    );
}

#[tokio::test]
async fn a_statement_rolled_back_to_a_savepoint_leaves_no_event() {
    let env = TestEnv::new().await;
    env.seed().await;
    env.execute(&format!(
        "BEGIN;
         SAVEPOINT before;
         INSERT INTO it_tickets (organization_id, ticket_number, category, priority, subject, description, requester_id)
             SELECT '{ORG}', 'GONE-' || n, 'software', 'low', 'S', 'D', '{EMPLOYEE}' FROM generate_series(1, 50) AS n;
         ROLLBACK TO SAVEPOINT before;
         INSERT INTO it_tickets (organization_id, ticket_number, category, priority, subject, description, requester_id)
             VALUES ('{ORG}', 'KEPT-1', 'software', 'low', 'S', 'D', '{EMPLOYEE}');
         -- A statement that changes no row records nothing.
         UPDATE it_tickets SET status = 'resolved' WHERE false;
         COMMIT;"
    ))
    .await;
    let numbers: Vec<String> = env
        .client
        .query(
            "SELECT payload->>'ticket_number' FROM itrelay.events ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(numbers, ["KEPT-1"]);
}

#[tokio::test]
async fn statements_assigning_the_same_assets_in_opposite_orders_do_not_deadlock() {
    const ASSETS: i64 = 20;
    const ROUNDS: usize = 15;
    let env = TestEnv::new().await;
    env.seed().await;
    env.execute(&format!(
        "INSERT INTO it_assets (asset_id, organization_id, asset_tag, asset_name, asset_type)
             SELECT gen_random_uuid(), '{ORG}', 'LOCK-' || n, 'Dock', 'dock' FROM generate_series(1, {ASSETS}) AS n"
    ))
    .await;
    // Each transaction assigns every asset in one statement, in the opposite order of the
    // other's, and holds its locks a while, so the two overlap.
    let assign = |order: &'static str, employee: &'static str| {
        let url = env.db_url.clone();
        tokio::spawn(async move {
            let client = connect(&url).await;
            for _ in 0..ROUNDS {
                client
                    .batch_execute(&format!(
                        "BEGIN;
                         INSERT INTO it_asset_assignments (organization_id, asset_id, employee_id, assigned_by)
                             SELECT '{ORG}', asset_id, '{employee}', '{ACTOR}' FROM it_assets
                             WHERE asset_tag LIKE 'LOCK-%' ORDER BY asset_tag {order};
                         SELECT pg_sleep(0.02);
                         COMMIT;"
                    ))
                    .await
                    .map_err(|e| format!("{e:?}"))?;
            }
            Ok::<(), String>(())
        })
    };
    let forward = assign("ASC", EMPLOYEE);
    let backward = assign("DESC", ACTOR);
    forward.await.unwrap().expect("no deadlock");
    backward.await.unwrap().expect("no deadlock");
    let complete = env
        .count(&format!(
            "SELECT count(*) FROM (
                 SELECT entity FROM itrelay.events WHERE event_type = 'it_asset_assigned'
                 GROUP BY entity HAVING count(*) = 2 * {ROUNDS}) AS complete"
        ))
        .await;
    assert_eq!(
        complete, ASSETS,
        "every asset has both transactions' events"
    );
}

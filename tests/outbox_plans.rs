//! The outbox statements stay index scans whatever the planner believes the outbox
//! holds: plans made while it was vacuumed empty must not read the whole table once it
//! has grown; and the relay's sessions never compile a statement or start workers for one.

mod common;

use common::*;
use itrelay::outbox::{claimed_id, Outbox, Outcome};
use itrelay::postgres::PgSession;

#[tokio::test]
async fn plans_made_on_an_empty_outbox_use_the_indexes_once_it_has_grown() {
    let env = TestEnv::new().await;
    env.seed().await;
    env.execute("VACUUM ANALYZE itrelay.events").await;
    let client = connect(&env.db_url).await;
    // The plan the relay's session settles on after its first few calls, made now.
    client
        .batch_execute("SET plan_cache_mode = force_generic_plan")
        .await
        .expect("generic plans");
    let outbox = Outbox::prepare(&client, &Default::default())
        .await
        .expect("prepare");
    outbox.probe(&client).await.expect("probe");
    assert!(outbox
        .claim(&client, 500, 0, &[])
        .await
        .expect("claim")
        .is_empty());
    let absent = [
        (-1, Outcome::Delivered(Vec::new())),
        (-2, Outcome::Failed("x".into())),
    ];
    assert_eq!(outbox.record(&client, &absent).await.expect("record"), 0);

    insert_tickets(&env.client, "PLAN", 2000).await;
    client.batch_execute("BEGIN").await.expect("begin");
    let end = outbox.probe(&client).await.expect("probe");
    let claimed = outbox.claim(&client, 500, 0, &[]).await.expect("claim");
    assert_eq!(end.max_id, claimed_id(&claimed[0]) + 1_999);
    assert_eq!(claimed.len(), 500);
    let mut outcomes: Vec<_> = claimed
        .iter()
        .map(|row| (claimed_id(row), Outcome::Delivered(Vec::new())))
        .collect();
    outcomes[0].1 = Outcome::Failed("rejected".into());
    outcomes[1].1 = Outcome::Retry("nacked".into());
    assert_eq!(
        outbox.record(&client, &outcomes).await.expect("record"),
        500
    );
    let row = client
        .query_one(
            "SELECT coalesce(sum(seq_scan), 0)::bigint, coalesce(sum(idx_tup_fetch), 0)::bigint
             FROM pg_stat_xact_user_tables
             WHERE relid IN (SELECT inhrelid FROM pg_inherits
                             WHERE inhparent = 'itrelay.events'::regclass)",
            &[],
        )
        .await
        .expect("this transaction's scans");
    let (seq_scans, fetched): (i64, i64) = (row.get(0), row.get(1));
    assert_eq!(seq_scans, 0, "sequential scans of the outbox");
    // Each claimed row read once by the claim, and by the record only those recorded on
    // their row; not the 1,500 rows left pending.
    assert!(
        fetched <= 2 * 500 + 2,
        "{fetched} rows read through the indexes"
    );
    let states = client
        .query_one(
            "SELECT count(*) FILTER (WHERE state = 'delivered'
                                     AND (SELECT recorded_at FROM itrelay.progress) IS NOT NULL),
                    count(*) FILTER (WHERE state = 'failed' AND last_error = 'rejected'),
                    count(*) FILTER (WHERE state = 'pending' AND last_error = 'nacked' AND attempts = 1)
             FROM itrelay.outbox",
            &[],
        )
        .await
        .expect("states");
    assert_eq!(
        (
            states.get::<_, i64>(0),
            states.get::<_, i64>(1),
            states.get::<_, i64>(2)
        ),
        (498, 1, 1)
    );
    client.batch_execute("ROLLBACK").await.expect("rollback");
}

#[tokio::test]
async fn the_relays_sessions_compile_nothing_and_start_no_workers() {
    let env = TestEnv::new().await;
    env.seed().await;
    insert_tickets(&env.client, "BACKLOG", 2000).await;
    // The URL's own options stay (a statement timeout); JIT and parallel workers go,
    // whatever the server or the URL says: the planner prices the outbox statements far
    // above what they read, and compiling them took longer than running them. The URL
    // makes every statement worth both, as a large outbox does.
    let options = "-c statement_timeout=12345 -c jit=on -c jit_above_cost=0 \
                   -c parallel_setup_cost=0 -c parallel_tuple_cost=0 \
                   -c min_parallel_index_scan_size=0 -c min_parallel_table_scan_size=0";
    let url = format!("{}?options={}", env.db_url, options.replace(' ', "%20"));
    let settings = env.settings(&[("ITRELAY__POSTGRES__URL", &url)]);
    let session = PgSession::connect(&settings.postgres)
        .await
        .expect("a relay session");
    let timeout: String = session
        .client
        .query_one("SHOW statement_timeout", &[])
        .await
        .expect("show statement_timeout")
        .get(0);
    assert_eq!(timeout, "12345ms", "the URL's options are kept");
    let plan: String = session
        .client
        .query_one(
            // What the outbox gauges count.
            "EXPLAIN (ANALYZE, FORMAT JSON) SELECT count(*) FROM itrelay.pending",
            &[],
        )
        .await
        .expect("explain a count of the pending events")
        .get::<_, serde_json::Value>(0)
        .to_string();
    assert!(!plan.contains("\"JIT\""), "compiled: {plan}");
    assert!(!plan.contains("Workers Launched"), "parallel: {plan}");
}

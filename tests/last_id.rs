//! The outbox's last possible id, 2^63 - 1, is claimed and delivered like any other.

mod common;

use common::*;

#[tokio::test]
async fn the_highest_outbox_id_is_delivered() {
    let mut env = TestEnv::new().await;
    env.seed().await;
    env.execute("ALTER TABLE itrelay.events ALTER COLUMN id RESTART WITH 9223372036854775807")
        .await;
    insert_ticket(&env.client, "TCK-last").await;
    assert_eq!(
        env.count("SELECT max(id) FROM itrelay.outbox").await,
        i64::MAX
    );
    env.start_relay(&[]);
    env.reconcile("PF-10", 1).await.assert_nothing_lost();
    // The relay goes on looking past the last id, and stops cleanly.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    env.stop_relay().await;
}

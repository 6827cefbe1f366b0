//! `itrelay demo`, the README's first command, runs its story and cleans up after itself.

mod common;

use common::*;
use tokio::process::Command;

#[tokio::test]
async fn demo_relays_the_story_and_cleans_up() {
    let output = Command::new(env!("CARGO_BIN_EXE_itrelay"))
        .arg("demo")
        .env("ITRELAY__POSTGRES__URL", PG_ADMIN_URL)
        .env("ITRELAY__AMQP__URL", AMQP_URL)
        .env("RUST_LOG", "warn")
        .output()
        .await
        .expect("run itrelay demo");
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for event_type in [
        "it_asset_purchased",
        "it_asset_assigned",
        "it_ticket_created",
        "it_ticket_status_changed",
        "it_license_renewed",
        "it_asset_disposed",
    ] {
        assert!(
            out.contains(event_type),
            "{event_type} missing from:\n{out}"
        );
    }
    assert!(out.contains("10 messages relayed"), "{out}");

    let database = out
        .split_whitespace()
        .find(|word| word.starts_with("itrelay_demo_"))
        .expect("the demo names its database")
        .trim_end_matches(':')
        .to_owned();
    let admin = connect(PG_ADMIN_URL).await;
    let left: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname = $1",
            &[&database],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "{database} was not dropped");
}

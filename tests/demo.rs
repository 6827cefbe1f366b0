//! `itrelay demo`, the README's first command, runs its story, shows each message under
//! the step that caused it, and cleans up after itself.

mod common;

use std::collections::BTreeMap;

use common::*;
use lapin::options::ExchangeDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use tokio::process::Command;

/// Each step of the demo's output with the (exchange without prefix, routing key) of
/// the messages printed under it, sorted.
fn messages_by_step(out: &str, prefix: &str) -> BTreeMap<String, Vec<(String, String)>> {
    let mut steps: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    let mut step = String::from("(before any step)");
    for line in out.lines() {
        if let Some(what) = line.strip_prefix("▶ ") {
            step = what.to_owned();
            steps.entry(step.clone()).or_default();
        } else if let Some(message) = line.trim_start().strip_prefix("✉ ") {
            let mut words = message.split_whitespace();
            let exchange = words.next().unwrap_or_default();
            let routing_key = words.next().unwrap_or_default();
            steps.entry(step.clone()).or_default().push((
                exchange.trim_start_matches(prefix).to_owned(),
                routing_key.to_owned(),
            ));
        }
    }
    steps.values_mut().for_each(|messages| messages.sort());
    steps
}

#[tokio::test]
async fn demo_shows_each_copy_under_its_step_and_cleans_up() {
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
    let word = |start: &str| {
        out.split_whitespace()
            .find(|word| word.starts_with(start))
            .unwrap_or_else(|| panic!("no {start}… in:\n{out}"))
            .trim_end_matches([':', '*'])
            .to_owned()
    };
    let database = word("itrelay_demo_");
    let prefix = word("itrelay-demo-");

    let copy = |exchange: &str, routing_key: &str| (exchange.to_owned(), routing_key.to_owned());
    let status_changed = vec![copy("pf-10", "it_ticket_status_changed")];
    let expected: BTreeMap<String, Vec<(String, String)>> = [
        (
            "IT registers its office suite license",
            vec![copy("fa", "it_license_created")],
        ),
        (
            "IT buys a laptop from Acme",
            vec![copy("fa", "it_asset_purchased")],
        ),
        (
            "the laptop is assigned to Dana",
            vec![
                copy("hr", "it_asset_assigned"),
                copy("pf-10", "it_asset_assigned"),
            ],
        ),
        (
            "Dana opens a ticket: the screen flickers",
            vec![copy("pf-10", "it_ticket_created")],
        ),
        ("Sam takes the ticket", status_changed.clone()),
        ("Sam resolves it", status_changed.clone()),
        ("Dana confirms; the ticket is closed", status_changed),
        (
            "the office suite license is renewed for a year",
            vec![copy("fa", "it_license_renewed")],
        ),
        (
            "the laptop is retired and recycled",
            vec![
                copy("fa", "it_asset_disposed"),
                copy("gr", "it_asset_disposed"),
            ],
        ),
    ]
    .into_iter()
    .map(|(step, messages)| (step.to_owned(), messages))
    .collect();
    assert_eq!(messages_by_step(&out, &prefix), expected, "{out}");

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
    let amqp = Connection::connect(AMQP_URL, ConnectionProperties::default())
        .await
        .expect("connect to RabbitMQ");
    for module in ["fa", "pf-10", "hr", "gr", "canary", "dead-letter"] {
        let exchange = format!("{prefix}{module}");
        // A passive declare fails, and closes its channel, when the exchange is gone.
        let channel = amqp.create_channel().await.expect("channel");
        let passive = ExchangeDeclareOptions {
            passive: true,
            ..ExchangeDeclareOptions::default()
        };
        let found = channel
            .exchange_declare(
                exchange.as_str().into(),
                ExchangeKind::Topic,
                passive,
                FieldTable::default(),
            )
            .await;
        assert!(found.is_err(), "{exchange} was left behind");
    }
}

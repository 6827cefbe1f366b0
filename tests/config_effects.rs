//! Settings that do what they say on the broker and at the command line: the dead-letter
//! queue's type, length limit and name; `check` declaring nothing unless asked to;
//! `replay` refusing to run without criteria (a usage error) and `--dry-run` listing what
//! it would send.

mod common;

use std::process::Output;

use common::*;
use itrelay::route::Router;
use itrelay::sink::amqp::Publisher;
use itrelay::sink::Sink;
use lapin::options::{ExchangeDeclareOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ExchangeKind};
use tokio::process::Command;

async fn itrelay(env: &TestEnv, args: &[&str], extra: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_itrelay"))
        .args(args)
        .envs(env.env_vars())
        .envs(extra.iter().copied())
        .output()
        .await
        .expect("run itrelay")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Declares `queue` durable with `arguments` on a channel of its own (a refusal closes
/// the channel): whether the broker agreed, i.e. found it equivalent to the existing one.
async fn declare_queue(amqp: &Connection, queue: &str, arguments: FieldTable) -> bool {
    let channel = amqp.create_channel().await.expect("channel");
    let options = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(queue.into(), options, arguments)
        .await
        .is_ok()
}

/// Something on the broker, looked for with a passive declare.
enum Named<'a> {
    Exchange(&'a str),
    Queue(&'a str),
}

/// Whether it exists (on a channel of its own: a missing one closes the channel).
async fn exists(amqp: &Connection, named: Named<'_>) -> bool {
    let channel = amqp.create_channel().await.expect("channel");
    match named {
        Named::Exchange(name) => {
            let options = ExchangeDeclareOptions {
                passive: true,
                ..ExchangeDeclareOptions::default()
            };
            let declare = channel.exchange_declare(
                name.into(),
                ExchangeKind::Topic,
                options,
                FieldTable::default(),
            );
            declare.await.is_ok()
        }
        Named::Queue(name) => {
            let options = QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            };
            let declare = channel.queue_declare(name.into(), options, FieldTable::default());
            declare.await.is_ok()
        }
    }
}

fn queue_arguments(queue_type: Option<&str>, max_length: Option<i64>) -> FieldTable {
    let mut arguments = FieldTable::default();
    if let Some(kind) = queue_type {
        arguments.insert("x-queue-type".into(), AMQPValue::LongString(kind.into()));
    }
    if let Some(limit) = max_length {
        arguments.insert("x-max-length".into(), AMQPValue::LongLongInt(limit));
    }
    arguments
}

async fn broker() -> Connection {
    Connection::connect(AMQP_URL, amqp_properties())
        .await
        .expect("connect to RabbitMQ")
}

#[tokio::test]
async fn dead_letter_queue_is_quorum_by_default_with_the_configured_limit_and_name() {
    let env = TestEnv::new().await;
    let amqp = broker().await;
    // Defaults: quorum, no limit, named after the exchange.
    let settings = env.settings(&[]);
    let router = Router::from_settings(&settings);
    Publisher::connect(&settings.amqp, &router, settings.confirm_timeout())
        .await
        .expect("relay's declares")
        .close()
        .await;
    let queue = settings.amqp.dead_letter_queue();
    assert_eq!(queue, env.dead_letter_exchange());
    assert!(declare_queue(&amqp, &queue, queue_arguments(Some("quorum"), None)).await);
    assert!(!declare_queue(&amqp, &queue, queue_arguments(None, None)).await);

    // Another name, a classic queue, a limit of 5 messages.
    let named = [
        ("ITRELAY__AMQP__DEAD_LETTER_QUEUE", "rejected"),
        ("ITRELAY__AMQP__DEAD_LETTER_QUEUE_TYPE", "classic"),
        ("ITRELAY__AMQP__DEAD_LETTER_MAX_LENGTH", "5"),
    ];
    let settings = env.settings(&named);
    Publisher::connect(&settings.amqp, &router, settings.confirm_timeout())
        .await
        .expect("relay's declares")
        .close()
        .await;
    let queue = format!("{}rejected", env.prefix);
    assert_eq!(settings.amqp.dead_letter_queue(), queue);
    let agreed = declare_queue(&amqp, &queue, queue_arguments(None, Some(5))).await;
    let other_limit = declare_queue(&amqp, &queue, queue_arguments(None, Some(6))).await;
    env.channel
        .queue_delete(queue.as_str().into(), Default::default())
        .await
        .expect("delete the named queue");
    assert!(agreed, "a classic queue limited to 5");
    assert!(!other_limit, "the limit is not 6");
}

#[tokio::test]
async fn an_existing_classic_dead_letter_queue_is_an_error_naming_the_setting() {
    let env = TestEnv::new().await;
    let amqp = broker().await;
    let queue = env.dead_letter_exchange();
    // Left by an earlier version: classic, no arguments.
    assert!(declare_queue(&amqp, &queue, FieldTable::default()).await);
    let settings = env.settings(&[]);
    let router = Router::from_settings(&settings);
    let error = match Publisher::connect(&settings.amqp, &router, settings.confirm_timeout()).await
    {
        Ok(_) => panic!("a quorum declare over a classic queue succeeded"),
        Err(error) => error.to_string(),
    };
    assert!(error.contains("`amqp.dead_letter_queue_type`"), "{error}");
    assert!(error.contains(&queue), "{error}");
    // Saying so in the configuration is enough.
    let settings = env.settings(&[("ITRELAY__AMQP__DEAD_LETTER_QUEUE_TYPE", "classic")]);
    Publisher::connect(&settings.amqp, &router, settings.confirm_timeout())
        .await
        .expect("classic as configured")
        .close()
        .await;
}

#[tokio::test]
async fn check_declares_nothing_unless_asked_to() {
    let env = TestEnv::new().await;
    let amqp = broker().await;
    let canary = format!("{}canary", env.prefix);
    let queue = env.dead_letter_exchange();

    let look = itrelay(&env, &["check"], &[]).await;
    assert!(look.status.success(), "{look:?}");
    let report = stdout(&look);
    assert!(report.contains("not declared yet"), "{report}");
    assert!(report.contains(&format!("exchange {canary}")), "{report}");
    assert!(report.contains(&format!("queue {queue}")), "{report}");
    assert!(!exists(&amqp, Named::Exchange(&canary)).await, "{canary}");
    assert!(!exists(&amqp, Named::Queue(&queue)).await, "{queue}");

    let declared = itrelay(&env, &["check", "--declare"], &[]).await;
    assert!(declared.status.success(), "{declared:?}");
    assert!(stdout(&declared).contains("dead-letter queue declared"));
    assert!(exists(&amqp, Named::Exchange(&canary)).await);
    assert!(exists(&amqp, Named::Queue(&queue)).await);

    let again = itrelay(&env, &["check"], &[]).await;
    assert!(
        stdout(&again).contains("exchanges and dead-letter queue present"),
        "{again:?}"
    );
}

#[tokio::test]
async fn replay_needs_a_criterion_and_dry_run_changes_nothing() {
    let env = TestEnv::new().await;
    env.execute(
        "INSERT INTO itrelay.outbox (event_type, payload, source_table, state, last_error)
         VALUES ('it_ticket_created', '{}', 'it_tickets', 'failed', 'validate: test'),
                ('it_asset_disposed', '{}', 'it_assets', 'failed', 'validate: test');
         INSERT INTO itrelay.outbox (event_type, payload, source_table, state, delivered_at)
         VALUES ('it_ticket_created', '{}', 'it_tickets', 'delivered', now());",
    )
    .await;

    let bare = itrelay(&env, &["replay"], &[]).await;
    assert_eq!(bare.status.code(), Some(2), "{bare:?}");
    let usage = String::from_utf8_lossy(&bare.stderr);
    assert!(
        usage.contains("--event-id") && usage.contains("--type"),
        "{usage}"
    );

    let preview = itrelay(
        &env,
        &["replay", "--type", "it_ticket_created", "--dry-run"],
        &[],
    )
    .await;
    assert!(preview.status.success(), "{preview:?}");
    let listed = stdout(&preview);
    assert!(
        listed.contains("1 events would be replayed (dry run: nothing changed)"),
        "{listed}"
    );
    assert!(listed.contains("it_ticket_created"), "{listed}");
    assert!(listed.contains(&env.exchange("PF-10")), "{listed}");
    assert!(!listed.contains("it_asset_disposed"), "{listed}");
    let with_delivered = itrelay(
        &env,
        &[
            "replay",
            "--since",
            "2000-01-01T00:00:00Z",
            "--include-delivered",
            "--dry-run",
        ],
        &[],
    )
    .await;
    assert!(
        stdout(&with_delivered).contains("3 events would be replayed"),
        "{with_delivered:?}"
    );
    assert_eq!(
        env.count("SELECT count(*) FROM itrelay.outbox WHERE state = 'failed'")
            .await,
        2,
        "a dry run changed the outbox"
    );

    // A delivered event whose copy for GR alone was dead-lettered: only that copy would
    // go again, to GR's exchange and not FA's.
    env.execute(
        "WITH disposed AS (
             INSERT INTO itrelay.outbox (event_type, payload, source_table, state, delivered_at)
             VALUES ('it_asset_disposed', '{}', 'it_assets', 'delivered', now()) RETURNING id
         )
         INSERT INTO itrelay.copies (outbox_id, module, state, last_error)
         SELECT id, 'GR', 'failed', 'unroutable: test' FROM disposed",
    )
    .await;
    let copies = itrelay(
        &env,
        &["replay", "--type", "it_asset_disposed", "--dry-run"],
        &[],
    )
    .await;
    let listed = stdout(&copies);
    assert!(listed.contains("2 events would be replayed"), "{listed}");
    let copy_line = listed
        .lines()
        .find(|line| line.contains("delivered"))
        .unwrap_or_else(|| panic!("no delivered event listed: {listed}"));
    assert!(
        copy_line.ends_with(&format!("-> {}", env.exchange("GR"))),
        "{copy_line}"
    );
    assert_eq!(
        env.count("SELECT count(*) FROM itrelay.copies WHERE state = 'failed'")
            .await,
        1,
        "a dry run changed the copies"
    );
}

//! Settings that do what they say on the broker: the dead-letter queue's type, length
//! limit and name.

mod common;

use common::*;
use itrelay::publish::Publisher;
use itrelay::route::Router;
use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::Connection;

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

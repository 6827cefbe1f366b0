//! What the relay needs on the broker: a durable topic exchange per subscriber module, its
//! own dead-letter and canary exchanges, and the dead-letter queue bound to the former.
//! [`declare`] creates them (every step bounded); [`inspect`] only looks, with passive
//! declares, for `itrelay check`; [`remove`] deletes a scratch topology.

use std::time::Duration;

use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ErrorKind, ExchangeKind};

use super::{bounded, open_channel, PublishError};
use crate::config::{AmqpSettings, QueueType};
use crate::connect::SettingError;
use crate::route::Router;

/// AMQP reply code of a declare whose arguments differ from the existing object's.
const PRECONDITION_FAILED: u16 = 406;
/// AMQP reply code of a passive declare of something that does not exist.
const NOT_FOUND: u16 = 404;

/// Every exchange the relay publishes to, its own included.
fn exchanges(router: &Router) -> Vec<&str> {
    let mut all: Vec<&str> = router.exchanges().into_iter().collect();
    all.extend([router.dead_letter(), router.canary()]);
    all
}

/// The dead-letter queue's arguments as configured.
fn dead_letter_arguments(settings: &AmqpSettings) -> FieldTable {
    let mut arguments = FieldTable::default();
    // A classic queue is declared without `x-queue-type`, as queues were before the
    // setting existed, so that the broker finds it equivalent to an existing one.
    if settings.dead_letter_queue_type == QueueType::Quorum {
        arguments.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(QueueType::Quorum.as_str().into()),
        );
    }
    if settings.dead_letter_max_length > 0 {
        let limit = i64::try_from(settings.dead_letter_max_length).unwrap_or(i64::MAX);
        arguments.insert("x-max-length".into(), AMQPValue::LongLongInt(limit));
    }
    arguments
}

/// The broker's reply code for a refused operation, if that is what `error` is.
fn reply_code(error: &PublishError) -> Option<u16> {
    match error {
        PublishError::Amqp(error) => match error.kind() {
            ErrorKind::ProtocolError(refusal) => Some(refusal.get_id()),
            _ => None,
        },
        _ => None,
    }
}

/// Declares every exchange of `router` and the dead-letter queue, bound to its exchange.
pub async fn declare(
    channel: &Channel,
    settings: &AmqpSettings,
    router: &Router,
    limit: Duration,
) -> Result<(), PublishError> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    for exchange in exchanges(router) {
        let declaring = channel.exchange_declare(
            exchange.into(),
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        );
        bounded(
            limit,
            || format!("declaring exchange {exchange}"),
            declaring,
        )
        .await?;
    }
    let queue = settings.dead_letter_queue();
    let options = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let declaring = channel.queue_declare(
        queue.as_str().into(),
        options,
        dead_letter_arguments(settings),
    );
    bounded(limit, || format!("declaring queue {queue}"), declaring)
        .await
        .map_err(|error| match reply_code(&error) {
            Some(PRECONDITION_FAILED) => PublishError::Setting(SettingError::new(
                "amqp.dead_letter_queue_type",
                format!(
                    "the broker has queue {queue} already, declared otherwise ({error}); set \
                     `amqp.dead_letter_queue_type` (and `amqp.dead_letter_max_length`) as it \
                     was declared, name another queue with `amqp.dead_letter_queue`, or delete \
                     it once empty"
                ),
            )),
            _ => error,
        })?;
    let dead_letter = router.dead_letter();
    let binding = channel.queue_bind(
        queue.as_str().into(),
        dead_letter.into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    );
    bounded(
        limit,
        || format!("binding queue {queue} to exchange {dead_letter}"),
        binding,
    )
    .await?;
    Ok(())
}

/// Whether a passive declare found its object: a 404 is "no", other errors are errors.
fn found<T>(outcome: Result<T, PublishError>) -> Result<bool, PublishError> {
    match outcome {
        Ok(_) => Ok(true),
        Err(error) if reply_code(&error) == Some(NOT_FOUND) => Ok(false),
        Err(error) => Err(error),
    }
}

/// Looks for every exchange of `router` and the dead-letter queue without creating or
/// changing anything. Returns what is missing (`exchange X`, `queue Y`), empty if nothing.
pub async fn inspect(
    connection: &Connection,
    settings: &AmqpSettings,
    router: &Router,
) -> Result<Vec<String>, PublishError> {
    let limit = settings.connect_timeout();
    let mut missing = Vec::new();
    // A passive declare of something missing closes its channel: one channel per look
    // (all closed with the connection).
    for exchange in exchanges(router) {
        let channel = open_channel(connection, settings).await?;
        let options = ExchangeDeclareOptions {
            passive: true,
            ..ExchangeDeclareOptions::default()
        };
        let looking = channel.exchange_declare(
            exchange.into(),
            ExchangeKind::Topic,
            options,
            FieldTable::default(),
        );
        if !found(
            bounded(
                limit,
                || format!("looking for exchange {exchange}"),
                looking,
            )
            .await,
        )? {
            missing.push(format!("exchange {exchange}"));
        }
    }
    let queue = settings.dead_letter_queue();
    let channel = open_channel(connection, settings).await?;
    let options = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let looking = channel.queue_declare(queue.as_str().into(), options, FieldTable::default());
    if !found(bounded(limit, || format!("looking for queue {queue}"), looking).await)? {
        missing.push(format!("queue {queue}"));
    }
    Ok(missing)
}

/// Deletes what [`declare`] created, best effort (a leftover exchange harms nothing),
/// each step bounded by `amqp.connect_timeout_secs`.
pub async fn remove(channel: &Channel, settings: &AmqpSettings, router: &Router) {
    let limit = settings.connect_timeout();
    let queue = settings.dead_letter_queue();
    let _ = tokio::time::timeout(
        limit,
        channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()),
    )
    .await;
    for exchange in exchanges(router) {
        let _ = tokio::time::timeout(
            limit,
            channel.exchange_delete(exchange.into(), ExchangeDeleteOptions::default()),
        )
        .await;
    }
}

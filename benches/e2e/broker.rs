//! The broker's ceiling: how fast one channel can publish the relay's typical message,
//! persistent and `mandatory`, to a durable queue behind a topic exchange, with confirms
//! awaited per batch while the next batch is published, as the relay does, and without
//! confirms for reference.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::future::try_join_all;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::Confirmation;
use lapin::Connection;
use serde::Serialize;

use crate::env::{amqp_properties, BenchEnv, AMQP_URL};
use crate::stats::Percentiles;
use itrelay::sink::amqp::properties;
use itrelay::sink::Message;

/// The relay's default `amqp.app_id`, as its messages carry it.
const APP_ID: &str = "itrelay";

#[derive(Debug, Serialize)]
pub struct Ceiling {
    pub messages: usize,
    /// Body bytes of the message (headers and properties come on top).
    pub body_bytes: usize,
    pub confirm_batch: usize,
    /// Confirmed publishes per second, batches of `confirm_batch`, each batch's confirms
    /// awaited after the next batch is published (as the relay does).
    pub confirmed_per_s: f64,
    /// Publishes per second without confirms, until all are in the queue.
    pub unconfirmed_per_s: f64,
    /// One message at a time: publish until confirmed (milliseconds).
    pub confirm_rtt_ms: Percentiles,
}

pub async fn measure(
    env: &BenchEnv,
    message: &Message,
    messages: usize,
    batch: usize,
    round_trips: usize,
) -> Result<Ceiling> {
    let exchange = format!("{}ceiling", env.prefix);
    env.durable_queue(&exchange, &exchange).await?;
    let amqp = Connection::connect(AMQP_URL, amqp_properties()).await?;
    let confirmed = confirmed_rate(&amqp, &exchange, message, messages, batch).await?;
    env.purge(&exchange).await?;
    let unconfirmed = unconfirmed_rate(env, &amqp, &exchange, message, messages, batch).await?;
    env.purge(&exchange).await?;
    let confirm_rtt_ms = round_trip(&amqp, &exchange, message, round_trips).await?;
    env.purge(&exchange).await?;
    let _ = amqp.close(200, "ceiling measured".into()).await;
    Ok(Ceiling {
        messages,
        body_bytes: message.body.len(),
        confirm_batch: batch,
        confirmed_per_s: confirmed,
        unconfirmed_per_s: unconfirmed,
        confirm_rtt_ms,
    })
}

const MANDATORY: BasicPublishOptions = BasicPublishOptions {
    mandatory: true,
    immediate: false,
};

async fn confirm_channel(amqp: &Connection) -> Result<lapin::Channel> {
    let channel = amqp.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

async fn round_trip(
    amqp: &Connection,
    exchange: &str,
    message: &Message,
    count: usize,
) -> Result<Percentiles> {
    let channel = confirm_channel(amqp).await?;
    let mut millis = Vec::with_capacity(count);
    for _ in 0..count {
        let start = Instant::now();
        for confirm in publish_batch(&channel, exchange, message, 1).await? {
            expect_ack(confirm.await?)?;
        }
        millis.push(start.elapsed().as_secs_f64() * 1e3);
    }
    Ok(Percentiles::of(millis))
}

fn expect_ack(confirmation: Confirmation) -> Result<()> {
    match confirmation {
        Confirmation::Ack(None) => Ok(()),
        other => bail!("ceiling publish not acked cleanly: {other:?}"),
    }
}

/// Publishes in batches of `batch` and, as the relay does, waits for a batch's confirms
/// only after the next batch is published: at most two batches in flight.
async fn confirmed_rate(
    amqp: &Connection,
    exchange: &str,
    message: &Message,
    messages: usize,
    batch: usize,
) -> Result<f64> {
    let channel = confirm_channel(amqp).await?;
    let start = Instant::now();
    let mut in_flight = Vec::new();
    for n in batch_sizes(messages, batch) {
        let pending = publish_batch(&channel, exchange, message, n).await?;
        for confirm in std::mem::replace(&mut in_flight, pending) {
            expect_ack(confirm.await?)?;
        }
    }
    for confirm in in_flight {
        expect_ack(confirm.await?)?;
    }
    Ok(messages as f64 / start.elapsed().as_secs_f64())
}

async fn unconfirmed_rate(
    env: &BenchEnv,
    amqp: &Connection,
    exchange: &str,
    message: &Message,
    messages: usize,
    batch: usize,
) -> Result<f64> {
    let channel = amqp.create_channel().await?;
    let start = Instant::now();
    for n in batch_sizes(messages, batch) {
        publish_batch(&channel, exchange, message, n).await?;
    }
    let passive = QueueDeclareOptions {
        passive: true,
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let deadline = start + Duration::from_secs(300);
    loop {
        let queue = env
            .channel
            .queue_declare(exchange.into(), passive, FieldTable::default())
            .await
            .context("ceiling queue depth")?;
        if queue.message_count() as usize >= messages {
            return Ok(messages as f64 / start.elapsed().as_secs_f64());
        }
        if Instant::now() > deadline {
            bail!(
                "only {} of {messages} unconfirmed messages arrived",
                queue.message_count()
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `messages` cut into batches of at most `batch`.
fn batch_sizes(messages: usize, batch: usize) -> impl Iterator<Item = usize> {
    (0..messages)
        .step_by(batch)
        .map(move |sent| batch.min(messages - sent))
}

/// Publishes `count` copies of `message` as the relay publishes a batch: all queued
/// before the connection writes them.
async fn publish_batch(
    channel: &lapin::Channel,
    exchange: &str,
    message: &Message,
    count: usize,
) -> Result<Vec<lapin::PublisherConfirm>> {
    Ok(try_join_all((0..count).map(|_| {
        channel.basic_publish(
            exchange.into(),
            message.routing_key.as_str().into(),
            MANDATORY,
            &message.body,
            properties(message, APP_ID),
        )
    }))
    .await?)
}

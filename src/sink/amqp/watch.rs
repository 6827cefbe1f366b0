//! Watching exchanges from the outside, as a consumer would: a private queue bound to
//! them and consumed as one stream of [`Received`] messages. The canary watches its own
//! exchange this way, `itrelay demo` every module's.

use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueBindOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer};

use super::{bounded, close_connection, open_channel, open_connection, private_queue};
use super::{topology, PublishError};
use crate::config::AmqpSettings;
use crate::route::Router;

/// A message as it reached a watched exchange.
#[derive(Debug, Clone)]
pub struct Received {
    pub exchange: String,
    pub routing_key: String,
    pub message_id: Option<String>,
    pub body: Vec<u8>,
}

/// A connection of its own with a private queue (gone with the connection), consumed
/// without acknowledgements.
pub struct Watcher {
    settings: AmqpSettings,
    connection: Connection,
    channel: Channel,
    queue: String,
    deliveries: Consumer,
}

impl Watcher {
    /// Connects as `name` (the connection's name in the broker's management UI) and
    /// starts consuming a new private queue, every step bounded by
    /// `amqp.connect_timeout_secs`.
    pub async fn open(settings: &AmqpSettings, name: &str) -> Result<Self, PublishError> {
        let connection = open_connection(settings, name).await?;
        let limit = settings.connect_timeout();
        let channel = open_channel(&connection, settings).await?;
        let queue = bounded(
            limit,
            || format!("declaring the queue of {name}"),
            private_queue(&channel),
        )
        .await?
        .name()
        .to_string();
        let consume = channel.basic_consume(
            queue.as_str().into(),
            name.into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        );
        let deliveries =
            bounded(limit, || format!("consuming the queue of {name}"), consume).await?;
        Ok(Self {
            settings: settings.clone(),
            connection,
            channel,
            queue,
            deliveries,
        })
    }

    /// Receives every message published to `exchange` from now on.
    pub async fn watch(&self, exchange: &str) -> Result<(), PublishError> {
        let bind = self.channel.queue_bind(
            self.queue.as_str().into(),
            exchange.into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        );
        bounded(
            self.settings.connect_timeout(),
            || format!("binding a watching queue to {exchange}"),
            bind,
        )
        .await
    }

    /// The next message; `None` once the broker cancelled the consumer.
    pub async fn next(&mut self) -> Option<Result<Received, PublishError>> {
        let delivery = self.deliveries.next().await?;
        Some(
            delivery
                .map(|delivery| Received {
                    exchange: delivery.exchange.to_string(),
                    routing_key: delivery.routing_key.to_string(),
                    message_id: delivery
                        .properties
                        .message_id()
                        .as_ref()
                        .map(ToString::to_string),
                    body: delivery.data,
                })
                .map_err(PublishError::from),
        )
    }

    /// Deletes every exchange of `router` and the dead-letter queue, best effort: for
    /// scratch topologies such as the demo's.
    pub async fn remove_topology(&self, router: &Router) {
        topology::remove(&self.channel, &self.settings, router).await;
    }

    /// Closes the connection, waiting at most `amqp.connect_timeout_secs`.
    pub async fn close(self) {
        close_connection(&self.connection, self.settings.connect_timeout()).await;
    }
}

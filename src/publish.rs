//! Publishing to RabbitMQ: durable topic exchanges declared at start, every message
//! persistent and `mandatory` on a channel in confirm mode. A message counts as delivered
//! only when the broker acks it and did not return it.

use std::time::Duration;

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::publisher_confirm::Confirmation as LapinConfirmation;
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio::time::Instant;

use crate::envelope::Message;
use crate::route::Router;
use crate::secret::SecretUrl;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("AMQP error: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("the broker confirmed nothing within {0:?}")]
    ConfirmTimeout(Duration),
}

/// The broker's answer to one publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Confirmation {
    Acked,
    /// Acked but returned: no queue is bound for the routing key.
    Returned {
        reply_code: u16,
        reply_text: String,
    },
    Nacked,
}

pub struct Publisher {
    connection: Connection,
    channel: Channel,
    confirm_timeout: Duration,
}

impl Publisher {
    /// Connects, turns on publisher confirms and declares every exchange of `router`,
    /// plus the dead-letter exchange and its queue.
    pub async fn connect(
        url: &SecretUrl,
        router: &Router,
        confirm_timeout: Duration,
    ) -> Result<Self, PublishError> {
        let properties = ConnectionProperties::default()
            .with_connection_name("itrelay".into())
            .with_executor(tokio_executor_trait::Tokio::current())
            .with_reactor(tokio_reactor_trait::Tokio);
        let connection = Connection::connect(url.expose(), properties).await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        for exchange in router.exchanges() {
            channel
                .exchange_declare(
                    exchange,
                    ExchangeKind::Topic,
                    durable,
                    FieldTable::default(),
                )
                .await?;
        }
        let dead_letter = router.dead_letter();
        channel
            .exchange_declare(
                dead_letter,
                ExchangeKind::Topic,
                durable,
                FieldTable::default(),
            )
            .await?;
        let queue = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        channel
            .queue_declare(dead_letter, queue, FieldTable::default())
            .await?;
        channel
            .queue_bind(
                dead_letter,
                dead_letter,
                "#",
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(Self {
            connection,
            channel,
            confirm_timeout,
        })
    }

    /// Publishes each `(exchange, message)` and waits for all their confirms; the
    /// answers come back in the same order.
    pub async fn publish(
        &self,
        sends: &[(&str, &Message)],
    ) -> Result<Vec<Confirmation>, PublishError> {
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let mut pending = Vec::with_capacity(sends.len());
        for (exchange, message) in sends {
            let confirm = self
                .channel
                .basic_publish(
                    exchange,
                    &message.routing_key,
                    options,
                    &message.body,
                    message.properties.clone(),
                )
                .await?;
            pending.push(confirm);
        }
        let deadline = Instant::now() + self.confirm_timeout;
        let mut confirmations = Vec::with_capacity(pending.len());
        for confirm in pending {
            let confirmation = tokio::time::timeout_at(deadline, confirm)
                .await
                .map_err(|_| PublishError::ConfirmTimeout(self.confirm_timeout))??;
            confirmations.push(match confirmation {
                LapinConfirmation::Ack(None) | LapinConfirmation::NotRequested => {
                    Confirmation::Acked
                }
                LapinConfirmation::Ack(Some(returned)) => Confirmation::Returned {
                    reply_code: returned.reply_code,
                    reply_text: returned.reply_text.to_string(),
                },
                LapinConfirmation::Nack(_) => Confirmation::Nacked,
            });
        }
        Ok(confirmations)
    }

    pub async fn close(self) {
        // Closing a connection that already failed has nothing left to report.
        let _ = self.channel.close(200, "shutting down").await;
        let _ = self.connection.close(200, "shutting down").await;
    }
}

//! Publishing to RabbitMQ: durable topic exchanges declared at start, every message
//! persistent and `mandatory` on a channel in confirm mode. A message counts as delivered
//! only when the broker acks it and did not return it.

use std::future::Future;
use std::time::Duration;

use futures_util::future::try_join_all;
use futures_util::StreamExt;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, Event};
use lapin::{Confirmation as LapinConfirmation, PublisherConfirm};
use std::sync::Arc;

use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::warn;

use crate::config::AmqpSettings;
use crate::envelope::Message;
use crate::metrics::METRICS;
use crate::route::Router;
use crate::tls::{self, SettingError};
use crate::topology;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("AMQP error: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("the broker confirmed nothing within {0:?}")]
    ConfirmTimeout(Duration),
    /// A step of talking to the broker got no answer in time (a silent network).
    #[error("{step}: no answer from the broker within {limit:?}")]
    Timeout { step: String, limit: Duration },
    /// A TLS file became unreadable since the start.
    #[error(transparent)]
    Setting(#[from] SettingError),
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

/// Heartbeat interval asked of the broker when the URL does not say (`?heartbeat=N`).
const HEARTBEAT_SECS: u16 = 5;
/// Largest frame asked of the broker when the URL does not say (`?frame_max=N`). lapin
/// keeps a send and a receive buffer of 32 frames per connection, zero-filled: at
/// RabbitMQ's default of 128 KiB that is 8 MiB resident per connection; at 8 KiB,
/// 512 KiB. A message body larger than a frame is sent in several.
const FRAME_MAX: u32 = 8192;

/// Waits at most `limit` for one step of talking to the broker; a step that times out
/// is named in the error (and so in the log line about it).
pub async fn bounded<T, E: Into<PublishError>>(
    limit: Duration,
    step: impl FnOnce() -> String,
    call: impl Future<Output = Result<T, E>>,
) -> Result<T, PublishError> {
    match tokio::time::timeout(limit, call).await {
        Ok(result) => result.map_err(Into::into),
        Err(_) => Err(PublishError::Timeout {
            step: step(),
            limit,
        }),
    }
}

/// Opens a connection as the settings say: the password over the URL's, and for
/// `amqps://` TLS with `amqp.ca_file` and the client certificate, if any.
/// `name` is the connection's name in the broker's management UI.
pub async fn open_connection(
    settings: &AmqpSettings,
    name: &str,
) -> Result<Connection, PublishError> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    let (mut uri, tls) = tls::amqp(settings)?;
    // Heartbeats unless the URL sets them: a silent broker is noticed in 2 × this.
    uri.query.heartbeat.get_or_insert(HEARTBEAT_SECS);
    uri.query.frame_max.get_or_insert(FRAME_MAX);
    // TCP, TLS and the AMQP handshake together: an endpoint that accepts and never
    // answers is given up on after `amqp.connect_timeout_secs`.
    let step = || {
        format!(
            "connecting to {} (TCP, TLS and AMQP handshake)",
            settings.url
        )
    };
    let limit = settings.connect_timeout();
    match tls {
        None => bounded(limit, step, Connection::connect_uri(uri, properties)).await,
        Some(connector) => {
            bounded(
                limit,
                step,
                tls::amqps_connection(uri, connector, properties),
            )
            .await
        }
    }
}

/// Opens a channel, bounded by `amqp.connect_timeout_secs`.
pub async fn open_channel(
    connection: &Connection,
    settings: &AmqpSettings,
) -> Result<Channel, PublishError> {
    bounded(
        settings.connect_timeout(),
        || "opening a channel".to_owned(),
        connection.create_channel(),
    )
    .await
}

/// Closes `connection`, waiting at most `limit` for the broker to agree; a connection
/// that already failed, or a broker that does not answer, has nothing left to say.
pub async fn close_connection(connection: &Connection, limit: Duration) {
    let _ = tokio::time::timeout(limit, connection.close(200, "shutting down".into())).await;
}

/// A server-named queue that lives as long as this connection: for watching exchanges.
pub async fn private_queue(channel: &Channel) -> Result<lapin::Queue, lapin::Error> {
    let options = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare("".into(), options, FieldTable::default())
        .await
}

/// Messages published and not yet confirmed, in send order.
pub struct Unconfirmed {
    confirms: Vec<PublisherConfirm>,
    sent_at: Instant,
}

pub struct Publisher {
    connection: Connection,
    channel: Channel,
    confirm_timeout: Duration,
    close_timeout: Duration,
}

impl Publisher {
    /// Whether the broker blocks this connection's publishing (`connection.blocked`,
    /// sent during a memory or disk alarm) right now.
    pub fn blocked(&self) -> bool {
        self.connection.status().blocked()
    }

    /// Connects, turns on publisher confirms and declares every exchange of `router`,
    /// plus the dead-letter exchange and its queue.
    pub async fn connect(
        settings: &AmqpSettings,
        router: &Router,
        confirm_timeout: Duration,
    ) -> Result<Self, PublishError> {
        let connection = open_connection(settings, "itrelay").await?;
        let channel = open_channel(&connection, settings).await?;
        let limit = settings.connect_timeout();
        bounded(
            limit,
            || "turning on publisher confirms".to_owned(),
            channel.confirm_select(ConfirmSelectOptions::default()),
        )
        .await?;
        topology::declare(&channel, settings, router, limit).await?;
        Ok(Self {
            connection,
            channel,
            confirm_timeout,
            close_timeout: limit,
        })
    }

    /// Publishes each `(exchange, message)` without waiting for the broker: the relay
    /// claims its next batch while these confirms are on their way.
    pub async fn send(&self, sends: &[(&str, &Message)]) -> Result<Unconfirmed, PublishError> {
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let started = Instant::now();
        // Each publish queues its frames and takes its delivery tag when first polled, and
        // `try_join_all` polls them first in order: the whole batch is queued before the
        // connection writes, so it goes out in few writes instead of one per message.
        let publishes = try_join_all(sends.iter().map(|(exchange, message)| {
            self.channel.basic_publish(
                (*exchange).into(),
                message.routing_key.as_str().into(),
                options,
                &message.body,
                message.properties.clone(),
            )
        }));
        // Writing stalls when the network does: bounded like the confirms.
        let confirms = bounded(
            self.confirm_timeout,
            || format!("publishing {} messages", sends.len()),
            publishes,
        )
        .await?;
        let sent_at = Instant::now();
        METRICS
            .publish_seconds
            .observe(sent_at.duration_since(started).as_secs_f64());
        Ok(Unconfirmed { confirms, sent_at })
    }

    /// Waits for every confirm of `unconfirmed`; the answers come back in send order.
    pub async fn confirm(
        &self,
        unconfirmed: Unconfirmed,
    ) -> Result<Vec<Confirmation>, PublishError> {
        let Unconfirmed { confirms, sent_at } = unconfirmed;
        let mut deadline = sent_at + self.confirm_timeout;
        let mut confirmations = Vec::with_capacity(confirms.len());
        for mut confirm in confirms {
            let confirmation = loop {
                match tokio::time::timeout_at(deadline, &mut confirm).await {
                    Ok(confirmation) => break confirmation?,
                    // A broker under a resource alarm blocks publishers on purpose:
                    // wait for it (the batch stays in Postgres) rather than reconnect.
                    Err(_) if self.connection.status().blocked() => {
                        warn!("the broker blocks publishing (resource alarm); waiting");
                        deadline = Instant::now() + self.confirm_timeout;
                    }
                    Err(_) => return Err(PublishError::ConfirmTimeout(self.confirm_timeout)),
                }
            };
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
        METRICS
            .confirm_seconds
            .observe(sent_at.elapsed().as_secs_f64());
        Ok(confirmations)
    }

    /// Publishes and waits for the confirms.
    pub async fn publish(
        &self,
        sends: &[(&str, &Message)],
    ) -> Result<Vec<Confirmation>, PublishError> {
        let unconfirmed = self.send(sends).await?;
        self.confirm(unconfirmed).await
    }

    /// A signal fired when the broker connection fails, even while nothing is published.
    pub fn failure_signal(&self) -> Arc<Notify> {
        let failed = Arc::new(Notify::new());
        let signal = failed.clone();
        let mut events = self.connection.events_listener();
        // Ends with the connection's event stream, or at its first error.
        tokio::spawn(async move {
            while let Some(event) = events.next().await {
                if let Event::Error(error) = event {
                    warn!(%error, "rabbitmq connection lost");
                    signal.notify_one();
                    return;
                }
            }
        });
        failed
    }

    /// Closes the channel and the connection; a broker that does not answer within
    /// `amqp.connect_timeout_secs` is left behind.
    pub async fn close(self) {
        // Closing a connection that already failed has nothing left to report.
        let closing = async {
            let _ = self.channel.close(200, "shutting down".into()).await;
            let _ = self.connection.close(200, "shutting down".into()).await;
        };
        let _ = tokio::time::timeout(self.close_timeout, closing).await;
    }
}

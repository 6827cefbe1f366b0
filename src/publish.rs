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
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::FutureExt;

use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::warn;

use crate::config::AmqpSettings;
use crate::envelope::Message;
use crate::metrics::METRICS;
use crate::returns::{Reply, Returns};
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
    let (mut uri, tls) = settings.connect_options()?;
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

/// Messages published and not yet confirmed, in send order: their confirms' numbers in
/// [`Confirms`], and the exchange and message id of each, to match returns to them.
pub struct Unconfirmed {
    seqs: std::ops::Range<u64>,
    sent: Vec<(String, String)>,
    sent_at: Instant,
}

/// The publisher's confirms not yet taken by [`Publisher::confirm`], and the returns
/// seen: a confirm may carry another message's return ([`crate::returns`]).
#[derive(Default)]
struct Confirms {
    next: u64,
    /// Not completed when last looked at, by number.
    waiting: HashMap<u64, PublisherConfirm>,
    /// Completed while another batch was settled: acked or not, by number.
    done: HashMap<u64, bool>,
    returns: Returns,
}

impl Confirms {
    /// Keeps the return a completed confirm carries, and says whether it was an ack.
    fn take_in(&mut self, confirmation: LapinConfirmation) -> bool {
        let (acked, returned) = match confirmation {
            LapinConfirmation::Ack(returned) => (true, returned),
            LapinConfirmation::Nack(returned) => (false, returned),
            LapinConfirmation::NotRequested => (true, None),
        };
        if let Some(returned) = returned {
            let message_id = returned
                .delivery
                .properties
                .message_id()
                .as_ref()
                .map(|id| id.to_string())
                .unwrap_or_default();
            self.returns.add(
                returned.delivery.exchange.as_str(),
                &message_id,
                Reply {
                    code: returned.reply_code,
                    text: returned.reply_text.to_string(),
                },
            );
        }
        acked
    }

    /// Takes in every waiting confirm that has completed by now, with its return.
    fn sweep(&mut self) {
        let completed: Vec<(u64, LapinConfirmation)> = self
            .waiting
            .iter_mut()
            .filter_map(|(seq, confirm)| Some((*seq, confirm.now_or_never()?.ok()?)))
            .collect();
        for (seq, confirmation) in completed {
            self.waiting.remove(&seq);
            let acked = self.take_in(confirmation);
            self.done.insert(seq, acked);
        }
    }
}

pub struct Publisher {
    connection: Connection,
    channel: Channel,
    confirm_timeout: Duration,
    close_timeout: Duration,
    confirms: Mutex<Confirms>,
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
            confirms: Mutex::default(),
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
        let mut pending = self.pending();
        let first = pending.next;
        for confirm in confirms {
            let seq = pending.next;
            pending.waiting.insert(seq, confirm);
            pending.next += 1;
        }
        let sent = sends
            .iter()
            .map(|(exchange, message)| {
                let message_id = message
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|id| id.to_string())
                    .unwrap_or_default();
                ((*exchange).to_owned(), message_id)
            })
            .collect();
        Ok(Unconfirmed {
            seqs: first..pending.next,
            sent,
            sent_at,
        })
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Confirms> {
        // Cannot fail: no code holding the lock panics (it never awaits, and only moves
        // values between maps).
        self.confirms
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits for every confirm of `unconfirmed`; the answers come back in send order. A
    /// message counts as returned when a return naming its exchange and message id came
    /// back, whichever confirm carried it.
    pub async fn confirm(
        &self,
        unconfirmed: Unconfirmed,
    ) -> Result<Vec<Confirmation>, PublishError> {
        let Unconfirmed {
            seqs,
            sent,
            sent_at,
        } = unconfirmed;
        let mut deadline = sent_at + self.confirm_timeout;
        let mut acked = Vec::with_capacity(sent.len());
        for seq in seqs {
            let taken = {
                let mut pending = self.pending();
                match pending.done.remove(&seq) {
                    Some(done) => Err(done),
                    None => Ok(pending.waiting.remove(&seq)),
                }
            };
            let mut confirm = match taken {
                Err(done) => {
                    acked.push(done);
                    continue;
                }
                Ok(Some(confirm)) => confirm,
                // Cannot happen: each number is taken once, by the batch that sent it.
                Ok(None) => return Err(PublishError::ConfirmTimeout(self.confirm_timeout)),
            };
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
            acked.push(self.pending().take_in(confirmation));
        }
        let mut pending = self.pending();
        // A return of ours may ride on a confirm of a later batch completed by the same
        // acknowledgement: it has completed by now.
        pending.sweep();
        let confirmations = sent
            .iter()
            .zip(acked)
            .map(|((exchange, message_id), acked)| {
                match (acked, pending.returns.take(exchange, message_id)) {
                    (false, _) => Confirmation::Nacked,
                    (true, None) => Confirmation::Acked,
                    (true, Some(reply)) => Confirmation::Returned {
                        reply_code: reply.code,
                        reply_text: reply.text,
                    },
                }
            })
            .collect();
        drop(pending);
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

//! Publishing on one channel in confirm mode: a batch is sent without waiting, then its
//! confirms are awaited in send order, and returns are matched to their messages.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_util::future::try_join_all;
use futures_util::StreamExt;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{Channel, Connection, Event};
use lapin::{Confirmation as LapinConfirmation, PublisherConfirm};
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::warn;

use super::connection::{bounded, open_channel, open_connection};
use super::message::properties;
use super::returns::{Reply, Returns};
use super::{topology, PublishError};
use crate::config::AmqpSettings;
use crate::metrics::{Service, METRICS};
use crate::route::Router;
use crate::sink::{Confirmation, Message, Sink};

/// Messages published and not yet confirmed, in send order: their confirms' numbers in
/// [`Confirms`], and the exchange and message id of each, to match returns to them.
pub struct Unconfirmed {
    seqs: std::ops::Range<u64>,
    sent: Vec<(String, String)>,
    sent_at: Instant,
}

/// The publisher's confirms not yet taken by [`Publisher::confirm`], and the returns
/// seen: a confirm may carry another message's return ([`super::returns`]).
#[derive(Default)]
struct Confirms {
    next: u64,
    /// Not completed when last looked at, by number.
    waiting: HashMap<u64, PublisherConfirm>,
    /// Completed before their batch was settled: acked or not (or the connection's
    /// error), by number.
    done: HashMap<u64, Result<bool, lapin::Error>>,
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
        let seqs: Vec<u64> = self.waiting.keys().copied().collect();
        self.poll_confirms(seqs, &mut Context::from_waker(Waker::noop()));
    }

    /// Polls the waiting confirms numbered `seqs`, keeping what completed in `done`;
    /// true if none of them is still waiting.
    fn poll_confirms(&mut self, seqs: impl IntoIterator<Item = u64>, cx: &mut Context<'_>) -> bool {
        let mut all_in = true;
        for seq in seqs {
            let Some(confirm) = self.waiting.get_mut(&seq) else {
                continue;
            };
            let Poll::Ready(completed) = Pin::new(confirm).poll(cx) else {
                all_in = false;
                continue;
            };
            self.waiting.remove(&seq);
            let done = completed.map(|confirmation| self.take_in(confirmation));
            self.done.insert(seq, done);
        }
        all_in
    }
}

/// Resolves once every confirm of a batch has completed, without taking them: what
/// completed is kept for [`Sink::confirm`], so the wait can be dropped at any point.
struct AllConfirmed<'p> {
    publisher: &'p Publisher,
    seqs: std::ops::Range<u64>,
}

impl Future for AllConfirmed<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self
            .publisher
            .pending()
            .poll_confirms(self.seqs.clone(), cx)
        {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

pub struct Publisher {
    connection: Connection,
    channel: Channel,
    /// The `app_id` of every message.
    app_id: String,
    confirm_timeout: Duration,
    close_timeout: Duration,
    confirms: Mutex<Confirms>,
}

impl Publisher {
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
            app_id: settings.app_id.clone(),
            confirm_timeout,
            close_timeout: limit,
            confirms: Mutex::default(),
        })
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Confirms> {
        // Cannot fail: no code holding the lock panics (it never awaits, and only moves
        // values between maps).
        self.confirms
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Sink for Publisher {
    const SERVICE: Service = Service::Rabbitmq;
    type Error = PublishError;
    type Pending = Unconfirmed;

    /// Whether the broker blocks this connection's publishing (`connection.blocked`,
    /// sent during a memory or disk alarm) right now.
    fn blocked(&self) -> bool {
        self.connection.status().blocked()
    }

    /// Publishes each `(exchange, message)` without waiting for the broker: the relay
    /// claims its next batch while these confirms are on their way.
    async fn send(&self, sends: &[(&str, &Message)]) -> Result<Unconfirmed, PublishError> {
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
                properties(message, &self.app_id),
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
            .map(|(exchange, message)| ((*exchange).to_owned(), message.id.clone()))
            .collect();
        Ok(Unconfirmed {
            seqs: first..pending.next,
            sent,
            sent_at,
        })
    }

    /// Resolves once every confirm of `unconfirmed` has completed.
    fn confirmed(&self, unconfirmed: &Unconfirmed) -> impl Future<Output = ()> + Send {
        AllConfirmed {
            publisher: self,
            seqs: unconfirmed.seqs.clone(),
        }
    }

    /// Waits for every confirm of `unconfirmed`; the answers come back in send order. A
    /// message counts as returned when a return naming its exchange and message id came
    /// back, whichever confirm carried it.
    async fn confirm(&self, unconfirmed: Unconfirmed) -> Result<Vec<Confirmation>, PublishError> {
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
                    Some(done) => Err(done?),
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

    /// A signal fired when the broker connection fails, even while nothing is published.
    fn failure_signal(&self) -> Arc<Notify> {
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
    async fn close(self) {
        // Closing a connection that already failed has nothing left to report.
        let closing = async {
            let _ = self.channel.close(200, "shutting down".into()).await;
            let _ = self.connection.close(200, "shutting down".into()).await;
        };
        let _ = tokio::time::timeout(self.close_timeout, closing).await;
    }
}

//! Where events go. A [`Sink`] takes messages, each for a named destination, without
//! waiting, then answers each with a [`Confirmation`]: a message counts as delivered
//! only when the sink confirmed it. The relay knows sinks only through this trait and
//! the sink-neutral [`Message`]; [`amqp`] is the RabbitMQ sink, and the only module that
//! speaks AMQP.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::Notify;

use crate::metrics::Service;

pub mod amqp;

/// A message as every sink carries it: what the event's envelope says, not how a
/// protocol encodes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Routes the message within its destination: the event type.
    pub routing_key: String,
    /// The JSON body.
    pub body: Vec<u8>,
    /// Fixed per event: consumers de-duplicate redeliveries by it.
    pub id: String,
    /// The message's type: the event type.
    pub kind: String,
    /// When it happened, in seconds since the Unix epoch.
    pub timestamp: u64,
    pub headers: Vec<(String, Header)>,
}

impl Message {
    /// The value of header `name`, if the message carries it.
    pub fn header(&self, name: &str) -> Option<&Header> {
        self.headers
            .iter()
            .find(|(header, _)| header == name)
            .map(|(_, value)| value)
    }
}

/// A header's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Header {
    Text(String),
    Int(i64),
    Bool(bool),
}

/// The sink's answer for one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Confirmation {
    Acked,
    /// Taken but returned: nothing is bound for its routing key at its destination.
    Returned {
        reply_code: u16,
        reply_text: String,
    },
    /// Refused: to be sent again.
    Nacked,
}

/// A destination for events, with confirmations.
pub trait Sink: Send + Sync {
    /// The service the sink talks to, for readiness and metrics.
    const SERVICE: Service;
    type Error: std::error::Error + Send + Sync + 'static;
    /// Messages sent whose confirmations are not yet awaited.
    type Pending: Send;

    /// Sends each `(destination, message)` in order, without waiting for confirmations:
    /// the relay claims its next batch meanwhile.
    fn send(
        &self,
        sends: &[(&str, &Message)],
    ) -> impl Future<Output = Result<Self::Pending, Self::Error>> + Send;

    /// Resolves once every confirmation of `pending` has come back, without taking
    /// them ([`Self::confirm`] does): the relay claims while it waits for this, and may
    /// drop the wait at any point.
    fn confirmed(&self, pending: &Self::Pending) -> impl Future<Output = ()> + Send;

    /// Waits for the confirmations of `pending`, in send order.
    fn confirm(
        &self,
        pending: Self::Pending,
    ) -> impl Future<Output = Result<Vec<Confirmation>, Self::Error>> + Send;

    /// Sends and waits for the confirmations.
    fn publish(
        &self,
        sends: &[(&str, &Message)],
    ) -> impl Future<Output = Result<Vec<Confirmation>, Self::Error>> + Send {
        async move {
            let pending = self.send(sends).await?;
            self.confirm(pending).await
        }
    }

    /// A signal fired once the sink's connection fails, even while nothing is sent.
    fn failure_signal(&self) -> Arc<Notify>;

    /// Whether the sink holds back what is sent on purpose right now (a broker's
    /// resource alarm), for readiness.
    fn blocked(&self) -> bool;

    /// Closes the sink, waiting a bounded time for it to agree.
    fn close(self) -> impl Future<Output = ()> + Send;
}

//! The RabbitMQ sink: durable topic exchanges declared at start ([`topology`]), every
//! message persistent and `mandatory` ([`message`]) on a channel in confirm mode
//! ([`publish`]). A message counts as delivered only when the broker acks it and did not
//! return it ([`returns`]). The only place the relay speaks AMQP.

use std::time::Duration;

use crate::connect::SettingError;

mod connection;
mod message;
mod publish;
mod returns;
pub mod topology;
mod watch;

pub use connection::{bounded, close_connection, open_connection};
use connection::{open_channel, private_queue};
pub use message::properties;
pub use publish::Publisher;
pub use watch::{Received, Watcher};

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

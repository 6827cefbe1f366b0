//! Connections and channels to RabbitMQ, every step bounded: for the sink, the canary,
//! the demo and `itrelay check`.

use std::future::Future;
use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::tcp::{AMQPUriTcpExt, RustlsConnector};
use lapin::types::FieldTable;
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{Channel, Connection, ConnectionProperties};

use super::PublishError;
use crate::config::AmqpSettings;

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
    crate::tasks::bounded(
        limit,
        |limit| PublishError::Timeout {
            step: step(),
            limit,
        },
        call,
    )
    .await
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
        Some(connector) => bounded(limit, step, amqps_connection(uri, connector, properties)).await,
    }
}

/// Opens an AMQP connection to an `amqps://` broker: TCP, then the TLS handshake with
/// `connector` (which checks the server as configured), then AMQP's own.
async fn amqps_connection(
    uri: AMQPUri,
    connector: RustlsConnector,
    properties: ConnectionProperties,
) -> lapin::Result<Connection> {
    let runtime = lapin::runtime::default_runtime()?;
    let connect = async move |uri: AMQPUri, runtime| {
        let host = uri.authority.host.clone();
        let mut plain = uri;
        plain.scheme = AMQPScheme::AMQP;
        let stream = plain.connect_async(&runtime).await?;
        Ok(stream.into_rustls(&connector, &host).await?)
    };
    Connection::connector(uri, runtime, connect, properties).await
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

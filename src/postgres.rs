//! The Postgres session the relay works on: one connection that holds the leader lock,
//! LISTENs on the channel, and runs the outbox queries.
//!
//! Notifications arrive only while the connection is driven, so a task drives it and
//! hands each notification over as a [`Notice`]; when the connection ends, so does the
//! stream of notices.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, Connection, NoTls};
use tracing::{debug, warn};

use crate::config::PostgresSettings;
use crate::connect::SettingError;
use crate::redact::redact_text;

/// Settings of every session the relay opens, after any the URL's `options` give:
/// - the server's side of the keepalives and a check, every 5 s while a query runs, that
///   the client is still connected (Postgres 14 or later);
/// - no JIT compilation and no parallel workers. The relay's statements are short and
///   planned over views whose row estimates are far above what they read (a one-row
///   table, `unnest`), so the planner prices them past `jit_above_cost` and the parallel
///   thresholds: with JIT on, the outbox gauges compiled for 3.7 s a statement that runs
///   in 0.1 s, every few seconds, holding locks meanwhile; and starting two workers took
///   8 ms where the statement needs 1.
const SESSION_SETTINGS: &str = "-c tcp_keepalives_idle=10 -c tcp_keepalives_interval=5 \
     -c tcp_keepalives_count=3 -c tcp_user_timeout=30000 -c client_connection_check_interval=5000 \
     -c jit=off -c max_parallel_workers_per_gather=0";

/// Notices buffered between the connection and the relay; past this, notices are
/// dropped: a wake-up for new rows is redundant then, a replay's rows wait for the claim
/// floor's periodic rewind, and whole-event notifications are best effort.
const NOTICE_BUFFER: usize = 4096;

/// What a notification on the channel means to the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// New outbox rows (an empty payload), or rows from this outbox id on put back to
    /// pending (`itrelay replay` sends the lowest id it put back).
    Wake { from_id: Option<i64> },
    /// A whole event sent as the payload by a trigger that does not use the outbox.
    Event(String),
}

impl Notice {
    pub fn from_payload(payload: &str) -> Self {
        let trimmed = payload.trim();
        if trimmed.is_empty() {
            Notice::Wake { from_id: None }
        } else if trimmed.bytes().all(|b| b.is_ascii_digit()) {
            // Too many digits for an id: look from the lowest id.
            Notice::Wake {
                from_id: Some(trimmed.parse().unwrap_or(0)),
            }
        } else {
            Notice::Event(payload.to_owned())
        }
    }
}

/// Why a session could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// A TLS file became unreadable since the start.
    #[error(transparent)]
    Setting(#[from] SettingError),
    /// The driver's message with its causes: its own `Display` leaves out why (the
    /// certificate rejected, the authentication refused).
    #[error("{}", describe(.0))]
    Postgres(tokio_postgres::Error),
    /// The server took the connection and did not finish the handshake.
    #[error("no answer to the connection's handshake within {0:?} (postgres.query_timeout_secs)")]
    Timeout(Duration),
}

impl From<tokio_postgres::Error> for ConnectError {
    fn from(error: tokio_postgres::Error) -> Self {
        Self::Postgres(error)
    }
}

/// A Postgres error as a log line or message can show it: what the server said (severity,
/// SQLSTATE code, message, detail, hint), where the driver's own `Display` says only
/// `db error`; otherwise the driver's message with its causes. The statement's parameters
/// are never part of it. The detail can quote a row, so sensitive fields are masked.
pub fn describe(error: &tokio_postgres::Error) -> String {
    let Some(db) = error.as_db_error() else {
        return with_causes(error);
    };
    let mut text = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
    if let Some(detail) = db.detail() {
        text = format!("{text}; detail: {}", redact_text(detail));
    }
    if let Some(hint) = db.hint() {
        text = format!("{text}; hint: {hint}");
    }
    text
}

fn with_causes(error: &tokio_postgres::Error) -> String {
    let mut text = error.to_string();
    let mut cause = std::error::Error::source(error);
    while let Some(error) = cause {
        text = format!("{text}: {error}");
        cause = error.source();
    }
    text
}

pub struct PgSession {
    /// Shared with the task that renews the leader's lease on this same session.
    pub client: Arc<Client>,
    notices: mpsc::Receiver<Notice>,
}

impl PgSession {
    /// Connects as the settings say (TLS per `sslmode`, the password over the URL's),
    /// with keepalives on both ends, so a dead peer is noticed in seconds, not hours:
    /// the server also checks that the client is still there while it runs a query. (A
    /// pooler or proxy in between answers for a partitioned client; the leader's lease,
    /// [`crate::lease`], covers that.) The whole of it, handshake included, is bounded
    /// by `postgres.query_timeout_secs`.
    pub async fn connect(settings: &PostgresSettings) -> Result<Self, ConnectError> {
        let limit = Duration::from_secs(settings.query_timeout_secs);
        tokio::time::timeout(limit, Self::open(settings))
            .await
            .map_err(|_| ConnectError::Timeout(limit))?
    }

    async fn open(settings: &PostgresSettings) -> Result<Self, ConnectError> {
        let (mut config, tls) = settings.connect_options()?;
        let options = format!(
            "{} {SESSION_SETTINGS}",
            config.get_options().unwrap_or_default()
        );
        config
            .options(options.trim())
            .application_name("itrelay")
            .connect_timeout(Duration::from_secs(10))
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .keepalives_interval(Duration::from_secs(5))
            .keepalives_retries(3);
        let (client, notices) = match tls {
            Some(tls) => {
                let (client, connection) = config.connect(tls).await?;
                (client, drive(connection))
            }
            None => {
                let (client, connection) = config.connect(NoTls).await?;
                (client, drive(connection))
            }
        };
        Ok(Self {
            client: Arc::new(client),
            notices,
        })
    }

    /// Starts receiving notifications on `channel` (a name checked by the configuration,
    /// quoted here all the same).
    pub async fn listen(&self, channel: &str) -> Result<(), tokio_postgres::Error> {
        self.client
            .batch_execute(&format!("LISTEN {}", quote_identifier(channel)))
            .await
    }

    /// The next notice; `None` once the connection has ended.
    pub async fn next_notice(&mut self) -> Option<Notice> {
        self.notices.recv().await
    }

    /// A notice already waiting, without waiting for one.
    pub fn try_next_notice(&mut self) -> Option<Notice> {
        self.notices.try_recv().ok()
    }
}

/// Drives `connection` in a task, handing each notification over; the notices end
/// when the connection does.
fn drive<S, T>(mut connection: Connection<S, T>) -> mpsc::Receiver<Notice>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, notices) = mpsc::channel(NOTICE_BUFFER);
    tokio::spawn(async move {
        let mut messages = stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(notification)) => {
                    let notice = Notice::from_payload(notification.payload());
                    if let Err(mpsc::error::TrySendError::Full(Notice::Event(_))) =
                        sender.try_send(notice)
                    {
                        warn!("notification buffer full: a whole-event notification was dropped");
                    }
                }
                Ok(AsyncMessage::Notice(notice)) => debug!(%notice, "postgres notice"),
                Ok(_) => {}
                Err(error) => {
                    warn!(%error, "postgres connection lost");
                    break;
                }
            }
        }
    });
    notices
}

/// Quotes an SQL identifier: wraps it in `"` and doubles any `"` inside.
pub fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_identifier("it_events"), "\"it_events\"");
        assert_eq!(quote_identifier("a\"; DROP x; --"), "\"a\"\"; DROP x; --\"");
    }

    #[test]
    fn notification_payloads() {
        assert_eq!(Notice::from_payload(""), Notice::Wake { from_id: None });
        assert_eq!(
            Notice::from_payload(" 12345 "),
            Notice::Wake {
                from_id: Some(12345)
            }
        );
        assert_eq!(
            Notice::from_payload("99999999999999999999"),
            Notice::Wake { from_id: Some(0) }
        );
        assert_eq!(
            Notice::from_payload("{\"event_type\":\"x\"}"),
            Notice::Event("{\"event_type\":\"x\"}".into())
        );
        assert_eq!(
            Notice::from_payload("garbage"),
            Notice::Event("garbage".into())
        );
    }
}

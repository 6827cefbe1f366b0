//! Log output: human-readable text or JSON lines, levels from `RUST_LOG` (default `info`).
//!
//! Some dependencies log secrets or event bodies at their verbose levels: the AMQP client
//! logs every frame at trace (the login frame holds the password) and dumps a returned
//! message, body included, at warn; the Postgres driver logs statement parameters (event
//! bodies) at debug. [`DEPENDENCY_CAPS`] caps those targets whatever `RUST_LOG` says: it
//! is a second filter that every log line must also pass.
//!
//! Text is coloured only on a terminal (and never with `NO_COLOR` set), so that files and
//! journals get plain lines. JSON lines carry one `message` key each, next to the event's
//! fields (which must not be named like the keys the format adds: `timestamp`, `level`,
//! `message`, `target`).

use std::io::IsTerminal;

use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// The most each dependency target may log, by target name (a prefix of the module
/// path), so that neither a password nor an event body reaches a log line.
pub const DEPENDENCY_CAPS: &[(&str, LevelFilter)] = &[
    // Frames (the login frame carries the password) at trace, channel states at debug.
    ("lapin", LevelFilter::ERROR),
    // "Server returned us a message", with the whole message, at warn.
    ("lapin::returned_messages", LevelFilter::OFF),
    ("amq_protocol", LevelFilter::INFO),
    ("amq_protocol_tcp", LevelFilter::INFO),
    ("amq_protocol_uri", LevelFilter::INFO),
    ("tcp_stream", LevelFilter::INFO),
    ("pinky_swear", LevelFilter::INFO),
    // Statements with their parameters at debug.
    ("tokio_postgres", LevelFilter::INFO),
    ("postgres_protocol", LevelFilter::INFO),
    ("tokio_postgres_rustls", LevelFilter::INFO),
];

/// The filter every log line passes in addition to `RUST_LOG`'s.
pub fn dependency_caps() -> Targets {
    Targets::new()
        .with_default(LevelFilter::TRACE)
        .with_targets(DEPENDENCY_CAPS.iter().copied())
}

pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour(
            std::io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR").is_some(),
        ));
    match format {
        LogFormat::Text => builder.finish().with(dependency_caps()).init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .finish()
            .with(dependency_caps())
            .init(),
    }
}

/// Colour only for a terminal whose user did not ask for none (<https://no-color.org>).
fn colour(terminal: bool, no_color: bool) -> bool {
    terminal && !no_color
}

#[cfg(test)]
mod tests {
    use tracing::Level;

    use super::*;

    #[test]
    fn dependency_targets_are_capped_and_the_relay_is_not() {
        let caps = dependency_caps();
        assert!(!caps.would_enable("lapin::channel", &Level::TRACE));
        assert!(!caps.would_enable("lapin::returned_messages", &Level::WARN));
        assert!(caps.would_enable("lapin::channel", &Level::ERROR));
        assert!(!caps.would_enable("tokio_postgres::query", &Level::DEBUG));
        assert!(caps.would_enable("itrelay::relay", &Level::TRACE));
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(true, false));
        assert!(!colour(false, false));
        assert!(!colour(true, true));
    }
}

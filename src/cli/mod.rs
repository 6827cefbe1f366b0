//! The `itrelay` command line: one file per command group.
//!
//! - `run.rs`: `itrelay run`, the relay and its background tasks;
//! - `check.rs`: `itrelay check`, the services and the installed SQL;
//! - [`status`]: `itrelay status`, the backlog, failures and the leader;
//! - [`dead_letters`]: `itrelay dead-letters` and `itrelay replay`, the failed events;
//! - [`catalog`] and [`asyncapi`]: the catalog for people and for tools;
//! - `demo.rs`: `itrelay demo`, a scratch database and a short story of business writes.
//!
//! `install`, `uninstall`, `sql` and `healthcheck` are a few lines each, here.

pub mod asyncapi;
pub mod catalog;
mod check;
pub mod dead_letters;
mod demo;
mod run;
pub mod status;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::config::{LogFormat, Settings};
use crate::postgres::PgSession;
use crate::route::Router;
use crate::{http, logging, sql};

/// Relays IT-module events from Postgres to RabbitMQ: validated, enriched, confirmed.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Configuration file (TOML), layered over the built-in defaults.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log format, overriding `log.format`.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormatArg>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormatArg {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Relay events until SIGTERM or SIGINT, serving /healthz, /readyz and /metrics.
    Run,
    /// Exit 0 if a relay answers on /healthz at `http.listen` (for container health checks).
    Healthcheck,
    /// Apply sql/install.sql: the itrelay schema, the outbox and the triggers.
    Install,
    /// Apply sql/uninstall.sql: remove everything `install` created.
    Uninstall {
        /// Uninstall even if the outbox still holds undelivered events (they are lost).
        #[arg(long)]
        force: bool,
    },
    /// Print the SQL that `install` applies (or another embedded file).
    Sql {
        #[arg(value_enum, default_value = "install")]
        file: SqlFile,
    },
    /// Check the configuration, both services, and that the SQL is installed. Read-only:
    /// looks for the exchanges and the dead-letter queue without declaring them.
    Check {
        /// Declare the exchanges and the dead-letter queue, as the relay does at start.
        #[arg(long)]
        declare: bool,
    },
    /// List every event type: schema, status, source, subscribers and their exchanges.
    Catalog {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print the AsyncAPI 3.0 document (JSON) of the exchanges, messages and schemas.
    Asyncapi,
    /// Backlog size and oldest age, dead-lettered count, leader, last delivered event.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List dead-lettered (failed) events with their reasons, oldest first.
    DeadLetters {
        /// Show at most this many.
        #[arg(long, default_value_t = 100)]
        limit: i64,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Send events again (same message id, so consumers de-duplicate). Failed events
    /// only, unless --include-delivered; at least one criterion, and every given one must
    /// match.
    #[command(group(
        clap::ArgGroup::new("criteria")
            .required(true)
            .multiple(true)
            .args(["event_ids", "event_type", "since", "until"])
    ))]
    Replay {
        /// An event id (repeatable).
        #[arg(long = "event-id", value_name = "UUID")]
        event_ids: Vec<uuid::Uuid>,
        /// Only events of this type.
        #[arg(long = "type", value_name = "EVENT_TYPE")]
        event_type: Option<String>,
        /// Only events written at or after this time (RFC 3339).
        #[arg(long, value_parser = parse_time)]
        since: Option<time::OffsetDateTime>,
        /// Only events written before this time (RFC 3339).
        #[arg(long, value_parser = parse_time)]
        until: Option<time::OffsetDateTime>,
        /// Also replay events already delivered.
        #[arg(long)]
        include_delivered: bool,
        /// List the events that would be sent again, changing nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Try it out: a scratch database, the relay in-process, a short story of business
    /// writes, and every event printed as it reaches each module's exchange.
    Demo {
        /// Keep the scratch database and exchanges afterwards.
        #[arg(long)]
        keep: bool,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum SqlFile {
    /// The install, for the tables of `[mapping]`, granting `[install] enqueue_roles`.
    Install,
    Uninstall,
    /// The relay's least-privileged role, for psql, on the tables of `[mapping]`.
    Role,
    ReferenceSchema,
}

/// Parses the command line, loads the settings and runs the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("itrelay: {error}");
            return ExitCode::from(2);
        }
    };
    let format = match cli.log_format {
        Some(LogFormatArg::Json) => LogFormat::Json,
        Some(LogFormatArg::Text) => LogFormat::Text,
        None => settings.log.format,
    };
    logging::init(format);
    // One thread: the relay spends its time waiting on two connections, and with a
    // worker thread per core each reply woke another thread (a futex wake and a context
    // switch per hand-over), a third of the relay's CPU at 1,000 events a second.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("itrelay: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(execute(cli.command, settings));
    // Work left behind (a connection attempt into a silent network) is not waited for.
    runtime.shutdown_background();
    match outcome {
        Ok(code) => code,
        Err(error) => {
            eprintln!("itrelay: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn execute(command: Command, settings: Settings) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run => return run::run(settings).await,
        Command::Healthcheck => {
            let address = settings.http.address()?;
            return Ok(match http::probe(address, "/healthz").await {
                Ok(200) => ExitCode::SUCCESS,
                Ok(status) => {
                    eprintln!("itrelay: http://{address}/healthz answered {status}");
                    ExitCode::FAILURE
                }
                Err(error) => {
                    eprintln!("itrelay: http://{address}/healthz: {error}");
                    ExitCode::FAILURE
                }
            });
        }
        Command::Install => {
            let install = sql::install_sql(&settings.mapping, &settings.install)?;
            let pg = connect_postgres(&settings).await?;
            sql::apply_install(&pg.client, &settings.postgres.channel, &install)
                .await
                .context("applying sql/install.sql")?;
            let capture = settings.postgres.capture;
            crate::wal::install(&pg.client, capture, crate::wal::RETIRE_WAIT)
                .await
                .with_context(|| {
                    format!("setting capture {} (postgres.capture)", capture.as_str())
                })?;
            println!(
                "itrelay schema version {} installed, notifying channel {}, capture {}",
                sql::SCHEMA_VERSION,
                settings.postgres.channel,
                capture.as_str()
            );
        }
        Command::Uninstall { force } => {
            let pg = connect_postgres(&settings).await?;
            sql::uninstall(&pg.client, force)
                .await
                .context("applying sql/uninstall.sql")?;
            println!("itrelay uninstalled");
        }
        Command::Sql { file } => print!(
            "{}",
            match file {
                SqlFile::Install => sql::install_sql(&settings.mapping, &settings.install)?,
                SqlFile::Uninstall => sql::UNINSTALL.to_owned(),
                SqlFile::Role => sql::role_sql(&settings.mapping)?,
                SqlFile::ReferenceSchema => sql::REFERENCE_SCHEMA.to_owned(),
            }
        ),
        Command::Check { declare } => return Ok(check::check(&settings, declare).await),
        Command::Catalog { json } => {
            let events = catalog::describe(&settings);
            if json {
                emit(&(serde_json::to_string_pretty(&events)? + "\n"))?;
            } else {
                emit(&catalog::table(&events))?;
            }
        }
        Command::Asyncapi => {
            emit(&(serde_json::to_string_pretty(&asyncapi::document(&settings))? + "\n"))?;
        }
        Command::Status { json } => {
            let pg = connect_postgres(&settings).await?;
            let status = status::status(&pg.client, settings.lease())
                .await
                .context("reading the outbox")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", status.render());
            }
        }
        Command::DeadLetters { limit, json } => {
            let pg = connect_postgres(&settings).await?;
            let events = dead_letters::dead_letters(&pg.client, limit)
                .await
                .context("reading the outbox")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&events)?);
            } else {
                print!("{}", dead_letters::render_dead_letters(&events));
            }
        }
        Command::Replay {
            event_ids,
            event_type,
            since,
            until,
            include_delivered,
            dry_run,
        } => {
            let selection = dead_letters::ReplaySelection {
                event_ids,
                event_type,
                since,
                until,
                include_delivered,
            };
            let pg = connect_postgres(&settings).await?;
            if dry_run {
                let candidates = dead_letters::replay_candidates(&pg.client, &selection)
                    .await
                    .context("reading the outbox")?;
                emit(&dead_letters::render_replay_candidates(
                    &candidates,
                    &Router::from_settings(&settings),
                ))?;
                return Ok(ExitCode::SUCCESS);
            }
            let count = dead_letters::replay(&pg.client, &settings.postgres.channel, &selection)
                .await
                .context("marking events for replay")?;
            println!("{count} events queued for replay");
        }
        Command::Demo { keep } => demo::run(settings, keep).await?,
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_time(value: &str) -> Result<time::OffsetDateTime, String> {
    time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("not an RFC 3339 time (e.g. 2026-03-01T12:00:00Z): {e}"))
}

/// Writes to stdout; a reader that went away (`| head`) ends the output quietly.
fn emit(text: &str) -> anyhow::Result<()> {
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        result => result.context("writing to stdout"),
    }
}

/// The installed schema version, through a session of its own.
async fn installed_version(settings: &Settings) -> anyhow::Result<Option<i32>> {
    let pg = connect_postgres(settings).await?;
    Ok(sql::installed_version(&pg.client).await?)
}

async fn connect_postgres(settings: &Settings) -> anyhow::Result<PgSession> {
    PgSession::connect(&settings.postgres)
        .await
        .with_context(|| format!("connecting to {}", settings.postgres.url))
}

fn rfc3339(at: OffsetDateTime) -> String {
    // Cannot fail: every OffsetDateTime within Postgres's range formats as RFC 3339.
    at.format(&Rfc3339).unwrap_or_default()
}

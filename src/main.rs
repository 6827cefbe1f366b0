//! The `itrelay` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use itrelay::config::{LogFormat, Settings};
use itrelay::listen::PgSession;
use itrelay::publish::Publisher;
use itrelay::relay::Relay;
use itrelay::route::Router;
use itrelay::{demo, logging, shutdown, sql};

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
    /// Relay events until SIGTERM or SIGINT.
    Run,
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
    /// Check the configuration, both services, and that the SQL is installed.
    Check,
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
    Install,
    Uninstall,
    ReferenceSchema,
}

fn main() -> ExitCode {
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
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("itrelay: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(execute(cli.command, settings)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("itrelay: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn execute(command: Command, settings: Settings) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run => {
            let shutdown = shutdown::on_signals().context("installing signal handlers")?;
            Relay::new(settings)?.run(shutdown).await;
        }
        Command::Install => {
            let pg = connect_postgres(&settings).await?;
            sql::install(&pg.client)
                .await
                .context("applying sql/install.sql")?;
            println!("itrelay schema version {} installed", sql::SCHEMA_VERSION);
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
                SqlFile::Install => sql::INSTALL,
                SqlFile::Uninstall => sql::UNINSTALL,
                SqlFile::ReferenceSchema => sql::REFERENCE_SCHEMA,
            }
        ),
        Command::Check => return Ok(check(&settings).await),
        Command::Demo { keep } => demo::run(settings, keep).await?,
    }
    Ok(ExitCode::SUCCESS)
}

async fn connect_postgres(settings: &Settings) -> anyhow::Result<PgSession> {
    PgSession::connect(&settings.postgres.url)
        .await
        .with_context(|| format!("connecting to {}", settings.postgres.url))
}

/// Prints one line per check; fails if any check failed.
async fn check(settings: &Settings) -> ExitCode {
    let mut healthy = true;
    let mut report = |name: &str, result: anyhow::Result<String>| match result {
        Ok(detail) => println!("ok    {name:<9} {detail}"),
        Err(error) => {
            healthy = false;
            println!("FAIL  {name:<9} {error:#}");
        }
    };
    report("config", Ok("valid".to_owned()));
    match connect_postgres(settings).await {
        Ok(pg) => {
            report(
                "postgres",
                Ok(format!("reachable at {}", settings.postgres.url)),
            );
            let installed = sql::installed_version(&pg.client).await;
            report(
                "sql",
                match installed {
                    Ok(Some(v)) if v == sql::SCHEMA_VERSION => {
                        Ok(format!("schema version {v} installed"))
                    }
                    Ok(Some(v)) => Err(anyhow::anyhow!(
                        "schema version {v} installed, this binary needs {}: run `itrelay install`",
                        sql::SCHEMA_VERSION
                    )),
                    Ok(None) => Err(anyhow::anyhow!("not installed: run `itrelay install`")),
                    Err(error) => Err(error.into()),
                },
            );
        }
        Err(error) => report("postgres", Err(error)),
    }
    let router = Router::from_settings(settings);
    let amqp = Publisher::connect(&settings.amqp.url, &router, settings.confirm_timeout()).await;
    report(
        "rabbitmq",
        match amqp {
            Ok(publisher) => {
                publisher.close().await;
                Ok(format!(
                    "reachable at {}, exchanges declared",
                    settings.amqp.url
                ))
            }
            Err(error) => {
                Err(anyhow::Error::new(error)
                    .context(format!("connecting to {}", settings.amqp.url)))
            }
        },
    );
    if healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

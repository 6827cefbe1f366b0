//! `itrelay check`: the configuration, both services, the installed SQL, the mapping and
//! the triggers, one line each. Read-only on the broker unless given `--declare`.

use std::process::ExitCode;

use anyhow::Context;

use super::connect_postgres;
use crate::config::Settings;
use crate::route::Router;
use crate::sink::amqp::{self, topology, Publisher};
use crate::sink::Sink;
use crate::sql;

/// Declares what the relay needs on the broker, as it does at start.
async fn declare_on_broker(settings: &Settings) -> anyhow::Result<String> {
    let router = Router::from_settings(settings);
    Publisher::connect(&settings.amqp, &router, settings.confirm_timeout())
        .await?
        .close()
        .await;
    Ok(format!(
        "reachable at {}, exchanges and dead-letter queue declared",
        settings.amqp.url
    ))
}

/// Looks for what the relay needs on the broker, creating nothing. Missing exchanges are
/// reported, not failed: the relay declares them when it starts.
async fn look_at_broker(settings: &Settings) -> anyhow::Result<String> {
    let router = Router::from_settings(settings);
    let connection = amqp::open_connection(&settings.amqp, "itrelay-check").await?;
    let missing = topology::inspect(&connection, &settings.amqp, &router).await;
    amqp::close_connection(&connection, settings.amqp.connect_timeout()).await;
    let missing = missing?;
    Ok(if missing.is_empty() {
        format!(
            "reachable at {}, exchanges and dead-letter queue present",
            settings.amqp.url
        )
    } else {
        format!(
            "reachable at {}; not declared yet (the relay declares them at start, or \
             `itrelay check --declare`): {}",
            settings.amqp.url,
            missing.join(", ")
        )
    })
}

/// Prints one line per check; fails if any check failed.
pub(super) async fn check(settings: &Settings, declare: bool) -> ExitCode {
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
                    Ok(installed) => match sql::version_problem(installed) {
                        None => Ok(format!("schema version {} installed", sql::SCHEMA_VERSION)),
                        Some(problem) => Err(anyhow::anyhow!(problem)),
                    },
                    Err(error) => Err(error.into()),
                },
            );
            if !settings.mapping.is_empty() {
                let detail = match sql::mapping_problems(&pg.client, &settings.mapping).await {
                    Ok(problems) if problems.is_empty() => {
                        Ok("every mapped table and column found, of a compatible type".to_owned())
                    }
                    Ok(problems) => Err(anyhow::anyhow!(problems.join("; "))),
                    Err(error) => Err(error),
                };
                report("mapping", detail);
            }
            if let Ok((present, missing)) = sql::trigger_status(&pg.client).await {
                // A missing trigger is a table the database does not have: reported, not failed.
                let detail = if missing.is_empty() {
                    format!("all {} installed", present.len())
                } else {
                    format!(
                        "{} of {} installed; not installed (no such table at install): {}",
                        present.len(),
                        present.len() + missing.len(),
                        missing.join(", ")
                    )
                };
                report("triggers", Ok(detail));
            }
        }
        Err(error) => report("postgres", Err(error)),
    }
    let broker = if declare {
        declare_on_broker(settings).await
    } else {
        look_at_broker(settings).await
    };
    report(
        "rabbitmq",
        broker.with_context(|| format!("connecting to {}", settings.amqp.url)),
    );
    if healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

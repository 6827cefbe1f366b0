//! `itrelay run`: the relay and its background tasks (retention, canary, gauges, scans,
//! systemd notifications) and the HTTP endpoint, until SIGTERM or SIGINT.

use std::process::ExitCode;

use anyhow::Context;
use tracing::info;

use super::installed_version;
use crate::config::Settings;
use crate::health::Health;
use crate::metrics::METRICS;
use crate::relay::Relay;
use crate::route::Router;
use crate::{canary, gauges, http, retention, scan, shutdown, sql, systemd};

/// Relays until shut down; a fatal error or a stop past `relay.stop_timeout_secs` fails.
pub(super) async fn run(settings: Settings) -> anyhow::Result<ExitCode> {
    let shutdown = shutdown::on_signals().context("installing signal handlers")?;
    let listen = if settings.http.enabled {
        settings.http.address()?.to_string()
    } else {
        "disabled".to_owned()
    };
    // The settings' Debug masks every password and URL password.
    info!(
        version = env!("CARGO_PKG_VERSION"),
        %listen,
        config = ?settings,
        "itrelay starting"
    );
    let health = Health::default();
    let server = if settings.http.enabled {
        let address = settings.http.address()?;
        let server = http::bind(address, health.clone(), shutdown.clone())
            .await
            .with_context(|| format!("http.listen: cannot listen on {address}"))?;
        Some(tokio::spawn(server))
    } else {
        None
    };
    // An older or newer schema stops the start, naming the fix. Postgres
    // unreachable or itrelay not installed yet: the relay waits for them, retrying.
    tokio::select! {
        () = shutdown.cancelled() => return Ok(ExitCode::SUCCESS),
        checked = tokio::time::timeout(settings.query_timeout(), installed_version(&settings)) => {
            if let Ok(Ok(installed @ Some(_))) = checked {
                if let Some(problem) = sql::version_problem(installed) {
                    anyhow::bail!(problem);
                }
            }
        }
    }
    let relay = Relay::new(settings.clone())?.with_health(health.clone());
    METRICS.prime(&Router::from_settings(&settings));
    let stop_timeout = settings.stop_timeout();
    let retention = tokio::spawn(retention::run(settings.clone(), shutdown.clone()));
    let canary = tokio::spawn(canary::run(
        settings.clone(),
        health.clone(),
        shutdown.clone(),
    ));
    let gauges = tokio::spawn(gauges::run(settings.clone(), shutdown.clone()));
    let notifier = tokio::spawn(systemd::run(health.clone(), shutdown.clone()));
    let scans = tokio::spawn(scan::run(settings, shutdown.clone()));
    let running = async {
        let relayed = relay.run(shutdown.clone()).await;
        // A fatal error stops every task, and then the process.
        shutdown.cancel();
        scans.await.context("due-event scans")?;
        gauges.await.context("outbox gauges")?;
        notifier.await.context("systemd notifications")?;
        retention.await.context("retention")?;
        canary.await.context("canary")?;
        if let Some(server) = server {
            server.await?.context("serving http")?;
        }
        relayed?;
        anyhow::Ok(())
    };
    match shutdown::within_stop_timeout(running, &shutdown, stop_timeout).await {
        Some(finished) => finished?,
        None => return Ok(ExitCode::FAILURE),
    }
    info!("itrelay stopped");
    Ok(ExitCode::SUCCESS)
}

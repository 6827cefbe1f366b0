//! The operations endpoint: `/healthz` (the process is alive), `/readyz` (connected to
//! both services and leading or standing by), `/metrics` (Prometheus text format).

use std::net::SocketAddr;
use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::metrics::METRICS;

/// Binds `address` (failing at once if it cannot) and serves until `shutdown`.
pub async fn bind(
    address: SocketAddr,
    shutdown: CancellationToken,
) -> std::io::Result<impl std::future::Future<Output = std::io::Result<()>>> {
    let listener = TcpListener::bind(address).await?;
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics));
    Ok(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
    })
}

async fn readyz() -> impl IntoResponse {
    if METRICS.ready() {
        // Who leads, as this relay knows it: it leads only while its lease is renewed.
        if METRICS.leader.get() == 1 {
            (StatusCode::OK, "ready: leading\n")
        } else {
            (StatusCode::OK, "ready: standing by\n")
        }
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: not connected to Postgres and RabbitMQ, or neither leading nor standing by\n",
        )
    }
}

async fn metrics() -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        METRICS.encode(),
    )
}

/// GETs `path` on `address` and returns the HTTP status code. For `itrelay healthcheck`,
/// where an image has no HTTP client of its own.
pub async fn probe(address: SocketAddr, path: &str) -> std::io::Result<u16> {
    let exchange = async {
        let mut stream = TcpStream::connect(probe_target(address)).await?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        let status_line = String::from_utf8_lossy(&response);
        status_line
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| std::io::Error::other("no HTTP status in the response"))
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .map_err(|_| std::io::Error::other("no answer within 5 s"))?
}

/// A wildcard listen address is probed on loopback.
fn probe_target(address: SocketAddr) -> SocketAddr {
    let mut target = address;
    if target.ip().is_unspecified() {
        target.set_ip(if address.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    target
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_addresses_are_probed_on_loopback() {
        let any: SocketAddr = "0.0.0.0:9464".parse().unwrap();
        assert_eq!(probe_target(any), "127.0.0.1:9464".parse().unwrap());
        let given: SocketAddr = "10.1.2.3:80".parse().unwrap();
        assert_eq!(probe_target(given), given);
    }

    #[tokio::test]
    async fn serves_health_and_metrics() {
        let shutdown = CancellationToken::new();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        drop(listener);
        let server = bind(address, shutdown.clone()).await.unwrap();
        let running = tokio::spawn(server);
        assert_eq!(probe(address, "/healthz").await.unwrap(), 200);
        assert_eq!(probe(address, "/metrics").await.unwrap(), 200);
        assert_eq!(probe(address, "/nope").await.unwrap(), 404);
        shutdown.cancel();
        running.await.unwrap().unwrap();
    }
}

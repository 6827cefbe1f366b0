//! Business writes and what the outbox shows of them: ticket inserts (the trigger turns
//! each row into an `it_ticket_created` event), producers at full speed, and the backlog.

use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Serialize;
use tokio_postgres::{Client, Statement};
use tokio_util::sync::CancellationToken;

use crate::env::{connect, connect_watching};
use crate::sample;

/// Inserts `$10` tickets in one statement, numbered `<$2>-1`, `<$2>-2`, ...
const INSERT_TICKETS: &str = "INSERT INTO it_tickets (organization_id, ticket_number, category,
        subcategory, priority, subject, description, requester_id, site_id)
    SELECT $1::text::uuid, $2::text || '-' || g, $3, $4, $5, $6, $7, $8::text::uuid, $9::text::uuid
    FROM generate_series(1, $10::int) AS g";

/// A connection that writes tickets, one transaction per call.
pub struct TicketWriter {
    client: Client,
    insert: Statement,
}

impl TicketWriter {
    pub async fn connect(db_url: &str) -> Result<Self> {
        let client = connect(db_url).await?;
        let insert = client.prepare(INSERT_TICKETS).await?;
        Ok(Self { client, insert })
    }

    /// Commits `rows` tickets numbered `<number>-1` .. `<number>-<rows>`.
    pub async fn write(&self, number: &str, rows: i32) -> Result<()> {
        self.client
            .execute(
                &self.insert,
                &[
                    &sample::ORG,
                    &number,
                    &sample::CATEGORY,
                    &sample::SUBCATEGORY,
                    &sample::PRIORITY,
                    &sample::SUBJECT,
                    &sample::DESCRIPTION,
                    &sample::REQUESTER,
                    &sample::SITE,
                    &rows,
                ],
            )
            .await?;
        Ok(())
    }
}

/// Writes `events` tickets in transactions of at most 5,000 rows.
pub async fn pre_write(db_url: &str, events: usize) -> Result<()> {
    let writer = TicketWriter::connect(db_url).await?;
    let mut written = 0;
    while written < events {
        let rows = (events - written).min(5_000);
        writer.write(&format!("PRE{written}"), rows as i32).await?;
        written += rows;
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Produced {
    pub clients: usize,
    pub rows_per_tx: i32,
    pub seconds: f64,
    pub transactions: u64,
    pub events: u64,
    pub events_per_s: f64,
}

/// `clients` connections commit `rows_per_tx`-row transactions as fast as they can for
/// `duration`.
pub async fn produce(
    db_url: &str,
    clients: usize,
    rows_per_tx: i32,
    duration: Duration,
    tag: &str,
) -> Result<Produced> {
    let mut writers = Vec::with_capacity(clients);
    for _ in 0..clients {
        writers.push(TicketWriter::connect(db_url).await?);
    }
    let start = Instant::now();
    let deadline = start + duration;
    let tasks: Vec<_> = writers
        .into_iter()
        .enumerate()
        .map(|(client, writer)| {
            let tag = format!("{tag}{client}x");
            tokio::spawn(async move {
                let mut transactions = 0u64;
                while Instant::now() < deadline {
                    writer
                        .write(&format!("{tag}{transactions}"), rows_per_tx)
                        .await?;
                    transactions += 1;
                }
                anyhow::Ok(transactions)
            })
        })
        .collect();
    let mut transactions = 0;
    for task in tasks {
        transactions += task.await??;
    }
    let seconds = start.elapsed().as_secs_f64();
    let events = transactions * rows_per_tx as u64;
    Ok(Produced {
        clients,
        rows_per_tx,
        seconds,
        transactions,
        events,
        events_per_s: events as f64 / seconds,
    })
}

/// Seconds the oldest pending event has waited (0 when none is pending). Read as the
/// relay's claim reads: one row from each range of ids not settled, not every pending
/// row (`itrelay.pending` ordered by id reads them all, as the backlog grows). Prepared
/// once per poller ([`BacklogAge::prepare`]): planning it over the partitions costs
/// more than running it.
const OLDEST_PENDING_AGE: &str = "SELECT coalesce(extract(epoch FROM clock_timestamp() - (
        SELECT created_at
        FROM (SELECT e.id, e.created_at
              FROM itrelay.progress AS p,
                   unnest(nummultirange(numrange(p.floor, 9223372036854775808))
                          - p.settled) AS g(ids),
                   LATERAL (SELECT id, created_at FROM itrelay.events
                            WHERE id >= lower(g.ids)::bigint
                              AND id <= (upper(g.ids) - 1)::bigint
                              AND state = 'pending'
                            ORDER BY id LIMIT 1) AS e
              UNION ALL
              SELECT id, created_at FROM itrelay.events WHERE state = 'queued') AS pending
        ORDER BY id LIMIT 1)), 0)::float8";

/// The age of the oldest pending event, polled on one connection.
pub struct BacklogAge(Statement);

impl BacklogAge {
    pub async fn prepare(client: &Client) -> Result<Self> {
        Ok(Self(client.prepare(OLDEST_PENDING_AGE).await?))
    }

    /// Seconds the oldest pending event has waited (0 when none is pending).
    pub async fn seconds(&self, client: &Client) -> Result<f64> {
        Ok(client.query_one(&self.0, &[]).await?.get(0))
    }
}

/// Outbox rows per state: (pending, delivered, failed).
pub async fn outbox_states(client: &Client) -> Result<(i64, i64, i64)> {
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE state = 'pending'),
                    count(*) FILTER (WHERE state = 'delivered'),
                    count(*) FILTER (WHERE state = 'failed')
             FROM itrelay.outbox",
            &[],
        )
        .await?;
    Ok((row.get(0), row.get(1), row.get(2)))
}

/// Samples the oldest pending event's age every `every` until `stop`; seconds.
pub async fn sample_backlog_age(
    db_url: &str,
    every: Duration,
    stop: CancellationToken,
) -> Result<tokio::task::JoinHandle<Result<Vec<f64>>>> {
    let client = connect_watching(db_url).await?;
    Ok(tokio::spawn(async move {
        let age = BacklogAge::prepare(&client).await?;
        let mut ages = Vec::new();
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return Ok(ages),
                _ = tick.tick() => ages.push(age.seconds(&client).await?),
            }
        }
    }))
}

//! `itrelay demo`: a scratch database with the reference schema and the triggers, the
//! relay running in-process, a short story of business writes, and every message printed
//! as it reaches a module's exchange. Cleans up after itself unless asked to keep things.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio_util::sync::CancellationToken;

use crate::catalog;
use crate::config::Settings;
use crate::postgres::PgSession;
use crate::relay::Relay;
use crate::route::Router;
use crate::secret::SecretUrl;
use crate::sink::amqp::{Publisher, Watcher};
use crate::sink::Sink;
use crate::sql;

const ORG: &str = "7f1c1c4e-8a2b-4d53-9a55-2a1e7b0c9d11";
const VENDOR: &str = "11111111-1111-4111-8111-111111111111";
const EMPLOYEE: &str = "22222222-2222-4222-8222-222222222222";
const TECHNICIAN: &str = "33333333-3333-4333-8333-333333333333";

/// The story: what happens in the IT module and the SQL it runs. The messages each step
/// yields are found from the outbox rows it wrote, not assumed.
const STORY: &[(&str, &str)] = &[
    (
        "IT registers its office suite license",
        "INSERT INTO it_licenses (license_id, organization_id, software_name, software_vendor, license_type,
                                  license_count, cost_per_license, purchase_date, expiration_date)
             VALUES ('77777777-7777-4777-8777-777777777777', '7f1c1c4e-8a2b-4d53-9a55-2a1e7b0c9d11', 'Office Suite',
                     'Contoso', 'subscription', 50, 84.00, DATE '2026-01-01', DATE '2026-12-31')",
    ),
    (
        "IT buys a laptop from Acme",
        "INSERT INTO it_assets (asset_id, organization_id, asset_tag, asset_name, asset_type, site_id, building, room)
             VALUES ('44444444-4444-4444-8444-444444444444', '7f1c1c4e-8a2b-4d53-9a55-2a1e7b0c9d11', 'LT-0042', 'ThinkPad X1', 'laptop',
                     '55555555-5555-4555-8555-555555555555', 'HQ', '4.12');
         UPDATE it_assets SET purchase_cost = 1899.00, purchase_date = DATE '2026-03-01',
                 vendor_id = '11111111-1111-4111-8111-111111111111', po_number = 'PO-2026-118'
             WHERE asset_id = '44444444-4444-4444-8444-444444444444'",
    ),
    (
        "the laptop is assigned to Dana",
        "INSERT INTO it_asset_assignments (organization_id, asset_id, employee_id, assigned_by)
             VALUES ('7f1c1c4e-8a2b-4d53-9a55-2a1e7b0c9d11', '44444444-4444-4444-8444-444444444444',
                     '22222222-2222-4222-8222-222222222222', '33333333-3333-4333-8333-333333333333')",
    ),
    (
        "Dana opens a ticket: the screen flickers",
        "INSERT INTO it_tickets (ticket_id, organization_id, ticket_number, category, priority, subject, description,
                                 requester_id, affected_asset_id)
             VALUES ('66666666-6666-4666-8666-666666666666', '7f1c1c4e-8a2b-4d53-9a55-2a1e7b0c9d11', 'TCK-1001', 'hardware', 'high',
                     'Screen flickers', 'The laptop screen flickers on battery.',
                     '22222222-2222-4222-8222-222222222222', '44444444-4444-4444-8444-444444444444')",
    ),
    (
        "Sam takes the ticket",
        "UPDATE it_tickets SET status = 'in_progress', assigned_to_id = '33333333-3333-4333-8333-333333333333',
                 updated_by = '33333333-3333-4333-8333-333333333333'
             WHERE ticket_id = '66666666-6666-4666-8666-666666666666'",
    ),
    (
        "Sam resolves it",
        "UPDATE it_tickets SET status = 'resolved', resolution_notes = 'Display cable reseated.',
                 updated_by = '33333333-3333-4333-8333-333333333333'
             WHERE ticket_id = '66666666-6666-4666-8666-666666666666'",
    ),
    (
        "Dana confirms; the ticket is closed",
        "UPDATE it_tickets SET status = 'closed', updated_by = '22222222-2222-4222-8222-222222222222'
             WHERE ticket_id = '66666666-6666-4666-8666-666666666666'",
    ),
    (
        "the office suite license is renewed for a year",
        "UPDATE it_licenses SET expiration_date = DATE '2027-12-31', renewal_cost = 4200.00,
                 updated_by = '33333333-3333-4333-8333-333333333333'
             WHERE license_id = '77777777-7777-4777-8777-777777777777'",
    ),
    (
        "the laptop is retired and recycled",
        "UPDATE it_assets SET status = 'disposed', disposal_method = 'recycled', disposal_date = DATE '2026-11-20',
                 data_sanitization_method = 'NIST 800-88 purge', certificate_of_destruction = true,
                 updated_by = '33333333-3333-4333-8333-333333333333'
             WHERE asset_id = '44444444-4444-4444-8444-444444444444'",
    ),
];

pub async fn run(settings: Settings, keep: bool) -> anyhow::Result<()> {
    let suffix = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let database = format!("itrelay_demo_{suffix}");
    let admin = PgSession::connect(&settings.postgres)
        .await
        .with_context(|| format!("connecting to {}", settings.postgres.url))?;
    admin
        .client
        .batch_execute(&format!("CREATE DATABASE {database}"))
        .await
        .context("creating the scratch database")?;
    let mut demo_settings = settings.clone();
    demo_settings.postgres.url = with_database(&settings.postgres.url, &database)?;
    demo_settings.amqp.exchange_prefix = format!("itrelay-demo-{suffix}.");
    println!(
        "scratch database {database} and exchanges {}*: reference schema and itrelay installed",
        demo_settings.amqp.exchange_prefix
    );
    let outcome = story(&demo_settings).await;
    if keep {
        println!(
            "kept: database {database}, exchanges {}*",
            demo_settings.amqp.exchange_prefix
        );
    } else {
        remove_exchanges(&demo_settings).await;
        admin
            .client
            .batch_execute(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
            .await
            .context("dropping the scratch database")?;
    }
    outcome
}

async fn story(settings: &Settings) -> anyhow::Result<()> {
    let pg = PgSession::connect(&settings.postgres).await?;
    pg.client.batch_execute(sql::REFERENCE_SCHEMA).await?;
    sql::install(&pg.client, &settings.postgres.channel).await?;
    pg.client
        .batch_execute(&format!(
            "INSERT INTO it_vendors VALUES ('{VENDOR}', '{ORG}', 'Acme Hardware');
             INSERT INTO employees VALUES ('{EMPLOYEE}', '{ORG}', 'Dana Reyes', 'dana@example.com'),
                                          ('{TECHNICIAN}', '{ORG}', 'Sam Ortiz', 'sam@example.com');"
        ))
        .await?;
    let mut watcher = watch_modules(settings).await?;

    let relay = Relay::new(settings.clone())?;
    let stop = CancellationToken::new();
    let running = tokio::spawn({
        let stop = stop.clone();
        async move {
            if let Err(error) = relay.run(stop).await {
                eprintln!("itrelay demo: the relay stopped: {error}");
            }
        }
    });

    let router = Router::from_settings(settings);
    let mut received = 0;
    let mut seen_up_to = 0;
    for (what, statement) in STORY {
        println!("\n▶ {what}");
        pg.client.batch_execute(statement).await?;
        let mut expected = copies_caused(&pg.client, &router, &mut seen_up_to).await?;
        while !expected.is_empty() {
            let Ok(Some(delivery)) =
                tokio::time::timeout(Duration::from_secs(15), watcher.next()).await
            else {
                stop.cancel();
                bail!("no message arrived within 15 s: is the relay able to reach RabbitMQ?");
            };
            let delivery = delivery?;
            let message_id = delivery.message_id.unwrap_or_default();
            let exchange = delivery.exchange.as_str();
            if !expected.remove(&(message_id.clone(), exchange.to_owned())) {
                stop.cancel();
                bail!("a message this step did not cause arrived on {exchange}: {message_id}");
            }
            let body: serde_json::Value = serde_json::from_slice(&delivery.body)?;
            println!(
                "  ✉ {:<24} {:<26} message_id={message_id}\n    {body}",
                exchange,
                delivery.routing_key.as_str(),
            );
            received += 1;
        }
    }
    println!("\n{received} messages relayed, each confirmed by the broker before its outbox row was marked delivered.");
    stop.cancel();
    running.await?;
    watcher.close().await;
    Ok(())
}

/// The copies (message id, exchange) of the events written since outbox id
/// `seen_up_to`, which moves past them.
async fn copies_caused(
    client: &tokio_postgres::Client,
    router: &Router,
    seen_up_to: &mut i64,
) -> anyhow::Result<HashSet<(String, String)>> {
    let rows = client
        .query(
            "SELECT id, event_id::text, event_type FROM itrelay.outbox WHERE id > $1 ORDER BY id",
            &[&*seen_up_to],
        )
        .await?;
    let mut copies = HashSet::new();
    for row in rows {
        *seen_up_to = row.try_get(0)?;
        let event_id: String = row.try_get(1)?;
        let event_type: String = row.try_get(2)?;
        // The relay's canary goes to its own exchange, which the demo does not watch.
        let Some(spec) = catalog::find(&event_type) else {
            continue;
        };
        for destination in router.destinations(spec) {
            copies.insert((event_id.clone(), destination.exchange.clone()));
        }
    }
    Ok(copies)
}

/// One private queue on every module exchange, consumed as one stream.
async fn watch_modules(settings: &Settings) -> anyhow::Result<Watcher> {
    let router = Router::from_settings(settings);
    // Declares the exchanges exactly as the relay will.
    Publisher::connect(&settings.amqp, &router, settings.confirm_timeout())
        .await?
        .close()
        .await;
    let watcher = Watcher::open(&settings.amqp, "itrelay-demo")
        .await
        .with_context(|| format!("connecting to {}", settings.amqp.url))?;
    for exchange in router.exchanges() {
        watcher.watch(exchange).await?;
    }
    Ok(watcher)
}

async fn remove_exchanges(settings: &Settings) {
    let Ok(watcher) = Watcher::open(&settings.amqp, "itrelay-demo").await else {
        return;
    };
    watcher
        .remove_topology(&Router::from_settings(settings))
        .await;
    watcher.close().await;
}

/// `url` pointing at `database` instead.
fn with_database(url: &SecretUrl, database: &str) -> anyhow::Result<SecretUrl> {
    let mut parsed = url::Url::parse(url.expose())
        .map_err(|_| anyhow::anyhow!("the demo needs postgres.url in URL form (postgres://…)"))?;
    parsed.set_path(&format!("/{database}"));
    Ok(SecretUrl::new(parsed.to_string()))
}

//! The benchmark's own world: a scratch database with the reference schema and a seeded
//! requester, an exchange prefix, the consumer queue, the itrelay CLI, and cleanup; and
//! the setup the relay phases run with (which Postgres server, which relay settings).

use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio::process::Command;
use tokio_postgres::{Client, NoTls};

use crate::sample;

/// The Postgres server unless `ITRELAY_BENCH_POSTGRES` names another.
pub const PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const AMQP_ADDR: &str = "127.0.0.1:5672";
/// The subscriber of `it_ticket_created`.
const TICKET_MODULE: &str = "pf-10";

/// Where the relay phases run and with which settings besides the relay's defaults, so
/// that another configuration (a capture mode, a batch size) is measured by the same
/// phases: `ITRELAY_BENCH_POSTGRES` (an admin URL of the server that gets the scratch
/// database) and `ITRELAY_BENCH_RELAY_SETTINGS` (`section.key=value` pairs, comma
/// separated, passed to the relay as `ITRELAY__SECTION__KEY`).
#[derive(Debug, Clone)]
pub struct RelaySetup {
    pub server_url: String,
    /// `(section.key, value)`, in the order given.
    pub settings: Vec<(String, String)>,
}

impl RelaySetup {
    pub fn from_environment() -> Result<Self> {
        let server_url =
            std::env::var("ITRELAY_BENCH_POSTGRES").unwrap_or_else(|_| PG_ADMIN_URL.to_owned());
        // The URL itself stays out of the error: it may hold a password.
        url::Url::parse(&server_url).context("ITRELAY_BENCH_POSTGRES is not a URL")?;
        let settings = match std::env::var("ITRELAY_BENCH_RELAY_SETTINGS") {
            Ok(list) => parse_settings(&list)?,
            Err(_) => Vec::new(),
        };
        Ok(Self {
            server_url,
            settings,
        })
    }

    /// The settings as the relay reads them from its environment.
    fn env_vars(&self) -> Vec<(String, String)> {
        self.settings
            .iter()
            .map(|(key, value)| {
                let name = format!("ITRELAY__{}", key.replace('.', "__").to_uppercase());
                (name, value.clone())
            })
            .collect()
    }

    /// The URL of `database` on this setup's server.
    fn database_url(&self, database: &str) -> Result<String> {
        let mut url = url::Url::parse(&self.server_url)?;
        url.set_path(&format!("/{database}"));
        Ok(url.to_string())
    }
}

/// `relay.batch_size=1000,relay.capture=wal` → pairs; a clear error for anything else.
fn parse_settings(list: &str) -> Result<Vec<(String, String)>> {
    list.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| {
            let (key, value) = item.split_once('=').with_context(|| {
                format!("ITRELAY_BENCH_RELAY_SETTINGS: `{item}` is not section.key=value")
            })?;
            let key = key.trim();
            let well_formed = key.split('.').count() >= 2
                && key
                    .split('.')
                    .all(|part| !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
            if !well_formed {
                bail!("ITRELAY_BENCH_RELAY_SETTINGS: `{key}` is not a setting name like relay.batch_size");
            }
            Ok((key.to_owned(), value.trim().to_owned()))
        })
        .collect()
}

pub struct BenchEnv {
    pub setup: RelaySetup,
    pub database: String,
    pub db_url: String,
    pub prefix: String,
    /// Control connection: seeding, truncating, sampling the outbox.
    pub client: Client,
    pub channel: Channel,
    _amqp: Connection,
}

impl BenchEnv {
    /// Names for a new run; nothing is created yet.
    pub fn names() -> (String, String) {
        let id = uuid::Uuid::new_v4().simple().to_string()[..10].to_owned();
        (format!("itrelay_bench_{id}"), format!("bench{id}."))
    }

    /// Creates the database (reference schema, seeded requester, no itrelay yet) and
    /// the consumer queue bound to the ticket subscriber's exchange.
    pub async fn create(setup: &RelaySetup, database: &str, prefix: &str) -> Result<Self> {
        let admin = connect_watching(&setup.server_url).await?;
        admin
            .batch_execute(&format!("CREATE DATABASE {database}"))
            .await
            .context("create the bench database")?;
        let db_url = setup.database_url(database)?;
        let client = connect_watching(&db_url).await?;
        client
            .batch_execute(itrelay::sql::REFERENCE_SCHEMA)
            .await
            .context("apply sql/reference_schema.sql")?;
        client
            .execute(
                "INSERT INTO employees (employee_id, organization_id, employee_name, email)
                 VALUES ($1::text::uuid, $2::text::uuid, $3, $4)",
                &[
                    &sample::REQUESTER,
                    &sample::ORG,
                    &sample::REQUESTER_NAME,
                    &sample::REQUESTER_EMAIL,
                ],
            )
            .await
            .context("seed the requester")?;
        let amqp = Connection::connect(AMQP_URL, amqp_properties())
            .await
            .context("connect to RabbitMQ")?;
        let channel = amqp.create_channel().await?;
        let env = Self {
            setup: setup.clone(),
            database: database.to_owned(),
            db_url,
            prefix: prefix.to_owned(),
            client,
            channel,
            _amqp: amqp,
        };
        let exchange = env.ticket_exchange();
        env.durable_queue(&exchange, &env.consumer_queue()).await?;
        Ok(env)
    }

    /// The exchange the relay publishes tickets to.
    pub fn ticket_exchange(&self) -> String {
        format!("{}{TICKET_MODULE}", self.prefix)
    }

    /// The durable queue a consumer module would bind to the ticket exchange.
    pub fn consumer_queue(&self) -> String {
        format!("{}{TICKET_MODULE}.bench", self.prefix)
    }

    /// Declares a durable topic exchange as the relay does and a durable queue bound to
    /// it with `#`.
    pub async fn durable_queue(&self, exchange: &str, queue: &str) -> Result<()> {
        let durable_exchange = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        self.channel
            .exchange_declare(
                exchange.into(),
                ExchangeKind::Topic,
                durable_exchange,
                FieldTable::default(),
            )
            .await?;
        let durable_queue = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        self.channel
            .queue_declare(queue.into(), durable_queue, FieldTable::default())
            .await?;
        self.channel
            .queue_bind(
                queue.into(),
                exchange.into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(())
    }

    /// Messages ready in a durable `queue`.
    pub async fn queue_depth(&self, queue: &str) -> Result<u32> {
        let passive = QueueDeclareOptions {
            passive: true,
            durable: true,
            ..QueueDeclareOptions::default()
        };
        let queue = self
            .channel
            .queue_declare(queue.into(), passive, FieldTable::default())
            .await
            .with_context(|| format!("the depth of queue {queue}"))?;
        Ok(queue.message_count())
    }

    pub async fn purge(&self, queue: &str) -> Result<()> {
        self.channel
            .queue_purge(queue.into(), QueuePurgeOptions::default())
            .await?;
        Ok(())
    }

    /// The `ITRELAY__*` variables pointing a relay at this run, through `amqp_url`, with
    /// the setup's settings last.
    pub fn relay_env(&self, amqp_url: &str) -> Vec<(String, String)> {
        let mut vars: Vec<(String, String)> = [
            ("ITRELAY__POSTGRES__URL", self.db_url.as_str()),
            ("ITRELAY__AMQP__URL", amqp_url),
            ("ITRELAY__AMQP__EXCHANGE_PREFIX", self.prefix.as_str()),
            // Recovery after the outage is measured, not the default 10 s backoff cap.
            ("ITRELAY__RELAY__RECONNECT_MAX_MS", "1000"),
            ("RUST_LOG", "warn"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        vars.extend(self.setup.env_vars());
        vars
    }

    /// Runs the itrelay CLI against this database (`install`, `uninstall --force`).
    pub async fn cli(&self, args: &[&str]) -> Result<()> {
        let output = Command::new(env!("CARGO_BIN_EXE_itrelay"))
            .args(args)
            .envs(self.relay_env(AMQP_URL))
            .stdin(Stdio::null())
            .output()
            .await
            .with_context(|| format!("run itrelay {}", args.join(" ")))?;
        if !output.status.success() {
            bail!(
                "itrelay {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(())
    }

    /// Empties the tickets and, when installed, the events (`itrelay.outbox` is a view
    /// over them) and their waiting copies: each phase starts alike. Ids go on rising, so
    /// what `itrelay.progress` records as settled stays true.
    pub async fn reset_tables(&self) -> Result<()> {
        let installed: bool = self
            .client
            .query_one("SELECT to_regclass('itrelay.events') IS NOT NULL", &[])
            .await?
            .get(0);
        let sql = if installed {
            "TRUNCATE it_tickets, itrelay.events, itrelay.copies"
        } else {
            "TRUNCATE it_tickets"
        };
        self.client.batch_execute(sql).await?;
        self.quiesce().await
    }

    /// Vacuums, checkpoints and waits for a quiet machine, so that a measurement does
    /// not pay for the WAL or background work of what came before.
    pub async fn quiesce(&self) -> Result<()> {
        self.client.batch_execute("VACUUM ANALYZE").await?;
        self.client.batch_execute("CHECKPOINT").await?;
        crate::process::settle(Duration::from_secs(10)).await
    }
}

/// Removes the database from the server at `server_url` and every exchange and queue under
/// `prefix`. Best effort: runs after failures too, and reports what it could not remove.
pub async fn cleanup(server_url: &str, database: &str, prefix: &str) {
    match connect_watching(server_url).await {
        Ok(admin) => {
            let drop = format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)");
            if let Err(error) = admin.batch_execute(&drop).await {
                eprintln!("cleanup: could not drop {database}: {error}");
            }
        }
        Err(error) => eprintln!("cleanup: {error:#}"),
    }
    let queues = rabbit_names("list_queues", prefix).await;
    let exchanges = rabbit_names("list_exchanges", prefix).await;
    let Ok(amqp) = Connection::connect(AMQP_URL, amqp_properties()).await else {
        eprintln!("cleanup: RabbitMQ unreachable; left queues {queues:?}, exchanges {exchanges:?}");
        return;
    };
    if let Ok(channel) = amqp.create_channel().await {
        for queue in &queues {
            let _ = channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        for exchange in &exchanges {
            let _ = channel
                .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                .await;
        }
    }
    let _ = amqp.close(200, "bench done".into()).await;
}

/// Names of queues or exchanges under `prefix`, from `rabbitmqctl`.
async fn rabbit_names(list: &str, prefix: &str) -> Vec<String> {
    let output = Command::new("rabbitmqctl")
        .args([list, "-q", "--no-table-headers", "name"])
        .output()
        .await;
    match output {
        Ok(output) if output.status.success() => String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::trim)
            .filter(|name| name.starts_with(prefix))
            .map(str::to_owned)
            .collect(),
        _ => {
            eprintln!("cleanup: rabbitmqctl {list} failed; remove {prefix}* by hand");
            Vec::new()
        }
    }
}

/// A session as a business application opens one: the server's settings.
pub async fn connect(url: &str) -> Result<Client> {
    open(url, url.parse()?).await
}

/// A session that watches the relay (setup, the phases' queries on the outbox), set as
/// the relay's sessions that read the outbox: no JIT, no parallel workers, index paths.
/// Without statistics the planner prices queries over itrelay's views far above what they
/// read, so otherwise a poll that runs in a millisecond compiled for tens of
/// milliseconds, started two workers or read every partition whole, and the CPU it took
/// came out of what the phase measured.
pub async fn connect_watching(url: &str) -> Result<Client> {
    let mut config: tokio_postgres::Config = url.parse()?;
    config.options("-c jit=off -c max_parallel_workers_per_gather=0 -c enable_seqscan=off");
    open(url, config).await
}

async fn open(url: &str, config: tokio_postgres::Config) -> Result<Client> {
    let (client, connection) = config
        .connect(NoTls)
        .await
        .with_context(|| format!("connect to {url}"))?;
    tokio::spawn(connection);
    Ok(client)
}

pub fn amqp_properties() -> ConnectionProperties {
    ConnectionProperties::default()
}

//! Test harness: each test gets its own database and exchange prefix on the machine's
//! Postgres and RabbitMQ, queues bound to every module exchange, and cleanup on drop.

#![allow(dead_code)] // Each test binary uses its own part of the harness.

pub mod process;
pub mod proxy;
pub mod role;
pub mod server;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures_util::StreamExt;
use itrelay::config::Settings;
use itrelay::relay::Relay;
use itrelay::route::Router;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls};
use tokio_util::sync::CancellationToken;

pub const PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const WAIT: Duration = Duration::from_secs(30);

pub const ORG: &str = "7f1c1c4e-8a2b-4d53-9a55-2a1e7b0c9d11";
pub const OTHER_ORG: &str = "00000000-0000-4000-8000-0000000000ff";
pub const VENDOR: &str = "11111111-1111-4111-8111-111111111111";
pub const EMPLOYEE: &str = "22222222-2222-4222-8222-222222222222";
pub const ACTOR: &str = "33333333-3333-4333-8333-333333333333";
pub const ASSET: &str = "44444444-4444-4444-8444-444444444444";
pub const SITE: &str = "55555555-5555-4555-8555-555555555555";

/// A message taken from a test queue.
#[derive(Debug, Clone)]
pub struct Received {
    pub exchange: String,
    pub routing_key: String,
    pub body: Value,
    pub raw_body: Vec<u8>,
    pub properties: BasicProperties,
}

impl Received {
    pub fn message_id(&self) -> String {
        self.properties
            .message_id()
            .as_ref()
            .map(|id| id.to_string())
            .unwrap_or_default()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        let table = self.properties.headers().as_ref()?;
        match table.inner().get(name)? {
            AMQPValue::LongString(s) => Some(s.to_string()),
            AMQPValue::LongLongInt(n) => Some(n.to_string()),
            other => Some(format!("{other:?}")),
        }
    }
}

/// Committed events against consumed ones: the promise is lost = 0 and unexpected = 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reconciliation {
    pub committed: usize,
    pub lost: usize,
    pub unexpected: usize,
    pub duplicates: usize,
}

impl Reconciliation {
    pub fn assert_nothing_lost(&self) {
        assert_eq!(self.lost, 0, "events lost: {self:?}");
        assert_eq!(self.unexpected, 0, "unexpected events: {self:?}");
    }
}

/// One test's database, names, queues and (optionally) running relay.
pub struct TestEnv {
    pub id: String,
    pub database: String,
    pub db_url: String,
    pub prefix: String,
    pub client: Client,
    pub channel: Channel,
    _amqp: Connection,
    /// Module exchange → the test queue bound to it.
    pub queues: HashMap<String, String>,
    relay: Option<(CancellationToken, JoinHandle<()>)>,
    /// Exchanges a relay of this test may declare beyond those in `queues`, removed on drop.
    relay_exchanges: Vec<String>,
    /// The server's `postgres` database, where the test database is created and dropped.
    admin_url: String,
    /// `ITRELAY__*` settings every relay and command of this test gets.
    fixed: Vec<(String, String)>,
}

impl TestEnv {
    /// A fresh database with the reference schema and itrelay installed, and a queue bound
    /// to each module exchange and to the dead-letter exchange.
    pub async fn new() -> Self {
        Self::with_env(&[]).await
    }

    /// As [`TestEnv::new`], with extra `ITRELAY__*` settings for the relay.
    pub async fn with_env(extra: &[(&str, &str)]) -> Self {
        Self::create(PG_ADMIN_URL, extra, Vec::new()).await
    }

    /// As [`TestEnv::new`], on the server of `admin_url` (its `postgres` database), with
    /// `fixed` settings that every relay and command of the test gets.
    pub async fn on_server(admin_url: &str, fixed: &[(&str, &str)]) -> Self {
        let fixed = fixed
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Self::create(admin_url, &[], fixed).await
    }

    async fn create(admin_url: &str, extra: &[(&str, &str)], fixed: Vec<(String, String)>) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        let database = format!("itrelay_t_{id}");
        let admin = connect(admin_url).await;
        admin
            .batch_execute(&format!("CREATE DATABASE {database}"))
            .await
            .expect("create test database");
        let server = admin_url
            .rsplit_once('/')
            .expect("an admin URL ending in its database")
            .0;
        let db_url = format!("{server}/{database}");
        let client = connect(&db_url).await;
        client
            .batch_execute(itrelay::sql::REFERENCE_SCHEMA)
            .await
            .expect("reference schema");
        itrelay::sql::install(&client, "it_events")
            .await
            .expect("install");
        let prefix = format!("t{id}.");
        let relay_exchanges = vec![format!("{prefix}canary")];
        let amqp = Connection::connect(AMQP_URL, amqp_properties())
            .await
            .expect("connect to RabbitMQ");
        let channel = amqp.create_channel().await.expect("channel");
        let mut env = Self {
            id,
            database,
            db_url,
            prefix,
            client,
            channel,
            _amqp: amqp,
            queues: HashMap::new(),
            relay: None,
            relay_exchanges,
            admin_url: admin_url.to_owned(),
            fixed,
        };
        let settings = env.settings(extra);
        let router = Router::from_settings(&settings);
        let mut exchanges: Vec<String> =
            router.exchanges().into_iter().map(str::to_owned).collect();
        exchanges.push(router.dead_letter().to_owned());
        for exchange in exchanges {
            env.bind_queue(&exchange).await;
        }
        env
    }

    /// The relay's settings for this test: its database, its prefix, quick polling.
    pub fn settings(&self, extra: &[(&str, &str)]) -> Settings {
        let mut env: HashMap<String, String> = self.env_vars().into_iter().collect();
        for (key, value) in extra {
            env.insert((*key).to_owned(), (*value).to_owned());
        }
        Settings::load_with_env(None, Some(env)).expect("test settings")
    }

    /// The `ITRELAY__*` variables that point a relay at this test's database and names.
    pub fn env_vars(&self) -> Vec<(String, String)> {
        [
            ("ITRELAY__POSTGRES__URL", self.db_url.as_str()),
            ("ITRELAY__AMQP__URL", AMQP_URL),
            ("ITRELAY__AMQP__EXCHANGE_PREFIX", self.prefix.as_str()),
            ("ITRELAY__RELAY__POLL_INTERVAL_MS", "200"),
            ("ITRELAY__RELAY__RECONNECT_MAX_MS", "500"),
            ("ITRELAY__RELAY__STANDBY_RETRY_MS", "200"),
            // Tests that need the HTTP endpoint give it a port of its own; tests of the
            // canary and the scans turn them on (their rows would count as events here).
            ("ITRELAY__HTTP__ENABLED", "false"),
            ("ITRELAY__CANARY__ENABLED", "false"),
            ("ITRELAY__SCAN__ENABLED", "false"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .chain(self.fixed.iter().cloned())
        .collect()
    }

    pub fn exchange(&self, module: &str) -> String {
        format!("{}{}", self.prefix, module.to_lowercase())
    }

    pub fn dead_letter_exchange(&self) -> String {
        format!("{}dead-letter", self.prefix)
    }

    /// Declares `exchange` as the relay does and binds a fresh test queue to it.
    pub async fn bind_queue(&mut self, exchange: &str) {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        self.channel
            .exchange_declare(
                exchange.into(),
                ExchangeKind::Topic,
                durable,
                FieldTable::default(),
            )
            .await
            .expect("declare exchange");
        let queue = format!("{exchange}.test-queue");
        self.channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("declare queue");
        self.channel
            .queue_bind(
                queue.as_str().into(),
                exchange.into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind queue");
        self.queues.insert(exchange.to_owned(), queue);
    }

    /// Starts the relay in-process with this test's settings.
    pub fn start_relay(&mut self, extra: &[(&str, &str)]) {
        self.start_relay_with(self.settings(extra));
    }

    /// Starts the relay in-process with `settings`.
    pub fn start_relay_with(&mut self, settings: Settings) {
        let router = Router::from_settings(&settings);
        self.relay_exchanges
            .extend(router.exchanges().into_iter().map(str::to_owned));
        let relay = Relay::new(settings).expect("relay");
        let token = CancellationToken::new();
        let stop = token.clone();
        let handle = tokio::spawn(async move {
            if let Err(error) = relay.run(stop).await {
                panic!("the relay stopped: {error}");
            }
        });
        self.relay = Some((token, handle));
    }

    /// Stops the in-process relay and waits for it to finish.
    pub async fn stop_relay(&mut self) {
        if let Some((token, handle)) = self.relay.take() {
            token.cancel();
            tokio::time::timeout(WAIT, handle)
                .await
                .expect("relay stops in time")
                .expect("relay task");
        }
    }

    pub async fn execute(&self, sql: &str) {
        self.client
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }

    pub async fn count(&self, sql: &str) -> i64 {
        self.client
            .query_one(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .get(0)
    }

    /// Events delivered so far (`itrelay.outbox` rows in state `delivered`).
    pub async fn delivered(&self) -> i64 {
        self.count("SELECT count(*) FROM itrelay.outbox WHERE state = 'delivered'")
            .await
    }

    /// Polls until at least `at_least` events are delivered; fails after `within`.
    pub async fn wait_delivered(&self, at_least: i64, within: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while self.delivered().await < at_least {
            assert!(
                tokio::time::Instant::now() < deadline,
                "fewer than {at_least} delivered within {within:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Outbox rows per state, e.g. `("delivered", 3)`.
    pub async fn outbox_states(&self) -> HashMap<String, i64> {
        self.client
            .query(
                "SELECT state, count(*) FROM itrelay.outbox GROUP BY state",
                &[],
            )
            .await
            .expect("outbox states")
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect()
    }

    /// Polls until the outbox holds `total` rows and none is pending.
    pub async fn wait_until_settled(&self, total: i64) {
        self.wait_until_settled_within(total, WAIT).await;
    }

    /// As [`TestEnv::wait_until_settled`], with a limit of its own for large volumes.
    pub async fn wait_until_settled_within(&self, total: i64, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let states = self.outbox_states().await;
            let all: i64 = states.values().sum();
            if all == total && !states.contains_key("pending") && !states.contains_key("held") {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "outbox not settled: {states:?}, expected {total} rows"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Takes every message now in the queue bound to `exchange`.
    pub async fn drain(&self, exchange: &str) -> Vec<Received> {
        let queue = &self.queues[exchange];
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let waiting = self
            .channel
            .queue_declare(queue.as_str().into(), passive, FieldTable::default())
            .await
            .expect("queue depth")
            .message_count() as usize;
        if waiting == 0 {
            return Vec::new();
        }
        let consumer = self
            .channel
            .basic_consume(
                queue.as_str().into(),
                format!("drain-{}", uuid::Uuid::new_v4().simple()).into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("consume");
        let tag = consumer.tag();
        // Bounded per message, not in all: a long queue drains slowly on a busy machine.
        let mut consumer = consumer;
        let mut deliveries = Vec::with_capacity(waiting);
        while deliveries.len() < waiting {
            let next = tokio::time::timeout(WAIT, consumer.next())
                .await
                .expect("the queue's next message within WAIT");
            deliveries.push(next.expect("consumer still open"));
        }
        self.channel
            .basic_cancel(tag, BasicCancelOptions::default())
            .await
            .expect("cancel consumer");
        deliveries
            .into_iter()
            .map(|delivery| {
                let delivery = delivery.expect("delivery");
                Received {
                    exchange: exchange.to_owned(),
                    routing_key: delivery.routing_key.to_string(),
                    body: serde_json::from_slice(&delivery.data).unwrap_or(Value::Null),
                    raw_body: delivery.data.clone(),
                    properties: delivery.properties.clone(),
                }
            })
            .collect()
    }

    /// Takes every message from every test queue, by exchange.
    pub async fn drain_all(&self) -> HashMap<String, Vec<Received>> {
        let mut all = HashMap::new();
        let exchanges: Vec<String> = self.queues.keys().cloned().collect();
        for exchange in exchanges {
            let messages = self.drain(&exchange).await;
            all.insert(exchange, messages);
        }
        all
    }

    /// Compares the event ids committed to the outbox with the message ids consumed from
    /// `module`'s test queue, once every row is settled.
    pub async fn reconcile(&self, module: &str, total: i64) -> Reconciliation {
        // Generous: a debug build on a busy machine relays a few thousand events a second.
        let limit = WAIT.max(Duration::from_millis(total as u64 * 3));
        self.wait_until_settled_within(total, limit).await;
        let committed: HashSet<String> = self
            .client
            .query("SELECT event_id::text FROM itrelay.outbox", &[])
            .await
            .expect("committed event ids")
            .iter()
            .map(|row| row.get(0))
            .collect();
        let consumed: Vec<String> = self
            .drain(&self.exchange(module))
            .await
            .iter()
            .map(Received::message_id)
            .collect();
        let unique: HashSet<String> = consumed.iter().cloned().collect();
        Reconciliation {
            committed: committed.len(),
            lost: committed.difference(&unique).count(),
            unexpected: unique.difference(&committed).count(),
            duplicates: consumed.len() - unique.len(),
        }
    }

    /// Seeds a vendor, an employee, an actor and an asset of [`ORG`].
    pub async fn seed(&self) {
        self.execute(&format!(
            "INSERT INTO it_vendors (vendor_id, organization_id, vendor_name) VALUES ('{VENDOR}', '{ORG}', 'Acme Hardware');
             INSERT INTO employees (employee_id, organization_id, employee_name, email) VALUES
                 ('{EMPLOYEE}', '{ORG}', 'Dana Reyes', 'dana@example.com'),
                 ('{ACTOR}', '{ORG}', 'Sam Ortiz', 'sam@example.com');
             INSERT INTO it_assets (asset_id, organization_id, asset_tag, asset_name, asset_type, site_id, building, room)
                 VALUES ('{ASSET}', '{ORG}', 'LT-0042', 'ThinkPad X1', 'laptop', '{SITE}', 'HQ', '4.12');"
        ))
        .await;
    }
}

impl Drop for TestEnv {
    /// Removes the database, exchanges and queues, even when the test failed.
    fn drop(&mut self) {
        if let Some((token, handle)) = self.relay.take() {
            token.cancel();
            handle.abort();
        }
        let database = self.database.clone();
        let exchanges: Vec<(String, String)> = self
            .queues
            .iter()
            .map(|(e, q)| (e.clone(), q.clone()))
            .collect();
        let dead_letter_queue = self.dead_letter_exchange();
        let relay_exchanges = std::mem::take(&mut self.relay_exchanges);
        let admin_url = self.admin_url.clone();
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("cleanup runtime");
            runtime.block_on(async move {
                if let Ok(amqp) =
                    Connection::connect(AMQP_URL, ConnectionProperties::default()).await
                {
                    if let Ok(channel) = amqp.create_channel().await {
                        for (exchange, queue) in &exchanges {
                            let _ = channel
                                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                                .await;
                            let _ = channel
                                .exchange_delete(
                                    exchange.as_str().into(),
                                    ExchangeDeleteOptions::default(),
                                )
                                .await;
                        }
                        let _ = channel
                            .queue_delete(
                                dead_letter_queue.as_str().into(),
                                QueueDeleteOptions::default(),
                            )
                            .await;
                        for exchange in &relay_exchanges {
                            let _ = channel
                                .exchange_delete(
                                    exchange.as_str().into(),
                                    ExchangeDeleteOptions::default(),
                                )
                                .await;
                        }
                    }
                    let _ = amqp.close(200, "test done".into()).await;
                }
                let admin = connect(&admin_url).await;
                let _ = admin
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
                    .await;
            });
        });
        let _ = cleanup.join();
    }
}

/// Whether the leading relay is idle (holds the idle lock); `None` if no relay leads.
pub async fn relay_idle(env: &TestEnv) -> Option<bool> {
    env.client
        .query_one(
            "SELECT CASE WHEN bool_or(key = hashtextextended('itrelay idle', 0)) THEN true
                         WHEN bool_or(key = hashtextextended('itrelay leader', 0)) THEN false END
             FROM (SELECT (classid::bigint << 32) | objid::bigint AS key FROM pg_locks
                   WHERE locktype = 'advisory' AND granted AND objsubid = 1
                     AND mode = 'ExclusiveLock'
                     AND database = (SELECT oid FROM pg_database
                                     WHERE datname = current_database())) AS held",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// Polls until the relay is idle, or busy.
pub async fn wait_for_idle(env: &TestEnv, idle: bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while relay_idle(env).await != Some(idle) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "relay never became idle={idle}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Inserts ticket `number` (one `it_ticket_created` event for PF-10) on `client`: in its
/// open transaction, if any.
pub async fn insert_ticket(client: &Client, number: &str) {
    client
        .batch_execute(&format!(
            "INSERT INTO it_tickets (organization_id, ticket_number, category, priority, subject, description, requester_id)
                 VALUES ('{ORG}', '{number}', 'software', 'low', 'S', 'D', '{EMPLOYEE}')"
        ))
        .await
        .expect("insert ticket");
}

/// Commits `count` tickets numbered `<prefix>-1`… in one transaction on `client`: a
/// backlog of `it_ticket_created` events for PF-10.
pub async fn insert_tickets(client: &Client, prefix: &str, count: i64) {
    client
        .batch_execute(&format!(
            "INSERT INTO it_tickets (organization_id, ticket_number, category, priority, subject, description, requester_id)
                 SELECT '{ORG}', '{prefix}-' || n, 'software', 'low', 'S', 'D', '{EMPLOYEE}'
                 FROM generate_series(1, {count}) AS n"
        ))
        .await
        .expect("insert tickets");
}

/// Commits `count` single-row ticket transactions, numbered from `from`, pausing between
/// them.
pub async fn write_tickets(db_url: String, from: usize, count: usize, pause: Duration) {
    let client = connect(&db_url).await;
    for n in from..from + count {
        insert_ticket(&client, &format!("TCK-{n}")).await;
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
}

/// Asserts each module's exchange received exactly `expected` messages (by event type, in
/// order) and every other test queue nothing; returns the messages.
pub async fn assert_routed(env: &TestEnv, expected: &[(&str, &[&str])]) -> Vec<Received> {
    let all = env.drain_all().await;
    let mut found = Vec::new();
    for (exchange, messages) in &all {
        let module = expected
            .iter()
            .find(|(module, _)| env.exchange(module) == *exchange);
        let want: Vec<&str> = module.map(|(_, types)| types.to_vec()).unwrap_or_default();
        let got: Vec<&str> = messages.iter().map(|m| m.routing_key.as_str()).collect();
        assert_eq!(got, want, "messages on {exchange}");
        found.extend(messages.iter().cloned());
    }
    found
}

/// The body without its `timestamp`, which must be an RFC 3339 time.
pub fn without_timestamp(body: &Value) -> Value {
    let mut body = body.clone();
    let stamp = body
        .as_object_mut()
        .and_then(|o| o.remove("timestamp"))
        .expect("timestamp");
    time::OffsetDateTime::parse(
        stamp.as_str().expect("timestamp is a string"),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("RFC 3339 timestamp");
    body
}

/// `itrelay run` as a child process with this test's settings, `extra` variables and
/// `RUST_LOG` = `log_level`; stderr piped (read it with [`read_stderr`]), killed on drop.
pub fn spawn_run(env: &TestEnv, log_level: &str, extra: &[(&str, &str)]) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_itrelay"))
        .arg("run")
        .envs(env.env_vars())
        .envs(extra.iter().copied())
        .env("RUST_LOG", log_level)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn itrelay run")
}

/// Reads a child's stderr to its end in a task, so that a verbose child (logging at
/// trace) never blocks on a full pipe; the task yields the text once the child exits.
pub fn read_stderr(child: &mut tokio::process::Child) -> JoinHandle<String> {
    let mut stderr = child.stderr.take().expect("stderr is piped");
    tokio::spawn(async move {
        let mut log = Vec::new();
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut stderr, &mut log).await;
        String::from_utf8_lossy(&log).into_owned()
    })
}

pub async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    tokio::spawn(connection);
    client
}

pub fn amqp_properties() -> ConnectionProperties {
    ConnectionProperties::default()
}

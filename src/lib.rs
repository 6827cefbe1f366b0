//! itrelay relays the IT module's events from a Postgres outbox to RabbitMQ.
//!
//! A trigger on an IT table writes each event to `itrelay.outbox` in the business
//! transaction and wakes the relay with NOTIFY. The relay, one leader per outbox, takes
//! the pending rows in order and runs each through the pipeline below, then marks it
//! delivered once RabbitMQ has confirmed every copy.
//!
//! The modules follow the flow of an event:
//!
//! | stage | module | I/O |
//! |---|---|---|
//! | the Postgres session: connect, LISTEN, notices | [`postgres`] | Postgres |
//! | lead: lock and lease | [`lease`] | Postgres |
//! | under WAL capture: move the slot's events into the outbox | [`wal`] | Postgres |
//! | claim, look up, record | [`outbox`], [`floor`] | Postgres |
//! | per-destination outcomes, waiting copies | [`delivery`], [`copies`] | –, Postgres |
//! | the pure pipeline: the four stages below | [`pipeline`] | – |
//! | redact secrets | [`redact`] | – |
//! | decode the row | [`decode`] | – |
//! | enrich names | [`enrich`] | – |
//! | validate the body against its schema | [`validate`] | – |
//! | route to subscriber exchanges | [`route`] | – |
//! | build the message | [`envelope`] | – |
//! | publish with confirms | [`sink`] ([`sink::amqp`]: RabbitMQ) | RabbitMQ |
//! | the loop around them | [`relay`] | both |
//!
//! Redaction runs first so that no later stage, log line or error can see a secret;
//! validation runs after enrichment so that it checks exactly the body consumers get.
//! [`catalog`] describes every event type, [`config`] the settings, [`sql`] the
//! embedded SQL that DBAs apply, [`connect`] what connecting takes (TLS included).
//! [`tasks`] supervises every background task, [`mapping`] maps the catalog onto real
//! tables. [`scan`] runs the SQL scans that record time-based events (expirations, SLA breaches).
//! [`cli`] is the command line, one file per command group.
//! [`health`] holds readiness for `/readyz` ([`http`]); [`metrics`], [`gauges`] and
//! [`process`] what `/metrics` exports; [`systemd`] tells a `Type=notify` unit.
//!
//! Public are the modules the command line's integration tests and the benchmarks use;
//! the rest is internal to the crate.

pub(crate) mod backoff;
pub(crate) mod canary;
pub mod catalog;
pub mod cli;
pub mod cloudevents;
pub mod config;
pub(crate) mod connect;
pub(crate) mod copies;
pub(crate) mod decode;
pub(crate) mod delivery;
pub mod enrich;
pub mod envelope;
pub mod event;
pub(crate) mod floor;
pub(crate) mod gauges;
pub mod health;
pub mod http;
pub(crate) mod lease;
pub(crate) mod logging;
pub(crate) mod mapping;
pub(crate) mod metrics;
pub(crate) mod notified;
pub mod outbox;
pub mod pipeline;
pub mod postgres;
pub(crate) mod process;
pub(crate) mod redact;
pub mod relay;
pub mod retention;
pub mod route;
pub mod scan;
pub(crate) mod secret;
pub(crate) mod shutdown;
pub mod sink;
pub mod sql;
pub(crate) mod systemd;
pub(crate) mod tasks;

pub mod validate;
pub mod wal;

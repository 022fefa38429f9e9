//! The PostgreSQL connector: change data capture by logical replication, and a table sink.
//!
//! **Source** (`from: { connector, topic: <schema.table | table | *> }`): the connector reads
//! its `slot` (created with the `pgoutput` plugin when missing) for the tables of its
//! `publication`, one replication stream for all its triggers. Each inserted, updated or deleted
//! row (and each truncated table) becomes an event of type `<type_prefix>.<op>`, subject
//! `<schema>.<table>`, `id` `<commit LSN>/<position in the transaction>` (the same when
//! redelivered), `time` the commit time and data `{"new": {...}, "old": {...}}` with typed
//! values (see [`pgoutput::typed`]).
//!
//! **Acknowledgement**: the slot's confirmed flush position advances only over the finished
//! prefix of transactions: a transaction is finished when every event made of it was delivered
//! or dead-lettered. So a crash at any moment loses nothing: the server sends again every
//! transaction after the confirmed position (at-least-once). A clean stop reports the last
//! finished position before it closes the stream, so a restart repeats nothing. An event whose
//! reply or dead letter could not be published holds its transaction and, after the delay, the
//! stream is read again from the confirmed position.
//!
//! **Replicas**: a slot has one reader at a time. A replica that finds the slot in use stands
//! by, trying again every [`STANDBY_RETRY`], and takes over when the reader goes.
//!
//! **Sink**: `INSERT` of the event into the table `topic` (columns `id`, `source`, `type`,
//! `subject`, `time`, `datacontenttype`, `data` jsonb, `extensions` jsonb), one statement (its
//! own transaction) per event.
#![forbid(unsafe_code)]
#![deny(unreachable_pub)]
#![warn(missing_docs)]

mod config;
mod keys;
mod pgoutput;
mod replication;
mod sink;
mod tracker;

pub(crate) use replication::with_causes;
use replication::{Prepare, Replication, replicate};

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use fnbroker_core::kit;
use fnbroker_core::{Connector, ConnectorError, Event, Incoming, Sink, Source, Subscription};
use pgwire_replication::{
    Lsn, ReplicationClient, ReplicationConfig, ReplicationEvent, SslMode, TlsConfig,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use config::{Plugin, PostgresSettings};

/// Decodes `messages`, one replication stream's `pgoutput` messages in order, as the connector
/// does; the number of row changes read. The entry point of the fuzz target of this decoder
/// (bytes a server sends, which no test here controls); a message that does not decode is
/// skipped.
pub fn decode_pgoutput(messages: &[&[u8]]) -> usize {
    let mut decoder = pgoutput::Decoder::default();
    messages
        .iter()
        .filter_map(|m| decoder.decode(m).ok())
        .map(|changes| changes.len())
        .sum()
}
use tracker::Tracker;

/// How often a replica that found the slot in use tries again.
pub const STANDBY_RETRY: Duration = Duration::from_secs(2);

/// How often the confirmed position is reported while it moves.
const STATUS_INTERVAL: Duration = Duration::from_millis(500);

/// Whether a trigger's `topic` takes the table `schema.table`: the same `schema.table`, the
/// table name alone (any schema), or `*`.
pub(crate) fn table_matches(filter: &str, qualified: &str) -> bool {
    filter == "*"
        || filter == qualified
        || qualified
            .split_once('.')
            .is_some_and(|(_, table)| table == filter)
}

/// The event of one change: see the crate documentation.
pub(crate) fn change_event(
    connector: &str,
    type_prefix: &str,
    change: pgoutput::Change,
    commit_lsn: &str,
    position: u32,
    time: Option<DateTime<Utc>>,
) -> Event {
    use fnbroker_core::cloudevents::{EventBuilder, EventBuilderV10};
    let subject = format!("{}.{}", change.schema, change.table);
    let mut data = serde_json::Map::new();
    if let Some(new) = change.new {
        data.insert("new".into(), serde_json::Value::Object(new));
    }
    if let Some(old) = change.old {
        data.insert("old".into(), serde_json::Value::Object(old));
    }
    let mut builder = EventBuilderV10::new()
        .id(format!("{commit_lsn}/{position}"))
        .source(format!("postgres://{connector}/{subject}"))
        .ty(format!("{type_prefix}.{}", change.op.name()))
        .subject(subject)
        // Serialized once, here: held as a JSON value, the data would be serialized again for
        // every attempt (and once more to count its bytes), which measured 9% of the CPU of a
        // 4 KiB row. Filters and the structured format read JSON bytes as JSON.
        .data(
            "application/json",
            serde_json::to_vec(&data).unwrap_or_default(),
        );
    if let Some(time) = time {
        builder = builder.time(time);
    }
    // Every attribute above is valid: the build cannot fail.
    builder.build().unwrap_or_default()
}

/// How the SQL sessions (checks, the slot, the sink) connect: plain, or TLS with the
/// connector's `tls`.
#[derive(Clone)]
pub(crate) enum SqlTls {
    Plain,
    Rustls(tokio_postgres_rustls::MakeRustlsConnect),
}

impl SqlTls {
    fn new(tls: Option<&fnbroker_core::tls::Tls>) -> Result<Self, String> {
        match tls {
            None => Ok(SqlTls::Plain),
            Some(t) => {
                let config = t.client_config().map_err(|e| format!("tls: {e}"))?;
                Ok(SqlTls::Rustls(
                    tokio_postgres_rustls::MakeRustlsConnect::new(config),
                ))
            }
        }
    }

    /// A SQL session to `url` (TLS required when configured).
    pub(crate) async fn connect(
        &self,
        url: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let mut config: tokio_postgres::Config = url.parse()?;
        let client = match self {
            SqlTls::Plain => {
                let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
                tokio::spawn(connection);
                client
            }
            SqlTls::Rustls(tls) => {
                config.ssl_mode(tokio_postgres::config::SslMode::Require);
                let (client, connection) = config.connect(tls.clone()).await?;
                tokio::spawn(connection);
                client
            }
        };
        Ok(client)
    }
}

/// The replication stream's TLS from the connector's `tls`. pgwire-replication 0.5 refuses to
/// check a host name that is an IP address: for an IP host without `server_name` the stream
/// verifies the certificate chain only (the SQL sessions verify the address too).
fn stream_tls(tls: Option<&fnbroker_core::tls::Tls>, host: &str) -> TlsConfig {
    let mut config = TlsConfig::disabled();
    if let Some(t) = tls {
        let ip = host.parse::<std::net::IpAddr>().is_ok()
            || host
                .trim_matches(['[', ']'])
                .parse::<std::net::IpAddr>()
                .is_ok();
        config.mode = if t.insecure_skip_verify {
            SslMode::Require
        } else if ip && t.server_name.is_none() {
            SslMode::VerifyCa
        } else {
            SslMode::VerifyFull
        };
        config.ca_pem_path = t.ca.as_ref().map(Into::into);
        config.sni_hostname = t.server_name.clone();
        config.client_cert_pem_path = t.cert.as_ref().map(Into::into);
        config.client_key_pem_path = t.key.as_ref().map(Into::into);
    }
    config
}

/// Where and as whom to connect.
#[derive(Debug, Clone)]
struct Target {
    host: String,
    port: u16,
    user: String,
    password: String,
    database: String,
}

impl Target {
    fn parse(url: &str) -> Result<Self, String> {
        let u = url::Url::parse(url).map_err(|e| format!("invalid url: {e}"))?;
        let decode = |s: &str| {
            url::form_urlencoded::parse(format!("x={s}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        };
        let user = match u.username() {
            "" => "postgres".to_string(),
            user => decode(user),
        };
        Ok(Self {
            host: u.host_str().unwrap_or("localhost").to_string(),
            port: u.port().unwrap_or(5432),
            password: u.password().map(decode).unwrap_or_default(),
            database: match u.path().trim_start_matches('/') {
                "" => user.clone(),
                db => decode(db),
            },
            user,
        })
    }
}

/// One subscription: the tables it takes and where its events go.
struct Sub {
    filter: String,
    tx: mpsc::Sender<Incoming>,
}

/// The PostgreSQL connector of one configuration entry.
pub struct PostgresConnector {
    name: String,
    settings: PostgresSettings,
    target: Target,
    subs: Mutex<Vec<Sub>>,
    task: Mutex<Option<(CancellationToken, JoinHandle<()>)>>,
    link: Arc<kit::Link>,
    /// Reading the slot, or standing by for it.
    up: Arc<std::sync::atomic::AtomicBool>,
    /// Fired when the engine stops: the stream ends its current transaction and closes the
    /// subscriptions.
    finish: CancellationToken,
    sql_tls: SqlTls,
}

impl PostgresConnector {
    /// A connector named `name`; it connects in `start`.
    pub fn new(name: &str, settings: &PostgresSettings) -> Result<Self, ConnectorError> {
        let target =
            Target::parse(&settings.url).map_err(|e| ConnectorError::permanent(name, e))?;
        if let Some(tls) = &settings.tls {
            tls.warn_if_insecure("connector", name);
        }
        let sql_tls =
            SqlTls::new(settings.tls.as_ref()).map_err(|e| ConnectorError::permanent(name, e))?;
        Ok(Self {
            name: name.to_string(),
            settings: settings.clone(),
            target,
            subs: Mutex::default(),
            task: Mutex::default(),
            link: kit::Link::new(name, "the PostgreSQL server", &settings.url),
            up: Arc::default(),
            finish: CancellationToken::new(),
            sql_tls,
        })
    }
}

#[async_trait]
impl Connector for PostgresConnector {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn name(&self) -> &str {
        &self.name
    }

    async fn subscribe(&self, sub: &Subscription) -> Result<Box<dyn Source>, ConnectorError> {
        let (tx, rx) = mpsc::channel(kit::source_buffer(sub.max_in_flight));
        self.subs
            .lock()
            .map_err(|_| ConnectorError::io(&self.name, "subscription table poisoned"))?
            .push(Sub {
                filter: sub.from.topic().to_string(),
                tx,
            });
        Ok(Box::new(PostgresSource {
            rx,
            finish: self.finish.clone(),
        }))
    }

    fn key_store(
        &self,
        namespace: &str,
    ) -> Result<Arc<dyn fnbroker_core::KeyStore>, ConnectorError> {
        Ok(Arc::new(keys::PostgresKeys {
            sql: sink::PostgresSink::new(&self.name, &self.settings.url, self.sql_tls.clone()),
            prefix: format!("{namespace}:"),
            created: tokio::sync::OnceCell::new(),
            inserts: std::sync::atomic::AtomicU64::new(0),
        }))
    }

    async fn sink(
        &self,
        _: &fnbroker_core::values::Destination,
    ) -> Result<Arc<dyn Sink>, ConnectorError> {
        Ok(Arc::new(sink::PostgresSink::new(
            &self.name,
            &self.settings.url,
            self.sql_tls.clone(),
        )))
    }

    /// Checks the server (a missing publication or `wal_level` other than `logical` is an
    /// error; a server that cannot be reached is retried in the background), makes the slot
    /// when missing, and starts reading it.
    async fn start(&self) -> Result<(), ConnectorError> {
        let subs = std::mem::take(
            &mut *self
                .subs
                .lock()
                .map_err(|_| ConnectorError::io(&self.name, "subscription table poisoned"))?,
        );
        if subs.is_empty() {
            return Ok(());
        }
        let replication = Arc::new(Replication {
            connector: self.name.clone(),
            settings: self.settings.clone(),
            target: self.target.clone(),
            link: Arc::clone(&self.link),
            up: Arc::clone(&self.up),
            sql_tls: self.sql_tls.clone(),
        });
        match replication.prepare().await {
            Ok(()) => {}
            Err(Prepare::Refused(message)) => {
                return Err(ConnectorError::permanent(&self.name, message));
            }
            Err(Prepare::Unreachable(message)) => self.link.failed(&message, ""),
        }
        let stop = CancellationToken::new();
        let task = tokio::spawn(replicate(
            replication,
            subs,
            self.finish.clone(),
            stop.clone(),
        ));
        if let Ok(mut slot) = self.task.lock() {
            *slot = Some((stop, task));
        }
        Ok(())
    }

    fn is_ready(&self) -> bool {
        let started = self.task.lock().map(|t| t.is_some()).unwrap_or(false);
        !started || self.up.load(std::sync::atomic::Ordering::Acquire)
    }

    fn link(&self) -> Option<&kit::Link> {
        Some(&self.link)
    }

    /// Reports the last finished position and closes the stream (the deliveries were settled
    /// before).
    async fn stop(&self) {
        let task = self.task.lock().ok().and_then(|mut t| t.take());
        if let Some((stop, task)) = task {
            stop.cancel();
            if let Err(e) = task.await {
                tracing::error!(connector = %self.name, error = %e, "the replication task failed");
            }
        }
    }
}

/// One subscription's events, handed out by the replication task.
struct PostgresSource {
    rx: mpsc::Receiver<Incoming>,
    finish: CancellationToken,
}

#[async_trait]
impl Source for PostgresSource {
    /// Cancel safe: an event is either returned or still in the channel.
    async fn next(&mut self) -> Option<Incoming> {
        self.rx.recv().await
    }

    /// The stream hands out the rest of the transaction it is in, then ends.
    fn stopping(&mut self) {
        self.finish.cancel();
    }

    /// A transaction is acknowledged whole (its end's position): a stop finishes the one in
    /// progress, and one not finished comes back whole after a restart.
    fn capabilities(&self) -> fnbroker_core::SourceCapabilities {
        fnbroker_core::SourceCapabilities::LATER.finishing_its_unit()
    }

    async fn close(mut self: Box<Self>) {
        // What was never handed out is released (its transaction is read again next time).
        self.rx.close();
        while self.rx.try_recv().is_ok() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_topic_names_a_table_with_or_without_its_schema_or_all() {
        assert!(table_matches("public.orders", "public.orders"));
        assert!(table_matches("orders", "public.orders"));
        assert!(table_matches("*", "sales.orders"));
        assert!(!table_matches("sales.orders", "public.orders"));
        assert!(!table_matches("order", "public.orders"));
    }

    #[test]
    fn the_url_gives_host_port_user_password_and_database() {
        let t = Target::parse("postgres://fnb:p%40ss@db.internal:6543/app").expect("url");
        assert_eq!(
            (
                t.host.as_str(),
                t.port,
                t.user.as_str(),
                t.password.as_str(),
                t.database.as_str()
            ),
            ("db.internal", 6543, "fnb", "p@ss", "app")
        );
        let t = Target::parse("postgres://127.0.0.1").expect("url");
        assert_eq!(
            (t.port, t.user.as_str(), t.database.as_str()),
            (5432, "postgres", "postgres")
        );
    }

    #[test]
    fn a_change_event_has_the_contract_attributes() {
        use fnbroker_core::event::AttributesReader;
        let change = pgoutput::Change {
            op: pgoutput::Op::Update,
            schema: "public".into(),
            table: "orders".into(),
            new: Some(
                serde_json::json!({"id": 1})
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
            ),
            old: None,
        };
        let e = change_event("db", "com.fnbroker.postgres", change, "0/16B3748", 2, None);
        assert_eq!(e.ty(), "com.fnbroker.postgres.update");
        assert_eq!(e.id(), "0/16B3748/2");
        assert_eq!(e.subject(), Some("public.orders"));
        assert_eq!(e.source().to_string(), "postgres://db/public.orders");
        // The row is serialized once, into the event: JSON bytes, not a value to serialize
        // again at every attempt.
        match e.data() {
            Some(fnbroker_core::Data::Binary(bytes)) => assert_eq!(
                serde_json::from_slice::<serde_json::Value>(bytes).ok(),
                Some(serde_json::json!({"new": {"id": 1}}))
            ),
            other => panic!("data held as {other:?}"),
        }
    }
}

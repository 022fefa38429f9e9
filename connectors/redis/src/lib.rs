//! The Redis Streams connector (on redis-rs).
//!
//! **Source** (`from: { connector, topic: <stream>, group, create, start }`): a consumer of the
//! group on the stream, named per replica (`consumer`, default `fnbroker-<connector>-<hostname>`),
//! reading with `XREADGROUP`. A restarted replica first reads the entries it held when it stopped
//! (its own pending entries), then new ones; entries left pending by a consumer that is gone (a
//! replica killed, scaled down) are claimed with `XAUTOCLAIM` once idle for `claim_after`. An
//! entry is acknowledged (`XACK`) once delivered or dead-lettered. A failed attempt that may be
//! retried leaves the entry pending and this consumer claims it again (`XCLAIM`) once the
//! backoff delay is over, so the group counts the attempts (`XPENDING`'s delivery count, the
//! event's redelivery count and its `dlqattempts`) and they survive a restart. An entry
//! fnbroker still holds (an attempt in flight, waiting behind an ordered key) has its idle time
//! reset every third of `claim_after` (`XCLAIM ... JUSTID` to itself), so no other replica
//! claims it; one released at a stop stays pending and comes back (to this replica at its
//! restart, or to any after `claim_after`). **At-least-once.**
//!
//! **Sink**: `XADD <topic> [MAXLEN ~ maxlen] *` with the event in binary mode (see
//! [`binding`]).
#![forbid(unsafe_code)]
#![deny(unreachable_pub)]
#![warn(missing_docs)]

pub mod binding;
mod config;
mod keys;
mod reply;
mod settle;
mod sink;
mod source;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use fnbroker_core::backlog::Backlogs;
use fnbroker_core::kit::{self, ChannelSource, Settler, source_buffer};
use fnbroker_core::{
    Connector, ConnectorError, Event, Incoming, Settlement, Sink, Source, Subscription,
};
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, IntoConnectionInfo, RedisError, Value};
use tokio::sync::{OnceCell, mpsc};
use tokio_util::sync::CancellationToken;

pub use config::{Plugin, RedisSettings, RedisSourceSettings, Start};
use reply::RawEntry;
use settle::RedisSettler;
use sink::RedisSink;
use source::{Failure, RedisSource, Spec, consume};

/// How long one `XREADGROUP` waits at the server for new entries (also how late a retry that
/// falls due meanwhile may come).
const BLOCK: Duration = Duration::from_millis(500);

/// The most entries one read or claim asks for.
const MAX_BATCH: usize = 256;

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a command may wait for its answer (a blocking read waits [`BLOCK`] more).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// The Redis connector of one configuration entry.
pub struct RedisConnector {
    name: String,
    settings: RedisSettings,
    client: redis::Client,
    /// This replica's consumer name in every group.
    consumer: String,
    /// A connection that reconnects by itself, for acknowledgements, publishing and backlogs.
    shared: Arc<Shared>,
    link: Arc<kit::Link>,
    backlogs: Arc<Backlogs>,
    /// Subscriptions, and how many of them are reading right now.
    subscriptions: Arc<AtomicUsize>,
    reading: Arc<AtomicUsize>,
}

/// The connection everything but the blocking reads goes through, made on first use.
struct Shared {
    connector: String,
    client: redis::Client,
    manager: OnceCell<ConnectionManager>,
}

impl Shared {
    async fn get(&self) -> Result<ConnectionManager, ConnectorError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        self.manager
            .get_or_try_init(|| ConnectionManager::new_with_config(self.client.clone(), config))
            .await
            .cloned()
            .map_err(|e| {
                ConnectorError::io(&self.connector, format!("cannot connect: {e}")).caused_by(e)
            })
    }
}

/// The redis-rs client of `settings`: the URL, with the credentials and TLS of the settings.
fn client(settings: &RedisSettings) -> Result<redis::Client, String> {
    let mut info = settings
        .url
        .as_str()
        .into_connection_info()
        .map_err(|e| format!("invalid url: {e}"))?;
    let mut redis = info.redis_settings().clone();
    if let Some(user) = &settings.username {
        redis = redis.set_username(user);
    }
    if let Some(password) = &settings.password {
        redis = redis.set_password(password);
    }
    info = info.set_redis_settings(redis);
    let Some(tls) = &settings.tls else {
        return redis::Client::open(info).map_err(|e| e.to_string());
    };
    let (host, port) = match info.addr() {
        redis::ConnectionAddr::Tcp(host, port)
        | redis::ConnectionAddr::TcpTls { host, port, .. } => (host.clone(), *port),
        _ => return Err("tls needs a redis:// or rediss:// URL with a host".into()),
    };
    info = info.set_addr(redis::ConnectionAddr::TcpTls {
        host,
        port,
        insecure: tls.insecure_skip_verify,
        tls_params: None,
    });
    let read = |path: &str| std::fs::read(path).map_err(|e| format!("cannot read `{path}`: {e}"));
    let client_tls = match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
            client_cert: read(cert)?,
            client_key: read(key)?,
        }),
        _ => None,
    };
    let root_cert = tls.ca.as_deref().map(read).transpose()?;
    redis::Client::build_with_tls(
        info,
        redis::TlsCertificates {
            client_tls,
            root_cert,
        },
    )
    .map_err(|e| format!("tls: {e}"))
}

impl RedisConnector {
    /// A connector named `name`; it connects when subscribed to or asked for a sink.
    pub fn new(name: &str, settings: &RedisSettings) -> Result<Self, ConnectorError> {
        if let Some(tls) = &settings.tls {
            tls.warn_if_insecure("connector", name);
        }
        let client = client(settings).map_err(|e| ConnectorError::permanent(name, e))?;
        Ok(Self {
            name: name.to_string(),
            settings: settings.clone(),
            consumer: settings
                .consumer
                .clone()
                .unwrap_or_else(|| kit::replica_name(name)),
            shared: Arc::new(Shared {
                connector: name.to_string(),
                client: client.clone(),
                manager: OnceCell::new(),
            }),
            client,
            link: kit::Link::new(name, "the Redis server", &settings.url),
            backlogs: Arc::default(),
            subscriptions: Arc::default(),
            reading: Arc::default(),
        })
    }
}

#[async_trait]
impl Connector for RedisConnector {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn key_store(
        &self,
        namespace: &str,
    ) -> Result<Arc<dyn fnbroker_core::KeyStore>, ConnectorError> {
        Ok(Arc::new(keys::RedisKeys {
            shared: Arc::clone(&self.shared),
            prefix: format!("fnbroker:{namespace}:"),
        }))
    }

    /// A group named `reader` on the stream `topic`, made (from its first entry) when missing.
    async fn reader(
        &self,
        reader: &str,
        topic: &str,
        max_in_flight: usize,
    ) -> Result<fnbroker_core::Reader, ConnectorError> {
        let keys = group_keys(reader);
        let sub = Subscription::reader(&self.name, Some(topic), keys, max_in_flight);
        Ok(fnbroker_core::Reader {
            source: self.subscribe(&sub).await?,
            positional: false,
        })
    }

    /// A group per subscriber, made when missing: each gets every entry, its replicas share
    /// them.
    fn discovery_keys(
        &self,
        subscriber: &str,
        _topic: &str,
    ) -> Result<fnbroker_core::contract::SourceKeys, fnbroker_core::registry::RouteError> {
        Ok(group_keys(subscriber))
    }

    async fn subscribe(&self, sub: &Subscription) -> Result<Box<dyn Source>, ConnectorError> {
        let source: RedisSourceSettings = sub.settings()?;
        let claim_after = self.settings.claim_after.get();
        let spec = Arc::new(Spec {
            connector: self.name.clone(),
            client: self.client.clone(),
            stream: sub.from.topic().to_string(),
            group: source.group.clone().unwrap_or_else(|| "fnbroker".into()),
            consumer: self.consumer.clone(),
            create: source.create.then_some(source.start),
            claim_after,
            link: Arc::clone(&self.link),
        });
        // A server that cannot be reached is retried in the background, warned about and not
        // ready, as every connector does; a missing group on a server that answers is a
        // configuration error, at start.
        let first = match spec.connect().await {
            Ok(conn) => Some(conn),
            Err(Failure::Missing(message)) => {
                return Err(ConnectorError::permanent(&self.name, message));
            }
            Err(Failure::Redis(e)) => {
                spec.link.failed(&e.to_string(), "");
                None
            }
        };
        let (retry_tx, retries) = mpsc::unbounded_channel();
        let settler = RedisSettler {
            spec: Arc::clone(&spec),
            shared: Arc::clone(&self.shared),
            retries: retry_tx,
        };
        let watch = (Arc::clone(&self.shared), Arc::clone(&self.backlogs));
        let subscribed = kit::Counted::new(&self.subscriptions);
        let reading = Arc::clone(&self.reading);
        let inner = ChannelSource::spawn(source_buffer(sub.max_in_flight), move |tx, stop| {
            consume(spec, first, settler, retries, watch, reading, tx, stop)
        })
        .with_redelivery(fnbroker_core::Redelivery::Delayed);
        Ok(Box::new(RedisSource { inner, subscribed }))
    }

    async fn sink(
        &self,
        _: &fnbroker_core::values::Destination,
    ) -> Result<Arc<dyn Sink>, ConnectorError> {
        Ok(Arc::new(RedisSink {
            shared: Arc::clone(&self.shared),
            maxlen: self.settings.maxlen,
        }))
    }

    fn is_ready(&self) -> bool {
        self.reading.load(Ordering::Acquire) >= self.subscriptions.load(Ordering::Acquire)
    }

    fn link(&self) -> Option<&kit::Link> {
        Some(&self.link)
    }

    fn backlog(&self) -> Vec<fnbroker_core::backlog::Backlog> {
        self.backlogs.all()
    }
}

/// The keys of a group of that name, made (from the stream's first entry) when missing.
pub(crate) fn group_keys(group: &str) -> fnbroker_core::contract::SourceKeys {
    [
        ("group".to_string(), serde_json::Value::from(group)),
        ("create".to_string(), true.into()),
    ]
    .into()
}

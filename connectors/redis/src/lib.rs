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
mod reply;

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
    ) -> Result<fnbroker_core::contract::SourceKeys, String> {
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

/// One subscription's reader; closed, it no longer counts for readiness.
struct RedisSource {
    inner: ChannelSource,
    /// Its unit of the connector's subscriptions, for readiness: given back when the source
    /// goes, closed or dropped.
    subscribed: kit::Counted,
}

#[async_trait]
impl Source for RedisSource {
    async fn next(&mut self) -> Option<Incoming> {
        self.inner.next().await
    }

    fn stopping(&mut self) {
        self.inner.stopping();
    }

    // The group redelivers a retried entry once its delay is over (`XCLAIM`), counting it.
    fn capabilities(&self) -> fnbroker_core::SourceCapabilities {
        self.inner.capabilities()
    }

    async fn close(self: Box<Self>) {
        let Self { inner, subscribed } = *self;
        Box::new(inner).close().await;
        drop(subscribed);
    }
}

/// What a subscription reads: the stream, the group and this replica's consumer in it.
struct Spec {
    connector: String,
    client: redis::Client,
    stream: String,
    group: String,
    consumer: String,
    /// Create the group when missing, from there.
    create: Option<Start>,
    claim_after: Duration,
    link: Arc<kit::Link>,
}

/// Why a reading connection could not be opened.
enum Failure {
    /// The server answered: the group is not there (and is not to be made).
    Missing(String),
    /// The server could not be reached, or failed.
    Redis(RedisError),
}

impl From<RedisError> for Failure {
    fn from(e: RedisError) -> Self {
        Failure::Redis(e)
    }
}

impl Spec {
    /// A connection for the blocking reads, with the group there (made when `create` says so).
    async fn connect(&self) -> Result<MultiplexedConnection, Failure> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT + BLOCK));
        let mut conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        match self.create {
            Some(start) => {
                let from = if start == Start::Latest { "$" } else { "0" };
                let made: Result<Value, RedisError> = redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(&self.stream)
                    .arg(&self.group)
                    .arg(from)
                    .arg("MKSTREAM")
                    .query_async(&mut conn)
                    .await;
                match made {
                    Ok(_) => {
                        tracing::info!(connector = %self.connector, stream = %self.stream, group = %self.group, "consumer group created");
                    }
                    Err(e) if e.code() == Some("BUSYGROUP") => {}
                    Err(e) => return Err(e.into()),
                }
            }
            None => {
                let groups: Result<Value, RedisError> = redis::cmd("XINFO")
                    .arg("GROUPS")
                    .arg(&self.stream)
                    .query_async(&mut conn)
                    .await;
                let known = match groups {
                    Ok(v) => reply::group_info(&v, &self.group).is_some(),
                    Err(e)
                        if e.kind()
                            == redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError) =>
                    {
                        false
                    }
                    Err(e) => return Err(e.into()),
                };
                if !known {
                    return Err(Failure::Missing(format!(
                        "the stream `{}` has no consumer group `{}`; create it (XGROUP CREATE {} {} 0 MKSTREAM) or set `create: true` on the trigger's `from`",
                        self.stream, self.group, self.stream, self.group
                    )));
                }
            }
        }
        Ok(conn)
    }

    fn read_group(&self, count: usize) -> redis::Cmd {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&self.group)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(count);
        cmd
    }

    /// How many times the group delivered each of `entries` (to this consumer), by id.
    async fn delivery_counts(
        &self,
        conn: &mut MultiplexedConnection,
        entries: &[RawEntry],
    ) -> Result<Vec<u32>, RedisError> {
        // The entries come in the order they were asked for (a retried entry when its delay
        // is over), not by id: the range asked for spans the least and the greatest id.
        let by_id = |e: &&RawEntry| reply::stream_id(&e.id);
        let (Some(first), Some(last)) = (
            entries.iter().min_by_key(by_id),
            entries.iter().max_by_key(by_id),
        ) else {
            return Ok(Vec::new());
        };
        let pending: Value = redis::cmd("XPENDING")
            .arg(&self.stream)
            .arg(&self.group)
            .arg(&first.id)
            .arg(&last.id)
            .arg(entries.len() + MAX_BATCH)
            .arg(&self.consumer)
            .query_async(conn)
            .await?;
        let counts = reply::delivery_counts(&pending);
        Ok(entries
            .iter()
            .map(|e| counts.get(e.id.as_str()).copied().unwrap_or(1))
            .collect())
    }
}

/// Where a reader is in its stream.
enum Phase {
    /// Reading this consumer's own pending entries (held when it last stopped) after this id.
    Held(String),
    /// Reading new entries.
    New,
}

/// What one turn of the read loop got: entries, and whether the group delivered them before.
struct Batch {
    entries: Vec<RawEntry>,
    redelivered: bool,
}

/// The consume loop of one subscription: reads, claims and hands out entries until `stop`,
/// reconnecting with backoff; then sends every acknowledgement before it returns.
#[allow(clippy::too_many_arguments)]
async fn consume(
    spec: Arc<Spec>,
    mut first: Option<MultiplexedConnection>,
    settler: RedisSettler,
    retries: mpsc::UnboundedReceiver<(String, Instant)>,
    (shared, backlogs): (Arc<Shared>, Arc<Backlogs>),
    reading: Arc<AtomicUsize>,
    tx: mpsc::Sender<Incoming>,
    stop: CancellationToken,
) {
    // Held entries have their idle time reset three times per `claim_after`, so that no other
    // consumer claims what this one still works on.
    let (acker, acks) = kit::Acker::with_lease(settler, spec.claim_after / 3);
    let taken = Arc::new(AtomicU64::new(0));
    let watching = stop.child_token();
    let watcher = {
        let (spec, taken, watching) = (Arc::clone(&spec), Arc::clone(&taken), watching.clone());
        let source = format!("{}/{}", spec.stream, spec.group);
        tokio::spawn(async move {
            backlogs
                .watch(&source, &watching, || async {
                    let mut conn = shared.get().await.ok()?;
                    let groups: Value = redis::cmd("XINFO")
                        .arg("GROUPS")
                        .arg(&spec.stream)
                        .query_async(&mut conn)
                        .await
                        .ok()?;
                    let waiting = reply::group_info(&groups, &spec.group)?.lag?;
                    Some((waiting, taken.load(Ordering::Relaxed)))
                })
                .await;
        })
    };
    let mut backoff = kit::Backoff::reconnect();
    // A restarted replica reads what it held first; after a reconnect in the same run, what it
    // holds is in flight here (and what it released is claimed after `claim_after`).
    let mut phase = Phase::Held("0".into());
    let mut retries = Retries {
        rx: retries,
        due: std::collections::BTreeSet::new(),
    };
    loop {
        let mut conn = match first.take() {
            Some(c) => c,
            None => match spec.connect().await {
                Ok(c) => c,
                Err(Failure::Missing(m)) => {
                    spec.link.failed(&m, "");
                    if kit::sleep_unless_stopped(&stop, backoff.next_delay()).await {
                        break;
                    }
                    continue;
                }
                Err(Failure::Redis(e)) => {
                    spec.link.failed(&e.to_string(), "");
                    if kit::sleep_unless_stopped(&stop, backoff.next_delay()).await {
                        break;
                    }
                    continue;
                }
            },
        };
        backoff.reset();
        spec.link.connected();
        let reader_up = kit::Counted::new(&reading);
        tracing::info!(connector = %spec.connector, stream = %spec.stream, group = %spec.group, consumer = %spec.consumer, "redis consumer started");
        let reader = Reader {
            spec: &spec,
            acker: &acker,
            taken: &taken,
            tx: &tx,
            stop: &stop,
        };
        let ended = reader.run(&mut conn, &mut phase, &mut retries).await;
        drop(reader_up);
        match ended {
            Ok(()) => break,
            Err(e) => {
                spec.link
                    .failed(&format!("reading `{}`: {e}", spec.stream), "");
                if kit::sleep_unless_stopped(&stop, backoff.next_delay()).await {
                    break;
                }
            }
        }
    }
    watching.cancel();
    let _ = watcher.await;
    // Stopping: every handle the engine held was settled or dropped; send those
    // acknowledgements before the connection may close.
    drop(acker);
    acks.finish().await;
}

/// Entries to deliver again, each once its retry delay is over.
struct Retries {
    rx: mpsc::UnboundedReceiver<(String, Instant)>,
    due: std::collections::BTreeSet<(Instant, String)>,
}

impl Retries {
    /// The ids due now, at most `n`, and when the next one falls due.
    fn take_due(&mut self, n: usize) -> (Vec<String>, Option<Instant>) {
        while let Ok((id, at)) = self.rx.try_recv() {
            self.due.insert((at, id));
        }
        let now = Instant::now();
        let mut ids = Vec::new();
        while ids.len() < n
            && let Some(first) = self.due.first()
            && first.0 <= now
        {
            if let Some((_, id)) = self.due.pop_first() {
                ids.push(id);
            }
        }
        (ids, self.due.first().map(|(at, _)| *at))
    }
}

/// What one subscription's read loop works with.
struct Reader<'a> {
    spec: &'a Spec,
    acker: &'a kit::Acker<String>,
    taken: &'a AtomicU64,
    tx: &'a mpsc::Sender<Incoming>,
    stop: &'a CancellationToken,
}

impl Reader<'_> {
    /// Reads until `stop` (`Ok`) or a failed command (`Err`: reconnect).
    async fn run(
        &self,
        conn: &mut MultiplexedConnection,
        phase: &mut Phase,
        retries: &mut Retries,
    ) -> Result<(), RedisError> {
        let Reader {
            spec,
            acker,
            taken,
            tx,
            stop,
        } = *self;
        let claim_every = (spec.claim_after / 2).max(Duration::from_millis(100));
        let mut claim_at = Instant::now();
        let mut claim_cursor = "0-0".to_string();
        let key = kit::ordering_key(&spec.stream);
        loop {
            // Room for at least one entry first: what is read is handed out at once.
            let room = tokio::select! {
                () = stop.cancelled() => return Ok(()),
                permit = tx.reserve() => match permit {
                    Ok(permit) => { drop(permit); tx.capacity().clamp(1, MAX_BATCH) }
                    Err(_) => return Ok(()),
                },
            };
            let (again, next_due) = retries.take_due(room);
            let batch = if !again.is_empty() {
                // Claimed again by this consumer: the group counts one more delivery.
                let mut cmd = redis::cmd("XCLAIM");
                cmd.arg(&spec.stream)
                    .arg(&spec.group)
                    .arg(&spec.consumer)
                    .arg(0);
                for id in &again {
                    cmd.arg(id);
                }
                Batch {
                    entries: reply::entries(&cmd.query_async(conn).await?),
                    redelivered: true,
                }
            } else if Instant::now() >= claim_at {
                let (next, entries) = claim(spec, conn, &claim_cursor, room).await?;
                if next == "0-0" {
                    claim_at = Instant::now() + claim_every;
                }
                claim_cursor = next;
                Batch {
                    entries,
                    redelivered: true,
                }
            } else {
                match phase {
                    Phase::Held(after) => {
                        let mut cmd = spec.read_group(room);
                        cmd.arg("STREAMS").arg(&spec.stream).arg(after.as_str());
                        let entries = reply::read_entries(&cmd.query_async(conn).await?);
                        match entries.last() {
                            Some(last) => *phase = Phase::Held(last.id.clone()),
                            None => *phase = Phase::New,
                        }
                        Batch {
                            entries,
                            redelivered: true,
                        }
                    }
                    Phase::New => {
                        let wake = next_due.map_or(claim_at, |due| due.min(claim_at));
                        let block = wake
                            .saturating_duration_since(Instant::now())
                            .clamp(Duration::from_millis(1), BLOCK);
                        let mut cmd = spec.read_group(room);
                        cmd.arg("BLOCK")
                            .arg(block.as_millis() as u64)
                            .arg("STREAMS")
                            .arg(&spec.stream)
                            .arg(">");
                        // A stop while blocked drops the read: what the server gave this consumer
                        // in the meantime stays pending for it, and is read first at its restart.
                        let value: Value = tokio::select! {
                            () = stop.cancelled() => return Ok(()),
                            v = cmd.query_async(conn) => v?,
                        };
                        Batch {
                            entries: reply::read_entries(&value),
                            redelivered: false,
                        }
                    }
                }
            };
            if batch.entries.is_empty() {
                continue;
            }
            let counts = if batch.redelivered {
                spec.delivery_counts(conn, &batch.entries).await?
            } else {
                Vec::new()
            };
            for (i, raw) in batch.entries.into_iter().enumerate() {
                let Some(fields) = &raw.fields else {
                    // Deleted (XDEL, trimmed) while pending: nothing to deliver.
                    let _: Value = redis::cmd("XACK")
                        .arg(&spec.stream)
                        .arg(&spec.group)
                        .arg(&raw.id)
                        .query_async(conn)
                        .await?;
                    continue;
                };
                let entry = binding::Entry::new(&spec.stream, &raw.id, fields);
                let (event, origin) = binding::decode(&spec.connector, &entry);
                let size = entry.size();
                taken.fetch_add(1, Ordering::Relaxed);
                let incoming = Incoming {
                    event,
                    origin,
                    key,
                    redeliveries: counts.get(i).map_or(0, |c| c.saturating_sub(1)),
                    size,
                    // The id moves into its handle: the entry is done with.
                    ack: acker.handle(raw.id),
                };
                if tx.send(incoming).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
}

/// Claims entries idle for `claim_after` at any consumer of the group (`XAUTOCLAIM` from
/// `cursor`): the next cursor (`0-0` once round) and the entries.
async fn claim(
    spec: &Spec,
    conn: &mut MultiplexedConnection,
    cursor: &str,
    count: usize,
) -> Result<(String, Vec<RawEntry>), RedisError> {
    let value: Value = redis::cmd("XAUTOCLAIM")
        .arg(&spec.stream)
        .arg(&spec.group)
        .arg(&spec.consumer)
        .arg(spec.claim_after.as_millis() as u64)
        .arg(cursor)
        .arg("COUNT")
        .arg(count)
        .query_async(conn)
        .await?;
    let (next, entries) = reply::claimed(&value);
    if !entries.is_empty() {
        tracing::info!(connector = %spec.connector, stream = %spec.stream, group = %spec.group, entries = entries.len(), "claimed entries idle for claim_after at another consumer");
    }
    Ok((next, entries))
}

/// Acknowledges entries: `XACK` once delivered or dead-lettered; the idle time of held ones reset.
struct RedisSettler {
    spec: Arc<Spec>,
    shared: Arc<Shared>,
    /// Entries to deliver again after their delay (read by the consume loop).
    retries: mpsc::UnboundedSender<(String, Instant)>,
}

#[async_trait]
impl Settler for RedisSettler {
    type Token = String;

    async fn settle(&self, id: &String, settlement: Settlement) {
        match settlement {
            Settlement::Delivered { .. } | Settlement::Failed { .. } => {}
            // Left pending, and claimed again by this consumer once the delay is over (the
            // group counts the delivery); if the loop has stopped, read again at this
            // replica's restart, or claimed by another after `claim_after`.
            Settlement::Retry { delay } => {
                let _ = self.retries.send((id.clone(), Instant::now() + delay));
                return;
            }
            // Left pending: read again at this replica's restart.
            Settlement::Released => return,
        }
        let acked = async {
            let mut conn = self.shared.get().await.map_err(|e| e.to_string())?;
            redis::cmd("XACK")
                .arg(&self.spec.stream)
                .arg(&self.spec.group)
                .arg(id)
                .query_async::<Value>(&mut conn)
                .await
                .map_err(|e| e.to_string())
        };
        if let Err(e) = acked.await {
            tracing::warn!(connector = %self.spec.connector, stream = %self.spec.stream, error = %e, "cannot acknowledge; the entry stays pending and comes back");
        }
    }

    async fn extend(&self, id: &String) {
        let Ok(mut conn) = self.shared.get().await else {
            return;
        };
        let reset: Result<Value, RedisError> = redis::cmd("XCLAIM")
            .arg(&self.spec.stream)
            .arg(&self.spec.group)
            .arg(&self.spec.consumer)
            .arg(0)
            .arg(id)
            .arg("JUSTID")
            .query_async(&mut conn)
            .await;
        if let Err(e) = reset {
            tracing::debug!(connector = %self.spec.connector, error = %e, "cannot reset an entry's idle time");
        }
    }
}

/// Adds events to streams.
struct RedisSink {
    shared: Arc<Shared>,
    maxlen: Option<u64>,
}

#[async_trait]
impl Sink for RedisSink {
    async fn publish(&self, topic: &str, event: &Event) -> Result<(), ConnectorError> {
        let mut conn = self.shared.get().await?;
        let mut cmd = redis::cmd("XADD");
        cmd.arg(topic);
        if let Some(n) = self.maxlen {
            cmd.arg("MAXLEN").arg("~").arg(n);
        }
        cmd.arg("*");
        for (field, value) in binding::encode(event) {
            cmd.arg(field).arg(value);
        }
        cmd.query_async::<Value>(&mut conn).await.map_err(|e| {
            let error = ConnectorError::io(
                &self.shared.connector,
                format!("cannot add to `{topic}`: {e}"),
            );
            if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError) {
                ConnectorError::permanent(
                    &self.shared.connector,
                    format!("cannot add to `{topic}`: {e}"),
                )
                .caused_by(e)
            } else {
                error.caused_by(e)
            }
        })?;
        Ok(())
    }
}

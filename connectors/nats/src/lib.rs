//! The NATS connector (async-nats): core subjects and JetStream durable pull consumers.
//!
//! **Core NATS** (`from: { connector, topic, group }`): a subscription to a subject (`*`, `>`
//! wildcards), a queue subscription when `group` is given, so replicas split the messages. Core
//! NATS is **at-most-once** by nature: the server does not redeliver, so a message in flight when
//! fnbroker stops or dies is lost, and a subscriber that falls behind loses messages ("slow
//! consumer").
//!
//! **JetStream** (`from: { connector, stream, topic, group }`): a durable pull consumer named
//! `group` (default `fnbroker`) on `stream`, filtered by `topic`, with explicit acks and
//! `max_ack_pending` = the trigger's `max_in_flight`; `ack_wait` is twice the longest attempt
//! timeout plus ten seconds, and while fnbroker holds a message (retrying it in memory, or
//! waiting behind its subject with `ordered: true`) it sends progress (`+WPI`) every third of
//! `ack_wait`, so the server never redelivers a message that is still being worked on. A delivered message is `ack`ed; a failed attempt that may be retried
//! is `nak`ed with the backoff delay, so the server redelivers it later and the retry state
//! survives a restart of fnbroker; a dead-lettered one is `term`inated; one in flight at shutdown
//! is `nak`ed for immediate redelivery. **At-least-once.** With `create: true` a missing stream
//! (capturing `topic`) is created; the durable consumer is created when missing either way.
//!
//! **Sink.** Core publish followed by a flush, or (with `publish: jetstream`) a JetStream publish
//! that resolves on the stream's acknowledgement. Binary mode with `ce-` headers.
//!
//! **Reconnect.** async-nats reconnects by itself and resumes subscriptions; pull loops start
//! again after errors. `is_ready` is the client's connection state.
#![forbid(unsafe_code)]
#![deny(unreachable_pub)]
#![warn(missing_docs)]

pub mod binding;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::pull, stream};
use async_nats::{Client, ConnectOptions};
use async_trait::async_trait;
use fnbroker_core::kit::{self, ChannelSource, Settler, source_buffer};
use fnbroker_core::{
    AckHandle, Connector, ConnectorError, Event, Incoming, Settlement, Sink, Source, Subscription,
};
use futures::StreamExt;
use tokio::sync::{OnceCell, mpsc};
use tokio_util::sync::CancellationToken;

mod config;
mod puller;

pub use config::{NatsPublish, NatsSettings, NatsSourceSettings, Plugin};

/// Credentials found in a server URL.
#[derive(Debug, PartialEq, Eq)]
enum Credentials {
    /// `nats://user:password@host`.
    User(String, String),
    /// `nats://token@host`.
    Token(String),
}

/// The server URLs (comma-separated) without their credentials, and the first credentials found.
fn split_credentials(urls: &str) -> (String, Option<Credentials>) {
    let mut found = None;
    let stripped: Vec<String> = urls
        .split(',')
        .map(|one| {
            let one = one.trim();
            let Ok(mut url) = url::Url::parse(one) else {
                return one.to_string();
            };
            if url.username().is_empty() {
                return one.to_string();
            }
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8_lossy()
                    .into_owned()
            };
            let user = decode(url.username());
            let credentials = match url.password() {
                Some(p) => Credentials::User(user, decode(p)),
                None => Credentials::Token(user),
            };
            found.get_or_insert(credentials);
            let _ = url.set_username("");
            let _ = url.set_password(None);
            url.to_string()
        })
        .collect();
    (stripped.join(","), found)
}

/// The NATS connector of one configuration entry.
pub struct NatsConnector {
    name: String,
    config: NatsSettings,
    client: OnceCell<Client>,
    link: Arc<fnbroker_core::kit::Link>,
    /// What the JetStream consumers have pending, from their info.
    backlogs: Arc<fnbroker_core::backlog::Backlogs>,
}

impl NatsConnector {
    /// A connector named `name`; it connects on first use.
    pub fn new(name: impl Into<String>, config: NatsSettings) -> Self {
        let name = name.into();
        Self {
            backlogs: Arc::default(),
            link: fnbroker_core::kit::Link::new(&name, "the NATS server", &config.url),
            name,
            config,
            client: OnceCell::new(),
        }
    }

    fn error(&self, message: impl Into<String>) -> ConnectorError {
        ConnectorError::io(&self.name, message)
    }

    async fn client(&self) -> Result<Client, ConnectorError> {
        self.client
            .get_or_try_init(|| async {
                let mut opts = ConnectOptions::new()
                    .name(format!("fnbroker-{}", self.name))
                    .retry_on_initial_connect()
                    .subscription_capacity(SUBSCRIPTION_CAPACITY);
                // Credentials in the URL travel as options, never in the address async-nats
                // logs (at debug, with its `server` field).
                let (urls, in_url) = split_credentials(&self.config.url);
                match (
                    &self.config.user,
                    &self.config.password,
                    &self.config.token,
                    in_url,
                ) {
                    (Some(u), Some(p), _, _) => opts = opts.user_and_password(u.clone(), p.clone()),
                    (_, _, Some(t), _) => opts = opts.token(t.clone()),
                    (_, _, _, Some(Credentials::User(u, p))) => opts = opts.user_and_password(u, p),
                    (_, _, _, Some(Credentials::Token(t))) => opts = opts.token(t),
                    _ => {}
                }
                if let Some(seed) = &self.config.nkey {
                    opts = opts.nkey(seed.clone());
                }
                if let Some(path) = &self.config.credentials {
                    opts = opts.credentials_file(path).await.map_err(|e| {
                        self.error(format!("cannot read the credentials file `{path}`: {e}"))
                    })?;
                }
                if let Some(tls) = &self.config.tls {
                    tls.warn_if_insecure("connector", &self.name);
                    let config = tls
                        .client_config()
                        .map_err(|e| self.error(format!("tls: {e}")))?;
                    opts = opts.tls_client_config(config).require_tls(true);
                }
                let name = self.name.clone();
                let tls = self.config.tls.is_some() || urls.contains("tls://");
                // Failures go through the link: a warning for the first of a run, then a
                // summary every 30 s (the client retries much faster).
                let link = Arc::clone(&self.link);
                opts = opts.event_callback(move |event| {
                    let name = name.clone();
                    let link = Arc::clone(&link);
                    async move {
                        let failure = matches!(
                            event,
                            async_nats::Event::ClientError(_)
                                | async_nats::Event::ServerError(_)
                                | async_nats::Event::Disconnected
                        );
                        if matches!(event, async_nats::Event::Connected) {
                            link.connected();
                        }
                        if !failure {
                            tracing::info!(connector = %name, %event, "nats connection event");
                            return;
                        }
                        let hint = if tls {
                            "; with TLS, check that `tls.ca` signed the server's certificate and that the client certificate is accepted"
                        } else {
                            ""
                        };
                        link.failed(&event.to_string(), hint);
                    }
                });
                opts.connect(urls.as_str())
                    .await
                    .map_err(|e| self.error(format!("cannot connect to {urls}: {e}")))
            })
            .await
            .cloned()
    }
}

#[async_trait]
impl Connector for NatsConnector {
    fn kind(&self) -> &'static str {
        "nats"
    }

    fn name(&self) -> &str {
        &self.name
    }

    /// A durable consumer named `reader` on the JetStream stream that captures `topic`; core
    /// NATS keeps nothing to read back.
    async fn reader(
        &self,
        reader: &str,
        topic: &str,
        max_in_flight: usize,
    ) -> Result<fnbroker_core::Reader, ConnectorError> {
        let js = jetstream::new(self.client().await?);
        let stream = js.stream_by_subject(topic).await.map_err(|e| {
            self.error(format!(
                "no JetStream stream captures `{topic}` ({e}): core NATS keeps no messages to read back"
            ))
        })?;
        let keys = [
            ("stream".to_string(), serde_json::Value::from(stream)),
            ("group".to_string(), serde_json::Value::from(reader)),
        ]
        .into();
        let sub = Subscription::reader(&self.name, Some(topic), keys, max_in_flight);
        Ok(fnbroker_core::Reader {
            source: self.subscribe(&sub).await?,
            positional: false,
        })
    }

    fn link(&self) -> Option<&fnbroker_core::kit::Link> {
        Some(&self.link)
    }

    fn backlog(&self) -> Vec<fnbroker_core::backlog::Backlog> {
        self.backlogs.all()
    }

    /// A queue group per subscriber: each gets every message, its replicas split them.
    fn discovery_keys(
        &self,
        subscriber: &str,
        _topic: &str,
    ) -> Result<fnbroker_core::contract::SourceKeys, fnbroker_core::registry::RouteError> {
        Ok(fnbroker_core::contract::group_keys(subscriber))
    }

    async fn subscribe(&self, sub: &Subscription) -> Result<Box<dyn Source>, ConnectorError> {
        let client = self.client().await?;
        let subject = sub.from.topic().to_string();
        let buffer = source_buffer(sub.max_in_flight);
        let source: NatsSourceSettings = sub.settings()?;
        match &source.stream {
            None => {
                let subscriber = match source.group.as_deref() {
                    Some(g) => client.queue_subscribe(subject.clone(), g.to_string()).await,
                    None => client.subscribe(subject.clone()).await,
                }
                .map_err(|e| self.error(format!("cannot subscribe to `{subject}`: {e}")))?;
                let name = self.name.clone();
                let limits = Held {
                    messages: source.buffer.unwrap_or(config::DEFAULT_BUFFER),
                    bytes: source
                        .buffer_bytes
                        .as_ref()
                        .map_or(config::DEFAULT_BUFFER_BYTES, |b| b.get()),
                };
                let dropped = Arc::new(AtomicU64::new(0));
                let counted = Arc::clone(&dropped);
                let inner = ChannelSource::spawn(buffer, move |tx, stop| {
                    core_loop(name, subscriber, limits, counted, tx, stop)
                });
                Ok(Box::new(CoreSource { inner, dropped }))
            }
            Some(stream_name) => {
                let stream_name: &str = stream_name.as_str();
                let js = jetstream::new(client);
                let stream = if source.create {
                    js.get_or_create_stream(stream::Config {
                        name: stream_name.to_string(),
                        subjects: vec![subject.clone()],
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| self.error(format!("cannot create stream `{stream_name}`: {e}")))?
                } else {
                    js.get_stream(stream_name).await.map_err(|e| {
                        self.error(format!(
                            "stream `{stream_name}` is not there ({e}); create it, or set `create: true` on the trigger's `from`"
                        ))
                    })?
                };
                let durable = source.group.as_deref().unwrap_or("fnbroker").to_string();
                let ack_wait = sub.attempt_timeout * 2 + Duration::from_secs(10);
                let max_pending = i64::try_from(sub.max_in_flight).unwrap_or(i64::MAX);
                let wanted = pull::Config {
                    durable_name: Some(durable.clone()),
                    filter_subject: subject.clone(),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait,
                    max_ack_pending: max_pending,
                    ..Default::default()
                };
                let mut consumer: jetstream::consumer::Consumer<pull::Config> = stream
                    .get_or_create_consumer(&durable, wanted.clone())
                    .await
                    .map_err(|e| {
                        self.error(format!(
                            "cannot get or create consumer `{durable}` on `{stream_name}`: {e}"
                        ))
                    })?;
                // An existing durable consumer keeps the settings it was created with: bring it
                // to what the trigger asks for (a reload that narrowed the topic, a new
                // `max_in_flight` or timeout), or say why not.
                let had = consumer.cached_info().config.clone();
                if !consumer_matches(&had, &wanted) {
                    consumer = stream.update_consumer(wanted.clone()).await.map_err(|e| {
                        ConnectorError::permanent(
                            &self.name,
                            format!(
                                "the durable consumer `{durable}` on `{stream_name}` has filter `{}`, ack_wait {:?}, max_ack_pending {}; the server refused to change it to filter `{subject}`, ack_wait {ack_wait:?}, max_ack_pending {max_pending} ({e}): delete the consumer (`nats consumer rm {stream_name} {durable}`) to start it anew, or give the trigger another `group`",
                                had.filter_subject, had.ack_wait, had.max_ack_pending
                            ),
                        )
                    })?;
                    tracing::info!(connector = %self.name, stream = %stream_name, consumer = %durable, was_filter = %had.filter_subject, was_ack_wait = ?had.ack_wait, was_max_ack_pending = had.max_ack_pending, "jetstream consumer updated to the trigger's settings");
                }
                // What the server says it has, not what was asked for.
                let now = &consumer.cached_info().config;
                tracing::info!(connector = %self.name, stream = %stream_name, consumer = %durable, filter = %now.filter_subject, ack_wait = ?now.ack_wait, max_ack_pending = now.max_ack_pending, "jetstream consumer ready");
                let name = self.name.clone();
                let batch = sub.max_in_flight;
                // Progress (`+WPI`) for every message fnbroker holds, three times per `ack_wait`:
                // the server never redelivers a message that is still being worked on, however
                // long its retries take.
                let lease = ack_wait / 3;
                let watch = (
                    format!("{stream_name}/{durable}"),
                    Arc::clone(&self.backlogs),
                );
                let stopping = CancellationToken::new();
                let settler = JetStreamSettler {
                    connector: self.name.clone(),
                    stopping: stopping.clone(),
                };
                let target = PullTarget {
                    context: js.clone(),
                    stream: stream_name.to_string(),
                    consumer: durable.clone(),
                    batch,
                };
                Ok(Box::new(
                    ChannelSource::spawn(buffer, move |tx, stop| {
                        jetstream_loop(name, consumer, target, settler, lease, watch, tx, stop)
                    })
                    .with_redelivery(fnbroker_core::Redelivery::Delayed)
                    .notify_stopping(stopping),
                ))
            }
        }
    }

    async fn sink(
        &self,
        _: &fnbroker_core::values::Destination,
    ) -> Result<Arc<dyn Sink>, ConnectorError> {
        let client = self.client().await?;
        Ok(Arc::new(NatsSink {
            connector: self.name.clone(),
            jetstream: (self.config.publish == NatsPublish::Jetstream)
                .then(|| jetstream::new(client.clone())),
            client,
        }))
    }

    fn is_ready(&self) -> bool {
        self.client
            .get()
            .is_none_or(|c| c.connection_state() == async_nats::connection::State::Connected)
    }

    /// Drains the connection, if connected: what was published and acknowledged is flushed and
    /// the connection closed in order (a plain exit with messages of open pull requests still
    /// unread resets the socket, and the server may lose the last acknowledgements). A client
    /// that never connected has nothing to drain, and would wait for a server.
    async fn stop(&self) {
        if let Some(c) = self.client.get()
            && c.connection_state() == async_nats::connection::State::Connected
            && let Err(e) = c.drain().await
        {
            tracing::debug!(connector = %self.name, error = %e, "cannot drain the connection");
        }
    }
}

/// Acknowledges JetStream messages: `+ACK`, `+TERM` after a dead letter, `-NAK` with the
/// backoff delay, `+WPI` while fnbroker holds a message.
struct JetStreamSettler {
    connector: String,
    /// Fired when the engine starts stopping: the acknowledgements from then on are confirmed.
    stopping: CancellationToken,
}

#[async_trait]
impl Settler for JetStreamSettler {
    type Token = jetstream::Message;

    async fn settle(&self, msg: &jetstream::Message, settlement: Settlement) {
        let kind = match settlement {
            Settlement::Delivered { .. } => AckKind::Ack,
            Settlement::Failed { .. } => AckKind::Term,
            Settlement::Retry { delay } => AckKind::Nak(Some(delay)),
            // Released (a stop, or a reload that reopens the subscription): a `-NAK` with a
            // delay past the pull request's expiry. An immediate nak makes the server
            // redeliver at once, into the pull request of this very consumer that is still
            // open at the server, where it sits unread and pending; measured, that ended with
            // one message delivered twice to the next process. Not acknowledged at all, it
            // would come back only after `ack_wait` (70 s with the default timeout).
            Settlement::Released => AckKind::Nak(Some(RELEASE_DELAY)),
        };
        // Once stopping, `+ACK`, `+TERM` and `-NAK` wait for the server's confirmation
        // (`AckAck`): a fire-and-forget one sent just before the connection closes was measured
        // to come back as a second delivery (1 in 2,000 after SIGTERM, in 1 run of 3), and a
        // lost `-NAK` leaves the message pending until `ack_wait` (a redrive run's passed-over
        // dead letters, released at its end, missed the next run in 1 of 5). While running, a
        // confirmation per message would cost a round trip each (0.90 -> 0.64 of the direct
        // path in the bench).
        let confirmed = self.stopping.is_cancelled()
            && matches!(kind, AckKind::Ack | AckKind::Term | AckKind::Nak(_));
        let sent = if confirmed {
            msg.double_ack_with(kind).await
        } else {
            msg.ack_with(kind).await
        };
        if let Err(e) = sent {
            tracing::warn!(connector = %self.connector, error = %e, "cannot acknowledge; the server will redeliver");
        }
    }

    async fn extend(&self, msg: &jetstream::Message) {
        if let Err(e) = msg.ack_with(AckKind::Progress).await {
            tracing::debug!(connector = %self.connector, error = %e, "cannot send progress");
        }
    }
}

/// The bounds of what a core subscription holds before its triggers take it.
#[derive(Debug, Clone, Copy)]
struct Held {
    messages: usize,
    bytes: u64,
}

/// A core NATS subscription: messages are taken off the connection as fast as they come (so
/// that the client's own buffer, whose overflow nobody could count, stays empty) into a queue
/// bounded by [`Held`]; what does not fit is dropped and counted, and the engine is told.
struct CoreSource {
    inner: ChannelSource,
    dropped: Arc<AtomicU64>,
}

#[async_trait]
impl Source for CoreSource {
    async fn next(&mut self) -> Option<Incoming> {
        self.inner.next().await
    }

    fn stopping(&mut self) {
        self.inner.stopping();
    }

    fn take_dropped(&mut self) -> u64 {
        self.dropped.swap(0, Ordering::AcqRel)
    }

    /// Core NATS keeps nothing: a message taken is gone.
    fn capabilities(&self) -> fnbroker_core::SourceCapabilities {
        fnbroker_core::SourceCapabilities::redelivering(fnbroker_core::Redelivery::None)
    }

    async fn close(self: Box<Self>) {
        Box::new(self.inner).close().await;
    }
}

/// The bytes a held core message counts for: its payload and headers.
fn held_size(msg: &async_nats::Message) -> u64 {
    (msg.payload.len() + msg.headers.as_ref().map_or(0, |h| h.len() * 32)) as u64
}

async fn core_loop(
    name: String,
    mut subscriber: async_nats::Subscriber,
    limits: Held,
    dropped: Arc<AtomicU64>,
    tx: mpsc::Sender<Incoming>,
    stop: CancellationToken,
) {
    let mut queue: std::collections::VecDeque<async_nats::Message> =
        std::collections::VecDeque::new();
    let mut bytes = 0u64;
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            // Reading comes first: the connection is never left waiting on the triggers.
            msg = subscriber.next() => {
                let Some(msg) = msg else { break };
                let size = held_size(&msg);
                if queue.len() >= limits.messages || bytes + size > limits.bytes {
                    dropped.fetch_add(1, Ordering::AcqRel);
                    continue;
                }
                bytes += size;
                queue.push_back(msg);
            }
            permit = tx.reserve(), if !queue.is_empty() => {
                let Ok(permit) = permit else { break };
                let Some(msg) = queue.pop_front() else { continue };
                bytes -= held_size(&msg);
                let view = binding::Message {
                    subject: msg.subject.as_str(),
                    payload: &msg.payload,
                    headers: msg.headers.as_ref(),
                    ..Default::default()
                };
                let (event, origin) = binding::decode(&name, &view);
                permit.send(Incoming {
                    event,
                    origin,
                    key: kit::ordering_key(msg.subject.as_str()),
                    redeliveries: 0,
                    size: msg.payload.len(),
                    ack: AckHandle::none(),
                });
            }
        }
    }
    let _ = subscriber.unsubscribe().await;
}

#[allow(clippy::too_many_arguments)]
async fn jetstream_loop(
    name: String,
    consumer: jetstream::consumer::Consumer<pull::Config>,
    target: PullTarget,
    settler: JetStreamSettler,
    lease: Duration,
    (source, backlogs): (String, Arc<fnbroker_core::backlog::Backlogs>),
    tx: mpsc::Sender<Incoming>,
    stop: CancellationToken,
) {
    let (acker, acks) = kit::Acker::with_lease(settler, lease);
    let watching = stop.child_token();
    let ((), ()) = tokio::join!(
        async {
            pull_loop(&name, &target, &acker, &tx, &stop).await;
            watching.cancel();
        },
        // What is pending for the consumer, and its delivered stream sequence (which moves
        // while messages are taken).
        backlogs.watch(&source, &watching, || async {
            let info = consumer.get_info().await.ok()?;
            Some((info.num_pending, info.delivered.stream_sequence))
        })
    );
    // Stopping: the engine settled or dropped every handle; send those acknowledgements (and
    // flush them) before the connection may close.
    drop(acker);
    acks.finish().await;
}

/// Whether the server's consumer has the settings fnbroker asks for.
fn consumer_matches(had: &jetstream::consumer::Config, wanted: &pull::Config) -> bool {
    had.filter_subject == wanted.filter_subject
        && had.ack_wait == wanted.ack_wait
        && had.max_ack_pending == wanted.max_ack_pending
}

/// How many messages async-nats buffers per subscription; past it, it drops them (a slow
/// consumer) and only says so in an event. A core subscription's own loop empties this buffer
/// as fast as messages come, into a queue it bounds and counts itself (see [`CoreSource`]), so
/// this depth only has to cover the moments that loop is not scheduled.
const SUBSCRIPTION_CAPACITY: usize = 65_536;

/// How long one pull request waits at the server. Short, so that the messages a request still
/// brings after its inbox is gone (a reload, a stop) come back soon (see [`RELEASE_DELAY`]).
/// (The stalls async-nats' own pull stream had, until its request expired, are gone with
/// [`puller`]: see there.)
const PULL_EXPIRES: Duration = Duration::from_secs(5);

/// How long the server keeps a released message before it redelivers it: past the expiry of
/// any pull request still open, so that it goes to the next pull (of a reloaded subscription,
/// or of the next process), not into one that nobody reads.
const RELEASE_DELAY: Duration = Duration::from_secs(6);

/// Hands back, with a delayed `-NAK`, the messages the server already sent into the pull
/// request and nobody will read: otherwise they stay pending until `ack_wait`.
async fn release_unread(puller: &mut puller::Puller) {
    let mut released = 0usize;
    while let Some(msg) = puller.buffered() {
        if msg
            .ack_with(AckKind::Nak(Some(RELEASE_DELAY)))
            .await
            .is_ok()
        {
            released += 1;
        }
    }
    if released > 0 {
        tracing::debug!(
            released,
            "released the unread messages of the last pull request"
        );
    }
}

/// The consumer a pull loop pulls from, and how many messages per request.
struct PullTarget {
    context: jetstream::Context,
    stream: String,
    consumer: String,
    batch: usize,
}

/// Pulls until asked to stop or the engine is gone.
async fn pull_loop(
    name: &str,
    target: &PullTarget,
    acker: &kit::Acker<jetstream::Message>,
    tx: &mpsc::Sender<Incoming>,
    stop: &CancellationToken,
) {
    let mut backoff = kit::Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
    'outer: loop {
        let messages = puller::Puller::open(
            &target.context,
            &target.stream,
            &target.consumer,
            kit::source_buffer(target.batch),
            PULL_EXPIRES,
        )
        .await;
        let mut messages = match messages {
            Ok(m) => m,
            Err(puller::PullError(e)) => {
                tracing::warn!(connector = %name, error = %e, "cannot pull from jetstream; retrying");
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(backoff.next_delay()) => {}
                }
                continue;
            }
        };
        loop {
            let next = tokio::select! {
                biased;
                () = stop.cancelled() => {
                    release_unread(&mut messages).await;
                    break 'outer;
                }
                m = messages.next() => m,
            };
            let msg = match next {
                Some(Ok(m)) => m,
                Some(Err(puller::PullError(e))) => {
                    // Pull again, on a new inbox, after a pause (a request the server refuses
                    // would be refused again at once).
                    tracing::warn!(connector = %name, error = %e, "jetstream pull failed; pulling again");
                    release_unread(&mut messages).await;
                    tokio::select! {
                        () = stop.cancelled() => break 'outer,
                        () = tokio::time::sleep(backoff.next_delay()) => {}
                    }
                    break;
                }
                None => break,
            };
            backoff.reset();
            let (sequence, time, delivered) = match msg.info() {
                Ok(info) => (
                    Some(info.stream_sequence),
                    chrono::DateTime::from_timestamp(
                        info.published.unix_timestamp(),
                        info.published.nanosecond(),
                    ),
                    info.delivered,
                ),
                Err(_) => (None, None, 1),
            };
            let view = binding::Message {
                subject: msg.subject.as_str(),
                payload: &msg.payload,
                headers: msg.headers.as_ref(),
                sequence,
                time,
            };
            let (event, origin) = binding::decode(name, &view);
            let key = kit::ordering_key(msg.subject.as_str());
            let incoming = Incoming {
                event,
                origin,
                key,
                redeliveries: u32::try_from(delivered.saturating_sub(1)).unwrap_or(0),
                size: msg.payload.len(),
                ack: acker.handle(msg),
            };
            let sent = tokio::select! {
                biased;
                () = stop.cancelled() => false,
                sent = tx.send(incoming) => sent.is_ok(),
            };
            if !sent {
                release_unread(&mut messages).await;
                break 'outer;
            }
        }
    }
}

/// Publishes replies and dead letters.
struct NatsSink {
    connector: String,
    client: Client,
    jetstream: Option<jetstream::Context>,
}

#[async_trait]
impl Sink for NatsSink {
    /// With `publish: jetstream`, a stream must capture the subject.
    async fn check(&self, topic: &str) -> Result<(), ConnectorError> {
        let Some(js) = &self.jetstream else {
            return Ok(());
        };
        js.stream_by_subject(topic).await.map(|_| ()).map_err(|e| {
            ConnectorError::permanent(
                &self.connector,
                format!("no JetStream stream captures the subject `{topic}` ({e})"),
            )
            .caused_by(e)
        })
    }

    async fn publish(&self, topic: &str, event: &Event) -> Result<(), ConnectorError> {
        let (headers, payload) = binding::encode(event);
        self.send(topic, headers, payload).await
    }

    async fn publish_plain(
        &self,
        topic: &str,
        data: &[u8],
        content_type: Option<&str>,
    ) -> Result<(), ConnectorError> {
        let mut headers = async_nats::HeaderMap::new();
        if let Some(ct) = content_type {
            headers.insert("Content-Type", ct);
        }
        self.send(topic, headers, data.to_vec()).await
    }
}

impl NatsSink {
    /// Publishes, and waits for JetStream's ack or core NATS' flush.
    async fn send(
        &self,
        topic: &str,
        headers: async_nats::HeaderMap,
        payload: Vec<u8>,
    ) -> Result<(), ConnectorError> {
        let err = |message: String| {
            ConnectorError::io(
                &self.connector,
                format!("cannot publish to `{topic}`: {message}"),
            )
        };
        let classify = |e: async_nats::jetstream::context::PublishError| {
            if e.kind() == async_nats::jetstream::context::PublishErrorKind::StreamNotFound {
                ConnectorError::permanent(
                    &self.connector,
                    format!(
                        "cannot publish to `{topic}`: no JetStream stream captures this subject"
                    ),
                )
            } else {
                err(e.to_string())
            }
        };
        match &self.jetstream {
            Some(js) => js
                .publish_with_headers(topic.to_string(), headers, payload.into())
                .await
                .map_err(classify)?
                .await
                .map(|_| ())
                .map_err(classify),
            None => {
                self.client
                    .publish_with_headers(topic.to_string(), headers, payload.into())
                    .await
                    .map_err(|e| err(e.to_string()))?;
                self.client.flush().await.map_err(|e| err(e.to_string()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Credentials, split_credentials};

    #[test]
    fn credentials_leave_the_url() {
        assert_eq!(
            split_credentials("nats://fnb:s%40cret@127.0.0.1:4222"),
            (
                "nats://127.0.0.1:4222".to_string(),
                Some(Credentials::User("fnb".into(), "s@cret".into()))
            )
        );
        assert_eq!(
            split_credentials("nats://tok@h1:4222, nats://h2:4222"),
            (
                "nats://h1:4222,nats://h2:4222".to_string(),
                Some(Credentials::Token("tok".into()))
            )
        );
        assert_eq!(
            split_credentials("127.0.0.1:4222"),
            ("127.0.0.1:4222".to_string(), None)
        );
    }
}

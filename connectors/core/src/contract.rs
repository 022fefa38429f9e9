//! The contract between the broker and its connectors: [`Connector`], [`Source`], [`Sink`], and
//! the in-flight message [`Incoming`] with its [`AckHandle`].
//!
//! # The acknowledgement invariant
//!
//! A source never acknowledges a message to its broker before the message's [`AckHandle`] says
//! so. The handle is settled exactly once, by the broker's delivery engine, with a [`Settlement`]:
//!
//! | settlement | meaning | Kafka | JetStream | AMQP 0-9-1 | MQTT |
//! |---|---|---|---|---|---|
//! | [`Settlement::Delivered`] | every matched trigger finished | offset may be committed | `ack` | `basic.ack` | PUBACK / PUBREC |
//! | [`Settlement::Failed`] | dead-lettered or dropped by policy: do not redeliver | offset may be committed | `term` | `basic.reject` (no requeue) | PUBACK / PUBREC |
//! | [`Settlement::Retry`] | try again later (also: a reply or dead letter could not be published) | not committed; redelivered after a restart | `nak` with the delay | `basic.nack` (requeue) | not acknowledged |
//! | [`Settlement::Released`] | not processed (shutdown) | not committed | nothing: redelivered after `ack_wait` | `basic.nack` (requeue) | not acknowledged |
//!
//! A handle that is dropped without being settled counts as [`Settlement::Released`]: the message
//! must be redelivered, never lost. That is what happens to every message in flight when the
//! process stops before its delivery finished.
//!
//! Kafka offsets, JetStream acknowledgements, AMQP delivery tags and MQTT packet ids all fit this
//! shape: the connector captures what it needs (partition and offset, the message's reply subject,
//! the delivery tag, the packet id) in the closure it gives [`AckHandle::new`], so the broker never
//! sees any of them.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::event::Event;
use crate::values::TriggerSource;

/// How the delivery engine settled a message. See the module documentation for what each one
/// means to each protocol.
#[derive(Debug, Clone)]
pub enum Settlement {
    /// Every trigger that matched the message finished: the function answered 2xx (or nothing
    /// matched). `reply` is the reply of the first matched trigger that produced one, for sources
    /// that answer their caller (the HTTP ingress in sync mode).
    Delivered {
        /// The function's reply, as an event.
        reply: Option<Box<Event>>,
    },
    /// The delivery failed for good and the message was dead-lettered or dropped by policy. The
    /// broker must not redeliver it.
    Failed {
        /// Why, in one line.
        reason: String,
        /// Whether the last attempt failed by running out of time.
        timed_out: bool,
    },
    /// The message should come back after `delay`. Brokers that can delay a redelivery (JetStream
    /// `nak`) use it; others redeliver it when they will.
    Retry {
        /// How long to wait before the redelivery.
        delay: Duration,
    },
    /// The message was not processed (the broker is stopping); it must be redelivered.
    Released,
}

type SettleFn = Box<dyn FnOnce(Settlement) + Send + 'static>;

/// The acknowledgement handle that travels with every in-flight message.
///
/// Settle it once with [`AckHandle::settle`]; dropping it unsettled releases the message for
/// redelivery. Connectors build it with the closure that talks to their broker; the closure must
/// not block (send to a channel or spawn if the broker call is asynchronous).
#[must_use = "dropping an AckHandle releases the message for redelivery"]
pub struct AckHandle {
    settle: Option<SettleFn>,
}

impl AckHandle {
    /// A handle that calls `settle` with the outcome, once.
    pub fn new(settle: impl FnOnce(Settlement) + Send + 'static) -> Self {
        Self {
            settle: Some(Box::new(settle)),
        }
    }

    /// A handle for messages that cannot be acknowledged (NATS core, MQTT QoS 0, async HTTP).
    pub fn none() -> Self {
        Self { settle: None }
    }

    /// Splits the handle in `n` (one message, several settlements: a fan-out, or the events of a
    /// batch that came from one message). The message is settled once, when the last part is,
    /// with the [`strongest`] outcome of the parts. A dropped part counts as released.
    pub fn split(self, n: usize) -> Vec<AckHandle> {
        if n <= 1 {
            return vec![self];
        }
        let merged = Arc::new(std::sync::Mutex::new(Merge {
            remaining: n,
            outcome: None,
            handle: Some(self),
        }));
        (0..n)
            .map(|_| {
                let merged = Arc::clone(&merged);
                AckHandle::new(move |s| {
                    let Ok(mut m) = merged.lock() else { return };
                    m.outcome = Some(match m.outcome.take() {
                        None => s,
                        Some(previous) => strongest(previous, s),
                    });
                    m.remaining -= 1;
                    if m.remaining == 0
                        && let (Some(handle), Some(outcome)) = (m.handle.take(), m.outcome.take())
                    {
                        handle.settle(outcome);
                    }
                })
            })
            .collect()
    }

    /// Settles the message. Consumes the handle, so a message is settled at most once.
    pub fn settle(mut self, settlement: Settlement) {
        if let Some(f) = self.settle.take() {
            f(settlement);
        }
    }
}

/// The parts of a split handle, merging as they settle.
struct Merge {
    remaining: usize,
    outcome: Option<Settlement>,
    handle: Option<AckHandle>,
}

/// The settlement that wins when two parts of one message disagree: the one merge rule, for
/// the parts of a split handle and for the triggers one message went to alike.
/// [`Settlement::Released`] over [`Settlement::Retry`] (the longest delay) over
/// [`Settlement::Failed`] (the first reason) over [`Settlement::Delivered`] (the first reply).
pub fn strongest(a: Settlement, b: Settlement) -> Settlement {
    fn rank(s: &Settlement) -> u8 {
        match s {
            Settlement::Delivered { .. } => 0,
            Settlement::Failed { .. } => 1,
            Settlement::Retry { .. } => 2,
            Settlement::Released => 3,
        }
    }
    match (a, b) {
        (Settlement::Retry { delay: x }, Settlement::Retry { delay: y }) => {
            Settlement::Retry { delay: x.max(y) }
        }
        (Settlement::Delivered { reply: None }, Settlement::Delivered { reply }) => {
            Settlement::Delivered { reply }
        }
        (a, b) if rank(&b) > rank(&a) => b,
        (a, _) => a,
    }
}

impl Drop for AckHandle {
    fn drop(&mut self) {
        if let Some(f) = self.settle.take() {
            f(Settlement::Released);
        }
    }
}

impl fmt::Debug for AckHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AckHandle")
            .field("settled", &self.settle.is_none())
            .finish()
    }
}

/// How a source message became an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// It was a CloudEvent (binary or structured mode): taken as it is.
    CloudEvent,
    /// It was a plain message, normalized: a trigger's `event.type` may replace its type.
    Plain,
    /// It claimed to be a CloudEvent but is not a valid one. The event carries the raw bytes as
    /// data; the engine dead-letters it with this reason.
    Invalid(String),
}

/// A message in flight from a source to the delivery engine.
#[derive(Debug)]
pub struct Incoming {
    /// The message as a CloudEvent.
    pub event: Event,
    /// How the event was made.
    pub origin: Origin,
    /// The ordering key (a Kafka partition, a hashed subject or topic). With `ordered: true`
    /// messages with the same key are delivered one at a time, in the order the source gave them.
    pub key: u64,
    /// How many times the broker delivered this message before, where it says so (0 otherwise).
    pub redeliveries: u32,
    /// The size of the message's payload as the broker delivered it, in bytes (the body of an
    /// HTTP request; headers and properties not counted): `fnbroker_received_bytes_total`.
    pub size: usize,
    /// The acknowledgement handle.
    pub ack: AckHandle,
}

/// One subscription a trigger (or several triggers with the same `from`) opens on a connector.
#[derive(Debug, Clone)]
pub struct Subscription {
    /// What the triggers asked for: topic, queue, stream, group, qos...
    pub from: TriggerSource,
    /// The most messages this subscription may have in flight: sources size their prefetch by it.
    pub max_in_flight: usize,
    /// Whether messages with the same key must be delivered one at a time.
    pub ordered: bool,
    /// The longest time one attempt of its triggers may take: brokers that redeliver what is
    /// not acknowledged in time (JetStream's `ack_wait`) must wait longer than this.
    pub attempt_timeout: std::time::Duration,
    /// The names of the triggers that share this subscription, for logs.
    pub triggers: Vec<String>,
}

impl Subscription {
    /// The subscription of a [`Connector::reader`]: `topic` and `keys` on the connector `name`,
    /// unordered.
    pub fn reader(
        connector: &str,
        topic: Option<&str>,
        keys: SourceKeys,
        max_in_flight: usize,
    ) -> Self {
        use crate::values::{ConnectorKeys, Loc};
        Self {
            from: TriggerSource {
                connector: Loc::new(connector.to_string()),
                topic: topic.map(|t| Loc::new(t.to_string())),
                keys: ConnectorKeys::new(keys),
            },
            max_in_flight,
            ordered: false,
            attempt_timeout: std::time::Duration::from_secs(30),
            triggers: vec!["(redrive)".to_string()],
        }
    }

    /// The keys of `from` in the connector kind's type ([`ConnectorPlugin::Source`]).
    ///
    /// [`ConnectorPlugin::Source`]: crate::registry::ConnectorPlugin::Source
    pub fn settings<T>(&self) -> Result<T, ConnectorError>
    where
        T: serde::de::DeserializeOwned + Clone + Send + Sync + fmt::Debug + 'static,
    {
        self.from.keys.get().map_err(|e| {
            ConnectorError::permanent(
                self.from.connector.as_str(),
                format!("invalid source settings: {e}"),
            )
            .caused_by(e)
        })
    }
}

/// The keys of a trigger's `from` beyond `connector` and `topic`, as written.
pub type SourceKeys = std::collections::BTreeMap<String, serde_json::Value>;

/// `{ group: subscriber }`: the [`Connector::discovery_keys`] of a connector whose `group`
/// (a Kafka consumer group, a NATS queue group) gives each subscriber every message and splits
/// them among the replicas that share it.
pub fn group_keys(subscriber: &str) -> SourceKeys {
    [("group".to_string(), subscriber.into())].into()
}

/// How a source's broker gives back a message that was not acknowledged
/// ([`Settlement::Retry`], [`Settlement::Released`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redelivery {
    /// Never: a message is gone once taken (core NATS, MQTT QoS 0, an HTTP request answered
    /// `202`). A message the engine cannot finish (its reply or dead letter cannot be published)
    /// is dead-lettered or counted as dropped, never handed back to nothing.
    None,
    /// When the broker will: at once or after a restart (Kafka, AMQP requeue, MQTT QoS 1/2 on
    /// the same connection, an HTTP caller that gets `502` and tries again).
    Later,
    /// After the delay a [`Settlement::Retry`] asks for, counting the deliveries in
    /// [`Incoming::redeliveries`] (JetStream's `nak` with a delay, Redis Streams' reclaim). The
    /// engine then leaves the waiting between attempts to the broker, so retries survive a
    /// restart of fnbroker and a retrying message holds no memory here.
    Delayed,
}

/// What a source does once the engine stops taking its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AtStop {
    /// The engine stops taking at once; what the source fetched and never handed out is
    /// released when it closes. Every broker whose unit of acknowledgement is a message.
    #[default]
    StopTaking,
    /// The engine goes on taking until [`Source::next`] returns `None` (within
    /// `shutdown_timeout`): the source's broker acknowledges a unit larger than a message (a
    /// PostgreSQL transaction), and after [`Source::stopping`] the source hands out the rest of
    /// its current unit and then ends, so that a clean stop leaves no unit half delivered
    /// (which would be delivered again whole).
    FinishUnit,
}

/// What one source does that the engine plans around, said once, in one place: how its broker
/// gives back what is not acknowledged, and what it does at a stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceCapabilities {
    /// How the source's broker gives back a message that was not acknowledged.
    pub redelivery: Redelivery,
    /// What the source does once the engine stops taking.
    pub at_stop: AtStop,
}

impl SourceCapabilities {
    /// A source whose broker redelivers when it will ([`Redelivery::Later`]) and that stops
    /// taking at once: the default.
    pub const LATER: Self = Self::redelivering(Redelivery::Later);

    /// A source whose broker gives back what is not acknowledged as `redelivery` says, and that
    /// stops taking at once.
    pub const fn redelivering(redelivery: Redelivery) -> Self {
        Self {
            redelivery,
            at_stop: AtStop::StopTaking,
        }
    }

    /// The same, finishing its unit at a stop.
    pub const fn finishing_its_unit(self) -> Self {
        Self {
            at_stop: AtStop::FinishUnit,
            ..self
        }
    }
}

impl Default for SourceCapabilities {
    fn default() -> Self {
        Self::LATER
    }
}

/// When a connector's subscriptions may open and close.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Subscribing {
    /// Every subscription opens before [`Connector::start`] and closes with the connector (a
    /// Kafka consumer group's member joins with its topics).
    #[default]
    AtStart,
    /// Also after [`Connector::start`], and a subscription may close while the connector runs
    /// (what discovered triggers and reloads that reopen a subscription need).
    WhileRunning,
}

/// What a connector kind can do, said once, in one place: its plugin's
/// [`CAPABILITIES`](crate::registry::ConnectorPlugin::CAPABILITIES).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectorCapabilities {
    /// When its subscriptions may open and close.
    pub subscribing: Subscribing,
    /// Whether it publishes (replies, dead letters, retry topics): every broker does; a
    /// listener (the HTTP ingress) does not, and a configuration whose destination names it is
    /// refused at load.
    pub publishes: bool,
    /// Whether it keeps keys that expire ([`Connector::key_store`]): what replicas share to
    /// agree on deduplication and on who fires a schedule's tick.
    pub keeps_keys: bool,
}

impl ConnectorCapabilities {
    /// Subscriptions at start only, publishing: the default.
    pub const AT_START: Self = Self {
        subscribing: Subscribing::AtStart,
        publishes: true,
        keeps_keys: false,
    };

    /// Subscriptions at any time, publishing.
    pub const WHILE_RUNNING: Self = Self {
        subscribing: Subscribing::WhileRunning,
        publishes: true,
        keeps_keys: false,
    };

    /// These capabilities, and keeping keys.
    pub const fn keeping_keys(self) -> Self {
        Self {
            keeps_keys: true,
            ..self
        }
    }

    /// Whether subscriptions may open and close while the connector runs.
    pub fn subscribes_while_running(&self) -> bool {
        self.subscribing == Subscribing::WhileRunning
    }
}

impl Default for ConnectorCapabilities {
    fn default() -> Self {
        Self::AT_START
    }
}

/// A stream of in-flight messages from one subscription.
#[async_trait]
pub trait Source: Send {
    /// The next message, waiting for one. `None` means the source is closed for good.
    ///
    /// The engine calls this only while it has room for another message in flight, so a source
    /// that fetches lazily (or whose buffer is bounded) passes backpressure to its broker.
    ///
    /// **Must be cancel safe**: the engine awaits it in a `select!` beside its shutdown and its
    /// finished deliveries, and drops the future when another branch wins. A message is either
    /// returned or still there for the next call, never taken and lost
    /// ([`kit::ChannelSource`](crate::kit::ChannelSource) is, being an `mpsc::Receiver`).
    async fn next(&mut self) -> Option<Incoming>;

    /// Called once when the engine starts stopping, before it waits for the deliveries in
    /// flight: the acknowledgements that follow are the last ones (a source may make them
    /// confirmed rather than fire-and-forget).
    fn stopping(&mut self) {}

    /// Called before [`Source::close`] when the subscription is given up for good (its
    /// discovered trigger was removed), not closed for a restart: a source whose broker keeps
    /// the subscription in a session (MQTT) may end it; otherwise it must keep it, so that what
    /// arrives while fnbroker restarts is kept for it.
    fn retire(&mut self) {}

    /// Stops the source once the engine has settled or dropped every handle it gave out: the
    /// place for a final offset commit or an orderly unsubscribe.
    async fn close(self: Box<Self>) {}

    /// How the source's broker gives back what is not acknowledged, and what the source does
    /// at a stop (see [`SourceCapabilities`]). Default: [`SourceCapabilities::LATER`].
    fn capabilities(&self) -> SourceCapabilities {
        SourceCapabilities::LATER
    }

    /// How many messages the source lost since the last call, before the engine took them: an
    /// at-most-once source (core NATS) whose buffer was full drops what arrives (a slow
    /// consumer). The engine counts them on the subscription's triggers and says so. Default:
    /// none (sources that can redeliver keep what they cannot take at their broker).
    fn take_dropped(&mut self) -> u64 {
        0
    }
}

/// Publishes events to a destination (replies, dead letters).
#[async_trait]
pub trait Sink: Send + Sync {
    /// Publishes one event to `topic`. Resolves only when the destination confirmed it
    /// (delivery report, publisher confirm, PUBACK, publish ack); an error means it may not
    /// have arrived.
    async fn publish(&self, topic: &str, event: &Event) -> Result<(), ConnectorError>;

    /// Publishes `data` to `topic` as a plain message, as a device or a service that knows
    /// nothing of CloudEvents would (`fnbroker send --plain`): no attributes, the content type
    /// where the protocol carries one. Confirmed as [`publish`](Self::publish) is. Default:
    /// `Unsupported`, for a destination that stores events by their attributes.
    async fn publish_plain(
        &self,
        _topic: &str,
        _data: &[u8],
        _content_type: Option<&str>,
    ) -> Result<(), ConnectorError> {
        Err(ConnectorError::Unsupported {
            connector: String::new(),
            kind: "sink",
            what: "publish a plain message (it stores events by their attributes)",
        })
    }

    /// Whether `topic` can exist as a destination, asked once at start (an AMQP passive declare,
    /// a JetStream stream lookup). A [`ConnectorError::Permanent`] says it cannot as things are.
    async fn check(&self, _topic: &str) -> Result<(), ConnectorError> {
        Ok(())
    }
}

/// Keys that expire, in a store the replicas of fnbroker share (a Redis server, a PostgreSQL
/// table): the marks of delivered events that deduplication looks up, and the claims of a
/// schedule's ticks.
#[async_trait]
pub trait KeyStore: Send + Sync {
    /// Whether `key` is set and has not expired.
    async fn contains(&self, key: &str) -> Result<bool, ConnectorError>;

    /// Sets `key` for `ttl` unless it is set and has not expired: `true` when this call set it
    /// (a claim won), atomically across every replica.
    async fn insert(&self, key: &str, ttl: std::time::Duration) -> Result<bool, ConnectorError>;
}

/// A configured connection to one broker (or one listening socket).
#[async_trait]
pub trait Connector: Send + Sync {
    /// The kind, as in the configuration: `http`, `kafka`, `nats`, `amqp`, `mqtt`.
    fn kind(&self) -> &'static str;

    /// The connector's name, as in the configuration: errors name it.
    fn name(&self) -> &str;

    /// The `from` keys of a subscription to `topic` opened for a discovered function: each
    /// `subscriber` (one per function and topic) must get every message on `topic`, and the
    /// replicas of fnbroker sharing a subscriber must share its messages (a Kafka consumer group,
    /// a NATS queue group, an AMQP queue of its own bound to the exchange). An error says why
    /// this connector cannot serve discovery as configured. Default: no keys.
    fn discovery_keys(
        &self,
        _subscriber: &str,
        _topic: &str,
    ) -> Result<SourceKeys, crate::registry::RouteError> {
        Ok(SourceKeys::new())
    }

    /// A source that reads what `topic` holds (dead letters, for `fnbroker redrive`) as a
    /// consumer named `reader` of its own, leaving a running fnbroker's consumers alone: a Kafka
    /// group and a JetStream durable consumer of that name, an MQTT session of its own, the
    /// AMQP queue `topic`. Opened before [`Connector::start`]. Default: `Unsupported` (core NATS
    /// and HTTP keep nothing to read).
    async fn reader(
        &self,
        _reader: &str,
        _topic: &str,
        _max_in_flight: usize,
    ) -> Result<Reader, ConnectorError> {
        Err(ConnectorError::Unsupported {
            connector: self.name().to_string(),
            kind: self.kind(),
            what: "read back what a topic holds",
        })
    }

    /// Its key store, for keys under `namespace` (see [`KeyStore`]); the kind says it has one
    /// in [`ConnectorCapabilities::keeps_keys`]. Default: `Unsupported`.
    fn key_store(&self, _namespace: &str) -> Result<Arc<dyn KeyStore>, ConnectorError> {
        Err(ConnectorError::Unsupported {
            connector: self.name().to_string(),
            kind: self.kind(),
            what: "keep keys (Redis and PostgreSQL can)",
        })
    }

    /// Opens a subscription. Called for every subscription before [`Connector::start`] (and
    /// later too, where its kind's [`ConnectorCapabilities::subscribing`] says so).
    async fn subscribe(
        &self,
        subscription: &Subscription,
    ) -> Result<Box<dyn Source>, ConnectorError>;

    /// A sink that publishes through this connector to `destination` (whose `topic` each
    /// publish names again; AMQP also reads its `exchange`).
    async fn sink(
        &self,
        destination: &crate::values::Destination,
    ) -> Result<Arc<dyn Sink>, ConnectorError>;

    /// Starts serving once every subscription is open (the HTTP ingress starts listening here).
    async fn start(&self) -> Result<(), ConnectorError> {
        Ok(())
    }

    /// Whether the connector is connected and serving.
    fn is_ready(&self) -> bool {
        true
    }

    /// The connection's health (address, the failure going on, reconnections), for a
    /// connector that connects out.
    fn link(&self) -> Option<&crate::kit::Link> {
        None
    }

    /// What its subscriptions have waiting at the broker, where the broker says (Kafka
    /// partitions, JetStream consumers, AMQP queues; not core NATS, MQTT or HTTP).
    fn backlog(&self) -> Vec<crate::backlog::Backlog> {
        Vec::new()
    }

    /// Stops the connector once every subscription's pump finished: flush producers, close
    /// connections, let listeners answer what they still hold.
    async fn stop(&self) {}

    /// The connections of the socket this connector serves, for a connector that listens (the
    /// HTTP ingress); `None` for one that connects out.
    fn listener_counts(&self) -> Option<ListenerCounts> {
        None
    }
}

/// A source opened by [`Connector::reader`].
pub struct Reader {
    /// The messages.
    pub source: Box<dyn Source>,
    /// Whether the broker keeps messages in a log read by position (Kafka): a message passed
    /// over must be acknowledged to read on, and stays in the log; elsewhere a message passed
    /// over is released and stays for the next reader.
    pub positional: bool,
}

/// The connections of a listening socket: open now, and refused so far because the listener was
/// at its `max_connections`; and the requests it answered, by status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListenerCounts {
    /// Connections open now.
    pub open: u64,
    /// Connections refused since the start, because `max_connections` were open.
    pub refused: u64,
    /// Requests answered since the start, by HTTP status code, in code order.
    pub requests: Vec<(u16, u64)>,
}

/// An error of a connector.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    /// The connector cannot do what was asked (an HTTP ingress has no sink, say).
    #[error("connector `{connector}` ({kind}) cannot {what}")]
    Unsupported {
        /// The connector's name.
        connector: String,
        /// Its kind.
        kind: &'static str,
        /// What it cannot do.
        what: &'static str,
    },
    /// Connecting, subscribing or publishing failed; trying again may work.
    #[error("connector `{connector}`: {message}")]
    Io {
        /// The connector's name.
        connector: String,
        /// What went wrong.
        message: String,
        /// The client library's error, when there is one.
        #[source]
        source: Option<BoxError>,
    },
    /// The destination cannot take the event as things are (an AMQP routing key no queue is
    /// bound to, a JetStream subject no stream captures): trying again at once does not help;
    /// an operator must create the destination.
    #[error("connector `{connector}`: {message}")]
    Permanent {
        /// The connector's name.
        connector: String,
        /// What went wrong, naming the destination.
        message: String,
        /// The client library's error, when there is one.
        #[source]
        source: Option<BoxError>,
    },
}

/// A client library's error, kept as the source of a [`ConnectorError`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

impl ConnectorError {
    /// A transient error of `connector`.
    pub fn io(connector: impl Into<String>, message: impl Into<String>) -> Self {
        ConnectorError::Io {
            connector: connector.into(),
            message: message.into(),
            source: None,
        }
    }

    /// A permanent error of `connector` (see [`ConnectorError::Permanent`]).
    pub fn permanent(connector: impl Into<String>, message: impl Into<String>) -> Self {
        ConnectorError::Permanent {
            connector: connector.into(),
            message: message.into(),
            source: None,
        }
    }

    /// The same error, keeping the client library's error as its source.
    pub fn caused_by(mut self, error: impl Into<BoxError>) -> Self {
        if let ConnectorError::Io { source, .. } | ConnectorError::Permanent { source, .. } =
            &mut self
        {
            *source = Some(error.into());
        }
        self
    }
}

/// What a caller does about a [`ConnectorError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// It may work if tried again (a connection dropped, a timeout, a broker nack).
    Transient,
    /// It will not work until something outside changes (see [`ConnectorError::Permanent`]).
    Permanent,
    /// The connector cannot do it at all.
    Unsupported,
}

impl ConnectorError {
    /// How to treat this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ConnectorError::Io { .. } => ErrorKind::Transient,
            ConnectorError::Permanent { .. } => ErrorKind::Permanent,
            ConnectorError::Unsupported { .. } => ErrorKind::Unsupported,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn recording() -> (AckHandle, Arc<Mutex<Vec<String>>>) {
        let log = Arc::new(Mutex::new(Vec::new()));
        let l = Arc::clone(&log);
        let handle = AckHandle::new(move |s| {
            l.lock().expect("lock").push(format!("{s:?}"));
        });
        (handle, log)
    }

    #[test]
    fn connector_errors_carry_kind_connector_and_source() {
        use std::error::Error as _;
        let e = ConnectorError::permanent("rabbit", "no queue `q`")
            .caused_by(std::io::Error::other("NOT_FOUND"));
        assert_eq!(e.kind(), ErrorKind::Permanent);
        assert_eq!(e.to_string(), "connector `rabbit`: no queue `q`");
        assert_eq!(
            e.source().map(ToString::to_string).as_deref(),
            Some("NOT_FOUND")
        );
        assert_eq!(ConnectorError::io("k", "down").kind(), ErrorKind::Transient);
        assert!(ConnectorError::io("k", "down").source().is_none());
    }

    #[test]
    fn dropped_handle_releases() {
        let (handle, log) = recording();
        drop(handle);
        assert_eq!(*log.lock().expect("lock"), vec!["Released".to_string()]);
    }

    #[test]
    fn a_split_handle_settles_once_with_the_strongest_outcome() {
        let (handle, log) = recording();
        let mut parts = handle.split(3);
        let c = parts.pop().expect("part");
        let b = parts.pop().expect("part");
        let a = parts.pop().expect("part");
        a.settle(Settlement::Delivered { reply: None });
        b.settle(Settlement::Failed {
            reason: "x".into(),
            timed_out: false,
        });
        assert!(
            log.lock().expect("lock").is_empty(),
            "not before the last part"
        );
        c.settle(Settlement::Delivered { reply: None });
        let log = log.lock().expect("lock");
        assert_eq!(log.len(), 1);
        assert!(log[0].starts_with("Failed"), "{log:?}");
    }

    #[test]
    fn a_dropped_part_releases_the_message() {
        let (handle, log) = recording();
        let mut parts = handle.split(2);
        parts
            .pop()
            .expect("part")
            .settle(Settlement::Delivered { reply: None });
        drop(parts);
        assert_eq!(*log.lock().expect("lock"), vec!["Released".to_string()]);
    }

    #[test]
    fn settled_handle_settles_once() {
        let (handle, log) = recording();
        handle.settle(Settlement::Delivered { reply: None });
        let log = log.lock().expect("lock");
        assert_eq!(log.len(), 1);
        assert!(log[0].starts_with("Delivered"));
    }
}

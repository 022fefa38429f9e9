//! The configuration of fnbroker: every type of the YAML file, in one place.
//!
//! [`load`](crate::config::load) reads a file, substitutes `${ENV_VAR}`s, parses it and validates
//! it without any IO, reporting every error it finds as `FILE:LINE:COL: message`. A [`Config`]
//! that came out of it is valid: every reference resolves, every duration, URL and address
//! parses, so the broker can use the accessors below without checking again.
//!
//! `fnbroker schema` prints the JSON Schema generated from these same types.

mod load;
mod values;

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;

pub use load::{ConfigError, ConfigErrors, load, load_str};
pub use values::{ByteSize, ConfDuration, Loc};

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields, title = "fnbroker configuration")]
pub struct Config {
    /// Named connections to brokers and listeners; each entry has exactly one kind.
    #[serde(default)]
    pub connectors: BTreeMap<String, Connector>,
    /// Named functions: how to invoke each one.
    #[serde(default)]
    pub functions: BTreeMap<String, Function>,
    /// Triggers route the events of a connector's topic, filtered, to a function.
    #[serde(default)]
    pub triggers: Vec<Trigger>,
    /// The admin endpoint (`/healthz`, `/readyz`, `/metrics`); off when absent.
    #[serde(default)]
    pub admin: Option<Admin>,
    /// How long a stopping fnbroker lets in-flight deliveries finish before it hands them back
    /// to their brokers for redelivery. Default `30s`.
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout: ConfDuration,
}

fn default_shutdown_timeout() -> ConfDuration {
    ConfDuration::from_secs(30)
}

/// A named connector: exactly one kind.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
#[schemars(deny_unknown_fields)]
pub enum Connector {
    /// CloudEvents over HTTP: webhooks and `curl`.
    Http(HttpConnector),
    /// Kafka (and Kafka-API brokers).
    Kafka(KafkaConnector),
    /// NATS core and JetStream.
    Nats(NatsConnector),
    /// AMQP 0-9-1 (RabbitMQ).
    Amqp(AmqpConnector),
    /// MQTT 3.1.1 and 5.
    Mqtt(MqttConnector),
}

impl Connector {
    /// The kind as written in the configuration.
    pub fn kind(&self) -> &'static str {
        match self {
            Connector::Http(_) => "http",
            Connector::Kafka(_) => "kafka",
            Connector::Nats(_) => "nats",
            Connector::Amqp(_) => "amqp",
            Connector::Mqtt(_) => "mqtt",
        }
    }

    /// Whether this kind can publish (replies and dead letters).
    pub fn can_publish(&self) -> bool {
        !matches!(self, Connector::Http(_))
    }
}

/// The HTTP ingress: accepts CloudEvents (binary, structured, batch) and plain POSTs.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct HttpConnector {
    /// The address to listen on, `host:port`.
    pub listen: Loc<String>,
    /// The largest request body accepted, in bytes or with a unit (`512KiB`, `1MiB`); larger
    /// requests get 413. Default 1 MiB.
    #[serde(default = "default_max_body")]
    pub max_body: ByteSize,
}

fn default_max_body() -> ByteSize {
    ByteSize::new(1024 * 1024)
}

/// A Kafka connection.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct KafkaConnector {
    /// Bootstrap brokers, `host:port`.
    pub brokers: Vec<String>,
    /// The default consumer group of this connector's triggers.
    #[serde(default)]
    pub group: Option<String>,
    /// How often the offsets of finished messages are committed (also on every rebalance and at
    /// shutdown). Default `1s`.
    #[serde(default = "default_commit_interval")]
    pub commit_interval: ConfDuration,
    /// librdkafka settings passed through as they are, to the consumers and the producer
    /// (security settings included). They win over fnbroker's defaults, e.g.
    /// `auto.offset.reset: latest` (the default for a new group is `earliest`).
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

fn default_commit_interval() -> ConfDuration {
    ConfDuration::from_secs(1)
}

/// A NATS connection.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct NatsConnector {
    /// The server URL, `nats://host:port` (several separated by commas).
    pub url: Loc<String>,
    /// The user name, if the server wants one.
    #[serde(default)]
    pub user: Option<String>,
    /// The password (use `${ENV}`).
    #[serde(default)]
    pub password: Option<String>,
    /// A token, if the server wants one (use `${ENV}`).
    #[serde(default)]
    pub token: Option<String>,
    /// How replies and dead letters are published: `core` (default; flushed, at-most-once) or
    /// `jetstream` (resolves on the stream's publish acknowledgement).
    #[serde(default)]
    pub publish: NatsPublish,
}

/// How a NATS connector publishes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NatsPublish {
    /// A core NATS publish, flushed to the server.
    #[default]
    Core,
    /// A JetStream publish, confirmed by the stream.
    Jetstream,
}

/// An AMQP 0-9-1 connection.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct AmqpConnector {
    /// The server URL, `amqp://user:pass@host:port/vhost` (`%2f` is the default vhost).
    pub url: Loc<String>,
    /// The exchange replies and dead letters are published to, their `topic` being the routing
    /// key. Default: the default exchange (`""`), so `topic: orders` lands in the queue `orders`.
    #[serde(default)]
    pub exchange: Option<String>,
    /// The prefix of the CloudEvents attribute headers written (`ce-` by default; `ce-`, `ce_`,
    /// `cloudEvents_` and `cloudEvents:` are all read).
    #[serde(default = "default_header_prefix")]
    pub header_prefix: String,
    /// The connection name shown by the broker (`rabbitmqctl list_connections`). Default
    /// `fnbroker-<connector name>`; the publisher's connection adds `-pub`.
    #[serde(default)]
    pub connection_name: Option<String>,
}

fn default_header_prefix() -> String {
    "ce-".to_string()
}

/// An MQTT connection.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct MqttConnector {
    /// The broker URL, `mqtt://host:port` (`tcp://` is the same).
    pub url: Loc<String>,
    /// The client id. Default `fnbroker-<connector>-<hostname>` (`HOSTNAME`, else the kernel's
    /// host name): stable across restarts, so the broker keeps the session (and the messages it
    /// queued for it), and different on every replica, so replicas sharing one configuration do
    /// not knock each other off the broker. Replies and dead letters use a second connection,
    /// `<client_id>-pub`.
    #[serde(default)]
    pub client_id: Option<String>,
    /// The protocol version: 5 (default) or 3 (3.1.1).
    #[serde(default)]
    pub version: Option<Loc<u8>>,
    /// The user name, if the broker wants one.
    #[serde(default)]
    pub username: Option<String>,
    /// The password (use `${ENV}`).
    #[serde(default)]
    pub password: Option<String>,
    /// How long the broker keeps the session (subscriptions and queued QoS 1/2 messages) while
    /// fnbroker is away (MQTT 5). Default `1h`.
    #[serde(default = "default_session_expiry")]
    pub session_expiry: ConfDuration,
    /// The keep-alive interval. Default `30s`.
    #[serde(default = "default_keep_alive")]
    pub keep_alive: ConfDuration,
    /// The QoS of replies and dead letters published through this connector: 0, 1 (default) or 2.
    #[serde(default = "default_publish_qos")]
    pub publish_qos: u8,
}

fn default_session_expiry() -> ConfDuration {
    ConfDuration::from_secs(3600)
}
fn default_keep_alive() -> ConfDuration {
    ConfDuration::from_secs(30)
}
fn default_publish_qos() -> u8 {
    1
}

/// A named function: how to invoke it (`http` or `exec`), and limits.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Function {
    /// Invoke over HTTP: POST the event to a URL.
    #[serde(default)]
    pub http: Option<HttpFunction>,
    /// Invoke a command per event, as OpenFaaS's classic watchdog does.
    #[serde(default)]
    pub exec: Option<ExecFunction>,
    /// The time one attempt may take. Default `30s`.
    #[serde(default)]
    pub timeout: Option<ConfDuration>,
    /// The most calls in flight to this function, all triggers together. Default 64.
    #[serde(default = "default_concurrency")]
    pub concurrency: Loc<usize>,
}

fn default_concurrency() -> Loc<usize> {
    Loc::new(64)
}

impl Function {
    /// The per-attempt timeout of this function.
    pub fn timeout(&self) -> std::time::Duration {
        self.timeout
            .as_ref()
            .map_or(std::time::Duration::from_secs(30), ConfDuration::get)
    }
}

/// An HTTP function endpoint.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct HttpFunction {
    /// The URL the event is POSTed to.
    pub url: Loc<String>,
    /// The CloudEvents HTTP content mode: `binary` (default) or `structured`.
    #[serde(default)]
    pub mode: ContentMode,
    /// Static headers sent with every request (tokens from `${ENV}`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// A CloudEvents content mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ContentMode {
    /// Attributes in headers, data as the body.
    #[default]
    Binary,
    /// The whole event as `application/cloudevents+json`.
    Structured,
}

/// A command run once per event.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct ExecFunction {
    /// The program and its arguments. The event's data arrives on stdin, its attributes as
    /// `CE_<NAME>` environment variables; stdout is the reply; a non-zero exit is a failure.
    pub command: Loc<Vec<String>>,
    /// Extra environment variables for the command.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// A trigger: where events come from, which ones, and which function gets them.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Trigger {
    /// A unique name, used in logs, metrics and dead letters.
    pub name: Loc<String>,
    /// The connector and topic the events come from.
    pub from: TriggerSource,
    /// Attributes given to messages that are not CloudEvents.
    #[serde(default)]
    pub event: Option<EventDefaults>,
    /// Which events this trigger takes; all when absent.
    #[serde(default)]
    pub filter: Option<Filter>,
    /// The function that gets the events.
    pub to: Loc<String>,
    /// Retries, backoff, ordering and concurrency.
    #[serde(default)]
    pub delivery: Delivery,
    /// Where an event goes when its delivery failed for good.
    #[serde(default)]
    pub dead_letter: Option<Destination>,
    /// Where the function's reply goes.
    #[serde(default)]
    pub reply: Option<Destination>,
}

/// The source of a trigger's events.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct TriggerSource {
    /// The connector's name.
    pub connector: Loc<String>,
    /// The protocol's address: Kafka topic, NATS subject (`*`, `>`), MQTT topic filter (`+`,
    /// `#`), HTTP path (`/orders`).
    #[serde(default)]
    pub topic: Option<Loc<String>>,
    /// AMQP only: the queue.
    #[serde(default)]
    pub queue: Option<Loc<String>>,
    /// NATS only: the JetStream stream (without it, a core NATS subscription).
    #[serde(default)]
    pub stream: Option<Loc<String>>,
    /// MQTT only: the QoS of the subscription: 0 (at-most-once), 1 (default) or 2.
    #[serde(default)]
    pub qos: Option<Loc<u8>>,
    /// Kafka, NATS and MQTT: the consumer group, queue group, durable name or `$share` group:
    /// replicas that share it share the work.
    #[serde(default)]
    pub group: Option<Loc<String>>,
    /// HTTP only: answer the request after the delivery, with the function's reply.
    #[serde(default)]
    pub sync: Option<Loc<bool>>,
    /// JetStream only: create the stream (capturing `topic`) and the durable consumer when they
    /// are missing. Without it a missing stream is an error at start.
    #[serde(default)]
    pub create: Option<Loc<bool>>,
    /// AMQP only: declare the queue (and bind it to an exchange) instead of using an existing one.
    #[serde(default)]
    pub declare: Option<Loc<AmqpDeclare>>,
}

/// How an AMQP source declares its queue.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct AmqpDeclare {
    /// An exchange to declare and bind the queue to; none: the queue only.
    #[serde(default)]
    pub exchange: Option<String>,
    /// The exchange type: `direct`, `fanout`, `topic` (default) or `headers`.
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    /// The binding's routing key (default `#`).
    #[serde(default)]
    pub routing_key: Option<String>,
    /// Whether the queue and exchange survive a broker restart. Default true.
    #[serde(default = "default_true")]
    pub durable: bool,
    /// Queue arguments (`x-dead-letter-exchange`, `x-queue-type`, ...).
    #[serde(default)]
    pub arguments: BTreeMap<String, serde_json::Value>,
}

impl Eq for AmqpDeclare {}

fn default_true() -> bool {
    true
}

impl TriggerSource {
    /// The topic, or the empty string.
    pub fn topic(&self) -> &str {
        self.topic.as_ref().map_or("", |t| t.as_str())
    }

    /// The group, if one is given.
    pub fn group(&self) -> Option<&str> {
        self.group.as_ref().map(|g| g.as_str())
    }

    /// HTTP: whether the answer waits for the delivery.
    pub fn sync(&self) -> bool {
        self.sync.as_ref().is_some_and(|s| **s)
    }

    /// JetStream: whether a missing stream is created.
    pub fn create(&self) -> bool {
        self.create.as_ref().is_some_and(|c| **c)
    }

    /// The keys of `from` that are set, with their locations, besides `connector` and `topic`.
    pub fn protocol_keys(&self) -> Vec<(&'static str, u64, u64)> {
        fn at<T>(key: &'static str, v: &Option<Loc<T>>) -> Option<(&'static str, u64, u64)> {
            v.as_ref().map(|l| (key, l.line(), l.column()))
        }
        [
            at("queue", &self.queue),
            at("stream", &self.stream),
            at("qos", &self.qos),
            at("group", &self.group),
            at("sync", &self.sync),
            at("create", &self.create),
            at("declare", &self.declare),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

/// Attributes for messages that are not CloudEvents.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct EventDefaults {
    /// The `type` given to such messages (default `fnbroker.<kind>.message`).
    #[serde(rename = "type", default)]
    pub ty: Option<String>,
}

/// A filter, in the dialects of the CloudEvents Subscriptions API. A missing attribute does not
/// match.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
#[schemars(deny_unknown_fields)]
pub enum Filter {
    /// Every listed attribute equals the value.
    Exact(BTreeMap<String, String>),
    /// Every listed attribute starts with the value.
    Prefix(BTreeMap<String, String>),
    /// Every listed attribute ends with the value.
    Suffix(BTreeMap<String, String>),
    /// Every nested filter matches.
    All(Vec<Filter>),
    /// At least one nested filter matches.
    Any(Vec<Filter>),
    /// The nested filter does not match.
    Not(Box<Filter>),
    /// A CloudEvents SQL expression.
    Sql(Loc<String>),
}

/// How a trigger delivers: retries, backoff, timeout, ordering, concurrency.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Delivery {
    /// Extra attempts after the first one. Default 3.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// How the delay between attempts grows. Default `exponential` (with full jitter).
    #[serde(default)]
    pub backoff: Backoff,
    /// The first delay. Default `100ms`.
    #[serde(default = "default_delay")]
    pub delay: ConfDuration,
    /// The longest delay (also caps `Retry-After`). Default `10s`.
    #[serde(default = "default_max_delay")]
    pub max_delay: ConfDuration,
    /// The time one attempt may take; the function's `timeout` when absent.
    #[serde(default)]
    pub timeout: Option<ConfDuration>,
    /// One message at a time per ordering key (Kafka partition, NATS subject, MQTT topic).
    #[serde(default)]
    pub ordered: bool,
    /// The most messages of this trigger in flight. Default 256.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: Loc<usize>,
}

impl Default for Delivery {
    fn default() -> Self {
        Self {
            retries: default_retries(),
            backoff: Backoff::default(),
            delay: default_delay(),
            max_delay: default_max_delay(),
            timeout: None,
            ordered: false,
            max_in_flight: default_max_in_flight(),
        }
    }
}

fn default_retries() -> u32 {
    3
}
fn default_delay() -> ConfDuration {
    ConfDuration::from_millis(100)
}
fn default_max_delay() -> ConfDuration {
    ConfDuration::from_secs(10)
}
fn default_max_in_flight() -> Loc<usize> {
    Loc::new(256)
}

/// How the delay between attempts grows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Backoff {
    /// `delay * 2^attempt`, capped at `max_delay`, with full jitter.
    #[default]
    Exponential,
    /// `delay * attempt`, capped at `max_delay`.
    Linear,
    /// Always `delay`.
    Constant,
}

/// A destination for dead letters or replies: a connector's topic, or a function.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Destination {
    /// Publish through this connector...
    #[serde(default)]
    pub connector: Option<Loc<String>>,
    /// ...to this topic (subject, routing key).
    #[serde(default)]
    pub topic: Option<String>,
    /// Or deliver to this function.
    #[serde(default)]
    pub function: Option<Loc<String>>,
    /// AMQP: the exchange to publish to, instead of the connector's `exchange`.
    #[serde(default)]
    pub exchange: Option<String>,
}

/// The admin endpoint.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Admin {
    /// The address to listen on, `host:port`.
    pub listen: Loc<String>,
}

/// The JSON Schema of the configuration, as `fnbroker schema` prints it.
pub fn json_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(Config)).unwrap_or_default()
}

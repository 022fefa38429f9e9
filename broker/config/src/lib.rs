//! The configuration of fnbroker: every type of the YAML file, in one place.
//!
//! [`load`] reads a file, substitutes `${ENV_VAR}`s, parses it and validates
//! it without any IO, reporting every error it finds as `FILE:LINE:COL: message`. A [`Config`]
//! that came out of it is valid: every reference resolves, every duration, URL and address
//! parses, so the broker can use the accessors below without checking again.
//!
//! The core types hold what every trigger has; each connector kind's settings (its connection,
//! the keys its triggers' `from` and destinations add) belong to its crate and come in through
//! the [`Registry`]: they are parsed into the crate's types at load. So do the settings of each
//! function kind (`http`, `exec`, a platform's), which belong to the kind's plugin. The value types those
//! settings are made of ([`ConfDuration`], [`Loc`], [`Destination`]...) belong to the connector
//! SDK (`fnbroker_core::values`) and are re-exported here.
//!
//! `fnbroker schema` prints the JSON Schema generated from these same types.

#![forbid(unsafe_code)]
#![deny(unreachable_pub)]
#![warn(missing_docs)]

mod discover;
mod load;
mod substitute;
mod validate;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use fnbroker_core::registry::{Registry, Settings};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

pub use discover::{Discover, OpenFaasDiscovery};
pub use fnbroker_core::values::{
    self, ByteSize, ConfDuration, ConnectorKeys, Destination, Loc, TriggerSource,
};
pub use load::{ConfigError, ConfigErrors, load, load_str};

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields, title = "fnbroker configuration")]
pub struct Config {
    /// Named connections to brokers and listeners; each entry has exactly one kind.
    #[serde(default)]
    pub connectors: BTreeMap<String, ConnectorConfig>,
    /// Named functions: how to invoke each one.
    #[serde(default)]
    pub functions: BTreeMap<String, Function>,
    /// Triggers route the events of a connector's topic, filtered, to a function.
    #[serde(default)]
    pub triggers: Vec<Trigger>,
    /// Functions found on a platform (an OpenFaaS gateway's `topic` annotations), each with a
    /// trigger made and dropped as the platform's functions change.
    #[serde(default)]
    pub discover: Vec<Discover>,
    /// The admin endpoint (`/healthz`, `/readyz`, `/metrics`); off when absent.
    #[serde(default)]
    pub admin: Option<Admin>,
    /// How long a stopping fnbroker lets in-flight deliveries finish before it hands them back
    /// to their brokers for redelivery. Default `30s`.
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout: ConfDuration,
    /// OpenTelemetry traces, exported by OTLP. Off when absent (unless the `OTEL_EXPORTER_OTLP_*`
    /// environment variables name an endpoint).
    #[serde(default)]
    pub telemetry: Option<Telemetry>,
}

/// OpenTelemetry traces: a span per event and trigger, a child per delivery attempt and per
/// reply or dead-letter publish, exported by OTLP. The standard `OTEL_*` environment variables
/// fill in what is not written here.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Telemetry {
    /// Where spans are exported.
    #[serde(default)]
    pub otlp: Option<Otlp>,
    /// The `service.name` of the spans. Default: `OTEL_SERVICE_NAME`, else `fnbroker`.
    #[serde(default)]
    pub service_name: Option<String>,
    /// The share of the traces that start here which are kept, 0 to 1; a trace that arrives with
    /// a sampled parent is always kept. Default: `OTEL_TRACES_SAMPLER_ARG`, else 1.
    #[serde(default)]
    pub sample_ratio: Option<f64>,
}

/// An OTLP exporter.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Otlp {
    /// The collector: `http://collector:4318` for `http/protobuf` (`/v1/traces` is added when
    /// the URL has no path), `http://collector:4317` for `grpc`. Default:
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT`.
    #[serde(default)]
    pub endpoint: Option<Loc<String>>,
    /// `http/protobuf` or `grpc`. Default: `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` or
    /// `OTEL_EXPORTER_OTLP_PROTOCOL`, else `http/protobuf`.
    #[serde(default)]
    pub protocol: Option<OtlpProtocol>,
    /// Headers sent with every export (an API key of a tracing service).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// How spans travel to the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
pub enum OtlpProtocol {
    /// Protobuf over HTTP (port 4318).
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    /// gRPC (port 4317).
    #[serde(rename = "grpc")]
    Grpc,
}

fn default_shutdown_timeout() -> ConfDuration {
    ConfDuration::from_secs(30)
}

/// A named connector: exactly one kind (`kafka: {...}`), whose settings the connector crate of
/// that kind defines (see `fnbroker_core::registry`). Parsed into the crate's types at load.
pub type ConnectorConfig = KindConfig;

/// A function's kind as written (`http: { url: ... }`), with its settings parsed into the
/// kind's type at load (see `fnbroker_core::function`).
pub type FunctionKindConfig = KindConfig;

/// A kind and its settings as written (`kafka: {...}`, `http: {...}`), the settings parsed into
/// the kind's type at load.
#[derive(Debug, Clone)]
pub struct KindConfig {
    kind: String,
    raw: serde_json::Value,
    settings: Option<Settings>,
}

impl KindConfig {
    /// The kind as written in the configuration.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The settings in the plugin's type; `None` before validation (and for an unknown kind).
    pub fn settings(&self) -> Option<&Settings> {
        self.settings.as_ref()
    }

    /// The settings as written.
    pub fn raw(&self) -> &serde_json::Value {
        &self.raw
    }

    pub(crate) fn set_settings(&mut self, settings: Settings) {
        self.settings = Some(settings);
    }
}

impl<'de> Deserialize<'de> for KindConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = KindConfig;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a connector kind and its settings (`kafka: { brokers: [...] }`)")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let Some((kind, raw)) = map.next_entry::<String, serde_json::Value>()? else {
                    return Err(de::Error::custom("a connector needs a kind"));
                };
                if map.next_key::<de::IgnoredAny>()?.is_some() {
                    return Err(de::Error::custom(ONE_KIND));
                }
                Ok(KindConfig {
                    kind,
                    raw,
                    settings: None,
                })
            }
        }
        d.deserialize_map(V)
    }
}

/// Two entries (a connector, a function's kind) are equal when their kind and settings as written are (after
/// substitution): the settings parsed from them follow.
impl PartialEq for KindConfig {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind && self.raw == other.raw
    }
}

/// The message for a mapping that gives two kinds where one is expected.
pub(crate) const ONE_KIND: &str = "only one kind may be given here";

impl JsonSchema for KindConfig {
    fn schema_name() -> Cow<'static, str> {
        "Connector".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        // Replaced by the registry's kinds in [`json_schema`].
        json_schema!({ "type": "object", "minProperties": 1, "maxProperties": 1 })
    }
}

/// A named function: how to invoke it (exactly one kind: `http`, `exec` or a platform's, whose
/// settings the kind's plugin defines, see `fnbroker_core::function`), and limits.
#[derive(Debug, Clone, PartialEq)]
pub struct Function {
    /// The kinds as written (a valid entry has exactly one).
    kinds: Vec<FunctionKindConfig>,
    /// The time one attempt may take. Default `30s`.
    pub timeout: Option<ConfDuration>,
    /// The most calls in flight to this function, all triggers together. Default 64.
    pub concurrency: Loc<usize>,
    /// At most this many calls per second (all triggers together); a call over the rate waits
    /// (its delivery holds, consumption slows) instead of failing.
    pub rate_limit: Option<RateLimit>,
    /// Stops calling a function that fails: deliveries wait while the breaker is open, then one
    /// call probes it.
    pub circuit_breaker: Option<CircuitBreaker>,
}

/// The keys every function has besides its kind.
const FUNCTION_KEYS: [&str; 4] = ["timeout", "concurrency", "rate_limit", "circuit_breaker"];

impl<'de> Deserialize<'de> for Function {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Function;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a function's kind and its settings (`http: { url: ... }`), and limits")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut function = Function {
                    kinds: Vec::with_capacity(1),
                    timeout: None,
                    concurrency: default_concurrency(),
                    rate_limit: None,
                    circuit_breaker: None,
                };
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "timeout" => function.timeout = map.next_value()?,
                        "concurrency" => function.concurrency = map.next_value()?,
                        "rate_limit" => function.rate_limit = map.next_value()?,
                        "circuit_breaker" => function.circuit_breaker = map.next_value()?,
                        // Any other key names a kind; validation tells an unknown one apart.
                        _ => function.kinds.push(KindConfig {
                            kind: key,
                            raw: map.next_value()?,
                            settings: None,
                        }),
                    }
                }
                Ok(function)
            }
        }
        d.deserialize_map(V)
    }
}

impl JsonSchema for Function {
    fn schema_name() -> Cow<'static, str> {
        "Function".into()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        // The kinds are added from the registry in [`json_schema`].
        json_schema!({
            "type": "object",
            "description": "A named function: exactly one kind, and limits.",
            "properties": {
                "timeout": generator.subschema_for::<Option<ConfDuration>>(),
                "concurrency": generator.subschema_for::<usize>(),
                "rate_limit": generator.subschema_for::<Option<RateLimit>>(),
                "circuit_breaker": generator.subschema_for::<Option<CircuitBreaker>>(),
            },
            "additionalProperties": false
        })
    }
}

impl Function {
    /// Every kind this entry names (a valid configuration names exactly one).
    pub fn kinds(&self) -> &[FunctionKindConfig] {
        &self.kinds
    }

    /// The function's kind; `None` only for an entry that did not pass validation.
    pub fn kind(&self) -> Option<&FunctionKindConfig> {
        self.kinds.first()
    }

    pub(crate) fn kinds_mut(&mut self) -> &mut [FunctionKindConfig] {
        &mut self.kinds
    }

    /// The per-attempt timeout of this function.
    pub fn timeout(&self) -> std::time::Duration {
        self.timeout
            .as_ref()
            .map_or(std::time::Duration::from_secs(30), ConfDuration::get)
    }
}

/// A function's rate limit.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RateLimit {
    /// Calls per second, sustained.
    pub per_second: Loc<u32>,
    /// Calls that may go at once after a quiet spell. Default: `per_second`.
    #[serde(default)]
    pub burst: Option<Loc<u32>>,
}

/// A function's circuit breaker: when at least `min_calls` were made in the last `window` and
/// `failure_ratio` of them failed on the function's side (unreachable, timed out, 408, 429, 5xx,
/// a failed command), no call is made for `open_for`; then one call probes.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct CircuitBreaker {
    /// The share of failed calls that opens the breaker, above 0 and at most 1. Default 0.5.
    #[serde(default = "default_failure_ratio")]
    pub failure_ratio: Loc<f64>,
    /// The fewest calls in the window before the ratio counts. Default 20.
    #[serde(default = "default_min_calls")]
    pub min_calls: Loc<u32>,
    /// How far back calls count. Default `30s`.
    #[serde(default = "default_breaker_window")]
    pub window: ConfDuration,
    /// How long the breaker stays open before a probe. Default `30s`.
    #[serde(default = "default_breaker_window")]
    pub open_for: ConfDuration,
}

fn default_failure_ratio() -> Loc<f64> {
    Loc::new(0.5)
}

fn default_min_calls() -> Loc<u32> {
    Loc::new(20)
}

fn default_breaker_window() -> ConfDuration {
    ConfDuration::from_secs(30)
}

pub(crate) fn default_concurrency() -> Loc<usize> {
    Loc::new(64)
}

/// A trigger: where events come from, which ones, and which function gets them.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
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
    /// Set on the trigger fnbroker adds to consume another's `retry_topic` (never read from
    /// the file).
    #[serde(skip)]
    #[schemars(skip)]
    pub retry_consumer: bool,
}

/// Attributes for messages that are not CloudEvents.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct EventDefaults {
    /// The `type` given to such messages (default `fnbroker.<kind>.message`).
    #[serde(rename = "type", default)]
    pub ty: Option<String>,
}

/// A filter, in the dialects of the CloudEvents Subscriptions API. A missing attribute does not
/// match.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
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
    /// A CEL (Common Expression Language) expression over `event`: its attributes
    /// (`event.type`) and its data (`event.data`, parsed JSON).
    Cel(Loc<String>),
}

impl Filter {
    /// The filter as it was written (`{"sql": "..."}`, `{"all": [...]}`), for views and logs.
    pub fn written(&self) -> serde_json::Value {
        use serde_json::json;
        let pairs = |m: &BTreeMap<String, String>| json!(m);
        let list =
            |fs: &[Filter]| serde_json::Value::Array(fs.iter().map(Filter::written).collect());
        match self {
            Filter::Exact(m) => json!({ "exact": pairs(m) }),
            Filter::Prefix(m) => json!({ "prefix": pairs(m) }),
            Filter::Suffix(m) => json!({ "suffix": pairs(m) }),
            Filter::All(fs) => json!({ "all": list(fs) }),
            Filter::Any(fs) => json!({ "any": list(fs) }),
            Filter::Not(f) => json!({ "not": f.written() }),
            Filter::Sql(text) => json!({ "sql": text.as_str() }),
            Filter::Cel(text) => json!({ "cel": text.as_str() }),
        }
    }
}

/// How a trigger delivers: retries, backoff, timeout, ordering, concurrency.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
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
    /// Collect events into one call of the function (`application/cloudevents-batch+json` over
    /// HTTP, a JSON array for `exec` and `lambda`). Off when absent.
    #[serde(default)]
    pub batch: Option<Batch>,
    /// Keep retry state in a topic instead of in memory: after a failed attempt the event is
    /// moved there (with `retryattempts` and `retryat`) and its source message acknowledged,
    /// so a restart or a rebalance loses no retry and the source never waits for one.
    #[serde(default)]
    pub retry_topic: Option<RetryTopic>,
    /// Acknowledge without a call an event whose (`source`, `id`) this trigger delivered within
    /// `window`: a broker's redelivery after a crash, a webhook sender's retry. The mark is
    /// written only once the function succeeded. Off when absent.
    #[serde(default)]
    pub dedup: Option<Dedup>,
}

/// How a trigger recognizes an event it delivered already.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Dedup {
    /// How long a delivered event's (`source`, `id`) is remembered. Default `10m`.
    #[serde(default = "default_dedup_window")]
    pub window: ConfDuration,
    /// Where: `memory` (this replica only, at most `max_entries`, lost on restart), or
    /// `{ connector: NAME }`, a Redis or PostgreSQL connector every replica shares, which also
    /// outlives a restart. Default `memory`.
    #[serde(default)]
    pub store: DedupStore,
    /// The most events the `memory` store remembers; the oldest are forgotten first. Default
    /// 100000.
    #[serde(default = "default_dedup_entries")]
    pub max_entries: usize,
}

fn default_dedup_window() -> ConfDuration {
    ConfDuration::from_secs(600)
}

fn default_dedup_entries() -> usize {
    100_000
}

/// Where deduplication marks are kept: `memory`, or `{ connector: NAME }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum DedupStore {
    /// `memory`: in this replica.
    Memory(MemoryStore),
    /// `{ connector: NAME }`: in a store the replicas share.
    Shared(SharedStore),
}

impl Default for DedupStore {
    fn default() -> Self {
        Self::Memory(MemoryStore::Memory)
    }
}

/// The word `memory`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MemoryStore {
    /// In this replica.
    Memory,
}

/// A store the replicas share.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct SharedStore {
    /// A Redis or PostgreSQL connector.
    pub connector: String,
}

/// Where a trigger keeps its retries: a topic of a connector that holds messages (Kafka, NATS
/// with JetStream, AMQP, MQTT). fnbroker publishes each event that is to be tried again there
/// and consumes it back when it is due.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RetryTopic {
    /// The connector.
    pub connector: Loc<String>,
    /// The topic (Kafka topic, NATS subject, AMQP queue, MQTT topic).
    pub topic: String,
}

/// How a trigger collects events into one call of its function. A batch goes when it holds
/// `max_events`, when the next event would take it over `max_bytes`, or `max_wait` after its
/// first event, whichever comes first. The function's answer may name failed events
/// (`{"batchItemFailures": [{"itemIdentifier": "<id>"}]}`): only those are retried.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
pub struct Batch {
    /// The most events in one call (1 to 10000). Default 10.
    #[serde(default = "default_batch_events")]
    pub max_events: Loc<usize>,
    /// The most bytes of data in one call; an event larger than this goes alone. Default
    /// `1MiB`.
    #[serde(default = "default_batch_bytes")]
    pub max_bytes: ByteSize,
    /// How long the first event of a batch waits for others. Default `20ms`.
    #[serde(default = "default_batch_wait")]
    pub max_wait: ConfDuration,
}

impl Default for Batch {
    fn default() -> Self {
        Self {
            max_events: default_batch_events(),
            max_bytes: default_batch_bytes(),
            max_wait: default_batch_wait(),
        }
    }
}

fn default_batch_events() -> Loc<usize> {
    Loc::new(10)
}
fn default_batch_bytes() -> ByteSize {
    ByteSize::new(1024 * 1024)
}
fn default_batch_wait() -> ConfDuration {
    ConfDuration::from_millis(20)
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
            batch: None,
            retry_topic: None,
            dedup: None,
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

/// The admin endpoint.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Admin {
    /// The address to listen on, `host:port`.
    pub listen: Loc<String>,
    /// A bearer token every request but `/healthz` and `/readyz` must carry
    /// (`Authorization: Bearer <token>`; use `${ENV}` or `${file:PATH}`). Without it, listening
    /// beyond loopback is warned about at start.
    #[serde(default)]
    pub token: Option<String>,
    /// Serve the admin endpoint over HTTPS: `cert`, `key`, and `client_ca` for mutual TLS.
    #[serde(default)]
    pub tls: Option<fnbroker_core::tls::ServerTls>,
    /// A subscription with messages waiting at its broker and none taken for this long is
    /// reported stuck (`/readyz` detail, `fnbroker_consumer_stalled`). Default `60s`.
    #[serde(default = "default_stuck_after")]
    pub stuck_after: ConfDuration,
}

fn default_stuck_after() -> ConfDuration {
    ConfDuration::from_secs(60)
}

impl Admin {
    /// The admin listener's base URL as another host may use it (`http://127.0.0.1:9464`, `https`
    /// with `tls`); `None` when it listens on every address (`0.0.0.0`), which names no host.
    pub fn base_url(&self) -> Option<String> {
        let addr: std::net::SocketAddr = self.listen.parse().ok()?;
        if addr.ip().is_unspecified() {
            return None;
        }
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        Some(format!("{scheme}://{addr}"))
    }
}

/// The JSON Schema of the configuration, as `fnbroker schema` prints it: the core types, with
/// each registered kind's settings under `connectors`, and its keys in `from` and destinations.
pub fn json_schema(registry: &Registry) -> serde_json::Value {
    let mut generator = SchemaGenerator::default();
    let kinds: Vec<_> = registry
        .kinds()
        .map(|k| (k, k.schemas(&mut generator).map(Schema::to_value)))
        .collect();
    let functions: Vec<_> = registry
        .functions()
        .map(|k| (k, k.schema(&mut generator).to_value()))
        .collect();
    let mut root = generator.root_schema_for::<Config>().to_value();
    root["title"] = "fnbroker configuration".into();
    for (k, settings) in functions {
        let mut settings = settings;
        if settings.get("$ref").is_none() {
            settings["description"] = k.about().into();
        }
        root["$defs"]["Function"]["properties"][k.kind()] = settings;
    }
    let defs = root["$defs"].clone();
    let resolve = |s: &serde_json::Value| -> serde_json::Value {
        match s.get("$ref").and_then(|r| r.as_str()) {
            Some(r) => defs[r.trim_start_matches("#/$defs/")].clone(),
            None => s.clone(),
        }
    };
    let connector: Vec<serde_json::Value> = kinds
        .iter()
        .map(|(k, [settings, _, _])| {
            let mut settings = settings.clone();
            if settings.get("$ref").is_none() {
                settings["description"] = k.about().into();
            }
            serde_json::json!({
                "type": "object",
                "description": k.about(),
                "properties": { k.kind(): settings },
                "required": [k.kind()],
                "additionalProperties": false
            })
        })
        .collect();
    root["$defs"]["Connector"] = serde_json::json!({
        "description": "A named connector: exactly one kind.",
        "oneOf": connector
    });
    // A `from` or a destination may carry the keys of any kind: which kind is known only from
    // the connector it names, so the schema takes the union and `validate` checks the rest.
    for (def, which) in [("TriggerSource", 1), ("Destination", 2)] {
        for (k, schemas) in &kinds {
            let keys = resolve(&schemas[which]);
            let Some(props) = keys.get("properties").and_then(|p| p.as_object()) else {
                continue;
            };
            for (key, schema) in props {
                let slot = &mut root["$defs"][def]["properties"][key];
                let about = schema
                    .get("description")
                    .and_then(|d| d.as_str())
                    .unwrap_or_default();
                let line = format!("{}: {about}", k.kind());
                if slot.is_null() {
                    *slot = schema.clone();
                    slot["description"] = line.into();
                } else {
                    let before = slot["description"].as_str().unwrap_or_default().to_string();
                    slot["description"] = format!("{before}\n{line}").into();
                    let mut without = slot.clone();
                    without.as_object_mut().map(|o| o.remove("description"));
                    let mut theirs = schema.clone();
                    theirs.as_object_mut().map(|o| o.remove("description"));
                    if without != theirs {
                        let description = slot["description"].clone();
                        *slot = serde_json::json!({ "anyOf": [without, theirs], "description": description });
                    }
                }
            }
        }
    }
    root
}

#[cfg(test)]
mod registry_tests {
    //! A connector kind as a new crate would add it, and a function kind as a new platform
    //! module would, through the whole configuration.
    use std::sync::Arc;

    use fnbroker_core::binding::Sample;
    use fnbroker_core::function::{self, BuildError, FunctionPlugin, FunctionUse, InvokeContext};
    use fnbroker_core::invoke::Invoker;
    use fnbroker_core::registry::{
        ConnectorPlugin, Kind, NoSettings, Registry, Report, Settings, SourceUse,
    };
    use fnbroker_core::{Connector, ConnectorError, Event, Origin};
    use schemars::JsonSchema;

    /// A connector kind as a new crate would add it: its types, its checks, one registration.
    struct Echo;

    #[derive(Debug, Clone, serde::Deserialize, JsonSchema)]
    struct EchoSettings {
        /// Where to echo.
        url: String,
        #[serde(default)]
        lanes: u8,
    }

    #[derive(Debug, Clone, serde::Deserialize, JsonSchema)]
    struct EchoSource {
        /// Which lane.
        lane: u8,
    }

    impl ConnectorPlugin for Echo {
        const KIND: &'static str = "echo";
        const ABOUT: &'static str = "Echoes.";
        type Settings = EchoSettings;
        type Source = EchoSource;
        type Destination = NoSettings;

        fn validate(settings: &EchoSettings, report: &Report<'_>) {
            report.url("url", &settings.url, &["echo"]);
        }

        fn validate_source(source: &EchoSource, from: &SourceUse<'_>, report: &Report<'_>) {
            from.require_topic(report);
            if source.lane > 3 {
                report.error(&["lane"], "`lane` must be 0 to 3");
            }
        }

        fn build(name: &str, _: &EchoSettings) -> Result<Arc<dyn Connector>, ConnectorError> {
            Err(ConnectorError::Unsupported {
                connector: name.to_string(),
                kind: "echo",
                what: "run in a unit test",
            })
        }

        fn decode_sample(
            _: &str,
            _: &EchoSettings,
            _: &Sample<'_>,
        ) -> Result<Vec<(Event, Origin)>, fnbroker_core::registry::SampleError> {
            Err("echo decodes nothing".into())
        }
    }

    /// A function kind as a platform module would add it.
    struct Call;

    #[derive(Debug, Clone, serde::Deserialize, JsonSchema)]
    struct CallSettings {
        /// Whom to call.
        number: String,
    }

    impl FunctionPlugin for Call {
        const KIND: &'static str = "call";
        const ABOUT: &'static str = "Calls.";
        type Settings = CallSettings;

        fn validate(settings: &CallSettings, _: &FunctionUse<'_>, report: &Report<'_>) {
            if !settings.number.starts_with('+') {
                report.error(&["number"], "`number` must start with `+`");
            }
        }

        fn takes_batches(_: &CallSettings) -> bool {
            false
        }

        fn view(settings: &CallSettings) -> serde_json::Value {
            serde_json::json!({ "number": settings.number })
        }

        fn build(_: &CallSettings, _: &InvokeContext) -> Result<Box<dyn Invoker>, BuildError> {
            Err(BuildError::new("nobody answers in a unit test"))
        }
    }

    static ONLY_ECHO: Registry =
        Registry::new(&[&Kind::<Echo>::NEW]).with_functions(&[&function::Kind::<Call>::NEW]);

    fn load(text: &str) -> Result<crate::Config, Vec<String>> {
        crate::load_str("t.yaml", text, |_| None, &ONLY_ECHO)
            .map_err(|e| e.0.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn a_registered_kind_is_parsed_validated_and_described() {
        let text = "\
connectors:
  e: { echo: { url: echo://here, lanes: 2 } }
functions:
  f: { call: { number: \"+1\" } }
triggers:
  - { name: t, from: { connector: e, topic: x, lane: 1 }, to: f }
";
        let config = load(text).expect("valid");
        let settings = config.connectors["e"].settings().expect("parsed");
        assert_eq!(settings.get::<EchoSettings>().map(|s| s.lanes), Some(2));
        let source: EchoSource = config.triggers[0].from.keys.get().expect("source");
        assert_eq!(source.lane, 1);

        let bad = text
            .replace("echo://here", "http://here")
            .replace("lane: 1", "lane: 7, lame: 1");
        assert_eq!(
            load(&bad).expect_err("invalid"),
            vec![
                "t.yaml:2:21: connector `e`: `url`: URL scheme `http` is not one of echo",
                "t.yaml:6:54: trigger `t`: `lane` must be 0 to 3",
                "t.yaml:6:57: trigger `t`: `lame` does not apply to an echo source (its `from` takes `lane` besides `connector` and `topic`)",
            ]
        );
        let unknown = text.replace("echo: {", "kafka: {");
        assert!(
            load(&unknown).expect_err("unknown kind")[0]
                .contains("unknown kind `kafka` (the kinds are echo)")
        );

        let schema = crate::json_schema(&ONLY_ECHO);
        assert_eq!(
            schema["$defs"]["Connector"]["oneOf"][0]["required"][0],
            "echo"
        );
        assert_eq!(
            schema["$defs"]["TriggerSource"]["properties"]["lane"]["description"],
            "echo: Which lane."
        );
        let kind = ONLY_ECHO.get("echo").expect("registered");
        assert!(kind.build("e", &Settings::new(0_u8)).is_err());
    }

    #[test]
    fn a_registered_function_kind_is_parsed_validated_and_described() {
        let text = "\
connectors:
  e: { echo: { url: echo://here } }
functions:
  f: { call: { number: \"+1\" }, timeout: 2s }
triggers:
  - { name: t, from: { connector: e, topic: x, lane: 1 }, to: f }
";
        let config = load(text).expect("valid");
        let entry = config.functions["f"].kind().expect("a kind");
        assert_eq!(entry.kind(), "call");
        let settings = entry.settings().expect("parsed");
        assert_eq!(
            settings.get::<CallSettings>().map(|s| s.number.as_str()),
            Some("+1")
        );
        assert_eq!(
            config.functions["f"].timeout(),
            std::time::Duration::from_secs(2)
        );

        let errors = |text: String| load(&text).expect_err("invalid");
        assert_eq!(
            errors(text.replace("\"+1\"", "\"1\", numbr: 2")),
            vec![
                "t.yaml:4:24: function `f`: `number` must start with `+`",
                "t.yaml:4:29: unknown key `numbr` in `functions.f.call`; did you mean `number`?",
            ]
        );
        assert_eq!(
            errors(text.replace("call: {", "cal: {")),
            vec!["t.yaml:4:8: unknown key `cal` in `functions.f`; did you mean `call`?"]
        );
        assert_eq!(
            errors(text.replace("call: { number: \"+1\" }, ", "")),
            vec!["t.yaml:4:3: function `f` must have one of `call`"]
        );
        let batched = errors(text.replace("to: f }", "to: f, delivery: { batch: {} } }"));
        assert!(
            batched.len() == 1 && batched[0].contains("function `f` (call) cannot take a batch"),
            "{batched:?}"
        );

        let schema = crate::json_schema(&ONLY_ECHO);
        let call = &schema["$defs"]["Function"]["properties"]["call"];
        assert!(!call.is_null(), "the kind is in the schema: {schema:#}");
        let view = ONLY_ECHO
            .function("call")
            .expect("registered")
            .view(settings);
        assert_eq!(view, serde_json::json!({ "number": "+1" }));
        let context = InvokeContext::default();
        assert!(
            ONLY_ECHO
                .function("call")
                .expect("registered")
                .build(settings, &context)
                .is_err()
        );
    }

    #[test]
    fn a_kind_this_build_leaves_out_names_its_feature() {
        static WITHOUT_KAFKA: Registry = Registry::new(&[&Kind::<Echo>::NEW])
            .leaving_out(&[("kafka", "kafka")])
            .with_functions(&[&function::Kind::<Call>::NEW]);
        let text = "\
connectors:
  k: { kafka: { brokers: [127.0.0.1:9092] } }
functions:
  f: { call: { number: \"+1\" } }
triggers:
  - { name: t, from: { connector: k, topic: x }, to: f }
";
        let errors: Vec<String> = crate::load_str("t.yaml", text, |_| None, &WITHOUT_KAFKA)
            .expect_err("kafka is left out")
            .0
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            errors,
            vec![
                "t.yaml:2:8: connector `k`: kind `kafka` is not built into this fnbroker; build it with the cargo feature `kafka` (`cargo build --release --features kafka`)"
            ]
        );
    }
}

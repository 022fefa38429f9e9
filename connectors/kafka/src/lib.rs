//! The Kafka connector.
//!
//! **Source.** One consumer-group member per subscription (`from: { connector, topic, group }`;
//! `topic` may list several topics separated by commas, or be a regular expression starting with
//! `^`). Auto-commit is off: offsets are committed per partition only up to the lowest unfinished
//! message (see `offsets`), every `commit_interval`, synchronously when partitions are revoked,
//! and at shutdown. The ordering key is the partition, so `ordered: true` delivers each partition
//! strictly in order while partitions proceed in parallel. A new group starts at the `earliest`
//! offset unless `options` say `auto.offset.reset: latest`. The consumer is polled on a thread of
//! its own all the time (see `source`): a full engine pauses partitions instead of leaving the
//! consumer unpolled, a record handed back rewinds its partition, and a partition that stalls
//! (records waiting, none arriving) is logged and sought to its position.
//!
//! **Binding.** Binary (`ce_` headers) and structured (`application/cloudevents+json`) modes are
//! read; plain records are normalized with the stable id `topic-partition-offset`.
//!
//! **Sink.** An idempotent producer (`enable.idempotence`, `acks=all`) writing binary mode, the
//! `partitionkey` extension as the key; `publish` resolves on the broker's delivery report.
//!
//! **Resilience.** librdkafka reconnects by itself; a topic that does not exist yet is reported
//! at `warn` and picked up once created (metadata is refreshed every 10 s).
#![forbid(unsafe_code)]
#![deny(unreachable_pub)]
#![warn(missing_docs)]

pub mod binding;
mod config;
mod oauth;
mod offsets;
mod source;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use fnbroker_core::{Connector, ConnectorError, Event, Sink, Source, Subscription};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::OnceCell;

pub use crate::config::{KafkaSettings, KafkaSourceSettings, Plugin, Sasl, SaslMechanism};
use crate::offsets::Tracker;
use crate::source::Context;
use fnbroker_core::kit::source_buffer;

/// librdkafka's `session.timeout.ms` when the options do not set it.
const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(45);

/// The Kafka connector of one configuration entry.
pub struct KafkaConnector {
    name: String,
    config: KafkaSettings,
    oauth: Option<Arc<oauth::TokenSource>>,
    producer: OnceCell<Arc<KafkaSink>>,
    ready: Arc<AtomicBool>,
    subscribed: AtomicBool,
    link: Arc<fnbroker_core::kit::Link>,
    backlogs: Arc<fnbroker_core::backlog::Backlogs>,
}

impl KafkaConnector {
    /// A connector named `name`; nothing connects before a subscription or a sink is asked for.
    pub fn new(name: impl Into<String>, config: KafkaSettings) -> Result<Self, ConnectorError> {
        let name = name.into();
        if let Some(tls) = &config.tls {
            tls.warn_if_insecure("connector", &name);
        }
        let oauth = match &config.sasl {
            Some(sasl) if sasl.mechanism == SaslMechanism::OAuthBearer => Some(
                oauth::TokenSource::new(&name, sasl)
                    .map_err(|message| ConnectorError::permanent(&name, message))?,
            ),
            _ => None,
        };
        Ok(Self {
            backlogs: Arc::default(),
            link: fnbroker_core::kit::Link::new(
                &name,
                "the Kafka brokers",
                &config.brokers.join(","),
            ),
            name,
            oauth,
            config,
            producer: OnceCell::new(),
            ready: Arc::new(AtomicBool::new(false)),
            subscribed: AtomicBool::new(false),
        })
    }

    fn error(&self, message: impl Into<String>) -> ConnectorError {
        ConnectorError::io(&self.name, message)
    }

    /// fnbroker's defaults, then the user's `options`, which win.
    fn client_config(&self, defaults: &[(&str, &str)]) -> ClientConfig {
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", self.config.brokers.join(","))
            .set("client.id", format!("fnbroker-{}", self.name));
        for (k, v) in defaults {
            cfg.set(*k, *v);
        }
        for (k, v) in self.config.security_properties() {
            cfg.set(k, v);
        }
        for (k, v) in &self.config.options {
            cfg.set(k, v);
        }
        cfg
    }
}

#[async_trait]
impl Connector for KafkaConnector {
    fn kind(&self) -> &'static str {
        "kafka"
    }

    fn name(&self) -> &str {
        &self.name
    }

    /// A consumer group named `reader`: it starts at the earliest offset, and each run goes on
    /// where the last committed.
    async fn reader(
        &self,
        reader: &str,
        topic: &str,
        max_in_flight: usize,
    ) -> Result<fnbroker_core::Reader, ConnectorError> {
        let sub = Subscription::reader(
            &self.name,
            Some(topic),
            fnbroker_core::contract::group_keys(reader),
            max_in_flight,
        );
        Ok(fnbroker_core::Reader {
            source: self.subscribe(&sub).await?,
            positional: true,
        })
    }

    /// A consumer group per subscriber: each gets every record, its replicas split them.
    fn discovery_keys(
        &self,
        subscriber: &str,
        _topic: &str,
    ) -> Result<fnbroker_core::contract::SourceKeys, fnbroker_core::registry::RouteError> {
        Ok(fnbroker_core::contract::group_keys(subscriber))
    }

    async fn subscribe(&self, sub: &Subscription) -> Result<Box<dyn Source>, ConnectorError> {
        let source: KafkaSourceSettings = sub.settings()?;
        let group = source
            .group
            .or_else(|| self.config.group.clone())
            .unwrap_or_else(|| "fnbroker".to_string());
        let topics: Vec<String> = sub
            .from
            .topic()
            .split(',')
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .collect();
        if topics.is_empty() {
            return Err(self.error("a kafka trigger needs a `topic`"));
        }
        let tracker = Arc::new(Mutex::new(Tracker::default()));
        let context = Context {
            connector: self.name.clone(),
            tracker: Arc::clone(&tracker),
            ready: Arc::clone(&self.ready),
            revoked: Mutex::default(),
            stalls: Default::default(),
            oauth: self.oauth.clone(),
            link: Arc::clone(&self.link),
            backlogs: Arc::clone(&self.backlogs),
        };
        let mut cfg = self.client_config(&[
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("auto.offset.reset", "earliest"),
            ("enable.partition.eof", "false"),
            ("topic.metadata.refresh.interval.ms", "10000"),
            // Consumer lag per partition, for /metrics and the stall report.
            ("statistics.interval.ms", "5000"),
            // Bound what librdkafka prefetches, so a backlog costs little memory: 8 MiB of
            // payload (plus librdkafka's per-message overhead). Measured with bench/ against
            // tansu: 4 MiB cost a quarter of the throughput, 16 MiB gained nothing over 8; and
            // a lower `queued.min.messages` (10,000) halved it.
            ("queued.max.messages.kbytes", "8192"),
        ]);
        cfg.set("group.id", &group);
        let consumer: BaseConsumer<Context> = cfg
            .create_with_context(context)
            .map_err(|e| self.error(format!("cannot create the consumer: {e}")))?;
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&names)
            .map_err(|e| self.error(format!("cannot subscribe to {}: {e}", names.join(", "))))?;
        self.subscribed.store(true, Ordering::Release);
        tracing::info!(connector = %self.name, topics = %names.join(","), %group, "kafka consumer subscribed");
        let session_timeout = cfg
            .get("session.timeout.ms")
            .and_then(|ms| ms.parse().ok())
            .map_or(DEFAULT_SESSION_TIMEOUT, Duration::from_millis);
        Ok(Box::new(source::start(
            self.name.clone(),
            consumer,
            tracker,
            source_buffer(sub.max_in_flight),
            self.config.commit_interval.get(),
            source::Membership {
                group,
                topics,
                session_timeout,
            },
        )))
    }

    async fn sink(
        &self,
        _: &fnbroker_core::values::Destination,
    ) -> Result<Arc<dyn Sink>, ConnectorError> {
        let sink = self
            .producer
            .get_or_try_init(|| async {
                let context = ProducerContext {
                    oauth: self.oauth.clone(),
                };
                let producer: FutureProducer<ProducerContext> = self
                    .client_config(&[
                        ("enable.idempotence", "true"),
                        ("acks", "all"),
                        ("linger.ms", "5"),
                        ("message.timeout.ms", "30000"),
                    ])
                    .create_with_context(context)
                    .map_err(|e| self.error(format!("cannot create the producer: {e}")))?;
                Ok::<_, ConnectorError>(Arc::new(KafkaSink {
                    connector: self.name.clone(),
                    producer,
                }))
            })
            .await?;
        Ok(Arc::clone(sink) as Arc<dyn Sink>)
    }

    fn link(&self) -> Option<&fnbroker_core::kit::Link> {
        Some(&self.link)
    }

    fn backlog(&self) -> Vec<fnbroker_core::backlog::Backlog> {
        self.backlogs.all()
    }

    /// Ready once a consumer got its partitions (or a message), and not after the client lost
    /// every broker; a connector used only as a sink is ready.
    fn is_ready(&self) -> bool {
        !self.subscribed.load(Ordering::Acquire) || self.ready.load(Ordering::Acquire)
    }

    async fn stop(&self) {
        if let Some(sink) = self.producer.get() {
            let producer = sink.producer.clone();
            let _ = tokio::task::spawn_blocking(move || {
                rdkafka::producer::Producer::flush(&producer, Duration::from_secs(10))
            })
            .await;
        }
    }
}

/// The producer's context: OAUTHBEARER tokens when the connector uses them.
struct ProducerContext {
    oauth: Option<Arc<oauth::TokenSource>>,
}

impl rdkafka::ClientContext for ProducerContext {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn generate_oauth_token(
        &self,
        _: Option<&str>,
    ) -> Result<rdkafka::client::OAuthToken, Box<dyn std::error::Error>> {
        oauth::token_for(self.oauth.as_ref())
    }
}

/// Publishes events in binary mode and waits for the delivery report.
struct KafkaSink {
    connector: String,
    producer: FutureProducer<ProducerContext>,
}

#[async_trait]
impl Sink for KafkaSink {
    async fn publish(&self, topic: &str, event: &Event) -> Result<(), ConnectorError> {
        self.send(topic, binding::encode(event)).await
    }

    async fn publish_plain(
        &self,
        topic: &str,
        data: &[u8],
        content_type: Option<&str>,
    ) -> Result<(), ConnectorError> {
        self.send(topic, binding::encode_plain(data, content_type))
            .await
    }
}

impl KafkaSink {
    async fn send(&self, topic: &str, encoded: binding::Encoded) -> Result<(), ConnectorError> {
        let mut record = FutureRecord::to(topic)
            .payload(&encoded.payload)
            .headers(encoded.headers);
        if let Some(key) = &encoded.key {
            record = record.key(key);
        }
        self.producer
            .send(record, Duration::from_secs(30))
            .await
            .map(|_| ())
            .map_err(|(e, _)| {
                ConnectorError::io(&self.connector, format!("cannot publish to `{topic}`: {e}"))
                    .caused_by(e)
            })
    }
}

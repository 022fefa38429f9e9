//! The connector conformance suite on Kafka on tansu: this crate's adapter, and one test per case
//! (`fnbroker_conformance::suite!`).

use std::ops::Range;

use fnbroker_conformance::kafka;
use fnbroker_conformance::{
    Adapter, AfterKill, Mode, Modes, Redelivers, Replicas, Restartable, Topic, body_of, headers_of,
    unique_id,
};
use serde_json::{Value, json};
use tokio::sync::Mutex;

fnbroker_conformance::suite!(Kafka, restart, modes, replicas);

/// Kafka on tansu: a topic of one partition (one ordering key) and a group of its own.
struct Kafka {
    brokers: String,
    producer: rdkafka::producer::FutureProducer,
    server: Option<Mutex<kafka::Tansu>>,
}

impl Kafka {
    /// An admin client of the brokers.
    fn client(&self) -> rdkafka::ClientConfig {
        let mut client = rdkafka::ClientConfig::new();
        client.set("bootstrap.servers", &self.brokers);
        client
    }
}

impl Adapter for Kafka {
    const NAME: &'static str = "kafka";
    const KEEPS_RETIRED: bool = true;
    const REDELIVERS: Redelivers = Redelivers::Yes;

    async fn new() -> Self {
        Self {
            brokers: kafka::BROKERS.to_string(),
            producer: kafka::producer(),
            server: None,
        }
    }

    /// Short session timeouts, as the Kafka tests use: a group's first join on tansu takes
    /// about half of it.
    fn connector(&self) -> Value {
        json!({
            "kafka": {
                "brokers": [self.brokers],
                "options": { "session.timeout.ms": "6000", "heartbeat.interval.ms": "500" },
            }
        })
    }

    async fn prepare(&self) -> Topic {
        let topic = kafka::unique("suite");
        kafka::create_topic_as(&self.client(), &topic, 1).await;
        Topic {
            from: json!({ "connector": "c", "topic": topic, "group": format!("g{}", unique_id()) }),
            address: topic,
        }
    }

    async fn publish(&self, topic: &Topic, numbers: Range<usize>) {
        kafka::produce_range(&self.producer, &topic.address, numbers).await;
    }
}

impl Restartable for Kafka {
    async fn private() -> Self {
        let server = kafka::Tansu::start().await;
        let brokers = server.brokers();
        Self {
            producer: kafka::producer_for(&brokers),
            brokers,
            server: Some(Mutex::new(server)),
        }
    }

    async fn restart(&self) {
        if let Some(server) = &self.server {
            server.lock().await.restart().await;
        }
    }
}

impl Modes for Kafka {
    async fn publish_event(&self, topic: &Topic, mode: Mode, n: usize) {
        let (body, content_type) = body_of(mode, n);
        let headers = headers_of(mode, n, "ce_");
        let mut all: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        all.push(("content-type", content_type));
        kafka::produce(
            &self.producer,
            &topic.address,
            kafka::Out {
                key: None,
                partition: None,
                headers: all,
                payload: &body,
            },
        )
        .await;
    }
}

/// Kafka: 4 partitions, so both members have some. tansu keeps a killed member's partitions
/// with it (docs/notes/tansu.md), so the killed replica is started again.
impl Replicas for Kafka {
    const AFTER_KILL: AfterKill = AfterKill::Restart;

    async fn prepare_shared(&self) -> Topic {
        let topic = kafka::unique("suite");
        kafka::create_topic_as(&self.client(), &topic, 4).await;
        Topic {
            from: json!({ "connector": "c", "topic": topic, "group": format!("g{}", unique_id()) }),
            address: topic,
        }
    }
}

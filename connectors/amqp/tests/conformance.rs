//! The connector conformance suite on RabbitMQ: this crate's adapter, and one test per case
//! (`fnbroker_conformance::suite!`).

use std::ops::Range;

use fnbroker_conformance::amqp;
use fnbroker_conformance::{
    Adapter, AfterKill, Mode, Modes, Redelivers, Replicas, Restartable, Topic, body_of, headers_of,
    unique_id,
};
use serde_json::{Value, json};
use tokio::sync::Mutex;

fnbroker_conformance::suite!(Amqp, restart, modes, replicas);

/// RabbitMQ: a durable queue of its own on the default exchange, persistent messages.
struct Amqp {
    url: String,
    /// The test's connection and channel (made again after a restart of the broker).
    link: Mutex<(lapin::Connection, lapin::Channel)>,
    /// fnbroker's connection name: one per adapter, so that a reload sees the same connector.
    name: String,
    server: Option<amqp::RabbitNode>,
}

impl Amqp {
    async fn at(url: String, server: Option<amqp::RabbitNode>) -> Self {
        Self {
            link: Mutex::new(amqp::channel_at(&url).await),
            url,
            name: format!("fb-{}", unique_id()),
            server,
        }
    }

    async fn channel(&self) -> lapin::Channel {
        self.link.lock().await.1.clone()
    }
}

impl Adapter for Amqp {
    const NAME: &'static str = "amqp";
    const KEEPS_RETIRED: bool = true;
    const REDELIVERS: Redelivers = Redelivers::Yes;

    async fn new() -> Self {
        Self::at(amqp::URL.to_string(), None).await
    }

    fn connector(&self) -> Value {
        json!({ "amqp": { "url": self.url, "connection_name": self.name } })
    }

    async fn prepare(&self) -> Topic {
        let queue = format!("q-{}", unique_id());
        amqp::queue(&self.channel().await, &queue).await;
        Topic {
            from: json!({ "connector": "c", "queue": queue }),
            address: queue,
        }
    }

    async fn publish(&self, topic: &Topic, numbers: Range<usize>) {
        amqp::publish_range(&self.channel().await, &topic.address, numbers).await;
    }

    async fn cleanup(&self, topic: &Topic) {
        let _ = self
            .channel()
            .await
            .queue_delete(
                topic.address.as_str().into(),
                lapin::options::QueueDeleteOptions::default(),
            )
            .await;
    }
}

/// A RabbitMQ node of the test's own (a few seconds to start); its restart is `stop_app` and
/// `start_app`.
impl Restartable for Amqp {
    async fn private() -> Self {
        let node = amqp::RabbitNode::start().await;
        Self::at(node.url(), Some(node)).await
    }

    async fn restart(&self) {
        if let Some(node) = &self.server {
            node.restart().await;
            *self.link.lock().await = amqp::channel_at(&self.url).await;
        }
    }
}

impl Modes for Amqp {
    async fn publish_event(&self, topic: &Topic, mode: Mode, n: usize) {
        let (body, content_type) = body_of(mode, n);
        let headers = headers_of(mode, n, "cloudEvents:");
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        amqp::publish(
            &self.channel().await,
            &topic.address,
            &headers,
            Some(content_type),
            &body,
        )
        .await;
    }
}

impl Replicas for Amqp {
    const AFTER_KILL: AfterKill = AfterKill::Survivor;

    fn replica_connector(&self, path: &str) -> Value {
        json!({
            "amqp": {
                "url": self.url,
                "connection_name": format!("{}{}", self.name, path.replace('/', "-")),
            }
        })
    }
}

//! The connector conformance suite on Redis Streams: this crate's adapter, and one test per case
//! (`fnbroker_conformance::suite!`).

use std::ops::Range;

use fnbroker_conformance::redis;
use fnbroker_conformance::{
    Adapter, AfterKill, Mode, Modes, Redelivers, Replicas, Restartable, Topic, body_of, headers_of,
};
use serde_json::{Value, json};
use tokio::sync::Mutex;

fnbroker_conformance::suite!(Redis, restart, modes, replicas);

/// Redis Streams: a stream of its own and a consumer group fnbroker creates.
struct Redis {
    url: String,
    server: Option<Mutex<redis::RedisServer>>,
}

impl Adapter for Redis {
    const NAME: &'static str = "redis";
    const KEEPS_RETIRED: bool = true;
    const REDELIVERS: Redelivers = Redelivers::Yes;

    async fn new() -> Self {
        Self {
            url: redis::URL.to_string(),
            server: None,
        }
    }

    fn connector(&self) -> Value {
        json!({ "redis": { "url": self.url } })
    }

    async fn prepare(&self) -> Topic {
        let stream = redis::unique("suite");
        Topic {
            from: json!({ "connector": "c", "topic": stream, "group": "g", "create": true }),
            address: stream,
        }
    }

    async fn publish(&self, topic: &Topic, numbers: Range<usize>) {
        let mut conn = redis::connect_to(&self.url).await;
        redis::add_numbers(&mut conn, &topic.address, numbers).await;
    }

    async fn cleanup(&self, topic: &Topic) {
        let mut conn = redis::connect_to(&self.url).await;
        redis::delete(&mut conn, &[topic.address.as_str()]).await;
    }
}

impl Restartable for Redis {
    async fn private() -> Self {
        let server = redis::RedisServer::start().await;
        Self {
            url: server.url(),
            server: Some(Mutex::new(server)),
        }
    }

    async fn restart(&self) {
        if let Some(server) = &self.server {
            server.lock().await.restart().await;
        }
    }
}

impl Modes for Redis {
    async fn publish_event(&self, topic: &Topic, mode: Mode, n: usize) {
        let (data, content_type) = body_of(mode, n);
        let headers = headers_of(mode, n, "ce_");
        let mut fields: Vec<(&str, &[u8])> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_bytes()))
            .collect();
        fields.push(("content-type", content_type.as_bytes()));
        fields.push(("data", &data));
        let mut conn = redis::connect_to(&self.url).await;
        redis::add(&mut conn, &topic.address, &fields).await;
    }
}

/// Consumers named per replica; the survivor claims the killed one's pending entries after
/// `claim_after`.
impl Replicas for Redis {
    const AFTER_KILL: AfterKill = AfterKill::Survivor;

    fn replica_connector(&self, path: &str) -> Value {
        json!({
            "redis": {
                "url": self.url,
                "claim_after": "2s",
                "consumer": format!("replica{}", path.replace('/', "-")),
            }
        })
    }
}

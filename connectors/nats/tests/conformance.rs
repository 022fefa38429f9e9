//! The connector conformance suite on NATS, core and JetStream: this crate's adapter, and one test per case
//! (`fnbroker_conformance::suite!`).

use std::ops::Range;

use fnbroker_conformance::nats;
use fnbroker_conformance::{
    Adapter, AfterKill, Mode, Modes, Redelivers, Replicas, Restartable, Topic, body_of, headers_of,
    unique_id,
};
use serde_json::{Value, json};
use tokio::sync::Mutex;

mod jetstream {
    fnbroker_conformance::suite!(super::JetStream, restart, modes, replicas);
}

mod nats_core {
    fnbroker_conformance::suite!(super::NatsCore, restart, modes, replicas);
}

/// NATS JetStream: a stream of its own and a durable consumer.
struct JetStream {
    url: String,
    server: Option<Mutex<nats::NatsServer>>,
}

impl Adapter for JetStream {
    const NAME: &'static str = "jetstream";
    const KEEPS_RETIRED: bool = true;
    const REDELIVERS: Redelivers = Redelivers::Yes;

    async fn new() -> Self {
        Self {
            url: nats::SHARED_URL.to_string(),
            server: None,
        }
    }

    fn connector(&self) -> Value {
        json!({ "nats": { "url": self.url } })
    }

    async fn prepare(&self) -> Topic {
        let id = unique_id();
        let stream = format!("S{id}");
        nats::create_stream(&self.url, &stream, &[&format!("j{id}.>")]).await;
        Topic {
            from: json!({
                "connector": "c",
                "stream": stream,
                "topic": format!("j{id}.x"),
                "group": format!("g{id}"),
            }),
            address: format!("j{id}.x"),
        }
    }

    async fn publish(&self, topic: &Topic, numbers: Range<usize>) {
        let messages = numbers
            .map(|i| (topic.address.clone(), i.to_string().into_bytes()))
            .collect();
        nats::js_publish(&self.url, messages).await;
    }

    async fn cleanup(&self, topic: &Topic) {
        let js = async_nats::jetstream::new(nats::connect(&self.url).await);
        if let Some(stream) = topic.from["stream"].as_str() {
            let _ = js.delete_stream(stream).await;
        }
    }
}

impl Restartable for JetStream {
    async fn private() -> Self {
        let server = nats::NatsServer::start().await;
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

/// Core NATS: a subject; at-most-once.
struct NatsCore {
    url: String,
    server: Option<Mutex<nats::NatsServer>>,
}

impl Adapter for NatsCore {
    const NAME: &'static str = "nats core";
    const KEEPS_RETIRED: bool = false;
    const REDELIVERS: Redelivers = Redelivers::No;

    async fn new() -> Self {
        Self {
            url: nats::SHARED_URL.to_string(),
            server: None,
        }
    }

    fn connector(&self) -> Value {
        json!({ "nats": { "url": self.url } })
    }

    async fn prepare(&self) -> Topic {
        let subject = format!("n{}.x", unique_id());
        Topic {
            from: json!({ "connector": "c", "topic": subject }),
            address: subject,
        }
    }

    async fn publish(&self, topic: &Topic, numbers: Range<usize>) {
        let messages = numbers
            .map(|i| {
                (
                    topic.address.clone(),
                    async_nats::HeaderMap::new(),
                    i.to_string().into_bytes(),
                )
            })
            .collect();
        nats::publish(&self.url, messages).await;
    }
}

impl Restartable for NatsCore {
    async fn private() -> Self {
        let server = nats::NatsServer::start().await;
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

/// NATS headers of message `n` in `mode`.
fn nats_headers(mode: Mode, n: usize) -> (async_nats::HeaderMap, Vec<u8>) {
    let (body, content_type) = body_of(mode, n);
    let mut headers = async_nats::HeaderMap::new();
    for (k, v) in headers_of(mode, n, "ce-") {
        headers.insert(k.as_str(), v.as_str());
    }
    headers.insert("Content-Type", content_type);
    (headers, body)
}

impl Modes for JetStream {
    async fn publish_event(&self, topic: &Topic, mode: Mode, n: usize) {
        let (headers, body) = nats_headers(mode, n);
        let js = async_nats::jetstream::new(nats::connect(&self.url).await);
        js.publish_with_headers(topic.address.clone(), headers, body.into())
            .await
            .expect("publish")
            .await
            .expect("publish ack");
    }
}

impl Modes for NatsCore {
    async fn publish_event(&self, topic: &Topic, mode: Mode, n: usize) {
        let (headers, body) = nats_headers(mode, n);
        nats::publish(&self.url, vec![(topic.address.clone(), headers, body)]).await;
    }
}

impl Replicas for JetStream {
    const AFTER_KILL: AfterKill = AfterKill::Survivor;
}

/// A queue group: the survivor takes what is published after the kill.
impl Replicas for NatsCore {
    const AFTER_KILL: AfterKill = AfterKill::Survivor;

    async fn prepare_shared(&self) -> Topic {
        let mut topic = self.prepare().await;
        topic.from["group"] = "workers".into();
        topic
    }
}

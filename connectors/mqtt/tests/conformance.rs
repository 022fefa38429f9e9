//! The connector conformance suite on Mosquitto: this crate's adapter, and one test per case
//! (`fnbroker_conformance::suite!`).

use std::ops::Range;

use fnbroker_conformance::mqtt;
use fnbroker_conformance::{
    Adapter, AfterKill, Mode, Modes, Redelivers, Replicas, Restartable, Topic, body_of, headers_of,
    unique_id,
};
use serde_json::{Value, json};
use tokio::sync::Mutex;

fnbroker_conformance::suite!(Mqtt, restart, modes, replicas);

/// Mosquitto: QoS 1 with a persistent session (MQTT 5).
struct Mqtt {
    client_id: String,
    port: u16,
    server: Option<Mutex<mqtt::Mosquitto>>,
}

impl Adapter for Mqtt {
    const NAME: &'static str = "mqtt";
    const KEEPS_RETIRED: bool = false;
    const REDELIVERS: Redelivers = Redelivers::Yes;

    async fn new() -> Self {
        Self {
            client_id: format!("c{}", unique_id()),
            port: mqtt::SHARED_PORT,
            server: None,
        }
    }

    fn connector(&self) -> Value {
        json!({
            "mqtt": {
                "url": format!("mqtt://127.0.0.1:{}", self.port),
                "client_id": self.client_id,
                "session_expiry": "10m",
                "keep_alive": "5s",
            }
        })
    }

    async fn prepare(&self) -> Topic {
        let topic = format!("m{}/x", unique_id());
        Topic {
            from: json!({ "connector": "c", "topic": topic, "qos": 1 }),
            address: topic,
        }
    }

    async fn publish(&self, topic: &Topic, numbers: Range<usize>) {
        let messages = numbers
            .map(|i| mqtt::Msg::plain(&topic.address, i.to_string().as_bytes()))
            .collect();
        mqtt::publish(self.port, messages).await;
    }
}

impl Restartable for Mqtt {
    async fn private() -> Self {
        let server = mqtt::Mosquitto::start().await;
        Self {
            client_id: format!("c{}", unique_id()),
            port: server.port,
            server: Some(Mutex::new(server)),
        }
    }

    async fn restart(&self) {
        if let Some(server) = &self.server {
            server.lock().await.restart().await;
        }
    }
}

impl Modes for Mqtt {
    async fn publish_event(&self, topic: &Topic, mode: Mode, n: usize) {
        let (payload, content_type) = body_of(mode, n);
        let message = mqtt::Msg {
            topic: topic.address.clone(),
            payload,
            content_type: Some(content_type.to_string()),
            user_properties: headers_of(mode, n, ""),
        };
        mqtt::publish(self.port, vec![message]).await;
    }
}

/// A `$share` group; the killed replica's session holds what it had, so it is started again.
impl Replicas for Mqtt {
    const AFTER_KILL: AfterKill = AfterKill::Restart;

    async fn prepare_shared(&self) -> Topic {
        let mut topic = self.prepare().await;
        topic.from["group"] = format!("g{}", unique_id()).into();
        topic
    }

    fn replica_connector(&self, path: &str) -> Value {
        json!({
            "mqtt": {
                "url": format!("mqtt://127.0.0.1:{}", self.port),
                "client_id": format!("{}{}", self.client_id, path.replace('/', "-")),
                "session_expiry": "10m",
            }
        })
    }
}

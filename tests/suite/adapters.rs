//! One adapter per connector: what the cases need to know of a broker and nothing more. Every
//! message a case publishes is a number (its body, or a column of a row for PostgreSQL), so a
//! case tells messages apart, counts losses and duplicates, and checks order by that number.

use std::future::Future;
use std::ops::Range;
use std::time::Duration;

use tokio::sync::Mutex;

use crate::common::{self, AfterKill, amqp, kafka, mqtt, nats, postgres, redis};

/// Whether a source gets back what fnbroker did not finish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Redelivers {
    /// The broker keeps every message until fnbroker acknowledges it (a kill loses nothing).
    Yes,
    /// Nothing is kept for fnbroker (core NATS, an HTTP request): what was in flight when it
    /// died is lost, and what is published while it does not run is not seen.
    No,
}

/// One topic a case uses: what a trigger reads and where messages are published.
pub(crate) struct Topic {
    /// The trigger's `from:` mapping, without braces (`connector: c, topic: x, group: g`).
    pub(crate) from: String,
    /// Where the adapter publishes (a topic, a subject, a queue, a stream, a table, a path).
    pub(crate) address: String,
}

/// A connector as the cases see it. The connector is always named `c`.
pub(crate) trait Adapter: Sized + Send + Sync + 'static {
    /// The connector's name in the matrix.
    const NAME: &'static str;
    /// Whether the source redelivers.
    const REDELIVERS: Redelivers;
    /// Whether what is published to a topic after its subscription was given up (retired: no
    /// trigger reads it any more) is kept for a subscription that comes back: a consumer group,
    /// a durable consumer or a queue stays at the broker; an MQTT subscription is ended, and
    /// core NATS, HTTP and PostgreSQL keep nothing nobody reads.
    const KEEPS_RETIRED: bool;

    /// Sets up what the connector needs (a private server, a port).
    fn new() -> impl Future<Output = Self> + Send;

    /// The connector's entry, as the value of `c:` in `connectors:`.
    fn connector(&self) -> String;

    /// A fresh topic (created on the server where it needs creating).
    fn prepare(&self) -> impl Future<Output = Topic> + Send;

    /// Publishes the messages `numbers`, in that order, all with one ordering key, and waits
    /// until the broker has them.
    fn publish(&self, topic: &Topic, numbers: Range<usize>) -> impl Future<Output = ()> + Send;

    /// The number of a message from the body the function received.
    fn number(body: &[u8]) -> Option<usize> {
        std::str::from_utf8(body).ok()?.trim().parse().ok()
    }

    /// Removes what `prepare` made, where it outlives the test.
    fn cleanup(&self, _topic: &Topic) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// How a message carries a CloudEvent (a plain message is [`Adapter::publish`]'s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// The attributes in the protocol's headers (properties, fields), the data as the body.
    Binary,
    /// The whole event as JSON, with the content type `application/cloudevents+json`.
    Structured,
}

impl Mode {
    /// The event's `id` for message `n`.
    pub(crate) fn id(self, n: usize) -> String {
        match self {
            Self::Binary => format!("b-{n}"),
            Self::Structured => format!("s-{n}"),
        }
    }

    /// The event's `type`.
    pub(crate) fn ty(self) -> &'static str {
        match self {
            Self::Binary => "com.example.binary",
            Self::Structured => "com.example.structured",
        }
    }

    /// The attributes of message `n` in binary mode (name, value), without a prefix.
    fn attributes(self, n: usize) -> Vec<(&'static str, String)> {
        vec![
            ("specversion", "1.0".to_string()),
            ("id", self.id(n)),
            ("source", "/suite".to_string()),
            ("type", self.ty().to_string()),
        ]
    }

    /// The structured event of message `n`: its data is the number.
    fn structured(n: usize) -> Vec<u8> {
        serde_json::json!({
            "specversion": "1.0", "id": Self::Structured.id(n), "source": "/suite",
            "type": Self::Structured.ty(), "datacontenttype": "application/json", "data": n,
        })
        .to_string()
        .into_bytes()
    }
}

/// The content type of a structured event.
const STRUCTURED: &str = "application/cloudevents+json";

/// A connector whose messages carry CloudEvents in binary and structured mode (every one but
/// PostgreSQL, whose events are the changes it reads).
pub(crate) trait Modes: Adapter {
    /// Publishes message `n` as a CloudEvent in `mode`, its data the number (text in binary
    /// mode, a JSON number in structured mode).
    fn publish_event(&self, topic: &Topic, mode: Mode, n: usize)
    -> impl Future<Output = ()> + Send;
}

/// An adapter that can run on a server of its own, which the broker restart case restarts.
pub(crate) trait Restartable: Adapter {
    /// The adapter on a server of its own.
    fn private() -> impl Future<Output = Self> + Send;

    /// Stops the server cleanly and starts it again on the same port and data.
    fn restart(&self) -> impl Future<Output = ()> + Send;
}

fn uid() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Kafka on tansu: a topic of one partition (one ordering key) and a group of its own.
pub(crate) struct Kafka {
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
    fn connector(&self) -> String {
        format!(
            "{{ kafka: {{ brokers: [\"{}\"], options: {{ session.timeout.ms: \"6000\", heartbeat.interval.ms: \"500\" }} }} }}",
            self.brokers
        )
    }

    async fn prepare(&self) -> Topic {
        let topic = kafka::unique("suite");
        kafka::create_topic_as(&self.client(), &topic, 1).await;
        Topic {
            from: format!("connector: c, topic: {topic}, group: g{}", uid()),
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

/// NATS JetStream: a stream of its own and a durable consumer.
pub(crate) struct JetStream {
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

    fn connector(&self) -> String {
        format!("{{ nats: {{ url: \"{}\" }} }}", self.url)
    }

    async fn prepare(&self) -> Topic {
        let id = uid();
        let stream = format!("S{id}");
        nats::create_stream(&self.url, &stream, &[&format!("j{id}.>")]).await;
        Topic {
            from: format!("connector: c, stream: {stream}, topic: \"j{id}.x\", group: g{id}"),
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
        if let Some(stream) = topic.from.split("stream: ").nth(1) {
            let name = stream.split(',').next().unwrap_or_default();
            let _ = js.delete_stream(name).await;
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
pub(crate) struct NatsCore {
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

    fn connector(&self) -> String {
        format!("{{ nats: {{ url: \"{}\" }} }}", self.url)
    }

    async fn prepare(&self) -> Topic {
        let subject = format!("n{}.x", uid());
        Topic {
            from: format!("connector: c, topic: \"{subject}\""),
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

/// RabbitMQ: a durable queue of its own on the default exchange, persistent messages.
pub(crate) struct Amqp {
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
            name: format!("fb-{}", uid()),
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

    fn connector(&self) -> String {
        format!(
            "{{ amqp: {{ url: \"{}\", connection_name: {} }} }}",
            self.url, self.name
        )
    }

    async fn prepare(&self) -> Topic {
        let queue = format!("q-{}", uid());
        amqp::queue(&self.channel().await, &queue).await;
        Topic {
            from: format!("connector: c, queue: {queue}"),
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

/// Mosquitto: QoS 1 with a persistent session (MQTT 5).
pub(crate) struct Mqtt {
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
            client_id: format!("c{}", uid()),
            port: mqtt::SHARED_PORT,
            server: None,
        }
    }

    fn connector(&self) -> String {
        format!(
            "{{ mqtt: {{ url: \"mqtt://127.0.0.1:{}\", client_id: {}, session_expiry: 10m, keep_alive: 5s }} }}",
            self.port, self.client_id
        )
    }

    async fn prepare(&self) -> Topic {
        let topic = format!("m{}/x", uid());
        Topic {
            from: format!("connector: c, topic: \"{topic}\", qos: 1"),
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
            client_id: format!("c{}", uid()),
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

/// Redis Streams: a stream of its own and a consumer group fnbroker creates.
pub(crate) struct Redis {
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

    fn connector(&self) -> String {
        format!("{{ redis: {{ url: \"{}\" }} }}", self.url)
    }

    async fn prepare(&self) -> Topic {
        let stream = redis::unique("suite");
        Topic {
            from: format!("connector: c, topic: \"{stream}\", group: g, create: true"),
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

/// PostgreSQL: a cluster of the test's own (logical replication), the publication `fnbroker`
/// of all tables, a table `items_<id> (n)` per topic; a message is an inserted row.
pub(crate) struct Postgres {
    cluster: postgres::Cluster,
    client: Mutex<tokio_postgres::Client>,
}

impl Adapter for Postgres {
    const NAME: &'static str = "postgres";
    const KEEPS_RETIRED: bool = false;
    const REDELIVERS: Redelivers = Redelivers::Yes;

    async fn new() -> Self {
        let cluster = postgres::Cluster::start();
        let client = cluster.client().await;
        client
            .batch_execute("CREATE PUBLICATION fnbroker FOR ALL TABLES;")
            .await
            .expect("publication");
        Self {
            cluster,
            client: Mutex::new(client),
        }
    }

    fn connector(&self) -> String {
        format!("{{ postgres: {{ url: \"{}\" }} }}", self.cluster.url())
    }

    async fn prepare(&self) -> Topic {
        let table = format!("items_{}", uid());
        self.client
            .lock()
            .await
            .batch_execute(&format!("CREATE TABLE {table} (n int PRIMARY KEY)"))
            .await
            .expect("table");
        Topic {
            from: format!("connector: c, topic: \"public.{table}\""),
            address: table,
        }
    }

    async fn publish(&self, topic: &Topic, numbers: Range<usize>) {
        // One transaction per row: a message is a commit.
        let client = self.client.lock().await;
        for n in numbers {
            client
                .batch_execute(&format!("INSERT INTO {} VALUES ({n})", topic.address))
                .await
                .expect("insert");
        }
    }

    fn number(body: &[u8]) -> Option<usize> {
        let v: serde_json::Value = serde_json::from_slice(body).ok()?;
        usize::try_from(v["new"]["n"].as_i64()?).ok()
    }
}

impl Restartable for Postgres {
    /// Its cluster is its own already.
    async fn private() -> Self {
        Self::new().await
    }

    async fn restart(&self) {
        let mut client = self.client.lock().await;
        self.cluster.restart();
        *client = self.cluster.client().await;
    }
}

/// The HTTP ingress: a path on a port of its own, events accepted with `202`. A sender that
/// gets no answer or a 5xx tries again (as webhook senders do); a 4xx is final.
pub(crate) struct Http {
    port: u16,
    client: reqwest::Client,
}

impl Adapter for Http {
    const NAME: &'static str = "http";
    const KEEPS_RETIRED: bool = false;
    const REDELIVERS: Redelivers = Redelivers::No;

    async fn new() -> Self {
        Self {
            port: common::free_port(),
            client: reqwest::Client::new(),
        }
    }

    fn connector(&self) -> String {
        format!("{{ http: {{ listen: \"127.0.0.1:{}\" }} }}", self.port)
    }

    async fn prepare(&self) -> Topic {
        let path = format!("/in-{}", uid());
        Topic {
            from: format!("connector: c, topic: {path}"),
            address: format!("http://127.0.0.1:{}{path}", self.port),
        }
    }

    async fn publish(&self, topic: &Topic, numbers: Range<usize>) {
        for n in numbers {
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            loop {
                let sent = self
                    .client
                    .post(&topic.address)
                    .header("content-type", "text/plain")
                    .body(n.to_string())
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status().is_success() => break,
                    // Refused for good (no trigger on the path): the sender knows, nothing to
                    // send again.
                    Ok(r) if r.status().is_client_error() => break,
                    other => {
                        assert!(
                            std::time::Instant::now() < deadline,
                            "POST {n} to {}: {other:?}",
                            topic.address
                        );
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        }
    }
}

/// The body and content type of message `n` in `mode`.
fn body_of(mode: Mode, n: usize) -> (Vec<u8>, &'static str) {
    match mode {
        Mode::Binary => (n.to_string().into_bytes(), "text/plain"),
        Mode::Structured => (Mode::structured(n), STRUCTURED),
    }
}

/// The attributes of message `n` in `mode` as headers with `prefix` (none in structured mode).
fn headers_of(mode: Mode, n: usize, prefix: &str) -> Vec<(String, String)> {
    match mode {
        Mode::Binary => mode
            .attributes(n)
            .into_iter()
            .map(|(k, v)| (format!("{prefix}{k}"), v))
            .collect(),
        Mode::Structured => Vec::new(),
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

impl Modes for Http {
    async fn publish_event(&self, topic: &Topic, mode: Mode, n: usize) {
        let (body, content_type) = body_of(mode, n);
        let mut request = self
            .client
            .post(&topic.address)
            .header("content-type", content_type)
            .body(body);
        for (k, v) in headers_of(mode, n, "ce-") {
            request = request.header(k, v);
        }
        let r = request.send().await.expect("POST");
        assert!(r.status().is_success(), "{mode:?} event: {}", r.status());
    }
}

/// A connector whose subscription two processes share (a group, a queue, a shared
/// subscription): the case with one replica killed.
pub(crate) trait Replicas: Adapter {
    /// What the cases expect once a replica is killed.
    const AFTER_KILL: AfterKill;

    /// A topic two replicas share.
    fn prepare_shared(&self) -> impl Future<Output = Topic> + Send {
        self.prepare()
    }

    /// The connector's entry for the replica whose function path is `path` (`/a` or `/b`).
    fn replica_connector(&self, _path: &str) -> String {
        self.connector()
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
            from: format!("connector: c, topic: {topic}, group: g{}", uid()),
            address: topic,
        }
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
        topic.from.push_str(", group: workers");
        topic
    }
}

impl Replicas for Amqp {
    const AFTER_KILL: AfterKill = AfterKill::Survivor;

    fn replica_connector(&self, path: &str) -> String {
        format!(
            "{{ amqp: {{ url: \"{}\", connection_name: {}{} }} }}",
            self.url,
            self.name,
            path.replace('/', "-")
        )
    }
}

/// A `$share` group; the killed replica's session holds what it had, so it is started again.
impl Replicas for Mqtt {
    const AFTER_KILL: AfterKill = AfterKill::Restart;

    async fn prepare_shared(&self) -> Topic {
        let mut topic = self.prepare().await;
        topic.from.push_str(&format!(", group: g{}", uid()));
        topic
    }

    fn replica_connector(&self, path: &str) -> String {
        format!(
            "{{ mqtt: {{ url: \"mqtt://127.0.0.1:{}\", client_id: {}{}, session_expiry: 10m }} }}",
            self.port,
            self.client_id,
            path.replace('/', "-")
        )
    }
}

/// Consumers named per replica; the survivor claims the killed one's pending entries after
/// `claim_after`.
impl Replicas for Redis {
    const AFTER_KILL: AfterKill = AfterKill::Survivor;

    fn replica_connector(&self, path: &str) -> String {
        format!(
            "{{ redis: {{ url: \"{}\", claim_after: 2s, consumer: replica{} }} }}",
            self.url,
            path.replace('/', "-")
        )
    }
}

//! One implementation per connector of what the benchmark needs from a broker: a fresh lane
//! (topic, stream, queue or path) per measurement, a publisher into it, fnbroker's configuration
//! for it, and the direct path: a minimal consume -> forward loop with the same client library
//! fnbroker uses, and none of its normalization, routing or retries.

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use async_trait::async_trait;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt as _, StreamExt as _};
use tokio_util::sync::CancellationToken;

use crate::sink::Sink;

/// Where the direct path hands each consumed payload.
#[derive(Clone)]
pub(crate) enum Forward {
    /// POST it to the function server, as fnbroker does.
    Post {
        /// A pooled keep-alive client.
        client: reqwest::Client,
        /// The function's URL.
        url: Arc<str>,
    },
    /// Count it and nothing else: the raw consume rate.
    Count(Arc<Sink>),
}

impl Forward {
    /// Hands over one payload; whether that worked.
    pub(crate) async fn send(&self, payload: Bytes) -> bool {
        match self {
            Forward::Post { client, url } => client
                .post(url.as_ref())
                .header("content-type", "application/octet-stream")
                .body(payload)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success()),
            Forward::Count(sink) => {
                sink.current().record(&payload);
                true
            }
        }
    }
}

/// Publishes payloads into one lane.
#[async_trait]
pub(crate) trait Publish: Send {
    /// Queues one payload; may wait for earlier ones when the client's window is full.
    async fn send(&mut self, payload: Bytes) -> anyhow::Result<()>;
    /// Waits until the broker confirmed everything sent.
    async fn flush(&mut self) -> anyhow::Result<()>;
}

/// The direct path's loop, already subscribed when handed out.
pub(crate) type Consumer = BoxFuture<'static, anyhow::Result<()>>;

/// One broker, as the benchmark drives it.
#[async_trait]
pub(crate) trait Bus: Send + Sync {
    /// The connector's name in the report.
    fn name(&self) -> &'static str;
    /// Creates a fresh lane; returns its name.
    async fn create(&self, id: &str) -> anyhow::Result<String>;
    /// Removes a lane and what it holds.
    async fn remove(&self, lane: &str);
    /// fnbroker's configuration (without `admin`) consuming `lane` into `function_url`.
    fn config(&self, lane: &str, function_url: &str, max_in_flight: usize) -> String;
    /// A publisher into `lane`.
    async fn publisher(&self, lane: &str) -> anyhow::Result<Box<dyn Publish>>;
    /// The direct path on `lane`, subscribed, `concurrency` forwards in flight, until `stop`.
    async fn consumer(
        &self,
        lane: &str,
        forward: Forward,
        concurrency: usize,
        stop: CancellationToken,
    ) -> anyhow::Result<Consumer>;
    /// Whether the broker can hold a backlog of a million events for a slow consumer.
    fn holds_backlog(&self) -> bool;
    /// How many events the publisher may be ahead of the function: the broker's own limits (a
    /// Mosquitto session queues at most 1000; core NATS drops a slow consumer).
    fn window(&self) -> u64;
}

/// Every connector in the order `--connector all` runs them.
pub(crate) const ALL: [&str; 8] = [
    "http",
    "kafka",
    "nats",
    "jetstream",
    "amqp",
    "mqtt",
    "redis",
    "postgres",
];

/// The bus of a connector name.
pub(crate) fn bus(name: &str) -> anyhow::Result<Box<dyn Bus>> {
    Ok(match name {
        "http" => Box::new(HttpBus),
        "kafka" => Box::new(KafkaBus),
        "nats" => Box::new(NatsBus { jetstream: false }),
        "jetstream" => Box::new(NatsBus { jetstream: true }),
        "amqp" => Box::new(AmqpBus),
        "mqtt" => Box::new(MqttBus),
        "redis" => Box::new(RedisBus),
        "postgres" => Box::new(PostgresBus::default()),
        other => bail!(
            "unknown connector `{other}`; one of {} or all",
            ALL.join(", ")
        ),
    })
}

/// A stream of payloads forwarded `concurrency` at a time until `stop`, each followed by its
/// acknowledgement.
fn run_forwarding<S, F, A>(
    stream: S,
    forward: Forward,
    concurrency: usize,
    stop: CancellationToken,
    ack: A,
) -> Consumer
where
    S: futures::Stream<Item = (Bytes, F)> + Send + 'static,
    F: Send + 'static,
    A: Fn(F) -> BoxFuture<'static, ()> + Send + Sync + 'static,
{
    forward_all(stream, forward, concurrency, stop, ack).boxed()
}

async fn forward_all<S, F, A>(
    stream: S,
    forward: Forward,
    concurrency: usize,
    stop: CancellationToken,
    ack: A,
) -> anyhow::Result<()>
where
    S: futures::Stream<Item = (Bytes, F)> + Send,
    F: Send,
    A: Fn(F) -> BoxFuture<'static, ()> + Send + Sync,
{
    let ack = &ack;
    stream
        .take_until(stop.cancelled_owned())
        .for_each_concurrent(concurrency, |(payload, token)| {
            let forward = forward.clone();
            async move {
                forward.send(payload).await;
                ack(token).await;
            }
        })
        .await;
    Ok(())
}

/// Publishes awaiting the broker's confirmation, per publisher. Kept well below the clients' own
/// limits (async-nats holds at most 5,000 JetStream acks in flight and waits for a free one
/// inside `publish`, so confirmations must be polled before that).
const PENDING: usize = 1_024;

/// Pending confirmations, at most `cap` of them.
struct Pending<F> {
    futures: FuturesUnordered<F>,
    cap: usize,
}

impl<F: std::future::Future<Output = anyhow::Result<()>> + Send> Pending<F> {
    fn new(cap: usize) -> Self {
        Pending {
            futures: FuturesUnordered::new(),
            cap,
        }
    }
    async fn push(&mut self, f: F) -> anyhow::Result<()> {
        self.futures.push(f);
        while self.futures.len() >= self.cap {
            if let Some(r) = self.futures.next().await {
                r?;
            }
        }
        Ok(())
    }
    async fn drain(&mut self) -> anyhow::Result<()> {
        while let Some(r) = self.futures.next().await {
            r?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP ingress

struct HttpBus;

struct HttpPublisher {
    client: reqwest::Client,
    url: String,
    seq: u64,
    pending: Pending<BoxFuture<'static, anyhow::Result<()>>>,
}

#[async_trait]
impl Publish for HttpPublisher {
    async fn send(&mut self, payload: Bytes) -> anyhow::Result<()> {
        self.seq += 1;
        // Spawned, so that the request goes out now and not when the pending set is polled.
        let request = self
            .client
            .post(&self.url)
            .header("ce-specversion", "1.0")
            .header("ce-id", self.seq.to_string())
            .header("ce-source", "/bench")
            .header("ce-type", "com.example.bench")
            .header("content-type", "application/octet-stream")
            .body(payload)
            .send();
        let request = tokio::spawn(request);
        self.pending
            .push(
                async move {
                    let r = request.await?.context("POST to the ingress")?;
                    if !r.status().is_success() {
                        bail!("the ingress answered {}", r.status());
                    }
                    Ok(())
                }
                .boxed(),
            )
            .await
    }
    async fn flush(&mut self) -> anyhow::Result<()> {
        self.pending.drain().await
    }
}

#[async_trait]
impl Bus for HttpBus {
    fn name(&self) -> &'static str {
        "http"
    }
    async fn create(&self, id: &str) -> anyhow::Result<String> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        Ok(format!("127.0.0.1:{port}/bench-{id}"))
    }
    async fn remove(&self, _lane: &str) {}
    fn config(&self, lane: &str, function_url: &str, max_in_flight: usize) -> String {
        let (addr, path) = lane.split_once('/').unwrap_or((lane, ""));
        format!(
            "connectors:\n  web: {{ http: {{ listen: \"{addr}\" }} }}\n{}triggers:\n  - {{ name: bench, from: {{ connector: web, topic: \"/{path}\" }}, to: sink, delivery: {{ max_in_flight: {max_in_flight} }} }}\n",
            function(function_url, max_in_flight)
        )
    }
    async fn publisher(&self, lane: &str) -> anyhow::Result<Box<dyn Publish>> {
        Ok(Box::new(HttpPublisher {
            client: reqwest::Client::new(),
            url: format!("http://{lane}"),
            seq: 0,
            pending: Pending::new(64),
        }))
    }
    async fn consumer(
        &self,
        lane: &str,
        forward: Forward,
        concurrency: usize,
        stop: CancellationToken,
    ) -> anyhow::Result<Consumer> {
        // The direct path of an ingress: a minimal server that forwards each request body and
        // answers when the function did.
        let (addr, _) = lane.split_once('/').unwrap_or((lane, ""));
        let addr: SocketAddr = addr.parse()?;
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let permits = Arc::new(tokio::sync::Semaphore::new(concurrency));
        Ok(async move {
            loop {
                let (stream, _) = tokio::select! {
                    () = stop.cancelled() => return Ok(()),
                    r = listener.accept() => r?,
                };
                let _ = stream.set_nodelay(true);
                let forward = forward.clone();
                let permits = permits.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let forward = forward.clone();
                            let permits = permits.clone();
                            async move {
                                use http_body_util::BodyExt as _;
                                let body = req.into_body().collect().await.map(|b| b.to_bytes());
                                let ok = match body {
                                    Ok(b) => {
                                        let _permit = permits.acquire().await;
                                        forward.send(b).await
                                    }
                                    Err(_) => false,
                                };
                                let mut r =
                                    hyper::Response::new(http_body_util::Full::new(Bytes::new()));
                                *r.status_mut() = if ok {
                                    hyper::StatusCode::ACCEPTED
                                } else {
                                    hyper::StatusCode::BAD_GATEWAY
                                };
                                Ok::<_, std::convert::Infallible>(r)
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        }
        .boxed())
    }
    fn holds_backlog(&self) -> bool {
        false
    }
    fn window(&self) -> u64 {
        5_000
    }
}

fn function(url: &str, concurrency: usize) -> String {
    format!(
        "functions:\n  sink: {{ http: {{ url: \"{url}\" }}, timeout: 30s, concurrency: {concurrency} }}\n"
    )
}

fn trigger(from: &str, max_in_flight: usize) -> String {
    format!(
        "triggers:\n  - {{ name: bench, from: {{ {from} }}, to: sink, delivery: {{ max_in_flight: {max_in_flight} }} }}\n"
    )
}

// ---------------------------------------------------------------------------------------------
// Kafka (tansu)

const KAFKA: &str = "127.0.0.1:9092";

struct KafkaBus;

struct KafkaPublisher {
    producer: rdkafka::producer::FutureProducer,
    topic: String,
    pending: Pending<BoxFuture<'static, anyhow::Result<()>>>,
}

#[async_trait]
impl Publish for KafkaPublisher {
    async fn send(&mut self, payload: Bytes) -> anyhow::Result<()> {
        use rdkafka::producer::FutureRecord;
        loop {
            let record = FutureRecord::<(), [u8]>::to(&self.topic).payload(payload.as_ref());
            match self.producer.send_result(record) {
                Ok(delivery) => {
                    let f = async move {
                        match delivery.await {
                            Ok(Ok(_)) => Ok(()),
                            Ok(Err((e, _))) => Err(anyhow!("produce: {e}")),
                            Err(_) => Err(anyhow!("produce: cancelled")),
                        }
                    };
                    return self.pending.push(f.boxed()).await;
                }
                Err((e, _)) => {
                    // The local queue is full: wait for some deliveries, then try again.
                    if self.pending.futures.is_empty() {
                        bail!("produce: {e}");
                    }
                    if let Some(r) = self.pending.futures.next().await {
                        r?;
                    }
                }
            }
        }
    }
    async fn flush(&mut self) -> anyhow::Result<()> {
        self.pending.drain().await
    }
}

fn kafka_admin()
-> anyhow::Result<rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext>> {
    rdkafka::ClientConfig::new()
        .set("bootstrap.servers", KAFKA)
        .create()
        .context("kafka admin client")
}

#[async_trait]
impl Bus for KafkaBus {
    fn name(&self) -> &'static str {
        "kafka"
    }
    async fn create(&self, id: &str) -> anyhow::Result<String> {
        use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
        let topic = format!("bench-{id}");
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let result = kafka_admin()?
            .create_topics([&NewTopic::new(&topic, 1, TopicReplication::Fixed(1))], &opts)
            .await
            .with_context(|| format!("cannot create topic {topic}: is tansu running on {KAFKA}? (scripts/services.sh starts it)"))?;
        for r in result {
            r.map_err(|(t, e)| anyhow!("cannot create topic {t}: {e}"))?;
        }
        Ok(topic)
    }
    async fn remove(&self, lane: &str) {
        if let Ok(admin) = kafka_admin() {
            let _ = admin
                .delete_topics(&[lane], &rdkafka::admin::AdminOptions::new())
                .await;
        }
    }
    fn config(&self, lane: &str, function_url: &str, max_in_flight: usize) -> String {
        format!(
            "connectors:\n  bus: {{ kafka: {{ brokers: [\"{KAFKA}\"] }} }}\n{}{}",
            function(function_url, max_in_flight),
            trigger(
                &format!("connector: bus, topic: \"{lane}\", group: \"{lane}-fnbroker\""),
                max_in_flight
            )
        )
    }
    async fn publisher(&self, lane: &str) -> anyhow::Result<Box<dyn Publish>> {
        let producer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", KAFKA)
            .set("linger.ms", "5")
            .set("message.timeout.ms", "60000")
            .create()
            .context("kafka producer")?;
        Ok(Box::new(KafkaPublisher {
            producer,
            topic: lane.to_string(),
            pending: Pending::new(PENDING),
        }))
    }
    async fn consumer(
        &self,
        lane: &str,
        forward: Forward,
        concurrency: usize,
        stop: CancellationToken,
    ) -> anyhow::Result<Consumer> {
        use rdkafka::Message as _;
        use rdkafka::consumer::{Consumer as _, StreamConsumer};
        let consumer: StreamConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", KAFKA)
            .set("group.id", format!("{lane}-direct"))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "true")
            .create()
            .context("kafka consumer")?;
        consumer.subscribe(&[lane])?;
        Ok(async move {
            let stream = consumer.stream().filter_map(|m| {
                futures::future::ready(
                    m.ok()
                        .map(|m| (Bytes::copy_from_slice(m.payload().unwrap_or_default()), ())),
                )
            });
            forward_all(stream, forward, concurrency, stop, |()| {
                futures::future::ready(()).boxed()
            })
            .await
        }
        .boxed())
    }
    fn holds_backlog(&self) -> bool {
        true
    }
    fn window(&self) -> u64 {
        20_000
    }
}

// ---------------------------------------------------------------------------------------------
// NATS core and JetStream

const NATS: &str = "nats://127.0.0.1:4222";

struct NatsBus {
    jetstream: bool,
}

async fn nats() -> anyhow::Result<async_nats::Client> {
    async_nats::connect(NATS)
        .await
        .with_context(|| format!("cannot connect to NATS at {NATS}"))
}

struct NatsPublisher {
    client: async_nats::Client,
    js: Option<async_nats::jetstream::Context>,
    subject: String,
    pending: Pending<BoxFuture<'static, anyhow::Result<()>>>,
}

#[async_trait]
impl Publish for NatsPublisher {
    async fn send(&mut self, payload: Bytes) -> anyhow::Result<()> {
        match &self.js {
            Some(js) => {
                let ack = js
                    .publish(self.subject.clone(), payload)
                    .await
                    .context("jetstream publish")?
                    .into_future();
                self.pending
                    .push(async move { ack.await.map(|_| ()).context("jetstream ack") }.boxed())
                    .await
            }
            None => self
                .client
                .publish(self.subject.clone(), payload)
                .await
                .context("nats publish"),
        }
    }
    async fn flush(&mut self) -> anyhow::Result<()> {
        self.pending.drain().await?;
        self.client.flush().await.context("nats flush")
    }
}

/// How long one pull request waits at the server. nats-server 2.9.10 now and then leaves a pull
/// request unserved while the stream holds messages (fnbroker's connector works around the same
/// stall, see `PULL_EXPIRES` there); at async-nats' default of 30 s that equals the harness' stall
/// limit and a CI run counted 4,617 of 5,000 raw-consume events as lost. A short expiry re-pulls.
const PULL_EXPIRES: Duration = Duration::from_secs(2);

fn stream_name(lane: &str) -> String {
    lane.replace('.', "_").to_uppercase()
}

#[async_trait]
impl Bus for NatsBus {
    fn name(&self) -> &'static str {
        if self.jetstream { "jetstream" } else { "nats" }
    }
    async fn create(&self, id: &str) -> anyhow::Result<String> {
        let subject = format!("bench.{id}");
        if self.jetstream {
            let js = async_nats::jetstream::new(nats().await?);
            js.create_stream(async_nats::jetstream::stream::Config {
                name: stream_name(&subject),
                subjects: vec![subject.clone()],
                ..Default::default()
            })
            .await
            .map_err(|e| anyhow!("cannot create stream: {e}"))?;
        }
        Ok(subject)
    }
    async fn remove(&self, lane: &str) {
        if self.jetstream
            && let Ok(client) = nats().await
        {
            let _ = async_nats::jetstream::new(client)
                .delete_stream(stream_name(lane))
                .await;
        }
    }
    fn config(&self, lane: &str, function_url: &str, max_in_flight: usize) -> String {
        let from = if self.jetstream {
            format!(
                "connector: bus, stream: {}, topic: \"{lane}\", group: fnbroker",
                stream_name(lane)
            )
        } else {
            format!("connector: bus, topic: \"{lane}\"")
        };
        format!(
            "connectors:\n  bus: {{ nats: {{ url: \"{NATS}\" }} }}\n{}{}",
            function(function_url, max_in_flight),
            trigger(&from, max_in_flight)
        )
    }
    async fn publisher(&self, lane: &str) -> anyhow::Result<Box<dyn Publish>> {
        let client = nats().await?;
        Ok(Box::new(NatsPublisher {
            js: self
                .jetstream
                .then(|| async_nats::jetstream::new(client.clone())),
            client,
            subject: lane.to_string(),
            pending: Pending::new(PENDING),
        }))
    }
    async fn consumer(
        &self,
        lane: &str,
        forward: Forward,
        concurrency: usize,
        stop: CancellationToken,
    ) -> anyhow::Result<Consumer> {
        let client = nats().await?;
        if !self.jetstream {
            let sub = client.subscribe(lane.to_string()).await?;
            client.flush().await?;
            let stream = sub.map(|m| (m.payload, ()));
            return Ok(run_forwarding(stream, forward, concurrency, stop, |()| {
                futures::future::ready(()).boxed()
            }));
        }
        use async_nats::jetstream::consumer::{AckPolicy, pull};
        let js = async_nats::jetstream::new(client);
        let stream = js
            .get_stream(stream_name(lane))
            .await
            .map_err(|e| anyhow!("stream: {e}"))?;
        let consumer = stream
            .create_consumer(pull::Config {
                durable_name: Some("direct".into()),
                ack_policy: AckPolicy::Explicit,
                max_ack_pending: i64::try_from(concurrency).unwrap_or(64),
                ..Default::default()
            })
            .await
            .map_err(|e| anyhow!("consumer: {e}"))?;
        let messages = consumer
            .stream()
            .max_messages_per_batch(concurrency)
            .expires(PULL_EXPIRES)
            .messages()
            .await
            .map_err(|e| anyhow!("pull: {e}"))?;
        let stream =
            messages.filter_map(|m| futures::future::ready(m.ok().map(|m| (m.payload.clone(), m))));
        Ok(run_forwarding(
            stream,
            forward,
            concurrency,
            stop,
            |m: async_nats::jetstream::Message| {
                async move {
                    let _ = m.ack().await;
                }
                .boxed()
            },
        ))
    }
    fn holds_backlog(&self) -> bool {
        self.jetstream
    }
    fn window(&self) -> u64 {
        // Core NATS: below fnbroker's subscription buffer (4096), past which a slow consumer
        // loses messages, as core NATS does by nature.
        if self.jetstream { 20_000 } else { 2_000 }
    }
}

// ---------------------------------------------------------------------------------------------
// AMQP 0-9-1 (RabbitMQ)

const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

struct AmqpBus;

async fn amqp_channel() -> anyhow::Result<(lapin::Connection, lapin::Channel)> {
    let conn = lapin::Connection::connect(AMQP, lapin::ConnectionProperties::default())
        .await
        .with_context(|| format!("cannot connect to RabbitMQ at {AMQP}"))?;
    let ch = conn.create_channel().await?;
    Ok((conn, ch))
}

struct AmqpPublisher {
    _conn: lapin::Connection,
    channel: lapin::Channel,
    queue: String,
    pending: Pending<BoxFuture<'static, anyhow::Result<()>>>,
}

#[async_trait]
impl Publish for AmqpPublisher {
    async fn send(&mut self, payload: Bytes) -> anyhow::Result<()> {
        let confirm = self
            .channel
            .basic_publish(
                "".into(),
                self.queue.clone().into(),
                lapin::options::BasicPublishOptions::default(),
                &payload,
                lapin::BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .context("amqp publish")?;
        self.pending
            .push(
                async move {
                    match confirm.await.context("amqp confirm")? {
                        lapin::Confirmation::Nack(_) => bail!("amqp: nack"),
                        _ => Ok(()),
                    }
                }
                .boxed(),
            )
            .await
    }
    async fn flush(&mut self) -> anyhow::Result<()> {
        self.pending.drain().await
    }
}

#[async_trait]
impl Bus for AmqpBus {
    fn name(&self) -> &'static str {
        "amqp"
    }
    async fn create(&self, id: &str) -> anyhow::Result<String> {
        let queue = format!("bench-{id}");
        let (conn, ch) = amqp_channel().await?;
        ch.queue_declare(
            queue.clone().into(),
            lapin::options::QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await?;
        let _ = conn.close(200, "bye".into()).await;
        Ok(queue)
    }
    async fn remove(&self, lane: &str) {
        if let Ok((conn, ch)) = amqp_channel().await {
            let _ = ch
                .queue_delete(lane.to_string().into(), Default::default())
                .await;
            let _ = conn.close(200, "bye".into()).await;
        }
    }
    fn config(&self, lane: &str, function_url: &str, max_in_flight: usize) -> String {
        format!(
            "connectors:\n  bus: {{ amqp: {{ url: \"{AMQP}\" }} }}\n{}{}",
            function(function_url, max_in_flight),
            trigger(&format!("connector: bus, queue: \"{lane}\""), max_in_flight)
        )
    }
    async fn publisher(&self, lane: &str) -> anyhow::Result<Box<dyn Publish>> {
        let (conn, channel) = amqp_channel().await?;
        channel
            .confirm_select(lapin::options::ConfirmSelectOptions::default())
            .await?;
        Ok(Box::new(AmqpPublisher {
            _conn: conn,
            channel,
            queue: lane.to_string(),
            pending: Pending::new(PENDING),
        }))
    }
    async fn consumer(
        &self,
        lane: &str,
        forward: Forward,
        concurrency: usize,
        stop: CancellationToken,
    ) -> anyhow::Result<Consumer> {
        let (conn, ch) = amqp_channel().await?;
        ch.basic_qos(
            u16::try_from(concurrency).unwrap_or(u16::MAX),
            Default::default(),
        )
        .await?;
        let consumer = ch
            .basic_consume(
                lane.to_string().into(),
                "direct".into(),
                Default::default(),
                lapin::types::FieldTable::default(),
            )
            .await?;
        let stream = consumer.filter_map(move |d| {
            let _keep = &conn;
            futures::future::ready(d.ok().map(|d| (Bytes::from(d.data), d.acker)))
        });
        Ok(run_forwarding(
            stream,
            forward,
            concurrency,
            stop,
            |acker: lapin::Acker| {
                async move {
                    let _ = acker.ack(Default::default()).await;
                }
                .boxed()
            },
        ))
    }
    fn holds_backlog(&self) -> bool {
        true
    }
    fn window(&self) -> u64 {
        20_000
    }
}

// ---------------------------------------------------------------------------------------------
// Redis Streams

const REDIS: &str = "redis://127.0.0.1:6379";

struct RedisBus;

async fn redis_conn() -> anyhow::Result<redis::aio::MultiplexedConnection> {
    redis::Client::open(REDIS)?
        .get_multiplexed_async_connection()
        .await
        .with_context(|| format!("cannot connect to Redis at {REDIS}"))
}

struct RedisPublisher {
    conn: redis::aio::MultiplexedConnection,
    stream: String,
    pending: Pending<BoxFuture<'static, anyhow::Result<()>>>,
}

#[async_trait]
impl Publish for RedisPublisher {
    async fn send(&mut self, payload: Bytes) -> anyhow::Result<()> {
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&self.stream)
            .arg("*")
            .arg("data")
            .arg(payload.as_ref());
        // Sent now (a redis-rs command goes out when its future is first polled), confirmed
        // later.
        let added = tokio::spawn(async move { cmd.query_async::<redis::Value>(&mut conn).await });
        self.pending
            .push(async move { added.await?.map(|_| ()).context("XADD") }.boxed())
            .await
    }
    async fn flush(&mut self) -> anyhow::Result<()> {
        self.pending.drain().await
    }
}

/// The `data` field of each entry of an `XREADGROUP` answer, with its id.
fn redis_entries(value: redis::Value) -> Vec<(Bytes, String)> {
    use redis::Value::{Array, BulkString};
    let mut out = Vec::new();
    let Array(streams) = value else {
        return out;
    };
    for stream in streams {
        let Array(mut parts) = stream else { continue };
        let Some(Array(entries)) = parts.pop() else {
            continue;
        };
        for entry in entries {
            let Array(parts) = entry else { continue };
            let [BulkString(id), Array(fields)] = &parts[..] else {
                continue;
            };
            let data = fields
                .chunks(2)
                .find(|pair| matches!(&pair[0], BulkString(k) if k == b"data"))
                .and_then(|pair| match &pair[1] {
                    BulkString(v) => Some(Bytes::copy_from_slice(v)),
                    _ => None,
                })
                .unwrap_or_default();
            out.push((data, String::from_utf8_lossy(id).into_owned()));
        }
    }
    out
}

#[async_trait]
impl Bus for RedisBus {
    fn name(&self) -> &'static str {
        "redis"
    }
    async fn create(&self, id: &str) -> anyhow::Result<String> {
        let stream = format!("bench-{id}");
        let mut conn = redis_conn().await?;
        for group in ["fnbroker", "direct"] {
            redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(&stream)
                .arg(group)
                .arg("0")
                .arg("MKSTREAM")
                .query_async::<redis::Value>(&mut conn)
                .await
                .context("XGROUP CREATE")?;
        }
        Ok(stream)
    }
    async fn remove(&self, lane: &str) {
        if let Ok(mut conn) = redis_conn().await {
            let _ = redis::cmd("DEL")
                .arg(lane)
                .query_async::<redis::Value>(&mut conn)
                .await;
        }
    }
    fn config(&self, lane: &str, function_url: &str, max_in_flight: usize) -> String {
        format!(
            "connectors:\n  bus: {{ redis: {{ url: \"{REDIS}\" }} }}\n{}{}",
            function(function_url, max_in_flight),
            trigger(
                &format!("connector: bus, topic: \"{lane}\", group: fnbroker"),
                max_in_flight
            )
        )
    }
    async fn publisher(&self, lane: &str) -> anyhow::Result<Box<dyn Publish>> {
        Ok(Box::new(RedisPublisher {
            conn: redis_conn().await?,
            stream: lane.to_string(),
            pending: Pending::new(PENDING),
        }))
    }
    async fn consumer(
        &self,
        lane: &str,
        forward: Forward,
        concurrency: usize,
        stop: CancellationToken,
    ) -> anyhow::Result<Consumer> {
        // Blocking reads on a connection of their own; acknowledgements on another.
        let client = redis::Client::open(REDIS)?;
        let config =
            redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(5)));
        let reader = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let acks = redis_conn().await?;
        let lane = lane.to_string();
        let read_lane = lane.clone();
        let stream = futures::stream::unfold(reader, move |mut reader| {
            let lane = read_lane.clone();
            async move {
                let value: redis::Value = redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg("direct")
                    .arg("direct")
                    .arg("COUNT")
                    .arg(concurrency)
                    .arg("BLOCK")
                    .arg(1000)
                    .arg("STREAMS")
                    .arg(&lane)
                    .arg(">")
                    .query_async(&mut reader)
                    .await
                    .ok()?;
                Some((futures::stream::iter(redis_entries(value)), reader))
            }
        })
        .flatten();
        Ok(run_forwarding(
            stream,
            forward,
            concurrency,
            stop,
            move |id: String| {
                let (mut acks, lane) = (acks.clone(), lane.clone());
                async move {
                    let _ = redis::cmd("XACK")
                        .arg(&lane)
                        .arg("direct")
                        .arg(id)
                        .query_async::<redis::Value>(&mut acks)
                        .await;
                }
                .boxed()
            },
        ))
    }
    fn holds_backlog(&self) -> bool {
        true
    }
    fn window(&self) -> u64 {
        20_000
    }
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL change data capture, on a cluster of the bench's own (`wal_level = logical`)

/// A PostgreSQL cluster made with `initdb` in a temporary directory (as the `postgres` user when
/// the bench runs as root), stopped when dropped.
struct PgCluster {
    dir: tempfile::TempDir,
    port: u16,
}

fn pg_run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let bin = std::fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL's server programs in /usr/lib/postgresql")?
        .filter_map(|e| Some(e.ok()?.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .max()
        .context("initdb in /usr/lib/postgresql/<version>/bin")?;
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
    let mut cmd = if root {
        let mut c = std::process::Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin.join(program));
        c
    } else {
        std::process::Command::new(bin.join(program))
    };
    let out = cmd.args(args).output()?;
    if !out.status.success() {
        bail!("{program}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

impl PgCluster {
    fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        std::process::Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir.path())
            .status()?;
        let data = dir.path().join("data");
        let data = data.to_str().context("path")?;
        pg_run(
            "initdb",
            &["-D", data, "-A", "trust", "-U", "postgres", "--no-sync"],
        )?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let options = format!(
            "-c port={port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c wal_level=logical -c max_replication_slots=20 -c max_wal_senders=20 -c fsync=off",
            dir.path().display()
        );
        let log = dir.path().join("server.log");
        pg_run(
            "pg_ctl",
            &[
                "-D",
                data,
                "-l",
                log.to_str().context("path")?,
                "-o",
                &options,
                "-w",
                "start",
            ],
        )?;
        Ok(Self { dir, port })
    }
    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if let Some(data) = self.dir.path().join("data").to_str() {
            let _ = pg_run("pg_ctl", &["-D", data, "-m", "immediate", "-w", "stop"]);
        }
    }
}

#[derive(Default)]
struct PostgresBus {
    cluster: std::sync::Mutex<Option<Arc<PgCluster>>>,
}

impl PostgresBus {
    fn cluster(&self) -> anyhow::Result<Arc<PgCluster>> {
        let mut slot = self
            .cluster
            .lock()
            .map_err(|_| anyhow!("cluster lock poisoned"))?;
        if let Some(c) = slot.as_ref() {
            return Ok(Arc::clone(c));
        }
        let c = Arc::new(PgCluster::start()?);
        *slot = Some(Arc::clone(&c));
        Ok(c)
    }
    async fn sql(&self) -> anyhow::Result<tokio_postgres::Client> {
        let (client, connection) =
            tokio_postgres::connect(&self.cluster()?.url(), tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        Ok(client)
    }
}

struct PostgresPublisher {
    client: Arc<tokio_postgres::Client>,
    insert: tokio_postgres::Statement,
    pending: Pending<BoxFuture<'static, anyhow::Result<()>>>,
}

#[async_trait]
impl Publish for PostgresPublisher {
    async fn send(&mut self, payload: Bytes) -> anyhow::Result<()> {
        // One transaction per event; sent now, confirmed later (pipelined on one session).
        let (client, insert) = (Arc::clone(&self.client), self.insert.clone());
        let text = String::from_utf8_lossy(&payload).into_owned();
        let done = tokio::spawn(async move { client.execute(&insert, &[&text]).await });
        self.pending
            .push(async move { done.await?.map(|_| ()).context("INSERT") }.boxed())
            .await
    }
    async fn flush(&mut self) -> anyhow::Result<()> {
        self.pending.drain().await
    }
}

#[async_trait]
impl Bus for PostgresBus {
    fn name(&self) -> &'static str {
        "postgres"
    }
    async fn create(&self, id: &str) -> anyhow::Result<String> {
        let table: String = format!("bench_{id}")
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect();
        let c = self.sql().await?;
        c.batch_execute(&format!(
            "CREATE TABLE {table} (data text); CREATE PUBLICATION {table} FOR TABLE {table};"
        ))
        .await
        .context("table and publication")?;
        // A slot is made in a transaction of its own.
        for reader in ["fnbroker", "direct"] {
            c.execute(
                "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
                &[&format!("{table}_{reader}")],
            )
            .await
            .context("slot")?;
        }
        Ok(table)
    }
    async fn remove(&self, lane: &str) {
        if let Ok(c) = self.sql().await {
            for slot in ["fnbroker", "direct"] {
                let _ = c
                    .execute(
                        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active",
                        &[&format!("{lane}_{slot}")],
                    )
                    .await;
            }
            let _ = c
                .batch_execute(&format!("DROP PUBLICATION {lane}; DROP TABLE {lane};"))
                .await;
        }
    }
    fn config(&self, lane: &str, function_url: &str, max_in_flight: usize) -> String {
        let url = self.cluster().map(|c| c.url()).unwrap_or_default();
        format!(
            "connectors:\n  bus: {{ postgres: {{ url: \"{url}\", slot: {lane}_fnbroker, publication: {lane} }} }}\n{}{}",
            function(function_url, max_in_flight),
            trigger(&format!("connector: bus, topic: {lane}"), max_in_flight)
        )
    }
    async fn publisher(&self, lane: &str) -> anyhow::Result<Box<dyn Publish>> {
        let client = self.sql().await?;
        let insert = client
            .prepare(&format!("INSERT INTO {lane} VALUES ($1)"))
            .await?;
        Ok(Box::new(PostgresPublisher {
            client: Arc::new(client),
            insert,
            pending: Pending::new(PENDING),
        }))
    }
    async fn consumer(
        &self,
        lane: &str,
        forward: Forward,
        concurrency: usize,
        stop: CancellationToken,
    ) -> anyhow::Result<Consumer> {
        use pgwire_replication::{ReplicationClient, ReplicationConfig, ReplicationEvent};
        let cluster = self.cluster()?;
        let config = ReplicationConfig::new(
            "127.0.0.1",
            "postgres",
            "",
            "postgres",
            format!("{lane}_direct"),
            lane,
        )
        .with_port(cluster.port)
        .with_tls(pgwire_replication::TlsConfig::disabled())
        .with_status_interval(Duration::from_millis(500));
        let client = ReplicationClient::connect(config).await?;
        // The tuple bytes of each insert (the payload inside them), the position moved at each
        // commit as it is read: the minimal consumer.
        let stream = futures::stream::unfold(client, |mut client| async move {
            loop {
                match client.recv().await.ok()?? {
                    ReplicationEvent::XLogData { data, .. } if data.first() == Some(&b'I') => {
                        return Some((data, client));
                    }
                    ReplicationEvent::Commit { end_lsn, .. } => client.update_applied_lsn(end_lsn),
                    _ => {}
                }
            }
        })
        .map(|data| (data, ()));
        Ok(run_forwarding(stream, forward, concurrency, stop, |()| {
            futures::future::ready(()).boxed()
        }))
    }
    fn holds_backlog(&self) -> bool {
        true
    }
    fn window(&self) -> u64 {
        20_000
    }
}

// ---------------------------------------------------------------------------------------------
// MQTT (Mosquitto), QoS 1, MQTT 5

const MQTT_HOST: &str = "127.0.0.1";
const MQTT_PORT: u16 = 1883;

struct MqttBus;

fn mqtt_client(
    id: &str,
    receive_maximum: Option<u16>,
) -> (rumqttc::v5::AsyncClient, rumqttc::v5::EventLoop) {
    let mut o = rumqttc::v5::MqttOptions::new(id, MQTT_HOST, MQTT_PORT);
    o.set_keep_alive(Duration::from_secs(30))
        .set_clean_start(true)
        .set_manual_acks(receive_maximum.is_some())
        .set_receive_maximum(receive_maximum);
    rumqttc::v5::AsyncClient::new(o, 1024)
}

struct MqttPublisher {
    client: rumqttc::v5::AsyncClient,
    topic: String,
    sent: u64,
    acked: Arc<AtomicU64>,
    failed: Arc<std::sync::Mutex<Option<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MqttPublisher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[async_trait]
impl Publish for MqttPublisher {
    async fn send(&mut self, payload: Bytes) -> anyhow::Result<()> {
        self.client
            .publish(
                self.topic.clone(),
                rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                false,
                payload,
            )
            .await
            .context("mqtt publish")?;
        self.sent += 1;
        Ok(())
    }
    async fn flush(&mut self) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        while self.acked.load(Ordering::Acquire) < self.sent {
            if let Some(e) = self.failed.lock().ok().and_then(|f| f.clone()) {
                bail!("mqtt publisher: {e}");
            }
            if tokio::time::Instant::now() > deadline {
                bail!("mqtt: publishes not acknowledged within 120s");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(())
    }
}

#[async_trait]
impl Bus for MqttBus {
    fn name(&self) -> &'static str {
        "mqtt"
    }
    async fn create(&self, id: &str) -> anyhow::Result<String> {
        Ok(format!("bench/{id}"))
    }
    async fn remove(&self, _lane: &str) {}
    fn config(&self, lane: &str, function_url: &str, max_in_flight: usize) -> String {
        let client_id = format!("fnbroker-{}", lane.replace('/', "-"));
        format!(
            "connectors:\n  bus: {{ mqtt: {{ url: \"mqtt://{MQTT_HOST}:{MQTT_PORT}\", client_id: \"{client_id}\", session_expiry: 60s }} }}\n{}{}",
            function(function_url, max_in_flight),
            trigger(
                &format!("connector: bus, topic: \"{lane}\", qos: 1"),
                max_in_flight
            )
        )
    }
    async fn publisher(&self, lane: &str) -> anyhow::Result<Box<dyn Publish>> {
        use rumqttc::v5::Event;
        use rumqttc::v5::mqttbytes::v5::Packet;
        let (client, mut events) = mqtt_client(&format!("pub-{}", uuid::Uuid::new_v4()), None);
        let acked = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(std::sync::Mutex::new(None));
        let (a, f) = (acked.clone(), failed.clone());
        let task = tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        a.fetch_add(1, Ordering::AcqRel);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if let Ok(mut f) = f.lock() {
                            *f = Some(e.to_string());
                        }
                        return;
                    }
                }
            }
        });
        Ok(Box::new(MqttPublisher {
            client,
            topic: lane.to_string(),
            sent: 0,
            acked,
            failed,
            task,
        }))
    }
    async fn consumer(
        &self,
        lane: &str,
        forward: Forward,
        concurrency: usize,
        stop: CancellationToken,
    ) -> anyhow::Result<Consumer> {
        use rumqttc::v5::Event;
        use rumqttc::v5::mqttbytes::v5::{Packet, Publish as Pub};
        // As fnbroker does: a receive maximum of the deliveries in flight plus 1,024, so PUBACKs
        // Mosquitto has not read yet do not use up its queue allowance beyond it.
        let receive_maximum = u16::try_from(concurrency.saturating_add(1024)).unwrap_or(u16::MAX);
        let (client, mut events) = mqtt_client(
            &format!("direct-{}", uuid::Uuid::new_v4()),
            Some(receive_maximum),
        );
        client
            .subscribe(lane.to_string(), rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
            .await?;
        // Subscribed once the SUBACK is in.
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => return Ok(()),
                    Ok(_) => {}
                    Err(e) => return Err(anyhow!("mqtt: {e}")),
                }
            }
        })
        .await
        .context("mqtt: no SUBACK within 10s")??;
        // Unbounded as fnbroker's: the receive maximum bounds it, and the poller never stops
        // (PUBACKs only go out while the event loop is polled).
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Pub>();
        let poller_stop = stop.clone();
        tokio::spawn(async move {
            loop {
                let ev = tokio::select! {
                    () = poller_stop.cancelled() => return,
                    ev = events.poll() => ev,
                };
                match ev {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if tx.send(p).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        let stream = futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
            .map(|p: Pub| (p.payload.clone(), p));
        Ok(run_forwarding(
            stream,
            forward,
            concurrency,
            stop,
            move |p: Pub| {
                let client = client.clone();
                async move {
                    let _ = client.ack(&p).await;
                }
                .boxed()
            },
        ))
    }
    fn holds_backlog(&self) -> bool {
        false
    }
    fn window(&self) -> u64 {
        // Mosquitto queues at most 1000 messages per session beyond the client's receive
        // maximum by default and drops the rest ("Outgoing messages are being dropped" in its
        // log); PUBACKs it has not read yet count against that. With a receive maximum of the
        // deliveries in flight plus 1,024 (fnbroker's and this direct loop's), nothing was lost
        // 1,000 and 1,500 ahead (Mosquitto 2.0.11, its defaults, 100,000 events per run); 2,000
        // ahead is past the allowance and loses messages.
        1000
    }
}

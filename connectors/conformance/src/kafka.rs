//! Kafka helpers of the end-to-end tests: topics with random names, a producer, and a reader of
//! what fnbroker published. They talk to tansu on 127.0.0.1:9092 and fail loudly without it.

use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

/// The machine's tansu.
pub const BROKERS: &str = "127.0.0.1:9092";

/// The connector entry tests use: short session timeouts, since a group's first join on tansu
/// takes about half of it.
pub fn connector(name: &str, extra: &str) -> String {
    crate::yaml!(
        "  <name>: { kafka: { brokers: [\"<BROKERS>\"]<extra>, options: { session.timeout.ms: \"6000\", heartbeat.interval.ms: \"500\" } } }\n",
        name = name,
        BROKERS = BROKERS,
        extra = extra
    )
}

/// A name no other test uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// Creates a topic with `partitions` partitions; panics if the broker is not there.
pub async fn create_topic(name: &str, partitions: i32) {
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", BROKERS);
    create_topic_as(&client, name, partitions).await;
}

/// Creates a topic as the client `client` describes (its brokers, TLS and credentials).
pub async fn create_topic_as(client: &ClientConfig, name: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = client.create().expect("admin client");
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let result = admin
        .create_topics([&topic], &opts)
        .await
        .unwrap_or_else(|e| panic!("cannot create topic {name} (is tansu running on {BROKERS}? scripts/services.sh starts it): {e}"));
    for r in result {
        r.unwrap_or_else(|(t, e)| panic!("cannot create topic {t}: {e}"));
    }
}

/// A producer to [`BROKERS`] that waits for every record to be written.
pub fn producer() -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", BROKERS)
        .set("linger.ms", "5")
        .set("message.timeout.ms", "30000")
        .create()
        .expect("producer")
}

/// One record to produce.
pub struct Out<'a> {
    /// The record's key.
    pub key: Option<&'a str>,
    /// The partition, when not chosen by the key.
    pub partition: Option<i32>,
    /// Record headers (name, value).
    pub headers: Vec<(&'a str, &'a str)>,
    /// The record's value.
    pub payload: &'a [u8],
}

/// Produces one record and waits until the broker has it.
pub async fn produce(producer: &FutureProducer, topic: &str, out: Out<'_>) {
    let mut headers = OwnedHeaders::new();
    for (k, v) in &out.headers {
        headers = headers.insert(Header {
            key: k,
            value: Some(*v),
        });
    }
    let mut record = FutureRecord::to(topic)
        .payload(out.payload)
        .headers(headers);
    if let Some(k) = out.key {
        record = record.key(k);
    }
    if let Some(p) = out.partition {
        record = record.partition(p);
    }
    producer
        .send(record, Duration::from_secs(30))
        .await
        .unwrap_or_else(|(e, _)| panic!("produce to {topic}: {e}"));
}

/// Creates `topic` and produces one plain record to it, as the client `client` describes.
pub async fn create_and_produce_as(client: &ClientConfig, topic: &str, payload: &[u8]) {
    create_topic_as(client, topic, 1).await;
    let producer: FutureProducer = client
        .clone()
        .set("message.timeout.ms", "30000")
        .create()
        .expect("producer");
    produce(
        &producer,
        topic,
        Out {
            key: None,
            partition: None,
            headers: vec![],
            payload,
        },
    )
    .await;
}

/// Produces `n` plain records `0..n` (payload = the number) as fast as the producer takes them.
pub async fn produce_many(producer: &FutureProducer, topic: &str, n: usize, size: usize) {
    let mut pending = futures::stream::FuturesUnordered::new();
    for i in 0..n {
        let mut payload = format!("{i}").into_bytes();
        payload.resize(size.max(payload.len()), b' ');
        let producer = producer.clone();
        let topic = topic.to_string();
        pending.push(async move {
            producer
                .send(
                    FutureRecord::<(), _>::to(&topic).payload(&payload),
                    Duration::from_secs(60),
                )
                .await
                .map(|_| ())
                .map_err(|(e, _)| e)
        });
        if pending.len() >= 2000 {
            use futures::StreamExt;
            if let Some(r) = pending.next().await {
                r.expect("produce");
            }
        }
    }
    use futures::StreamExt;
    while let Some(r) = pending.next().await {
        r.expect("produce");
    }
}

/// Produces the plain records `range` (payload = the number), letting the partitioner spread
/// them, and waits for every delivery report.
pub async fn produce_range(producer: &FutureProducer, topic: &str, range: std::ops::Range<usize>) {
    let sends = range.map(|i| {
        let payload = i.to_string();
        async move {
            producer
                .send(
                    FutureRecord::<(), _>::to(topic).payload(&payload),
                    Duration::from_secs(60),
                )
                .await
                .map(|_| ())
                .map_err(|(e, _)| e)
        }
    });
    for r in futures::future::join_all(sends).await {
        r.unwrap_or_else(|e| panic!("produce to {topic}: {e}"));
    }
}

/// How many records a partition holds (its high watermark; the tests' topics start at 0).
pub async fn partition_size(topic: &str, partition: i32) -> usize {
    let consumer: rdkafka::consumer::BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", BROKERS)
        .create()
        .expect("consumer");
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        consumer
            .fetch_watermarks(&topic, partition, Duration::from_secs(10))
            .map(|(_, high)| usize::try_from(high).unwrap_or(0))
            .unwrap_or_else(|e| panic!("watermarks of {topic}/{partition}: {e}"))
    })
    .await
    .expect("watermarks")
}

/// A record read back: headers, key, payload.
#[derive(Debug, Clone)]
pub struct In {
    /// The record's key.
    pub key: Option<Vec<u8>>,
    /// Its headers as text.
    pub headers: Vec<(String, String)>,
    /// Its value.
    pub payload: Vec<u8>,
}

impl In {
    /// A header's value, if it is there.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads `n` records from the start of `topic` with a fresh group.
pub async fn consume(topic: &str, n: usize, timeout: Duration) -> Vec<In> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", BROKERS)
        .set("group.id", unique("reader"))
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "read {} of {n} records from {topic}",
            out.len()
        );
        match tokio::time::timeout(left, consumer.recv()).await {
            Ok(Ok(m)) => out.push(In {
                key: m.key().map(<[u8]>::to_vec),
                headers: m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                (
                                    h.key.to_string(),
                                    String::from_utf8_lossy(h.value.unwrap_or_default())
                                        .into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                payload: m.payload().unwrap_or_default().to_vec(),
            }),
            Ok(Err(e)) => panic!("consume {topic}: {e}"),
            Err(_) => panic!("read {} of {n} records from {topic}", out.len()),
        }
    }
    out
}

/// The tansu that scripts/services.sh installs (with SQLite storage).
pub fn tansu_binary() -> std::path::PathBuf {
    let root = std::env::var_os("FNBROKER_TANSU_ROOT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(std::env::var_os("HOME").expect("HOME"))
                .join(".cache/fnbroker/tansu-sqlite")
        });
    let bin = root.join("bin/tansu");
    assert!(
        bin.exists(),
        "{} is missing (scripts/services.sh installs tansu)",
        bin.display()
    );
    bin
}

/// A tansu of the test's own that requires SASL authentication, with one SCRAM-SHA-512 user.
/// Stopped on drop.
pub struct SaslTansu {
    /// The port the SASL listener is on.
    pub port: u16,
    /// The address brokers are advertised at, when it is not `port` (a TLS front's).
    advertised: Option<String>,
    dir: tempfile::TempDir,
    child: Option<std::process::Child>,
}

impl SaslTansu {
    /// tansu creates users only for an authenticated client once `--authentication` is on, so
    /// the user is created on a first run without it, on the same SQLite database.
    pub async fn start(user: &str, password: &str) -> Self {
        Self::start_advertising(user, password, None).await
    }

    /// Like `start`, advertising the brokers at `advertised` (`host:port`) once authentication
    /// is on, so that clients reach them through whatever listens there.
    pub async fn start_advertising(user: &str, password: &str, advertised: Option<String>) -> Self {
        let mut me = Self {
            port: crate::free_port(),
            advertised: None,
            dir: tempfile::tempdir().expect("tempdir"),
            child: None,
        };
        me.run(false).await;
        let out = std::process::Command::new(tansu_binary())
            .args(["user", "create", "--broker"])
            .arg(format!("tcp://127.0.0.1:{}", me.port))
            .args([user, password, "--mechanism", "scram512"])
            .output()
            .expect("tansu user create");
        assert!(
            out.status.success(),
            "tansu user create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        me.stop();
        me.advertised = advertised;
        me.run(true).await;
        me
    }

    async fn run(&mut self, authentication: bool) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let advertised = self
            .advertised
            .as_ref()
            .map_or_else(|| url.clone(), |a| format!("tcp://{a}"));
        let mut cmd = std::process::Command::new(tansu_binary());
        cmd.current_dir(self.dir.path())
            .args(["broker", "--listener-url", &url])
            .args(["--advertised-listener-url", &advertised])
            .args(["--storage-engine", "sqlite://tansu.db", "--silent"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        if authentication {
            cmd.arg("--authentication");
        }
        self.child = Some(cmd.spawn().expect("start tansu"));
        let port = self.port;
        crate::wait_for("tansu to listen", Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        })
        .await;
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A client configuration that authenticates with SCRAM-SHA-512.
    pub fn client(&self, user: &str, password: &str) -> ClientConfig {
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", format!("127.0.0.1:{}", self.port))
            .set("security.protocol", "SASL_PLAINTEXT")
            .set("sasl.mechanism", "SCRAM-SHA-512")
            .set("sasl.username", user)
            .set("sasl.password", password);
        cfg
    }
}

impl Drop for SaslTansu {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A tansu of the test's own (no authentication, SQLite storage in a temporary folder), for
/// tests that restart the broker. Stopped on drop.
pub struct Tansu {
    /// The port it listens on.
    pub port: u16,
    dir: tempfile::TempDir,
    process: Option<crate::ServerProcess>,
}

impl Tansu {
    /// Starts it on a free port and waits until it listens.
    pub async fn start() -> Self {
        let mut me = Self {
            port: crate::free_port(),
            dir: tempfile::tempdir().expect("tempdir"),
            process: None,
        };
        me.run().await;
        me
    }

    /// The `bootstrap.servers` of it.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    async fn run(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let mut cmd = std::process::Command::new(tansu_binary());
        cmd.current_dir(self.dir.path())
            .args(["broker", "--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            .args(["--storage-engine", "sqlite://tansu.db", "--silent"]);
        self.process = Some(crate::ServerProcess::spawn("tansu", cmd, self.port).await);
    }

    /// Stops it (SIGTERM) and starts it again on the same port and database.
    pub async fn restart(&mut self) {
        if let Some(p) = self.process.as_mut() {
            p.terminate();
        }
        self.run().await;
    }
}

/// A producer for the brokers at `brokers`.
pub fn producer_for(brokers: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .set("message.timeout.ms", "30000")
        .create()
        .expect("producer")
}

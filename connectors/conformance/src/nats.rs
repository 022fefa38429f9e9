//! NATS helpers of the end-to-end tests: a nats-server of the test's own (free port, JetStream
//! store in a temporary folder), publishers, and a subscriber.

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::HeaderMap;
use futures::StreamExt;

use crate::free_port;

/// The NATS server every session's machine runs (with JetStream).
pub const SHARED_URL: &str = "nats://127.0.0.1:4222";

/// A client of `url` (fails the test when there is no server).
pub async fn connect(url: &str) -> async_nats::Client {
    async_nats::connect(url).await.unwrap_or_else(|e| {
        panic!("cannot connect to NATS at {url} (scripts/services.sh starts it): {e}")
    })
}

/// A nats-server with JetStream of the test's own, killed on drop.
pub struct NatsServer {
    /// The port it listens on.
    pub port: u16,
    dir: tempfile::TempDir,
    process: Option<crate::ServerProcess>,
    args: Vec<String>,
}

impl NatsServer {
    /// Starts it on a free port (JetStream on) and waits until it listens.
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// A server started with extra command line arguments (`--user`, `--pass`, `--tls`...).
    pub async fn start_with(args: &[&str]) -> Self {
        let mut me = Self {
            port: free_port(),
            dir: tempfile::tempdir().expect("tempdir"),
            process: None,
            args: args.iter().map(|a| a.to_string()).collect(),
        };
        me.run().await;
        me
    }

    /// Its URL (`nats://127.0.0.1:<port>`).
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    async fn run(&mut self) {
        let mut cmd = Command::new("nats-server");
        cmd.args([
            "-a",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-js",
            "-sd",
        ])
        .arg(self.dir.path())
        .args(&self.args);
        self.process = Some(crate::ServerProcess::spawn("nats-server", cmd, self.port).await);
    }

    /// Stops it (SIGTERM, so JetStream flushes) and starts it again on the same port and store.
    pub async fn restart(&mut self) {
        if let Some(p) = self.process.as_mut() {
            p.terminate();
        }
        self.run().await;
    }
}

/// Creates a stream capturing `subjects` on the server at `url`.
pub async fn create_stream(url: &str, name: &str, subjects: &[&str]) {
    let js = async_nats::jetstream::new(connect(url).await);
    js.get_or_create_stream(async_nats::jetstream::stream::Config {
        name: name.to_string(),
        subjects: subjects.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("create stream {name}: {e}"));
}

/// Publishes through JetStream, waiting for each acknowledgement.
pub async fn js_publish(url: &str, messages: Vec<(String, Vec<u8>)>) {
    let js = async_nats::jetstream::new(connect(url).await);
    let mut acks = futures::stream::FuturesUnordered::new();
    for (subject, payload) in messages {
        let ack = js.publish(subject, payload.into()).await.expect("publish");
        acks.push(ack.into_future());
        if acks.len() >= 512 {
            acks.next().await.map(|r| r.expect("publish ack"));
        }
    }
    while let Some(r) = acks.next().await {
        r.expect("publish ack");
    }
}

/// Publishes on core NATS and flushes.
pub async fn publish(url: &str, messages: Vec<(String, HeaderMap, Vec<u8>)>) {
    let client = connect(url).await;
    for (subject, headers, payload) in messages {
        client
            .publish_with_headers(subject, headers, payload.into())
            .await
            .expect("publish");
    }
    client.flush().await.expect("flush");
}

/// What a subscriber collected: (headers, payload) of each message.
pub type Collected = Arc<Mutex<Vec<(HeaderMap, Vec<u8>)>>>;

/// A subscriber collecting (headers, payload) of every message on `subject`.
pub async fn subscribe(url: &str, subject: &str) -> Collected {
    let client = connect(url).await;
    let mut sub = client
        .subscribe(subject.to_string())
        .await
        .expect("subscribe");
    client.flush().await.expect("flush");
    let got: Collected = Arc::default();
    let sink = Arc::clone(&got);
    tokio::spawn(async move {
        let _client = client;
        while let Some(m) = sub.next().await {
            sink.lock()
                .expect("lock")
                .push((m.headers.unwrap_or_default(), m.payload.to_vec()));
        }
    });
    got
}

/// Waits until the server has nothing pending and nothing unacknowledged for `consumer` of
/// `stream`: every message was acknowledged or terminated, so none can come again.
pub async fn wait_settled(url: &str, stream: &str, consumer: &str, timeout: Duration) {
    let js = async_nats::jetstream::new(connect(url).await);
    let mut consumer: async_nats::jetstream::consumer::PullConsumer = js
        .get_stream(stream)
        .await
        .expect("stream")
        .get_consumer(consumer)
        .await
        .expect("consumer");
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let info = consumer.info().await.expect("info");
        if info.num_ack_pending == 0 && info.num_pending == 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "consumer not settled after {timeout:?}: {} pending, {} unacknowledged",
            info.num_pending,
            info.num_ack_pending
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

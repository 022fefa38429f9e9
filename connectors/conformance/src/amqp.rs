//! AMQP helpers of the end-to-end tests: queues with unique names on the machine's RabbitMQ,
//! a confirmed publisher, a reader, and closing fnbroker's connection from the server side.

use std::process::Command;
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

/// The machine's RabbitMQ, as the guest user on the default vhost.
pub const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// A connection and a channel to the machine's RabbitMQ.
pub async fn channel() -> (Connection, Channel) {
    channel_at(URL).await
}

/// A confirmed channel on the RabbitMQ at `url`.
pub async fn channel_at(url: &str) -> (Connection, Channel) {
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| {
            panic!("cannot connect to RabbitMQ at {url} (scripts/services.sh starts it): {e}")
        });
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    (conn, ch)
}

/// Declares a durable queue.
pub async fn queue(ch: &Channel, name: &str) {
    ch.queue_declare(
        name.to_string().into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("queue_declare");
    ch.queue_purge(name.to_string().into(), QueuePurgeOptions::default())
        .await
        .expect("purge");
}

/// Declares a topic exchange and a queue bound to it with `#`.
pub async fn exchange_with_queue(ch: &Channel, exchange: &str, queue_name: &str) {
    ch.exchange_declare(
        exchange.to_string().into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("exchange_declare");
    queue(ch, queue_name).await;
    ch.queue_bind(
        queue_name.to_string().into(),
        exchange.to_string().into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("bind");
}

/// Publishes a persistent message to the default exchange (so to the queue `queue`), confirmed.
pub async fn publish(
    ch: &Channel,
    queue: &str,
    headers: &[(&str, &str)],
    content_type: Option<&str>,
    body: &[u8],
) {
    let mut table = FieldTable::default();
    for (k, v) in headers {
        table.insert(
            ShortString::from(k.to_string()),
            AMQPValue::LongString(LongString::from(v.to_string())),
        );
    }
    let mut props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_headers(table);
    if let Some(ct) = content_type {
        props = props.with_content_type(ShortString::from(ct.to_string()));
    }
    ch.basic_publish(
        "".into(),
        queue.to_string().into(),
        BasicPublishOptions::default(),
        body,
        props,
    )
    .await
    .expect("publish")
    .await
    .expect("confirm");
}

/// Publishes `n` persistent plain messages (`0..n`), confirmed.
pub async fn publish_many(ch: &Channel, queue: &str, n: usize) {
    publish_range(ch, queue, 0..n).await;
}

/// Publishes persistent messages whose bodies are the numbers of `range` to `queue`, waiting for
/// every confirm.
pub async fn publish_range(ch: &Channel, queue: &str, range: std::ops::Range<usize>) {
    let mut confirms = futures::stream::FuturesUnordered::new();
    for i in range {
        let c = ch
            .basic_publish(
                "".into(),
                queue.to_string().into(),
                BasicPublishOptions::default(),
                format!("{i}").as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("publish");
        confirms.push(c);
        if confirms.len() >= 1000 {
            confirms.next().await.map(|r| r.expect("confirm"));
        }
    }
    while let Some(r) = confirms.next().await {
        r.expect("confirm");
    }
}

/// A message read back.
#[derive(Debug, Clone)]
pub struct Got {
    /// Its properties (headers, content type, delivery mode).
    pub properties: BasicProperties,
    /// Its body.
    pub body: Vec<u8>,
}

impl Got {
    /// A header's value as text (a long string or a number), if it is there.
    pub fn header(&self, name: &str) -> Option<String> {
        let v = self
            .properties
            .headers()
            .as_ref()?
            .inner()
            .get(name)?
            .clone();
        match v {
            AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
            AMQPValue::ShortString(s) => Some(s.to_string()),
            other => Some(format!("{other:?}")),
        }
    }
}

/// Reads `n` messages from `queue`.
pub async fn read(ch: &Channel, queue: &str, n: usize, timeout: Duration) -> Vec<Got> {
    let mut consumer = ch
        .basic_consume(
            queue.to_string().into(),
            format!("reader-{}", uuid::Uuid::new_v4().simple()).into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let mut out = Vec::new();
    while out.len() < n {
        let d = tokio::time::timeout(timeout, consumer.next())
            .await
            .unwrap_or_else(|_| panic!("read {} of {n} from {queue}", out.len()))
            .expect("open")
            .expect("delivery");
        d.acker.ack(BasicAckOptions::default()).await.expect("ack");
        out.push(Got {
            properties: d.properties,
            body: d.data,
        });
    }
    out
}

/// Closes, from the server side, every connection whose name contains `name`; returns how many.
pub fn close_connections(name: &str) -> usize {
    let out = Command::new("rabbitmqctl")
        .args(["-q", "list_connections", "pid", "client_properties"])
        .output()
        .expect("rabbitmqctl");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut closed = 0;
    for line in text.lines().filter(|l| l.contains(name)) {
        let pid = line.split_whitespace().next().unwrap_or_default();
        let ok = Command::new("rabbitmqctl")
            .args(["-q", "close_connection", pid, "closed by the test"])
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            closed += 1;
        }
    }
    closed
}

/// A RabbitMQ node of the test's own (its own name, ports and data folder, beside the machine's
/// node): a plain listener for the test's publisher, and a TLS listener that requires client
/// certificates signed by `ca` and offers EXTERNAL authentication (the certificate's common name
/// is the user, `fnbroker test` for the test PKI's client). Stopped on drop.
pub struct RabbitNode {
    /// The node's name (`rabbit-<port>@localhost`).
    pub node: String,
    /// The plain AMQP port.
    pub port: u16,
    /// The TLS port (client certificates required).
    pub tls_port: u16,
    dir: tempfile::TempDir,
    child: Option<std::process::Child>,
}

impl RabbitNode {
    /// Starts a node whose TLS listener uses `cert` and `key` and trusts client certificates of `ca`.
    pub async fn start_tls(
        ca: &std::path::Path,
        cert: &std::path::Path,
        key: &std::path::Path,
    ) -> Self {
        crate::pki::Pki::readable_by_all(&[ca, cert, key]);
        let tls_port = crate::free_port();
        let me = Self::start_with(
            tls_port,
            &format!(
                "listeners.ssl.1 = 127.0.0.1:{tls_port}\n\
                 ssl_options.cacertfile = {}\nssl_options.certfile = {}\nssl_options.keyfile = {}\n\
                 ssl_options.verify = verify_peer\nssl_options.fail_if_no_peer_cert = true\n\
                 auth_mechanisms.1 = PLAIN\nauth_mechanisms.2 = EXTERNAL\n\
                 ssl_cert_login_from = common_name\n",
                ca.display(),
                cert.display(),
                key.display()
            ),
            "[rabbitmq_auth_mechanism_ssl].\n",
        )
        .await;
        me.ctl(&["add_user", "fnbroker test", "unused-password"]);
        me.ctl(&[
            "set_permissions",
            "-p",
            "/",
            "fnbroker test",
            ".*",
            ".*",
            ".*",
        ]);
        me
    }

    /// A node with the plain listener only (guest from loopback).
    pub async fn start() -> Self {
        Self::start_with(0, "", "[].\n").await
    }

    /// A node with the plain listener, `conf` more lines of configuration and `plugins`.
    async fn start_with(tls_port: u16, conf_more: &str, plugins_enabled: &str) -> Self {
        // The server runs as the rabbitmq user: it writes into the folder and reads the files.
        let dir = tempfile::tempdir().expect("tempdir");
        let mut perms = std::fs::metadata(dir.path()).expect("dir").permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o777);
        std::fs::set_permissions(dir.path(), perms).expect("chmod");
        let (port, dist) = (crate::free_port(), crate::free_port());
        let node = format!("fnbtest{}@localhost", uuid::Uuid::new_v4().simple());
        let conf = dir.path().join("rabbitmq.conf");
        std::fs::write(
            &conf,
            format!("listeners.tcp.1 = 127.0.0.1:{port}\n{conf_more}"),
        )
        .expect("rabbitmq.conf");
        let plugins = dir.path().join("enabled_plugins");
        std::fs::write(&plugins, plugins_enabled).expect("enabled_plugins");
        let child = std::process::Command::new("rabbitmq-server")
            .env("RABBITMQ_NODENAME", &node)
            .env("RABBITMQ_CONFIG_FILE", &conf)
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", &plugins)
            .env("RABBITMQ_MNESIA_BASE", dir.path().join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.path().join("log"))
            .env("RABBITMQ_DIST_PORT", dist.to_string())
            .stdout(std::fs::File::create(dir.path().join("server.log")).expect("log"))
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("rabbitmq-server is not installed (scripts/services.sh installs it)");
        let me = Self {
            node,
            port,
            tls_port,
            dir,
            child: Some(child),
        };
        me.await_startup().await;
        me
    }

    /// Waits until the node runs RabbitMQ.
    async fn await_startup(&self) {
        // `await_startup` fails at once until the node has registered with epmd.
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        loop {
            let started = std::process::Command::new("rabbitmqctl")
                .args(["-n", &self.node, "await_startup", "--timeout", "60"])
                .output()
                .expect("rabbitmqctl");
            if started.status.success() {
                break;
            }
            let log =
                std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
            assert!(
                std::time::Instant::now() < deadline && !log.contains("BOOT FAILED"),
                "RabbitMQ node {} did not start:\n{log}",
                self.node
            );
            // rabbitmqctl itself takes a second or so: a short pause between attempts is enough.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Restarts the broker (`stop_app`, `start_app`: every connection is closed; durable queues
    /// and persistent messages stay) on the same node.
    pub async fn restart(&self) {
        self.ctl(&["stop_app"]);
        self.ctl(&["start_app"]);
        self.await_startup().await;
    }

    /// Runs `rabbitmqctl` on this node; its standard output.
    pub fn ctl(&self, args: &[&str]) -> String {
        let out = std::process::Command::new("rabbitmqctl")
            .arg("-n")
            .arg(&self.node)
            .args(args)
            .output()
            .expect("rabbitmqctl");
        assert!(
            out.status.success(),
            "rabbitmqctl {args:?} on {}: {}{} (logs in {})",
            self.node,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.dir.path().display()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The plain listener, as guest.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }
}

impl Drop for RabbitNode {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["-n", &self.node, "stop"])
            .output();
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

//! MQTT helpers of the end-to-end tests: a Mosquitto of the test's own (free port, persistence
//! in a temporary folder, a queue limit high enough for the test), a device-like publisher, and a
//! subscriber that collects what fnbroker published.

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use rumqttc::v5::{AsyncClient, Event, MqttOptions};

use crate::{free_port, wait_for};

/// The Mosquitto every session's machine runs.
pub const SHARED_PORT: u16 = 1883;

/// A Mosquitto of the test's own, stopped on drop.
pub struct Mosquitto {
    /// The port it listens on.
    pub port: u16,
    /// The TLS listener's port (`start_tls`), else 0.
    pub tls_port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Files of the configuration outside `dir` (a password file), removed on drop.
    files: Vec<tempfile::TempPath>,
}

impl Mosquitto {
    /// Starts it on a free port and waits until it listens.
    pub async fn start() -> Self {
        Self::start_with(0, "").await
    }

    /// A Mosquitto with a second listener, TLS with `cert` and `key` (signed by `ca`) that
    /// requires client certificates signed by `ca`; the plain one is for the test's publisher.
    pub async fn start_tls(
        ca: &std::path::Path,
        cert: &std::path::Path,
        key: &std::path::Path,
    ) -> Self {
        // Mosquitto drops to its own user: it must be able to read the files.
        crate::pki::Pki::readable_by_all(&[ca, cert, key]);
        let tls_port = free_port();
        Self::start_with(
            tls_port,
            &format!(
                "listener {tls_port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n",
                ca.display(),
                cert.display(),
                key.display()
            ),
        )
        .await
    }

    /// A Mosquitto that takes only `user` with `password` (no anonymous clients).
    pub async fn start_auth(user: &str, password: &str) -> Self {
        let file = tempfile::NamedTempFile::new().expect("password file");
        let out = Command::new("mosquitto_passwd")
            .args(["-b"])
            .arg(file.path())
            .args([user, password])
            .output()
            .expect("mosquitto_passwd (Debian's mosquitto package)");
        assert!(out.status.success(), "mosquitto_passwd: {out:?}");
        let path = file.into_temp_path();
        crate::pki::Pki::readable_by_all(&[&path]);
        let mut me = Self::start_with(
            0,
            &format!("allow_anonymous false\npassword_file {}\n", path.display()),
        )
        .await;
        me.files.push(path);
        me
    }

    async fn start_with(tls_port: u16, extra: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        // Started as root, Mosquitto drops to its own user: let it write its persistence file.
        let mut perms = std::fs::metadata(dir.path()).expect("dir").permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o777);
        std::fs::set_permissions(dir.path(), perms).expect("chmod");
        let port = free_port();
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "allow_anonymous true\npersistence true\npersistence_location {}/\nmax_queued_messages 100000\nlistener {port} 127.0.0.1\n{extra}",
                dir.path().display()
            ),
        )
        .expect("mosquitto.conf");
        let mut me = Self {
            port,
            tls_port,
            dir,
            child: None,
            files: Vec::new(),
        };
        me.run().await;
        me
    }

    async fn run(&mut self) {
        let conf = self.dir.path().join("mosquitto.conf");
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto is not installed (scripts/services.sh installs it)");
        self.child = Some(child);
        for port in [self.port, self.tls_port].into_iter().filter(|p| *p != 0) {
            wait_for("mosquitto to listen", Duration::from_secs(20), || {
                std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            })
            .await;
        }
    }

    /// Stops it cleanly (it saves its persistence file) and starts it again on the same port.
    pub async fn restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let _ = child.wait();
        }
        self.run().await;
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One message to publish.
pub struct Msg {
    /// The topic.
    pub topic: String,
    /// The payload.
    pub payload: Vec<u8>,
    /// The MQTT 5 content type, if any.
    pub content_type: Option<String>,
    /// MQTT 5 user properties (name, value).
    pub user_properties: Vec<(String, String)>,
}

impl Msg {
    /// A message with `payload` and no properties.
    pub fn plain(topic: &str, payload: &[u8]) -> Self {
        Self {
            topic: topic.into(),
            payload: payload.to_vec(),
            content_type: None,
            user_properties: Vec::new(),
        }
    }
}

/// Publishes `messages` at QoS 1 from a device-like client, waiting for every PUBACK.
pub async fn publish(port: u16, messages: Vec<Msg>) {
    let mut opts = MqttOptions::new(
        format!("dev-{}", uuid::Uuid::new_v4().simple()),
        "127.0.0.1",
        port,
    );
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = AsyncClient::new(opts, 1000);
    let n = messages.len();
    let sender = tokio::spawn(async move {
        for m in messages {
            let props = PublishProperties {
                content_type: m.content_type,
                user_properties: m.user_properties,
                ..Default::default()
            };
            client
                .publish_with_properties(m.topic, QoS::AtLeastOnce, false, m.payload, props)
                .await
                .expect("queue publish");
        }
        client
    });
    let mut acked = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while acked < n {
        let ev = tokio::time::timeout_at(deadline, events.poll())
            .await
            .unwrap_or_else(|_| panic!("only {acked} of {n} publishes acknowledged"))
            .unwrap_or_else(|e| panic!("mqtt publisher on port {port}: {e} (is Mosquitto running? scripts/services.sh starts it)"));
        if let Event::Incoming(Packet::PubAck(_)) = ev {
            acked += 1;
        }
    }
    let client = sender.await.expect("sender");
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(1), events.poll()).await;
}

/// A received message.
#[derive(Debug, Clone)]
pub struct Got {
    /// The topic it came on.
    pub topic: String,
    /// The payload.
    pub payload: Vec<u8>,
    /// The MQTT 5 content type, if any.
    pub content_type: Option<String>,
    /// MQTT 5 user properties (name, value).
    pub user_properties: Vec<(String, String)>,
}

impl Got {
    /// A user property's value, if it is there.
    pub fn prop(&self, name: &str) -> Option<&str> {
        self.user_properties
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A subscriber collecting every message on `filter`; it is subscribed when this returns.
pub async fn subscribe(
    port: u16,
    filter: &str,
) -> (Arc<Mutex<Vec<Got>>>, tokio::task::JoinHandle<()>) {
    let mut opts = MqttOptions::new(
        format!("sub-{}", uuid::Uuid::new_v4().simple()),
        "127.0.0.1",
        port,
    );
    opts.set_keep_alive(Duration::from_secs(30));
    subscribe_with(opts, filter).await
}

/// Like [`subscribe`], with a persistent session of `client_id` (clean start off, kept 10
/// minutes): aborting the task drops the connection without a DISCONNECT, as a killed process
/// would, and the broker keeps the session.
pub async fn session_subscriber(
    port: u16,
    client_id: &str,
    filter: &str,
) -> (Arc<Mutex<Vec<Got>>>, tokio::task::JoinHandle<()>) {
    let mut opts = MqttOptions::new(client_id, "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_clean_start(false);
    opts.set_session_expiry_interval(Some(600));
    subscribe_with(opts, filter).await
}

async fn subscribe_with(
    opts: MqttOptions,
    filter: &str,
) -> (Arc<Mutex<Vec<Got>>>, tokio::task::JoinHandle<()>) {
    let port = opts.broker_address().1;
    let (client, mut events) = AsyncClient::new(opts, 100);
    client
        .subscribe(filter, QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let got: Arc<Mutex<Vec<Got>>> = Arc::default();
    let keep = |got: &Mutex<Vec<Got>>, p: rumqttc::v5::mqttbytes::v5::Publish| {
        let props = p.properties.unwrap_or_default();
        got.lock().expect("lock").push(Got {
            topic: String::from_utf8_lossy(&p.topic).into_owned(),
            payload: p.payload.to_vec(),
            content_type: props.content_type,
            user_properties: props.user_properties,
        });
    };
    // Poll until the SUBACK, so that nothing published afterwards is missed (what a resumed
    // session had queued may come before it).
    loop {
        match tokio::time::timeout(Duration::from_secs(20), events.poll()).await {
            Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => break,
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => keep(&got, p),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("mqtt subscriber on port {port}: {e}"),
            Err(_) => panic!("no SUBACK"),
        }
    }
    let sink = Arc::clone(&got);
    let task = tokio::spawn(async move {
        let _client = client;
        while let Ok(ev) = events.poll().await {
            if let Event::Incoming(Packet::Publish(p)) = ev {
                keep(&sink, p);
            }
        }
    });
    (got, task)
}

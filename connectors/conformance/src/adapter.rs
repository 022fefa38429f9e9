//! What the cases need to know of a connector and its broker, and nothing more: a connector
//! crate implements [`Adapter`] (and [`Modes`], [`Restartable`], [`Replicas`] where they apply). Every
//! message a case publishes is a number (its body, or a column of a row for PostgreSQL), so a
//! case tells messages apart, counts losses and duplicates, and checks order by that number.

use std::future::Future;
use std::ops::Range;

use crate::AfterKill;

/// Whether a source gets back what fnbroker did not finish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redelivers {
    /// The broker keeps every message until fnbroker acknowledges it (a kill loses nothing).
    Yes,
    /// Nothing is kept for fnbroker (core NATS, an HTTP request): what was in flight when it
    /// died is lost, and what is published while it does not run is not seen.
    No,
}

/// One topic a case uses: what a trigger reads and where messages are published.
pub struct Topic {
    /// The trigger's `from` mapping (`{"connector": "c", "topic": "x", "group": "g"}`).
    pub from: serde_json::Value,
    /// Where the adapter publishes (a topic, a subject, a queue, a stream, a table, a path).
    pub address: String,
}

/// A connector as the cases see it. The connector is always named `c`.
pub trait Adapter: Sized + Send + Sync + 'static {
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
    fn connector(&self) -> serde_json::Value;

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
pub enum Mode {
    /// The attributes in the protocol's headers (properties, fields), the data as the body.
    Binary,
    /// The whole event as JSON, with the content type `application/cloudevents+json`.
    Structured,
}

impl Mode {
    /// The event's `id` for message `n`.
    pub fn id(self, n: usize) -> String {
        match self {
            Self::Binary => format!("b-{n}"),
            Self::Structured => format!("s-{n}"),
        }
    }

    /// The event's `type`.
    pub fn ty(self) -> &'static str {
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
pub trait Modes: Adapter {
    /// Publishes message `n` as a CloudEvent in `mode`, its data the number (text in binary
    /// mode, a JSON number in structured mode).
    fn publish_event(&self, topic: &Topic, mode: Mode, n: usize)
    -> impl Future<Output = ()> + Send;
}

/// An adapter that can run on a server of its own, which the broker restart case restarts.
pub trait Restartable: Adapter {
    /// The adapter on a server of its own.
    fn private() -> impl Future<Output = Self> + Send;

    /// Stops the server cleanly and starts it again on the same port and data.
    fn restart(&self) -> impl Future<Output = ()> + Send;
}

/// The body and content type of message `n` in `mode`.
pub fn body_of(mode: Mode, n: usize) -> (Vec<u8>, &'static str) {
    match mode {
        Mode::Binary => (n.to_string().into_bytes(), "text/plain"),
        Mode::Structured => (Mode::structured(n), STRUCTURED),
    }
}

/// The attributes of message `n` in `mode` as headers with `prefix` (none in structured mode).
pub fn headers_of(mode: Mode, n: usize, prefix: &str) -> Vec<(String, String)> {
    match mode {
        Mode::Binary => mode
            .attributes(n)
            .into_iter()
            .map(|(k, v)| (format!("{prefix}{k}"), v))
            .collect(),
        Mode::Structured => Vec::new(),
    }
}

/// A connector whose subscription two processes share (a group, a queue, a shared
/// subscription): the case with one replica killed.
pub trait Replicas: Adapter {
    /// What the cases expect once a replica is killed.
    const AFTER_KILL: AfterKill;

    /// A topic two replicas share.
    fn prepare_shared(&self) -> impl Future<Output = Topic> + Send {
        self.prepare()
    }

    /// The connector's entry for the replica whose function path is `path` (`/a` or `/b`).
    fn replica_connector(&self, _path: &str) -> serde_json::Value {
        self.connector()
    }
}

/// A name no other test uses (32 hex digits).
pub fn unique_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

//! The NATS connector's configuration: the connection, and `stream`, `group` and `create` on a
//! trigger's `from`.

use std::sync::Arc;

use fnbroker_core::binding::Sample;
use fnbroker_core::registry::{ConnectorPlugin, NoSettings, Report, SourceUse};
use fnbroker_core::{Connector, ConnectorError, Event, Origin};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::NatsConnector;

/// A NATS connection.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct NatsSettings {
    /// The server URL, `nats://host:port` (several separated by commas).
    pub url: String,
    /// The user name, if the server wants one.
    #[serde(default)]
    pub user: Option<String>,
    /// The password (use `${ENV}`).
    #[serde(default)]
    pub password: Option<String>,
    /// A token, if the server wants one (use `${ENV}`).
    #[serde(default)]
    pub token: Option<String>,
    /// A `.creds` file (a user JWT and its NKey seed), as Synadia's NGS and `nsc` issue them.
    #[serde(default)]
    pub credentials: Option<String>,
    /// An NKey seed (`SU...`) to sign the server's challenge with (use `${ENV}` or `${file:PATH}`).
    #[serde(default)]
    pub nkey: Option<String>,
    /// TLS: `ca`, `cert` + `key` (client certificate), `server_name`, `insecure_skip_verify`.
    /// With it (or a `tls://` URL) TLS is required.
    #[serde(default)]
    pub tls: Option<fnbroker_core::tls::Tls>,
    /// How replies and dead letters are published: `core` (default; flushed, at-most-once) or
    /// `jetstream` (resolves on the stream's publish acknowledgement).
    #[serde(default)]
    pub publish: NatsPublish,
}

/// How a NATS connector publishes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NatsPublish {
    /// A core NATS publish, flushed to the server.
    #[default]
    Core,
    /// A JetStream publish, confirmed by the stream.
    Jetstream,
}

/// The keys of a NATS trigger's `from`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct NatsSourceSettings {
    /// The JetStream stream (without it, a core NATS subscription).
    #[serde(default)]
    pub stream: Option<String>,
    /// Core NATS: the queue group; JetStream: the durable consumer's name (default
    /// `fnbroker`). Replicas that share it share the work.
    #[serde(default)]
    pub group: Option<String>,
    /// JetStream: create the stream (capturing `topic`) and the durable consumer when they are
    /// missing. Without it a missing stream is an error at start.
    #[serde(default)]
    pub create: bool,
    /// Core NATS: the most messages held for the subscription before its triggers take them
    /// (default 131,072: a burst of over two seconds at 50,000 events per second). Core NATS
    /// keeps nothing for a subscriber that falls behind: past this (or `buffer_bytes`), what
    /// arrives is dropped and counted (`fnbroker_events_dropped_total{reason="slow_consumer"}`).
    /// For no loss under overload, use JetStream.
    #[serde(default)]
    pub buffer: Option<usize>,
    /// Core NATS: the most payload bytes held that way (default 64 MiB).
    #[serde(default)]
    pub buffer_bytes: Option<fnbroker_core::values::ByteSize>,
}

/// The default of a core NATS subscription's `buffer`.
pub(crate) const DEFAULT_BUFFER: usize = 131_072;

/// The default of a core NATS subscription's `buffer_bytes`.
pub(crate) const DEFAULT_BUFFER_BYTES: u64 = 64 * 1024 * 1024;

/// NATS as a registered connector kind.
pub struct Plugin;

impl ConnectorPlugin for Plugin {
    const KIND: &'static str = "nats";
    const ABOUT: &'static str = "NATS core and JetStream.";
    /// A subscription is the client's own: it can be opened and closed at any time.
    const CAPABILITIES: fnbroker_core::ConnectorCapabilities =
        fnbroker_core::ConnectorCapabilities::WHILE_RUNNING;
    type Settings = NatsSettings;
    type Source = NatsSourceSettings;
    type Destination = NoSettings;

    fn validate(settings: &NatsSettings, report: &Report<'_>) {
        for url in settings.url.split(',') {
            report.url("url", url.trim(), &["nats", "tls", "ws", "wss"]);
        }
        report.tls(settings.tls.as_ref());
        if let Some(path) = &settings.credentials
            && let Err(e) = std::fs::read_to_string(path)
        {
            report.error(
                &["credentials"],
                format_args!("cannot read the credentials file `{path}`: {e}"),
            );
        }
        let auth = [
            settings.user.is_some(),
            settings.token.is_some(),
            settings.credentials.is_some(),
            settings.nkey.is_some(),
        ];
        if auth.iter().filter(|set| **set).count() > 1 {
            report.error(
                &["url"],
                "give one of `user`/`password`, `token`, `credentials` or `nkey`",
            );
        }
        if let Some(seed) = &settings.nkey
            && !seed.starts_with("SU")
        {
            report.error(&["nkey"], "`nkey` is a user seed, starting with `SU`");
        }
    }

    fn validate_source(source: &NatsSourceSettings, from: &SourceUse<'_>, report: &Report<'_>) {
        from.require_topic(report);
        if source.create && source.stream.is_none() {
            report.error(&["create"], "`create` needs a JetStream `stream`");
        }
        if source.stream.as_deref() == Some("") {
            report.error(&["stream"], "`stream` must not be empty");
        }
        if source.stream.is_some() {
            for (key, set) in [
                ("buffer", source.buffer.is_some()),
                ("buffer_bytes", source.buffer_bytes.is_some()),
            ] {
                if set {
                    report.error(
                        &[key],
                        format_args!("`{key}` is for core NATS: a JetStream consumer keeps what fnbroker has not taken on the server"),
                    );
                }
            }
        }
        if source.buffer == Some(0) {
            report.error(&["buffer"], "`buffer` must hold at least one message");
        }
        if let Some(bytes) = &source.buffer_bytes
            && (!bytes.is_valid() || bytes.get() == 0)
        {
            report.error(
                &["buffer_bytes"],
                format_args!(
                    "`buffer_bytes` is not a size: `{}` (write `64MiB`, `512KiB` or bytes)",
                    bytes.text().as_str()
                ),
            );
        }
    }

    /// A JetStream stream of its own capturing the subject (`FNBROKER_RETRY_<trigger>`, created
    /// when missing) and a durable consumer `fnbroker-retry-<trigger>`.
    fn retry_source(
        trigger: &str,
        topic: &str,
    ) -> Result<(Option<String>, fnbroker_core::SourceKeys), fnbroker_core::registry::RouteError>
    {
        let stream: String = trigger
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect();
        Ok((
            Some(topic.to_string()),
            [
                (
                    "stream".to_string(),
                    format!("FNBROKER_RETRY_{stream}").into(),
                ),
                (
                    "group".to_string(),
                    format!("fnbroker-retry-{trigger}").into(),
                ),
                ("create".to_string(), true.into()),
            ]
            .into(),
        ))
    }

    /// As a core NATS message (a JetStream one would have its stream sequence as `id`).
    fn decode_sample(
        name: &str,
        _: &NatsSettings,
        sample: &Sample<'_>,
    ) -> Result<Vec<(Event, Origin)>, fnbroker_core::registry::SampleError> {
        let mut headers = async_nats::HeaderMap::new();
        for (k, v) in sample.headers {
            headers.append(k.as_str(), v.as_str());
        }
        let message = crate::binding::Message {
            subject: sample.topic,
            payload: sample.data,
            headers: (!sample.headers.is_empty()).then_some(&headers),
            ..Default::default()
        };
        Ok(vec![crate::binding::decode(name, &message)])
    }

    const WILDCARDS: &'static [char] = &['*', '>'];

    fn topic_matches(filter: &str, topic: &str) -> bool {
        crate::binding::subject_matches(filter, topic)
    }

    fn build(name: &str, settings: &NatsSettings) -> Result<Arc<dyn Connector>, ConnectorError> {
        Ok(Arc::new(NatsConnector::new(name, settings.clone())))
    }
}

//! The Redis connector's configuration: the connection, and `group`, `create` and `start` on a
//! trigger's `from`.

use std::sync::Arc;

use fnbroker_core::binding::Sample;
use fnbroker_core::registry::{ConnectorPlugin, NoSettings, Report, SourceUse};
use fnbroker_core::values::ConfDuration;
use fnbroker_core::{Connector, ConnectorError, Event, Origin, SourceKeys};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::RedisConnector;

/// A Redis server.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RedisSettings {
    /// The server URL: `redis://host:port/db`, or `rediss://host:port/db` for TLS (then the
    /// system's roots are trusted unless `tls.ca` says otherwise).
    pub url: String,
    /// TLS: `ca`, `cert` + `key` (a client certificate), `insecure_skip_verify`. With it the
    /// connection is TLS whatever the URL's scheme. `server_name` is not supported by the Redis
    /// client: the URL's host is the name checked.
    #[serde(default)]
    pub tls: Option<fnbroker_core::tls::Tls>,
    /// The user name (Redis 6 ACLs); the URL's user name otherwise.
    #[serde(default)]
    pub username: Option<String>,
    /// The password (use `${ENV}` or `${file:PATH}`); the URL's password otherwise.
    #[serde(default)]
    pub password: Option<String>,
    /// This replica's consumer name in its groups. Default `fnbroker-<connector>-<hostname>`:
    /// stable across restarts (a restarted replica reads the entries it held again first) and
    /// different on every replica (replicas share a group's entries).
    #[serde(default)]
    pub consumer: Option<String>,
    /// How long an entry may stay pending at another consumer of the group (a replica that
    /// died) before this one claims it (`XAUTOCLAIM`). Default `30s`. Entries fnbroker still
    /// works on are never claimed: their idle time is reset while they are held.
    #[serde(default = "default_claim_after")]
    pub claim_after: ConfDuration,
    /// Replies and dead letters are added with `MAXLEN ~ <maxlen>`: the stream is trimmed to
    /// about that many entries. Default: not trimmed.
    #[serde(default)]
    pub maxlen: Option<u64>,
}

fn default_claim_after() -> ConfDuration {
    ConfDuration::from_secs(30)
}

/// Where a new consumer group starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Start {
    /// Every entry the stream holds (`0`), as a new Kafka group does.
    #[default]
    Earliest,
    /// Only entries added from now on (`$`).
    Latest,
}

/// The keys of a Redis trigger's `from` (its `topic` is the stream key).
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RedisSourceSettings {
    /// The consumer group. Default `fnbroker`. Replicas (and triggers) in one group share its
    /// entries; each group gets every entry.
    #[serde(default)]
    pub group: Option<String>,
    /// Create the group (and the stream) when missing (`XGROUP CREATE ... MKSTREAM`). Without
    /// it a missing group is an error at start.
    #[serde(default)]
    pub create: bool,
    /// Where a group made by `create` starts: `earliest` (default) or `latest`.
    #[serde(default)]
    pub start: Start,
}

/// Redis Streams as a registered connector kind.
pub struct Plugin;

impl ConnectorPlugin for Plugin {
    const KIND: &'static str = "redis";
    const ABOUT: &'static str = "Redis Streams (consumer groups).";
    /// Each subscription reads on a connection of its own.
    const CAPABILITIES: fnbroker_core::ConnectorCapabilities =
        fnbroker_core::ConnectorCapabilities::WHILE_RUNNING.keeping_keys();
    type Settings = RedisSettings;
    type Source = RedisSourceSettings;
    type Destination = NoSettings;

    fn validate(settings: &RedisSettings, report: &Report<'_>) {
        report.url("url", &settings.url, &["redis", "rediss"]);
        report.tls(settings.tls.as_ref());
        if settings
            .tls
            .as_ref()
            .is_some_and(|t| t.server_name.is_some())
        {
            report.error(
                &["tls", "server_name"],
                "the Redis client checks the URL's host name; `server_name` is not supported here",
            );
        }
        report.duration("claim_after", &settings.claim_after);
        if settings.claim_after.is_valid() && settings.claim_after.get().is_zero() {
            report.error(&["claim_after"], "`claim_after` must be more than 0s");
        }
        if settings.consumer.as_deref() == Some("") {
            report.error(&["consumer"], "`consumer` must not be empty");
        }
    }

    fn validate_source(source: &RedisSourceSettings, from: &SourceUse<'_>, report: &Report<'_>) {
        from.require_topic(report);
        if source.group.as_deref() == Some("") {
            report.error(&["group"], "`group` must not be empty");
        }
        if source.start == Start::Latest && !source.create {
            report.error(
                &["start"],
                "`start` is where a group made by `create: true` starts",
            );
        }
    }

    /// The stream `topic` with a group of its own, `fnbroker-retry-<trigger>`, created with the
    /// stream when missing.
    fn retry_source(
        trigger: &str,
        topic: &str,
    ) -> Result<(Option<String>, SourceKeys), fnbroker_core::registry::RouteError> {
        Ok((
            Some(topic.to_string()),
            crate::group_keys(&format!("fnbroker-retry-{trigger}")),
        ))
    }

    /// As an entry of the stream `topic`: the headers are its fields and the data its `data`
    /// field.
    fn decode_sample(
        name: &str,
        _: &RedisSettings,
        sample: &Sample<'_>,
    ) -> Result<Vec<(Event, Origin)>, fnbroker_core::registry::SampleError> {
        let mut fields: Vec<(Vec<u8>, Vec<u8>)> = sample
            .headers
            .iter()
            .map(|(k, v)| (k.clone().into_bytes(), v.clone().into_bytes()))
            .collect();
        fields.push((b"data".to_vec(), sample.data.to_vec()));
        let entry = crate::binding::Entry::new(sample.topic, "0-1", &fields);
        Ok(vec![crate::binding::decode(name, &entry)])
    }

    fn build(name: &str, settings: &RedisSettings) -> Result<Arc<dyn Connector>, ConnectorError> {
        Ok(Arc::new(RedisConnector::new(name, settings)?))
    }
}

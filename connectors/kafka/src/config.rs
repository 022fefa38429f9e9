//! The Kafka connector's configuration: the connection, and `group` on a trigger's `from`.

use std::collections::BTreeMap;
use std::sync::Arc;

use fnbroker_core::config::ConfDuration;
use fnbroker_core::registry::{ConnectorPlugin, NoSettings, Report, SourceUse};
use fnbroker_core::{Connector, ConnectorError};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::KafkaConnector;

/// A Kafka connection.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct KafkaSettings {
    /// Bootstrap brokers, `host:port`.
    pub brokers: Vec<String>,
    /// The default consumer group of this connector's triggers (default `fnbroker`).
    #[serde(default)]
    pub group: Option<String>,
    /// How often the offsets of finished messages are committed (also on every rebalance and at
    /// shutdown). Default `1s`.
    #[serde(default = "default_commit_interval")]
    pub commit_interval: ConfDuration,
    /// librdkafka settings passed through as they are, to the consumers and the producer
    /// (security settings included). They win over fnbroker's defaults, e.g.
    /// `auto.offset.reset: latest` (the default for a new group is `earliest`).
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

fn default_commit_interval() -> ConfDuration {
    ConfDuration::from_secs(1)
}

/// The keys of a Kafka trigger's `from`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct KafkaSourceSettings {
    /// The consumer group (default: the connector's `group`): replicas that share it share the
    /// partitions.
    #[serde(default)]
    pub group: Option<String>,
}

/// Kafka as a registered connector kind.
pub struct Plugin;

impl ConnectorPlugin for Plugin {
    const KIND: &'static str = "kafka";
    const ABOUT: &'static str = "Kafka (and Kafka-API brokers).";
    type Settings = KafkaSettings;
    type Source = KafkaSourceSettings;
    type Destination = NoSettings;

    fn validate(settings: &KafkaSettings, report: &Report<'_>) {
        report.duration("commit_interval", &settings.commit_interval);
        if settings.brokers.is_empty() {
            report.error(&["brokers"], "`brokers` must list at least one broker");
        }
    }

    fn validate_source(_: &KafkaSourceSettings, from: &SourceUse<'_>, report: &Report<'_>) {
        from.require_topic(report);
    }

    fn build(name: &str, settings: &KafkaSettings) -> Result<Arc<dyn Connector>, ConnectorError> {
        Ok(Arc::new(KafkaConnector::new(name, settings.clone())))
    }
}

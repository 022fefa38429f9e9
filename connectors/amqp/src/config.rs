//! The AMQP connector's configuration: the connection, `queue` and `declare` on a trigger's
//! `from`, and `exchange` on a destination.

use std::collections::BTreeMap;
use std::sync::Arc;

use fnbroker_core::binding::Sample;
use fnbroker_core::registry::{ConnectorPlugin, Report, SourceUse};
use fnbroker_core::{Connector, ConnectorError, Event, Origin};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::AmqpConnector;

/// An AMQP 0-9-1 connection.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct AmqpSettings {
    /// The server URL, `amqp://user:pass@host:port/vhost` (`%2f` is the default vhost), or
    /// `amqps://...` (port 5671 by default) for AMQP over TLS.
    pub url: String,
    /// TLS: `ca`, `cert` + `key` (a client certificate: with no user in the URL, the connection
    /// authenticates with it, SASL EXTERNAL), `server_name`, `insecure_skip_verify`. With it, or
    /// with an `amqps://` URL (then the system's roots are trusted), the connection is TLS.
    #[serde(default)]
    pub tls: Option<fnbroker_core::tls::Tls>,
    /// The exchange replies and dead letters are published to, their `topic` being the routing
    /// key. Default: the default exchange (`""`), so `topic: orders` lands in the queue `orders`.
    #[serde(default)]
    pub exchange: Option<String>,
    /// The prefix of the CloudEvents attribute headers written (`ce-` by default; `ce-`, `ce_`,
    /// `cloudEvents_` and `cloudEvents:` are all read).
    #[serde(default = "default_header_prefix")]
    pub header_prefix: String,
    /// The connection name shown by the broker (`rabbitmqctl list_connections`). Default
    /// `fnbroker-<connector name>`; the publisher's connection adds `-pub`.
    #[serde(default)]
    pub connection_name: Option<String>,
}

fn default_header_prefix() -> String {
    "ce-".to_string()
}

/// The keys of an AMQP trigger's `from` (which takes a `queue` instead of a `topic`).
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct AmqpSourceSettings {
    /// The queue to consume.
    #[serde(default)]
    pub queue: Option<String>,
    /// Declare the queue (and bind it to an exchange) instead of using an existing one.
    #[serde(default)]
    pub declare: Option<AmqpDeclare>,
}

/// How an AMQP source declares its queue.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct AmqpDeclare {
    /// An exchange to declare and bind the queue to; none: the queue only.
    #[serde(default)]
    pub exchange: Option<String>,
    /// The exchange type: `direct`, `fanout`, `topic` (default), `headers`, or a plugin's type
    /// (`x-consistent-hash`...).
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    /// The binding's routing key (default `#`).
    #[serde(default)]
    pub routing_key: Option<String>,
    /// Whether the queue and exchange survive a broker restart. Default true.
    #[serde(default = "default_true")]
    pub durable: bool,
    /// Queue arguments (`x-dead-letter-exchange`, `x-queue-type`, ...).
    #[serde(default)]
    pub arguments: BTreeMap<String, serde_json::Value>,
}

fn default_true() -> bool {
    true
}

/// The keys of an AMQP reply or dead-letter destination.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct AmqpDestinationSettings {
    /// The exchange to publish to, instead of the connector's `exchange`.
    #[serde(default)]
    pub exchange: Option<String>,
}

/// AMQP 0-9-1 as a registered connector kind.
pub struct Plugin;

impl ConnectorPlugin for Plugin {
    const KIND: &'static str = "amqp";
    const ABOUT: &'static str = "AMQP 0-9-1 (RabbitMQ).";
    /// Each subscription has a connection of its own, so one can open or close at any time.
    const CAPABILITIES: fnbroker_core::ConnectorCapabilities =
        fnbroker_core::ConnectorCapabilities::WHILE_RUNNING;
    type Settings = AmqpSettings;
    type Source = AmqpSourceSettings;
    type Destination = AmqpDestinationSettings;

    fn validate(settings: &AmqpSettings, report: &Report<'_>) {
        report.url("url", &settings.url, &["amqp", "amqps"]);
        report.tls(settings.tls.as_ref());
    }

    fn validate_source(source: &AmqpSourceSettings, from: &SourceUse<'_>, report: &Report<'_>) {
        match source.queue.as_deref() {
            None => report.error(&["connector"], "an amqp source needs a `queue`"),
            Some("") => report.error(&["queue"], "`queue` must not be empty"),
            Some(_) => {}
        }
        if from.topic.is_some() {
            report.error(
                &["topic"],
                "an amqp source reads a `queue`, not a `topic` (bind the queue with `declare.routing_key`)",
            );
        }
    }

    /// The queue `topic`, declared (durable) when missing.
    fn retry_source(
        _trigger: &str,
        topic: &str,
    ) -> Result<(Option<String>, fnbroker_core::SourceKeys), fnbroker_core::registry::RouteError>
    {
        Ok((
            None,
            [
                ("queue".to_string(), topic.into()),
                ("declare".to_string(), serde_json::json!({})),
            ]
            .into(),
        ))
    }

    /// The topic is the queue; the message is taken to have been published with it as routing
    /// key. Headers other than `content-type` go into the header table.
    fn decode_sample(
        name: &str,
        _: &AmqpSettings,
        sample: &Sample<'_>,
    ) -> Result<Vec<(Event, Origin)>, fnbroker_core::registry::SampleError> {
        let mut table = lapin::types::FieldTable::default();
        for (k, v) in sample.other_headers() {
            table.insert(
                lapin::types::ShortString::from(k.to_string()),
                lapin::types::AMQPValue::LongString(v.into()),
            );
        }
        let mut properties = lapin::BasicProperties::default().with_headers(table);
        if let Some(ct) = sample.header("content-type") {
            properties = properties.with_content_type(ct.into());
        }
        let message = crate::binding::Message {
            queue: sample.topic,
            routing_key: sample.topic,
            properties: &properties,
            body: sample.data,
        };
        Ok(vec![crate::binding::decode(name, &message)])
    }

    fn source_takes(source: &AmqpSourceSettings, _: Option<&str>, topic: &str) -> bool {
        source.queue.as_deref() == Some(topic)
    }

    /// Straight into the queue: the default exchange, the queue's name as routing key.
    fn republish_to(
        source: &AmqpSourceSettings,
        _: Option<&str>,
        _: Option<&str>,
    ) -> Result<(String, fnbroker_core::SourceKeys), fnbroker_core::registry::RouteError> {
        let queue = source.queue.clone().ok_or("the source has no `queue`")?;
        Ok((queue, [("exchange".to_string(), "".into())].into()))
    }

    fn build(name: &str, settings: &AmqpSettings) -> Result<Arc<dyn Connector>, ConnectorError> {
        Ok(Arc::new(AmqpConnector::new(name, settings.clone())?))
    }
}

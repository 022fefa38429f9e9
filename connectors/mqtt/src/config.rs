//! The MQTT connector's configuration: the connection, and `qos` and `group` on a trigger's
//! `from`.

use std::sync::Arc;
use std::time::Duration;

use fnbroker_core::binding::Sample;
use fnbroker_core::registry::{ConnectorPlugin, NoSettings, Report, SourceUse};
use fnbroker_core::values::ConfDuration;
use fnbroker_core::{Connector, ConnectorError, Event, Origin};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::MqttConnector;

/// An MQTT connection.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct MqttSettings {
    /// The broker URL: `mqtt://host:port` (`tcp://` is the same; port 1883 by default), or
    /// `mqtts://host:port` (`ssl://` is the same; port 8883 by default) for MQTT over TLS.
    pub url: String,
    /// TLS: `ca`, `cert` + `key` (a client certificate, as AWS IoT and brokers with
    /// `require_certificate` want), `server_name`, `insecure_skip_verify`. With it, or with an
    /// `mqtts://` URL (then the system's roots are trusted), the connection is TLS.
    #[serde(default)]
    pub tls: Option<fnbroker_core::tls::Tls>,
    /// The client id. Default `fnbroker-<connector>-<hostname>` (`HOSTNAME`, else the kernel's
    /// host name): stable across restarts, so the broker keeps the session (and the messages it
    /// queued for it), and different on every replica, so replicas sharing one configuration do
    /// not knock each other off the broker. Replies and dead letters use a second connection,
    /// `<client_id>-pub`.
    #[serde(default)]
    pub client_id: Option<String>,
    /// The protocol version: 5 (default) or 3 (3.1.1).
    #[serde(default = "default_version")]
    pub version: u8,
    /// The user name, if the broker wants one.
    #[serde(default)]
    pub username: Option<String>,
    /// The password (use `${ENV}`).
    #[serde(default)]
    pub password: Option<String>,
    /// How long the broker keeps the session (subscriptions and queued QoS 1/2 messages) while
    /// fnbroker is away (MQTT 5). Default `1h`.
    #[serde(default = "default_session_expiry")]
    pub session_expiry: ConfDuration,
    /// The keep-alive interval. Default `30s`.
    #[serde(default = "default_keep_alive")]
    pub keep_alive: ConfDuration,
    /// The QoS of replies and dead letters published through this connector: 0, 1 (default) or 2.
    #[serde(default = "default_qos")]
    pub publish_qos: u8,
}

fn default_version() -> u8 {
    5
}
fn default_session_expiry() -> ConfDuration {
    ConfDuration::from_secs(3600)
}
fn default_keep_alive() -> ConfDuration {
    ConfDuration::from_secs(30)
}
fn default_qos() -> u8 {
    1
}

/// The keys of an MQTT trigger's `from`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct MqttSourceSettings {
    /// The QoS of the subscription: 0 (at-most-once), 1 (default) or 2.
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// A `$share` group: replicas that share it share the messages (MQTT 5 shared
    /// subscriptions).
    #[serde(default)]
    pub group: Option<String>,
}

/// MQTT 3.1.1 and 5 as a registered connector kind.
pub struct Plugin;

impl ConnectorPlugin for Plugin {
    const KIND: &'static str = "mqtt";
    const ABOUT: &'static str = "MQTT 3.1.1 and 5.";
    /// A subscription can be opened while the connection runs (SUBSCRIBE on it) and closed
    /// (UNSUBSCRIBE).
    const CAPABILITIES: fnbroker_core::ConnectorCapabilities =
        fnbroker_core::ConnectorCapabilities::WHILE_RUNNING;
    type Settings = MqttSettings;
    type Source = MqttSourceSettings;
    type Destination = NoSettings;

    fn validate(settings: &MqttSettings, report: &Report<'_>) {
        report.url("url", &settings.url, &["mqtt", "tcp", "mqtts", "ssl"]);
        report.tls(settings.tls.as_ref());
        report.duration("session_expiry", &settings.session_expiry);
        report.duration("keep_alive", &settings.keep_alive);
        let v5 = match settings.version {
            5 => true,
            3 => false,
            other => {
                report.error(
                    &["version"],
                    format_args!("MQTT `version` must be 3 or 5, not {other}"),
                );
                true
            }
        };
        // The MQTT 5 client refuses (panics on) a keep-alive under 5 s; 3.1.1 takes 1 s.
        let least = if v5 { 5 } else { 1 };
        if settings.keep_alive.is_valid() && settings.keep_alive.get() < Duration::from_secs(least)
        {
            report.error(
                &["keep_alive"],
                format_args!(
                    "`keep_alive` must be at least {least}s with MQTT {}",
                    if v5 { "5" } else { "3.1.1" }
                ),
            );
        }
        if settings.publish_qos > 2 {
            report.error(&["publish_qos"], "`publish_qos` must be 0, 1 or 2");
        }
    }

    fn validate_source(source: &MqttSourceSettings, from: &SourceUse<'_>, report: &Report<'_>) {
        from.require_topic(report);
        if source.qos > 2 {
            report.error(&["qos"], "`qos` must be 0, 1 or 2");
        }
    }

    /// The topic, at QoS 1, in the connector's persistent session.
    fn retry_source(
        _trigger: &str,
        topic: &str,
    ) -> Result<(Option<String>, fnbroker_core::SourceKeys), fnbroker_core::registry::RouteError>
    {
        if topic.contains(['+', '#']) {
            return Err("a retry topic cannot have wildcards".into());
        }
        Ok((
            Some(topic.to_string()),
            [("qos".to_string(), 1.into())].into(),
        ))
    }

    /// With MQTT 3.1.1 (`version: 3`) there are no properties: headers other than nothing are
    /// refused, as the protocol could not carry them.
    fn decode_sample(
        name: &str,
        settings: &MqttSettings,
        sample: &Sample<'_>,
    ) -> Result<Vec<(Event, Origin)>, fnbroker_core::registry::SampleError> {
        let v5 = settings.version == 5;
        if !v5 && !sample.headers.is_empty() {
            return Err(
                "MQTT 3.1.1 (`version: 3`) has no properties: a message has no headers".into(),
            );
        }
        let user_properties: Vec<(String, String)> = sample
            .other_headers()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let message = crate::binding::Message {
            topic: sample.topic,
            payload: sample.data,
            content_type: sample.header("content-type"),
            user_properties: &user_properties,
            v5,
        };
        Ok(vec![crate::binding::decode(name, &message)])
    }

    const WILDCARDS: &'static [char] = &['+', '#'];

    fn topic_matches(filter: &str, topic: &str) -> bool {
        crate::binding::topic_matches(filter, topic)
    }

    fn build(name: &str, settings: &MqttSettings) -> Result<Arc<dyn Connector>, ConnectorError> {
        Ok(Arc::new(MqttConnector::new(name, settings)?))
    }
}

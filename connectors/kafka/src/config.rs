//! The Kafka connector's configuration: the connection, and `group` on a trigger's `from`.

use std::collections::BTreeMap;
use std::sync::Arc;

use fnbroker_core::binding::Sample;
use fnbroker_core::registry::{ConnectorPlugin, NoSettings, Report, SourceUse};
use fnbroker_core::values::ConfDuration;
use fnbroker_core::{Connector, ConnectorError, Event, Origin};
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
    /// TLS to the brokers: `ca`, `cert` + `key` (a client certificate), `insecure_skip_verify`
    /// (librdkafka verifies the broker's host name; `server_name` is not supported). With
    /// `sasl`, SASL_SSL; without, SSL.
    #[serde(default)]
    pub tls: Option<fnbroker_core::tls::Tls>,
    /// SASL authentication (Confluent Cloud, MSK, Redpanda): `mechanism` and credentials.
    #[serde(default)]
    pub sasl: Option<Sasl>,
    /// librdkafka settings passed through as they are, to the consumers and the producer. They
    /// win over fnbroker's defaults and over what `tls` and `sasl` set, e.g.
    /// `auto.offset.reset: latest` (the default for a new group is `earliest`).
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

/// SASL authentication to Kafka.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Sasl {
    /// `PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512` or `OAUTHBEARER`.
    pub mechanism: SaslMechanism,
    /// The user name; with `OAUTHBEARER`, the OAuth client id (also the principal).
    pub username: String,
    /// The password (use `${ENV}` or `${file:PATH}`); with `OAUTHBEARER`, the client secret.
    pub password: String,
    /// `OAUTHBEARER` only: the OAuth 2.0 token endpoint fnbroker asks for tokens (the
    /// client-credentials grant, the client id and secret as HTTP Basic authentication).
    #[serde(default)]
    pub token_endpoint: Option<String>,
    /// `OAUTHBEARER` only: the scope asked for.
    #[serde(default)]
    pub scope: Option<String>,
}

/// A SASL mechanism librdkafka speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
pub enum SaslMechanism {
    /// User name and password in the clear (use it with `tls`).
    #[serde(rename = "PLAIN")]
    Plain,
    /// SCRAM with SHA-256.
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    /// SCRAM with SHA-512.
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
    /// OAuth 2.0 bearer tokens, fetched from `token_endpoint` by the client-credentials grant.
    #[serde(rename = "OAUTHBEARER")]
    OAuthBearer,
}

impl SaslMechanism {
    /// librdkafka's name of the mechanism.
    pub fn name(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
            SaslMechanism::OAuthBearer => "OAUTHBEARER",
        }
    }
}

impl KafkaSettings {
    /// The librdkafka properties of `tls` and `sasl` (before `options`, which win).
    pub fn security_properties(&self) -> Vec<(&'static str, String)> {
        let mut props = Vec::new();
        let protocol = match (&self.tls, &self.sasl) {
            (None, None) => return props,
            (Some(_), None) => "SSL",
            (None, Some(_)) => "SASL_PLAINTEXT",
            (Some(_), Some(_)) => "SASL_SSL",
        };
        props.push(("security.protocol", protocol.to_string()));
        if let Some(tls) = &self.tls {
            if let Some(ca) = &tls.ca {
                props.push(("ssl.ca.location", ca.clone()));
            }
            if let Some(cert) = &tls.cert {
                props.push(("ssl.certificate.location", cert.clone()));
            }
            if let Some(key) = &tls.key {
                props.push(("ssl.key.location", key.clone()));
            }
            if tls.insecure_skip_verify {
                props.push(("enable.ssl.certificate.verification", "false".into()));
                props.push(("ssl.endpoint.identification.algorithm", "none".into()));
            }
        }
        if let Some(sasl) = &self.sasl {
            props.push(("sasl.mechanism", sasl.mechanism.name().to_string()));
            // OAUTHBEARER's tokens come from the client context (crate::oauth).
            if sasl.mechanism != SaslMechanism::OAuthBearer {
                props.push(("sasl.username", sasl.username.clone()));
                props.push(("sasl.password", sasl.password.clone()));
            }
        }
        props
    }
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
    /// Each subscription is a consumer of its own, so one can open or close at any time.
    const CAPABILITIES: fnbroker_core::ConnectorCapabilities =
        fnbroker_core::ConnectorCapabilities::WHILE_RUNNING;
    type Settings = KafkaSettings;
    type Source = KafkaSourceSettings;
    type Destination = NoSettings;

    fn validate(settings: &KafkaSettings, report: &Report<'_>) {
        report.duration("commit_interval", &settings.commit_interval);
        if settings.brokers.is_empty() {
            report.error(&["brokers"], "`brokers` must list at least one broker");
        }
        if settings
            .tls
            .as_ref()
            .is_some_and(|t| t.server_name.is_some())
        {
            report.error(
                &["tls", "server_name"],
                "librdkafka verifies the host name each broker advertises; `server_name` is not supported for Kafka",
            );
        }
        report.tls(settings.tls.as_ref());
        if let Some(sasl) = &settings.sasl {
            let oauth = sasl.mechanism == SaslMechanism::OAuthBearer;
            match (&sasl.token_endpoint, oauth) {
                (None, true) => report.error(
                    &["sasl", "token_endpoint"],
                    "OAUTHBEARER needs the `token_endpoint` of the OAuth server",
                ),
                (Some(url), true) => report.url("token_endpoint", url, &["https", "http"]),
                (Some(_), false) => report.error(
                    &["sasl", "token_endpoint"],
                    "`token_endpoint` is for OAUTHBEARER only",
                ),
                (None, false) => {}
            }
            if !oauth && sasl.scope.is_some() {
                report.error(&["sasl", "scope"], "`scope` is for OAUTHBEARER only");
            }
        }
    }

    fn validate_source(_: &KafkaSourceSettings, from: &SourceUse<'_>, report: &Report<'_>) {
        from.require_topic(report);
    }

    fn build(name: &str, settings: &KafkaSettings) -> Result<Arc<dyn Connector>, ConnectorError> {
        Ok(Arc::new(KafkaConnector::new(name, settings.clone())?))
    }

    /// A consumer group of its own, `fnbroker-retry-<trigger>`.
    fn retry_source(
        trigger: &str,
        topic: &str,
    ) -> Result<(Option<String>, fnbroker_core::SourceKeys), fnbroker_core::registry::RouteError>
    {
        Ok((
            Some(topic.to_string()),
            fnbroker_core::contract::group_keys(&format!("fnbroker-retry-{trigger}")),
        ))
    }

    /// As a record at offset 0 of partition 0.
    fn decode_sample(
        name: &str,
        _: &KafkaSettings,
        sample: &Sample<'_>,
    ) -> Result<Vec<(Event, Origin)>, fnbroker_core::registry::SampleError> {
        let record = crate::binding::Record {
            topic: sample.topic,
            key: sample.key.map(str::as_bytes),
            payload: Some(sample.data),
            headers: sample
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), Some(v.as_bytes())))
                .collect(),
            ..Default::default()
        };
        Ok(vec![crate::binding::decode(name, &record)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(yaml: &str) -> KafkaSettings {
        serde_saphyr::from_str(yaml).expect("settings")
    }

    fn props(s: &KafkaSettings) -> BTreeMap<&'static str, String> {
        s.security_properties().into_iter().collect()
    }

    #[test]
    fn tls_and_sasl_map_onto_librdkafka() {
        assert!(props(&settings("brokers: [k:9092]")).is_empty());
        let scram = settings(
            "brokers: [k:9093]\nsasl: { mechanism: SCRAM-SHA-512, username: fnb, password: pw }\ntls: { ca: /ca.pem, cert: /c.pem, key: /c.key }",
        );
        let p = props(&scram);
        assert_eq!(p["security.protocol"], "SASL_SSL");
        assert_eq!(p["sasl.mechanism"], "SCRAM-SHA-512");
        assert_eq!(p["sasl.username"], "fnb");
        assert_eq!(p["sasl.password"], "pw");
        assert_eq!(p["ssl.ca.location"], "/ca.pem");
        assert_eq!(p["ssl.certificate.location"], "/c.pem");
        assert_eq!(p["ssl.key.location"], "/c.key");
        let p = props(&settings(
            "brokers: [k:9092]\nsasl: { mechanism: PLAIN, username: u, password: p }",
        ));
        assert_eq!(p["security.protocol"], "SASL_PLAINTEXT");
        assert_eq!(p["sasl.mechanism"], "PLAIN");
        let p = props(&settings(
            "brokers: [k:9093]\ntls: { insecure_skip_verify: true }",
        ));
        assert_eq!(p["security.protocol"], "SSL");
        assert_eq!(p["enable.ssl.certificate.verification"], "false");
    }

    #[test]
    fn oauthbearer_leaves_the_credentials_to_the_token_source() {
        let p = props(&settings(
            "brokers: [k:9093]\ntls: {}\nsasl: { mechanism: OAUTHBEARER, username: client, password: secret, token_endpoint: \"https://idp/token\" }",
        ));
        assert_eq!(p["security.protocol"], "SASL_SSL");
        assert_eq!(p["sasl.mechanism"], "OAUTHBEARER");
        assert!(!p.contains_key("sasl.username") && !p.contains_key("sasl.password"));
    }

    /// librdkafka itself takes every mapping.
    #[test]
    fn librdkafka_accepts_every_mapping() {
        for yaml in [
            "brokers: [127.0.0.1:1]\nsasl: { mechanism: SCRAM-SHA-256, username: u, password: p }",
            "brokers: [127.0.0.1:1]\ntls: {}\nsasl: { mechanism: PLAIN, username: u, password: p }",
        ] {
            let mut cfg = rdkafka::ClientConfig::new();
            for (k, v) in settings(yaml).security_properties() {
                cfg.set(k, v);
            }
            cfg.set("bootstrap.servers", "127.0.0.1:1");
            if let Err(e) = cfg.create::<rdkafka::consumer::BaseConsumer>() {
                panic!("{yaml}: {e}");
            }
        }
    }

    #[test]
    fn an_unknown_mechanism_is_refused() {
        let e = serde_saphyr::from_str::<KafkaSettings>(
            "brokers: [k]\nsasl: { mechanism: GSSAPI, username: u, password: p }",
        )
        .expect_err("GSSAPI is not offered");
        assert!(e.to_string().contains("GSSAPI"), "{e}");
    }
}

//! Functions found on a platform rather than listed: the `discover` section.

use schemars::JsonSchema;
use serde::Deserialize;

use super::Loc;
use fnbroker_core::tls::Tls;

/// Where functions are found rather than listed: one platform per entry.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Discover {
    /// An OpenFaaS gateway whose functions' `topic` annotations name the topics they get.
    pub openfaas: OpenFaasDiscovery,
}

/// The drop-in for the OpenFaaS connectors: every function of the gateway with a `topic`
/// annotation (comma-separated topics) gets a trigger from each of those topics of `connector`.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct OpenFaasDiscovery {
    /// The gateway's base URL (`http://gateway.openfaas:8080`).
    pub gateway: Loc<String>,
    /// The gateway's basic-authentication user, for `/system/functions` and the invocations.
    #[serde(default)]
    pub username: Option<String>,
    /// The gateway's basic-authentication password.
    #[serde(default)]
    pub password: Option<String>,
    /// The namespaces to read (`/system/functions?namespace=...`); the gateway's default when
    /// empty; `["*"]`: every namespace `/system/namespaces` lists, at each refresh.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// The connector whose topics the annotations name.
    pub connector: Loc<String>,
    /// The prefix of the names under which the replicas of fnbroker share each discovered
    /// function's messages: the Kafka consumer group, the NATS queue group, the AMQP queue of
    /// each function and topic is `<group>.<function>.<topic>` (characters other than letters,
    /// digits, `.`, `-` and `_` become `_`). Default `fnbroker-openfaas`.
    #[serde(default = "default_group")]
    pub group: String,
    /// How often the gateway is read again. Default `10s`.
    #[serde(default = "default_refresh")]
    pub refresh: super::ConfDuration,
    /// Invoke through the gateway's queue (`/async-function/`), as `openfaas.async`.
    #[serde(default, rename = "async")]
    pub asynchronous: bool,
    /// With `async: true`: where the queue worker reaches fnbroker's admin listener.
    #[serde(default)]
    pub callback_url: Option<Loc<String>>,
    /// Retries, backoff and concurrency of every discovered trigger.
    #[serde(default)]
    pub delivery: super::Delivery,
    /// Where an event goes when its delivery failed for good.
    #[serde(default)]
    pub dead_letter: Option<super::Destination>,
    /// Where a function's answer goes.
    #[serde(default)]
    pub reply: Option<super::Destination>,
    /// The time one attempt may take. Default `30s`.
    #[serde(default)]
    pub timeout: Option<super::ConfDuration>,
    /// The most calls in flight to each discovered function. Default 64.
    #[serde(default = "super::default_concurrency")]
    pub concurrency: Loc<usize>,
    /// TLS for an `https` gateway.
    #[serde(default)]
    pub tls: Option<Tls>,
}

fn default_group() -> String {
    "fnbroker-openfaas".to_string()
}

fn default_refresh() -> super::ConfDuration {
    super::ConfDuration::from_secs(10)
}

impl OpenFaasDiscovery {
    /// The name under which replicas share the messages of `topic` for `function`
    /// (`name.namespace`): see [`OpenFaasDiscovery::group`].
    pub fn subscriber(&self, function: &str, topic: &str) -> String {
        format!("{}.{function}.{topic}", self.group)
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subscriber_is_named_after_group_function_and_topic_in_safe_characters() {
        let d: OpenFaasDiscovery =
            serde_saphyr::from_str("{ gateway: \"http://gw:8080\", connector: bus }")
                .expect("entry");
        assert_eq!(
            d.subscriber("figlet.openfaas-fn", "orders.created"),
            "fnbroker-openfaas.figlet.openfaas-fn.orders.created"
        );
        assert_eq!(
            d.subscriber("f", "sensors/+/temp #1"),
            "fnbroker-openfaas.f.sensors___temp__1"
        );
    }
}

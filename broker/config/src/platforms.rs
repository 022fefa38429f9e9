//! The function kinds of the serverless platforms: each names a function the way its platform
//! does, and the invoker speaks the platform's own wire protocol.

use schemars::JsonSchema;
use serde::Deserialize;

use super::Loc;
use fnbroker_core::tls::Tls;

/// An OpenFaaS function behind its gateway.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct OpenFaasFunction {
    /// The gateway's base URL (`http://gateway.openfaas:8080`).
    pub gateway: Loc<String>,
    /// The function's name.
    pub name: Loc<String>,
    /// The function's namespace; the gateway's default (`openfaas-fn`) when absent.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Invoke through `/async-function/` (the gateway's queue) and wait for the result on
    /// fnbroker's callback endpoint, instead of `/function/`. Default `false`.
    #[serde(default, rename = "async")]
    pub asynchronous: bool,
    /// The gateway's basic-authentication user (`admin`), sent with every request.
    #[serde(default)]
    pub username: Option<String>,
    /// The gateway's basic-authentication password (from `${ENV}` or `${file:...}`).
    #[serde(default)]
    pub password: Option<String>,
    /// With `async: true`: the base URL at which the gateway's queue worker reaches fnbroker's
    /// admin listener (`http://fnbroker.openfaas:9464`). Default: the admin's `listen` address.
    #[serde(default)]
    pub callback_url: Option<Loc<String>>,
    /// TLS for an `https` gateway.
    #[serde(default)]
    pub tls: Option<Tls>,
}

/// An Apache OpenWhisk action.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct OpenWhiskFunction {
    /// The API host's base URL (`https://whisk.example.com`).
    pub api: Loc<String>,
    /// The namespace; `_` (the credentials' own) when absent.
    #[serde(default = "default_whisk_namespace")]
    pub namespace: String,
    /// The action's name (with its package: `pkg/action`).
    pub action: Loc<String>,
    /// The `uuid:key` authentication string (`wsk property get --auth`).
    pub auth: Loc<String>,
    /// TLS for an `https` API host.
    #[serde(default)]
    pub tls: Option<Tls>,
}

fn default_whisk_namespace() -> String {
    "_".into()
}

/// A Fission function behind its router.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct FissionFunction {
    /// The router's base URL (`http://router.fission`).
    pub router: Loc<String>,
    /// The function's name.
    pub name: Loc<String>,
    /// The function's namespace; the router's default namespace when absent.
    #[serde(default)]
    pub namespace: Option<String>,
    /// TLS for an `https` router.
    #[serde(default)]
    pub tls: Option<Tls>,
}

/// A Knative service (or any CloudEvents sink: a broker, a channel, `${K_SINK}`).
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct KnativeFunction {
    /// The service's URL (`http://greeter.default.svc.cluster.local`, or `${K_SINK}`).
    pub url: Loc<String>,
    /// TLS for an `https` URL.
    #[serde(default)]
    pub tls: Option<Tls>,
}

/// An Fn Project function.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct FnFunction {
    /// The Fn server's invoke endpoint (`http://fnserver:8080`).
    pub endpoint: Loc<String>,
    /// The function's id (`fn inspect function APP NAME id`).
    pub id: Loc<String>,
    /// TLS for an `https` endpoint.
    #[serde(default)]
    pub tls: Option<Tls>,
}

/// An AWS Lambda function, called with the Invoke API.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct LambdaFunction {
    /// The function's name, ARN or partial ARN.
    pub function: Loc<String>,
    /// The AWS region (`eu-west-1`); default `AWS_REGION` or `AWS_DEFAULT_REGION`.
    #[serde(default)]
    pub region: Option<Loc<String>>,
    /// A version or alias.
    #[serde(default)]
    pub qualifier: Option<String>,
    /// `sync` (`RequestResponse`: the function's result is the reply; default) or `async`
    /// (`Event`: Lambda queues the event and answers 202).
    #[serde(default)]
    pub invocation: LambdaInvocation,
    /// Another endpoint than `https://lambda.<region>.amazonaws.com` (a VPC endpoint, LocalStack).
    #[serde(default)]
    pub endpoint: Option<Loc<String>>,
    /// The profile of the shared credentials file; default `AWS_PROFILE`, else `default`.
    /// Credentials come from `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and
    /// `AWS_SESSION_TOKEN` first, then from that profile of `~/.aws/credentials`
    /// (`AWS_SHARED_CREDENTIALS_FILE`).
    #[serde(default)]
    pub profile: Option<String>,
    /// TLS settings for the endpoint (a private CA).
    #[serde(default)]
    pub tls: Option<Tls>,
}

/// How a Lambda function is invoked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LambdaInvocation {
    /// `RequestResponse`: wait for the result.
    #[default]
    Sync,
    /// `Event`: Lambda queues the event; no reply.
    Async,
}

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

    /// The function kind that invokes the discovered function `name` in `namespace`.
    pub fn function(&self, name: &str, namespace: Option<&str>) -> OpenFaasFunction {
        OpenFaasFunction {
            gateway: self.gateway.clone(),
            name: Loc::new(name.to_string()),
            namespace: namespace.map(str::to_string),
            asynchronous: self.asynchronous,
            username: self.username.clone(),
            password: self.password.clone(),
            callback_url: self.callback_url.clone(),
            tls: self.tls.clone(),
        }
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

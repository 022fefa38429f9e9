//! `openwhisk`: an Apache OpenWhisk action, invoked blocking through the API host.

use fnbroker_core::function::{BuildError, FunctionPlugin, FunctionUse, InvokeContext};
use fnbroker_core::invoke::Invoker;
use fnbroker_core::registry::Report;
use fnbroker_core::tls::Tls;
use fnbroker_core::values::Loc;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;

use crate::OpenWhiskInvoker;

/// An Apache OpenWhisk action.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct OpenWhiskFunction {
    /// The API host's base URL (`https://whisk.example.com`).
    pub api: Loc<String>,
    /// The namespace; `_` (the credentials' own) when absent.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// The action's name (with its package: `pkg/action`).
    pub action: Loc<String>,
    /// The `uuid:key` authentication string (`wsk property get --auth`).
    pub auth: Loc<String>,
    /// TLS for an `https` API host.
    #[serde(default)]
    pub tls: Option<Tls>,
}

fn default_namespace() -> String {
    "_".into()
}

/// The `openwhisk` kind.
pub struct OpenWhisk;

impl FunctionPlugin for OpenWhisk {
    const KIND: &'static str = "openwhisk";
    const ABOUT: &'static str = "An Apache OpenWhisk action.";
    type Settings = OpenWhiskFunction;

    fn validate(f: &OpenWhiskFunction, _using: &FunctionUse<'_>, report: &Report<'_>) {
        report.url("api", &f.api, super::WEB);
        super::not_empty(report, "action", &f.action);
        if !f.auth.contains(':') {
            report.error(
                &["auth"],
                "`openwhisk.auth` must be the `uuid:key` string (`wsk property get --auth`)",
            );
        }
    }

    /// An action takes one event per activation.
    fn takes_batches(_: &OpenWhiskFunction) -> bool {
        false
    }

    fn tls(f: &OpenWhiskFunction) -> Option<&Tls> {
        f.tls.as_ref()
    }

    /// Without `auth`, the credentials.
    fn view(f: &OpenWhiskFunction) -> serde_json::Value {
        json!({
            "api": super::shown(&f.api),
            "namespace": f.namespace,
            "action": f.action.as_str(),
        })
    }

    fn build(
        f: &OpenWhiskFunction,
        context: &InvokeContext,
    ) -> Result<Box<dyn Invoker>, BuildError> {
        Ok(Box::new(OpenWhiskInvoker::new(f, context.concurrency)?))
    }
}

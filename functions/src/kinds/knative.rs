//! `knative`: a Knative service, or any CloudEvents sink (a broker, a channel, `${K_SINK}`), in
//! CloudEvents binary mode.

use fnbroker_core::function::{BuildError, FunctionPlugin, FunctionUse, InvokeContext};
use fnbroker_core::invoke::Invoker;
use fnbroker_core::registry::Report;
use fnbroker_core::tls::Tls;
use fnbroker_core::values::Loc;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;

use crate::platforms;

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

/// The `knative` kind.
pub struct Knative;

impl FunctionPlugin for Knative {
    const KIND: &'static str = "knative";
    const ABOUT: &'static str = "A Knative service (CloudEvents binary mode).";
    type Settings = KnativeFunction;

    fn validate(f: &KnativeFunction, _using: &FunctionUse<'_>, report: &Report<'_>) {
        report.url("url", &f.url, super::WEB);
    }

    fn tls(f: &KnativeFunction) -> Option<&Tls> {
        f.tls.as_ref()
    }

    fn view(f: &KnativeFunction) -> serde_json::Value {
        json!({ "url": super::shown(&f.url) })
    }

    fn build(f: &KnativeFunction, context: &InvokeContext) -> Result<Box<dyn Invoker>, BuildError> {
        Ok(Box::new(platforms::knative(f, context.concurrency)?))
    }
}

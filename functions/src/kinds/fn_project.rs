//! `fn`: an Fn Project function, invoked synchronously through the Fn server.

use fnbroker_core::function::{BuildError, FunctionPlugin, FunctionUse, InvokeContext};
use fnbroker_core::invoke::Invoker;
use fnbroker_core::registry::Report;
use fnbroker_core::tls::Tls;
use fnbroker_core::values::Loc;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;

use crate::platforms;

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

/// The `fn` kind.
pub struct FnProject;

impl FunctionPlugin for FnProject {
    const KIND: &'static str = "fn";
    const ABOUT: &'static str = "An Fn Project function.";
    type Settings = FnFunction;

    fn validate(f: &FnFunction, _using: &FunctionUse<'_>, report: &Report<'_>) {
        report.url("endpoint", &f.endpoint, super::WEB);
        super::not_empty(report, "id", &f.id);
    }

    fn tls(f: &FnFunction) -> Option<&Tls> {
        f.tls.as_ref()
    }

    fn view(f: &FnFunction) -> serde_json::Value {
        json!({ "endpoint": super::shown(&f.endpoint), "id": f.id.as_str() })
    }

    fn build(f: &FnFunction, context: &InvokeContext) -> Result<Box<dyn Invoker>, BuildError> {
        Ok(Box::new(platforms::fn_project(f, context.concurrency)?))
    }
}

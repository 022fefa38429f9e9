//! `fission`: a Fission function through its router.

use fnbroker_core::function::{BuildError, FunctionPlugin, FunctionUse, InvokeContext};
use fnbroker_core::invoke::Invoker;
use fnbroker_core::registry::Report;
use fnbroker_core::tls::Tls;
use fnbroker_core::values::Loc;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;

use crate::platforms;

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

/// The `fission` kind.
pub struct Fission;

impl FunctionPlugin for Fission {
    const KIND: &'static str = "fission";
    const ABOUT: &'static str = "A Fission function through its router.";
    type Settings = FissionFunction;

    fn validate(f: &FissionFunction, _using: &FunctionUse<'_>, report: &Report<'_>) {
        report.url("router", &f.router, super::WEB);
        super::not_empty(report, "name", &f.name);
    }

    fn tls(f: &FissionFunction) -> Option<&Tls> {
        f.tls.as_ref()
    }

    fn view(f: &FissionFunction) -> serde_json::Value {
        json!({
            "router": super::shown(&f.router),
            "name": f.name.as_str(),
            "namespace": f.namespace,
        })
    }

    fn build(f: &FissionFunction, context: &InvokeContext) -> Result<Box<dyn Invoker>, BuildError> {
        Ok(Box::new(platforms::fission(f, context.concurrency)?))
    }
}

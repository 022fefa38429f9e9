//! `openfaas`: an OpenFaaS function through its gateway, synchronously (`/function/`) or through
//! the gateway's queue with the result posted back to fnbroker (`/async-function/`).

use std::sync::Arc;

use fnbroker_config::OpenFaasDiscovery;
use fnbroker_core::function::{BuildError, FunctionPlugin, FunctionUse, InvokeContext};
use fnbroker_core::invoke::Invoker;
use fnbroker_core::registry::Report;
use fnbroker_core::tls::Tls;
use fnbroker_core::values::Loc;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;

use crate::{Callbacks, OpenFaasAsyncInvoker, platforms};

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

impl OpenFaasFunction {
    /// The function `name` in `namespace` that `discovery` found on its gateway.
    pub fn discovered(discovery: &OpenFaasDiscovery, name: &str, namespace: Option<&str>) -> Self {
        Self {
            gateway: discovery.gateway.clone(),
            name: Loc::new(name.to_string()),
            namespace: namespace.map(str::to_string),
            asynchronous: discovery.asynchronous,
            username: discovery.username.clone(),
            password: discovery.password.clone(),
            callback_url: discovery.callback_url.clone(),
            tls: discovery.tls.clone(),
        }
    }
}

/// The `openfaas` kind.
pub struct OpenFaas;

impl FunctionPlugin for OpenFaas {
    const KIND: &'static str = "openfaas";
    const ABOUT: &'static str = "An OpenFaaS function through its gateway.";
    type Settings = OpenFaasFunction;

    fn validate(f: &OpenFaasFunction, using: &FunctionUse<'_>, report: &Report<'_>) {
        report.url("gateway", &f.gateway, super::WEB);
        super::not_empty(report, "name", &f.name);
        if f.username.is_some() != f.password.is_some() {
            report.error(
                &["gateway"],
                "`openfaas` needs both `username` and `password`, or neither",
            );
        }
        if let Some(callback) = &f.callback_url {
            report.url("callback_url", callback, super::WEB);
        } else if f.asynchronous && using.admin_url.is_none() {
            report.error(
                &["name"],
                "`async: true` needs `callback_url`, or an `admin` listener on a specific address: the gateway's queue worker posts each result there",
            );
        }
    }

    /// A call through the gateway's queue answers later, one event at a time.
    fn takes_batches(f: &OpenFaasFunction) -> bool {
        !f.asynchronous
    }

    fn tls(f: &OpenFaasFunction) -> Option<&Tls> {
        f.tls.as_ref()
    }

    fn view(f: &OpenFaasFunction) -> serde_json::Value {
        json!({
            "gateway": super::shown(&f.gateway),
            "name": f.name.as_str(),
            "namespace": f.namespace,
            "async": f.asynchronous,
            "username": f.username,
        })
    }

    fn build(
        f: &OpenFaasFunction,
        context: &InvokeContext,
    ) -> Result<Box<dyn Invoker>, BuildError> {
        let invoker = platforms::openfaas(f, context.concurrency)?;
        if !f.asynchronous {
            return Ok(Box::new(invoker));
        }
        let base = f
            .callback_url
            .as_ref()
            .map(|u| u.as_str())
            .or(context.admin_url.as_deref())
            .ok_or("`async: true` needs `callback_url` or an admin listener on a specific address: the gateway's queue worker posts the result there")?;
        let callbacks = context
            .extensions
            .get::<Arc<Callbacks>>()
            .ok_or("no registry of callbacks: the admin listener does not serve OpenFaaS's")?;
        Ok(Box::new(OpenFaasAsyncInvoker::new(
            invoker,
            Arc::clone(callbacks),
            base,
        )?))
    }
}

//! `lambda`: an AWS Lambda function, called with the Invoke API and signed with SigV4.

use fnbroker_core::function::{BuildError, FunctionPlugin, FunctionUse, InvokeContext};
use fnbroker_core::invoke::Invoker;
use fnbroker_core::registry::Report;
use fnbroker_core::tls::Tls;
use fnbroker_core::values::Loc;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;

use crate::{Credentials, LambdaInvoker};

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

/// The `lambda` kind.
pub struct Lambda;

impl FunctionPlugin for Lambda {
    const KIND: &'static str = "lambda";
    const ABOUT: &'static str = "An AWS Lambda function (the Invoke API, signed with SigV4).";
    type Settings = LambdaFunction;

    fn validate(f: &LambdaFunction, _using: &FunctionUse<'_>, report: &Report<'_>) {
        super::not_empty(report, "function", &f.function);
        if let Some(endpoint) = &f.endpoint {
            report.url("endpoint", endpoint, super::WEB);
        }
        if let Some(region) = &f.region {
            super::not_empty(report, "region", region);
        }
    }

    fn tls(f: &LambdaFunction) -> Option<&Tls> {
        f.tls.as_ref()
    }

    fn view(f: &LambdaFunction) -> serde_json::Value {
        json!({
            "function": f.function.as_str(),
            "region": f.region.as_ref().map(|r| r.as_str()),
            "qualifier": f.qualifier,
            "invocation": format!("{:?}", f.invocation).to_lowercase(),
            "endpoint": f.endpoint.as_ref().map(|e| super::shown(e)),
        })
    }

    fn build(f: &LambdaFunction, context: &InvokeContext) -> Result<Box<dyn Invoker>, BuildError> {
        let credentials = Credentials::from_environment(f.profile.as_deref())?;
        Ok(Box::new(LambdaInvoker::new(
            f,
            context.concurrency,
            credentials,
        )?))
    }
}

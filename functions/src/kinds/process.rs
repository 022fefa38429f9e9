//! `process`: warm instances of a command, supervised by fnbroker, speaking the AWS Lambda
//! Runtime API or HTTP on `$PORT`.

use std::collections::BTreeMap;
use std::time::Duration;

use fnbroker_core::function::{BuildError, FunctionPlugin, FunctionUse, InvokeContext};
use fnbroker_core::invoke::Invoker;
use fnbroker_core::registry::Report;
use fnbroker_core::values::{ConfDuration, Loc};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;

use super::http::ContentMode;

/// A pool of warm processes running one command.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct ProcessFunction {
    /// The program and its arguments (`[python3, -m, awslambdaric, handler.handle]`).
    pub command: Loc<Vec<String>>,
    /// How fnbroker talks to an instance: `lambda` (it serves the AWS Lambda Runtime API
    /// `2018-06-01` at `AWS_LAMBDA_RUNTIME_API`, which Lambda runtime clients poll) or `http`
    /// (the process listens on `$PORT`, and is called as an `http` function is).
    pub protocol: Protocol,
    /// How many instances run: `min` from the start (0: scale to zero, each first call then
    /// waits for a cold start), up to `max` under load. Default `{ min: 1, max: 4 }`.
    #[serde(default)]
    pub instances: InstanceRange,
    /// How long an instance above `min` may stay idle before it is stopped. Default `5m`.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: ConfDuration,
    /// Calls one instance takes at a time. Default 1, as Lambda.
    #[serde(default = "one")]
    pub concurrency: usize,
    /// Extra environment variables. Instances start from a clean environment, as `exec`
    /// commands do: `PATH`, `HOME`, `LANG`, the protocol's variables, these, and `inherit_env`.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Names of fnbroker's own environment variables the instances also get.
    #[serde(default)]
    pub inherit_env: Vec<String>,
    /// The working directory of the instances (and `LAMBDA_TASK_ROOT`). Default: fnbroker's.
    #[serde(default)]
    pub directory: Option<Loc<String>>,
    /// How long a new instance has to become ready (poll the Runtime API, or accept
    /// connections on `$PORT`) before it counts as a failed start and is killed. Default `10s`.
    #[serde(default = "default_init_timeout")]
    pub init_timeout: ConfDuration,
    /// Starts that may fail in a row before the function is reported unavailable (held
    /// deliveries, as in an outage; `/readyz` names it). Default 3.
    #[serde(default = "default_init_failures")]
    pub init_failures: u32,
    /// How long an instance being stopped (idle, a reload, fnbroker stopping) has between
    /// SIGTERM and SIGKILL. Default `10s`.
    #[serde(default = "default_grace_period")]
    pub grace_period: ConfDuration,
    /// `lambda`: the handler, as `_HANDLER` (default: the command's last argument, where
    /// `awslambdaric` and `aws-lambda-ric` take it).
    #[serde(default)]
    pub handler: Option<String>,
    /// `lambda`: the memory size told to the runtime (`AWS_LAMBDA_FUNCTION_MEMORY_SIZE`, MB;
    /// not enforced). Default 128.
    #[serde(default = "default_memory_size")]
    pub memory_size: u32,
    /// `http`: the path events are POSTed to. Default `/`.
    #[serde(default)]
    pub path: Option<String>,
    /// `http`: a path that answers 2xx once the instance is ready. Default: the instance is
    /// ready when it accepts connections.
    #[serde(default)]
    pub ready: Option<String>,
    /// `http`: the CloudEvents content mode, `binary` (default) or `structured`.
    #[serde(default)]
    pub mode: Option<ContentMode>,
}

impl ProcessFunction {
    /// The handler told to a Lambda runtime: the configured one, else the command's last argument.
    pub fn handler(&self) -> String {
        self.handler
            .clone()
            .or_else(|| {
                (self.command.len() > 1)
                    .then(|| self.command.last().cloned())
                    .flatten()
            })
            .unwrap_or_default()
    }
}

/// How fnbroker talks to an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// The AWS Lambda Runtime API (`2018-06-01`).
    Lambda,
    /// HTTP on `$PORT` (the Knative and OpenFaaS of-watchdog contract).
    Http,
}

impl Protocol {
    /// As the configuration writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Lambda => "lambda",
            Protocol::Http => "http",
        }
    }
}

/// The least and the most instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct InstanceRange {
    /// Instances kept running, idle or not. Default 1.
    #[serde(default = "one")]
    pub min: usize,
    /// Instances at most. Default 4.
    #[serde(default = "four")]
    pub max: usize,
}

impl Default for InstanceRange {
    fn default() -> Self {
        Self { min: 1, max: 4 }
    }
}

fn one() -> usize {
    1
}
fn four() -> usize {
    4
}
fn default_idle_timeout() -> ConfDuration {
    ConfDuration::from_secs(300)
}
fn default_init_timeout() -> ConfDuration {
    ConfDuration::from_secs(10)
}
fn default_grace_period() -> ConfDuration {
    ConfDuration::from_secs(10)
}
fn default_init_failures() -> u32 {
    3
}
fn default_memory_size() -> u32 {
    128
}

/// The `process` kind.
pub struct Process;

impl FunctionPlugin for Process {
    const KIND: &'static str = "process";
    const ABOUT: &'static str = "Keep a command's processes warm and call them through the AWS Lambda Runtime API or HTTP on $PORT.";
    type Settings = ProcessFunction;

    fn validate(f: &ProcessFunction, _using: &FunctionUse<'_>, report: &Report<'_>) {
        if f.command.first().is_none_or(String::is_empty) {
            report.error(&["command"], "`process.command` must name a program");
        }
        let range = f.instances;
        if range.max == 0 {
            report.error(&["instances", "max"], "`instances.max` must be at least 1");
        } else if range.min > range.max {
            report.error(
                &["instances", "min"],
                format_args!(
                    "`instances.min` ({}) is more than `instances.max` ({})",
                    range.min, range.max
                ),
            );
        }
        if f.concurrency == 0 {
            report.error(&["concurrency"], "`concurrency` must be at least 1");
        }
        if f.init_failures == 0 {
            report.error(&["init_failures"], "`init_failures` must be at least 1");
        }
        for (key, value) in [
            ("idle_timeout", &f.idle_timeout),
            ("init_timeout", &f.init_timeout),
            ("grace_period", &f.grace_period),
        ] {
            report.duration(key, value);
            if value.is_valid() && value.get() == Duration::ZERO && key != "grace_period" {
                report.error(&[key], format_args!("`{key}` must be more than zero"));
            }
        }
        if let Some(dir) = &f.directory
            && !std::path::Path::new(dir.as_str()).is_dir()
        {
            report.error(
                &["directory"],
                format_args!("`directory`: `{}` is not a directory", dir.as_str()),
            );
        }
        let http_only = [
            ("path", f.path.is_some()),
            ("ready", f.ready.is_some()),
            ("mode", f.mode.is_some()),
        ];
        let lambda_only = [("handler", f.handler.is_some())];
        let (other, wrong): (_, &[(&str, bool)]) = match f.protocol {
            Protocol::Lambda => ("http", &http_only),
            Protocol::Http => ("lambda", &lambda_only),
        };
        for (key, _) in wrong.iter().filter(|(_, set)| *set) {
            report.error(
                &[key],
                format_args!(
                    "`{key}` applies to `protocol: {other}`, and this function's protocol is `{}`",
                    f.protocol.as_str()
                ),
            );
        }
        for (key, path) in [("path", &f.path), ("ready", &f.ready)] {
            if let Some(p) = path
                && !p.starts_with('/')
            {
                report.error(
                    &[key],
                    format_args!("`{key}` is a path and starts with `/`: `{p}`"),
                );
            }
        }
    }

    /// The program without its arguments (their number instead), environment variables by name.
    fn view(f: &ProcessFunction) -> serde_json::Value {
        json!({
            "program": f.command.first(),
            "arguments": f.command.len().saturating_sub(1),
            "protocol": f.protocol.as_str(),
            "instances": { "min": f.instances.min, "max": f.instances.max },
            "concurrency": f.concurrency,
            "idle_timeout": f.idle_timeout.text().as_str(),
            "env": f.env.keys().collect::<Vec<_>>(),
            "inherit_env": f.inherit_env,
        })
    }

    fn build(f: &ProcessFunction, context: &InvokeContext) -> Result<Box<dyn Invoker>, BuildError> {
        Ok(Box::new(crate::process::ProcessInvoker::start(f, context)?))
    }
}

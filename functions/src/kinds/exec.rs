//! `exec`: run a command per event, as OpenFaaS's classic watchdog does.

use std::collections::BTreeMap;

use fnbroker_core::function::{BuildError, FunctionPlugin, FunctionUse, InvokeContext};
use fnbroker_core::invoke::Invoker;
use fnbroker_core::registry::Report;
use fnbroker_core::values::Loc;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;

use crate::ExecInvoker;

/// A command run once per event.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct ExecFunction {
    /// The program and its arguments. The event's data arrives on stdin, its attributes as
    /// `CE_<NAME>` environment variables; stdout is the reply; a non-zero exit is a failure.
    pub command: Loc<Vec<String>>,
    /// Extra environment variables for the command. The command starts from a clean
    /// environment: `PATH`, `HOME`, `LANG`, the `CE_*` attributes, these, and `inherit_env`.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Names of fnbroker's own environment variables the command also gets (others, such as
    /// the secrets meant for `${VAR}` substitution, are never passed on).
    #[serde(default)]
    pub inherit_env: Vec<String>,
}

/// The `exec` kind.
pub struct Exec;

impl FunctionPlugin for Exec {
    const KIND: &'static str = "exec";
    const ABOUT: &'static str = "Invoke a command per event, as OpenFaaS's classic watchdog does.";
    type Settings = ExecFunction;

    fn validate(f: &ExecFunction, _using: &FunctionUse<'_>, report: &Report<'_>) {
        if f.command.first().is_none_or(String::is_empty) {
            report.error(&["command"], "`exec.command` must name a program");
        }
    }

    /// The program without its arguments (their number instead), environment variables by name.
    fn view(f: &ExecFunction) -> serde_json::Value {
        json!({
            "program": f.command.first(),
            "arguments": f.command.len().saturating_sub(1),
            "env": f.env.keys().collect::<Vec<_>>(),
            "inherit_env": f.inherit_env,
        })
    }

    fn build(f: &ExecFunction, _context: &InvokeContext) -> Result<Box<dyn Invoker>, BuildError> {
        Ok(Box::new(ExecInvoker::new(
            &f.command,
            &f.env,
            &f.inherit_env,
        )?))
    }
}

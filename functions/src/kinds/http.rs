//! `http`: POST the event to a URL, in CloudEvents binary (default) or structured mode.

use std::collections::BTreeMap;

use fnbroker_core::function::{BuildError, FunctionPlugin, FunctionUse, InvokeContext};
use fnbroker_core::invoke::Invoker;
use fnbroker_core::registry::Report;
use fnbroker_core::tls::Tls;
use fnbroker_core::values::{ByteSize, Loc};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;

use crate::HttpInvoker;

/// An HTTP function endpoint.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct HttpFunction {
    /// The URL the event is POSTed to.
    pub url: Loc<String>,
    /// The CloudEvents HTTP content mode: `binary` (default) or `structured`.
    #[serde(default)]
    pub mode: ContentMode,
    /// Static headers sent with every request (tokens from `${ENV}`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// TLS for `https` URLs: `ca` (default: the system's roots), `cert` + `key` (mTLS),
    /// `server_name` (with an IP address in the URL), `insecure_skip_verify`.
    #[serde(default)]
    pub tls: Option<Tls>,
    /// The largest reply read (`16MiB`, `512KiB`, bytes): a 2xx answer with a longer body
    /// fails the attempt with that reason (not retried), read as a stream and cut off there;
    /// the body of another answer is cut there too. Default `16MiB`.
    #[serde(default)]
    pub max_reply: Option<ByteSize>,
}

impl HttpFunction {
    /// `max_reply` in bytes (16 MiB unless configured).
    pub fn max_reply(&self) -> usize {
        self.max_reply.as_ref().map_or(crate::MAX_REPLY, |m| {
            usize::try_from(m.get()).unwrap_or(usize::MAX)
        })
    }
}

/// A CloudEvents content mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ContentMode {
    /// Attributes in headers, data as the body.
    #[default]
    Binary,
    /// The whole event as `application/cloudevents+json`.
    Structured,
}

/// The `http` kind.
pub struct Http;

impl FunctionPlugin for Http {
    const KIND: &'static str = "http";
    const ABOUT: &'static str = "Invoke over HTTP: POST the event to a URL.";
    type Settings = HttpFunction;

    fn validate(f: &HttpFunction, _using: &FunctionUse<'_>, report: &Report<'_>) {
        report.url("url", &f.url, super::WEB);
        if let Some(max) = &f.max_reply
            && (!max.is_valid() || max.get() == 0)
        {
            report.error(
                &["max_reply"],
                format_args!(
                    "`max_reply` is not a size: `{}` (write `16MiB`, `512KiB` or bytes)",
                    max.text().as_str()
                ),
            );
        }
    }

    fn tls(f: &HttpFunction) -> Option<&Tls> {
        f.tls.as_ref()
    }

    fn view(f: &HttpFunction) -> serde_json::Value {
        json!({
            "url": super::shown(&f.url),
            "mode": format!("{:?}", f.mode).to_lowercase(),
            "headers": f.headers.keys().collect::<Vec<_>>(),
        })
    }

    fn build(f: &HttpFunction, context: &InvokeContext) -> Result<Box<dyn Invoker>, BuildError> {
        Ok(Box::new(
            HttpInvoker::new(
                &f.url,
                f.mode,
                &f.headers,
                context.concurrency,
                f.tls.as_ref(),
            )?
            .with_max_reply(f.max_reply()),
        ))
    }
}

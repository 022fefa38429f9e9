//! Function invokers: how fnbroker calls a function with an event.
//!
//! Every kind implements [`Invoker`]: one attempt, bounded by a timeout, with an outcome that says
//! whether a retry makes sense ([`InvokeError::is_retryable`]). Retries, backoff and dead letters
//! are the broker's business, not the invoker's.
//!
//! - [`HttpInvoker`]: POSTs the event over a pooled keep-alive client, in binary (default) or
//!   structured content mode.
//! - [`ExecInvoker`]: runs a command per event, as OpenFaaS's classic watchdog does.
//! - The platforms' kinds ([`build`] makes each): OpenFaaS, Knative, Fission and Fn through
//!   [`HttpInvoker`] with their URLs and headers, [`OpenWhiskInvoker`] and [`LambdaInvoker`]
//!   with their own protocols.
#![forbid(unsafe_code)]
#![deny(unreachable_pub)]
#![warn(missing_docs)]

mod client;
mod exec;
mod http_fn;
mod lambda;
mod openfaas_async;
mod openfaas_discovery;
mod openwhisk;
mod platforms;
pub mod reaper;

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use fnbroker_core::Event;

pub use exec::{ExecInvoker, MAX_STDOUT};
pub use reaper::become_subreaper;

/// The largest reply an HTTP function may send unless its `max_reply` says otherwise: as much
/// as an `exec` function may write to stdout.
pub const MAX_REPLY: usize = MAX_STDOUT;
pub use http_fn::{HttpInvoker, parse_retry_after};
pub use lambda::{Credentials, LambdaInvoker};
pub use openfaas_async::{CALL_ID, Callbacks, Completion, OpenFaasAsyncInvoker};
pub use openfaas_discovery::{Discovered, Gateway, topics};
pub use openwhisk::{ATTRIBUTES_PARAMETER, OpenWhiskInvoker};

use std::sync::Arc;

use fnbroker_config::FunctionKind;

/// What some kinds need from the running broker.
#[derive(Debug, Clone, Default)]
pub struct Platform {
    /// The calls waiting for an asynchronous OpenFaaS callback (served on the admin listener).
    pub callbacks: Arc<Callbacks>,
    /// The admin listener's base URL (`http://127.0.0.1:9464`), where callbacks arrive unless a
    /// function names its own `callback_url`.
    pub admin_url: Option<String>,
}

/// The invoker of a function's kind, with `concurrency` pooled connections for the HTTP kinds.
pub fn build(
    kind: FunctionKind<'_>,
    concurrency: usize,
    platform: &Platform,
) -> Result<Box<dyn Invoker>, String> {
    Ok(match kind {
        FunctionKind::Http(h) => Box::new(
            HttpInvoker::new(&h.url, h.mode, &h.headers, concurrency, h.tls.as_ref())?
                .with_max_reply(h.max_reply()),
        ),
        FunctionKind::Exec(e) => Box::new(ExecInvoker::new(&e.command, &e.env, &e.inherit_env)?),
        FunctionKind::OpenFaas(f) if f.asynchronous => {
            let base = f
                .callback_url
                .as_ref()
                .map(|u| u.as_str())
                .or(platform.admin_url.as_deref())
                .ok_or("`async: true` needs `callback_url` or an admin listener on a specific address: the gateway's queue worker posts the result there")?;
            Box::new(OpenFaasAsyncInvoker::new(
                platforms::openfaas(f, concurrency)?,
                Arc::clone(&platform.callbacks),
                base,
            )?)
        }
        FunctionKind::OpenFaas(f) => Box::new(platforms::openfaas(f, concurrency)?),
        FunctionKind::OpenWhisk(f) => Box::new(OpenWhiskInvoker::new(f, concurrency)?),
        FunctionKind::Fission(f) => Box::new(platforms::fission(f, concurrency)?),
        FunctionKind::Knative(f) => Box::new(platforms::knative(f, concurrency)?),
        FunctionKind::Fn(f) => Box::new(platforms::fn_project(f, concurrency)?),
        FunctionKind::Lambda(f) => Box::new(LambdaInvoker::new(
            f,
            concurrency,
            Credentials::from_environment(f.profile.as_deref())?,
        )?),
    })
}

/// What a function answered when it succeeded.
#[derive(Debug, Clone)]
pub struct Success {
    /// The HTTP status (200 for an exec function that exited 0).
    pub status: u16,
    /// The reply, when the answer had a body (or was a CloudEvent).
    pub reply: Option<Reply>,
}

/// A function's reply.
#[derive(Debug, Clone)]
pub enum Reply {
    /// The function answered with a CloudEvent (binary or structured mode): taken as it is.
    Event(Box<Event>),
    /// Any other body, with its content type; the broker wraps it into an event.
    Raw {
        /// The answer's content type, if it named one.
        content_type: Option<String>,
        /// The body.
        body: Bytes,
    },
}

/// Why one attempt to invoke a function failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum InvokeError {
    /// The function could not be reached (refused, reset, DNS...).
    #[error("cannot reach the function: {0}")]
    Connect(String),
    /// The attempt ran out of time.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The function answered with a status other than 2xx.
    #[error("function answered {status}{}", if body.is_empty() { String::new() } else { format!(": {body}") })]
    Status {
        /// The status.
        status: u16,
        /// How long the function asked us to wait (`Retry-After`), if it did.
        retry_after: Option<Duration>,
        /// The start of the body, for the logs and the dead letter's reason.
        body: String,
    },
    /// The command exited with a failure.
    #[error("command failed ({}){}", match code { Some(c) => format!("exit code {c}"), None => "killed by a signal".to_string() }, if stderr.is_empty() { String::new() } else { format!(": {stderr}") })]
    Exit {
        /// The exit code; `None` when a signal killed it.
        code: Option<i32>,
        /// The end of what it wrote to stderr.
        stderr: String,
    },
    /// The command's output broke a limit (more stdout than a reply may hold).
    #[error("{0}")]
    Output(String),
    /// The command could not be started.
    #[error("cannot start the command: {0}")]
    Spawn(String),
    /// The function ran and reported a failure through its platform (an OpenWhisk application
    /// error, a Lambda function error).
    #[error("the function failed: {message}")]
    Function {
        /// What the platform reported.
        message: String,
        /// Whether the platform's contract makes another attempt sensible.
        retryable: bool,
    },
    /// The request could not be made (a signature could not be computed): final.
    #[error("cannot make the request: {0}")]
    Request(String),
    /// The function answered 2xx, but with a reply that claims to be a CloudEvent and is not one.
    #[error("invalid CloudEvent in the reply: {0}")]
    InvalidReply(String),
}

impl InvokeError {
    /// Whether another attempt may succeed: connection errors, timeouts, 408, 429 and 5xx, and
    /// failed commands. Other 4xx, commands that cannot start and invalid replies are final.
    pub fn is_retryable(&self) -> bool {
        match self {
            InvokeError::Connect(_) | InvokeError::Timeout(_) | InvokeError::Exit { .. } => true,
            InvokeError::Status { status, .. } => {
                matches!(*status, 408 | 429) || (500..600).contains(status)
            }
            InvokeError::Function { retryable, .. } => *retryable,
            InvokeError::Spawn(_)
            | InvokeError::Request(_)
            | InvokeError::InvalidReply(_)
            | InvokeError::Output(_) => false,
        }
    }

    /// Whether the failure says the function is unavailable rather than failing this event: it
    /// could not be reached, did not answer in time, or answered 429, 502, 503 or 504 (overloaded,
    /// or a gateway in front of it found nothing behind). When most calls fail this way, the
    /// function is down: an outage, not a reason to spend each event's retries.
    pub fn is_unavailable(&self) -> bool {
        match self {
            InvokeError::Connect(_) | InvokeError::Timeout(_) => true,
            InvokeError::Status { status, .. } => matches!(*status, 429 | 502 | 503 | 504),
            _ => false,
        }
    }

    /// The HTTP status of the answer, if there was one.
    pub fn status(&self) -> Option<u16> {
        match self {
            InvokeError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The delay the function asked for with `Retry-After`.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            InvokeError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Whether the attempt ran out of time.
    pub fn is_timeout(&self) -> bool {
        matches!(self, InvokeError::Timeout(_))
    }
}

/// Calls a function with one event: one attempt.
#[async_trait]
pub trait Invoker: Send + Sync {
    /// Invokes the function with `event`, giving up after `timeout`.
    async fn invoke(&self, event: &Event, timeout: Duration) -> Result<Success, InvokeError>;

    /// Invokes the function once with a batch of `events` (`delivery.batch`), giving up after
    /// `timeout`: over HTTP as `application/cloudevents-batch+json`, to a command and to Lambda
    /// as a JSON array of structured events. The answer's body may name the events that failed
    /// (see [`item_failures`]). Default: the kind takes no batches (validation refuses them).
    async fn invoke_batch(
        &self,
        _events: &[Event],
        _timeout: Duration,
    ) -> Result<Success, InvokeError> {
        Err(InvokeError::Request(
            "this kind of function does not take batches".into(),
        ))
    }
}

/// The events a batch's answer names as failed, Lambda's partial batch response:
/// `{"batchItemFailures": [{"itemIdentifier": "<event id>"}]}`. `None` when the answer says
/// nothing of the kind (every event succeeded); an error when it says so malformed.
pub fn item_failures(reply: Option<&Reply>) -> Result<Option<Vec<String>>, InvokeError> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Answer {
        batch_item_failures: Option<Vec<Item>>,
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Item {
        item_identifier: serde_json::Value,
    }
    let Some(Reply::Raw { body, .. }) = reply else {
        return Ok(None);
    };
    let trimmed = body.trim_ascii_start();
    if !trimmed.starts_with(b"{") {
        return Ok(None);
    }
    let Ok(answer) = serde_json::from_slice::<Answer>(trimmed) else {
        return Ok(None);
    };
    let Some(items) = answer.batch_item_failures else {
        return Ok(None);
    };
    items
        .into_iter()
        .map(|item| match item.item_identifier {
            serde_json::Value::String(id) if !id.is_empty() => Ok(id),
            other => Err(InvokeError::Function {
                message: format!(
                    "batchItemFailures names `{other}`, which is no event id: the whole batch failed"
                ),
                retryable: true,
            }),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// The decoders of what functions and their platforms answer, by themselves: each takes the
/// bytes as they came back. The invokers use them; the fuzz targets feed them arbitrary input.
pub mod answers {
    use bytes::Bytes;
    use http::HeaderMap;

    use crate::{InvokeError, Reply, Success};

    /// An HTTP function's answer (`http`, Knative, Fission, Fn, OpenFaaS): a 2xx's reply (a
    /// CloudEvent in binary or structured mode, or any body), or the error of another status.
    pub fn http(
        status: u16,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<Option<Reply>, InvokeError> {
        if !(200..300).contains(&status) {
            return Err(crate::http_fn::status_error(status, headers, &body));
        }
        crate::http_fn::decode_reply(headers, body)
    }

    /// A Lambda synchronous invocation's payload as the reply.
    pub fn lambda(body: Bytes) -> Result<Option<Reply>, InvokeError> {
        crate::lambda::reply(body)
    }

    /// An OpenWhisk activation record (`blocking=true` without `result=true`).
    pub fn openwhisk_activation(body: &[u8]) -> Result<Success, InvokeError> {
        crate::openwhisk::activation_outcome(body)
    }

    /// An OpenFaaS queue worker's callback, as the admin listener receives it.
    pub fn openfaas_callback(
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<Option<Reply>, InvokeError> {
        let c = crate::Completion::from_callback(headers, body);
        http(c.status, &c.headers, c.body)
    }

    /// The events a batch's answer names as failed (`batchItemFailures`).
    pub fn batch_failures(reply: Option<&Reply>) -> Result<Option<Vec<String>>, InvokeError> {
        crate::item_failures(reply)
    }
}

/// One attempt, given up after `timeout`.
pub(crate) async fn within(
    timeout: Duration,
    attempt: impl std::future::Future<Output = Result<Success, InvokeError>>,
) -> Result<Success, InvokeError> {
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or(Err(InvokeError::Timeout(timeout)))
}

/// Keeps at most `max` bytes of a text (on a character boundary), marking the cut.
pub(crate) fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_failures_of_a_batch_answer() {
        let raw = |body: &'static str| Reply::Raw {
            content_type: Some("application/json".into()),
            body: Bytes::from_static(body.as_bytes()),
        };
        let named =
            raw(r#"{"batchItemFailures": [{"itemIdentifier": "a"}, {"itemIdentifier": "b"}]}"#);
        assert_eq!(
            item_failures(Some(&named)).ok().flatten(),
            Some(vec!["a".to_string(), "b".to_string()])
        );
        assert_eq!(
            item_failures(Some(&raw(r#"{"batchItemFailures": []}"#)))
                .ok()
                .flatten(),
            Some(vec![])
        );
        assert!(item_failures(Some(&raw(r#"{"ok": true}"#))).is_ok_and(|f| f.is_none()));
        assert!(item_failures(Some(&raw("plain text"))).is_ok_and(|f| f.is_none()));
        assert!(item_failures(None).is_ok_and(|f| f.is_none()));
        let bad = raw(r#"{"batchItemFailures": [{"itemIdentifier": ""}]}"#);
        assert!(item_failures(Some(&bad)).is_err_and(|e| e.is_retryable()));
    }

    #[test]
    fn retry_classification() {
        let status = |s| InvokeError::Status {
            status: s,
            retry_after: None,
            body: String::new(),
        };
        assert!(status(503).is_retryable());
        assert!(status(500).is_retryable());
        assert!(status(429).is_retryable());
        assert!(status(408).is_retryable());
        assert!(!status(400).is_retryable());
        assert!(!status(404).is_retryable());
        assert!(InvokeError::Timeout(Duration::from_secs(1)).is_retryable());
        assert!(InvokeError::Connect("refused".into()).is_retryable());
        assert!(!InvokeError::InvalidReply("x".into()).is_retryable());
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncate("ééé".to_string(), 3), "é…");
        assert_eq!(truncate("abc".to_string(), 3), "abc");
    }
}

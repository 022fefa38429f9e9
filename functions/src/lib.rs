//! Function invokers: how fnbroker calls a function with an event.
//!
//! Every kind implements [`Invoker`]: one attempt, bounded by a timeout, with an outcome that says
//! whether a retry makes sense ([`InvokeError::is_retryable`]). Retries, backoff and dead letters
//! are the broker's business, not the invoker's.
//!
//! Every kind is a plugin ([`fnbroker_core::function::FunctionPlugin`]) in [`kinds`], listed in
//! [`KINDS`]:
//!
//! - [`HttpInvoker`]: POSTs the event over a pooled keep-alive client, in binary (default) or
//!   structured content mode.
//! - [`ExecInvoker`]: runs a command per event, as OpenFaaS's classic watchdog does.
//! - The platforms' kinds: OpenFaaS, Knative, Fission and Fn through [`HttpInvoker`] with their
//!   URLs and headers, [`OpenWhiskInvoker`] and [`LambdaInvoker`] with their own protocols.
#![forbid(unsafe_code)]
#![deny(unreachable_pub)]
#![warn(missing_docs)]

mod client;
mod exec;
mod http_fn;
pub mod kinds;
mod lambda;
mod openfaas_async;
mod openfaas_discovery;
mod openwhisk;
mod platforms;
mod process;
pub mod reaper;

use std::time::Duration;

pub use fnbroker_core::invoke::{InvokeError, Invoker, Reply, Success, item_failures};
pub use kinds::KINDS;

pub use exec::{ExecInvoker, MAX_STDOUT};
pub use process::{ProcessInvoker, ProcessMetrics};
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

use fnbroker_core::function::InvokeContext;

/// What some kinds need from the running broker.
#[derive(Debug, Clone, Default)]
pub struct Platform {
    /// The calls waiting for an asynchronous OpenFaaS callback (served on the admin listener).
    pub callbacks: Arc<Callbacks>,
    /// The admin listener's base URL (`http://127.0.0.1:9464`), where callbacks arrive unless a
    /// function names its own `callback_url`.
    pub admin_url: Option<String>,
    /// The tasks that run and stop the instances of `process` functions: the broker waits
    /// for them at the end, so that every instance is stopped before it exits.
    pub tasks: tokio_util::task::TaskTracker,
    /// The metrics of `process` functions (registered by the broker).
    pub process_metrics: ProcessMetrics,
}

impl Platform {
    /// What a kind's plugin gets to build the invoker of the function `function` of
    /// `concurrency`.
    pub fn context(&self, function: &str, concurrency: usize) -> InvokeContext {
        let mut extensions = http::Extensions::new();
        extensions.insert(Arc::clone(&self.callbacks));
        extensions.insert(self.tasks.clone());
        extensions.insert(self.process_metrics.clone());
        InvokeContext {
            function: function.to_string(),
            concurrency,
            admin_url: self.admin_url.clone(),
            extensions,
        }
    }
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
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncate("ééé".to_string(), 3), "é…");
        assert_eq!(truncate("abc".to_string(), 3), "abc");
    }
}

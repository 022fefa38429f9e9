//! The contract of a function invocation: an [`Invoker`] makes one attempt, bounded by a
//! timeout, whose outcome says whether another attempt makes sense
//! ([`InvokeError::is_retryable`]). Retries, backoff and dead letters are the broker's business,
//! not the invoker's. A function kind's plugin ([`crate::function::FunctionPlugin`]) builds one.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::Event;

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

/// What a kind that runs the function itself (warm processes) says of it now: the admin API,
/// `/readyz`, the status page and the metrics show it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Status {
    /// Why the function cannot be called now (its processes fail to start, with the last
    /// error), if so: calls fail at once as an outage until it recovers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<String>,
    /// Its instances, by state.
    pub instances: Instances,
}

/// Instances of a function by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Instances {
    /// Started, not ready yet (a cold start under way).
    pub starting: usize,
    /// Ready, calls in flight.
    pub running: usize,
    /// Ready, no call in flight.
    pub idle: usize,
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

    /// The state of what the invoker runs, for kinds that run the function themselves.
    /// Default: `None` (the function runs elsewhere).
    fn status(&self) -> Option<Status> {
        None
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
}

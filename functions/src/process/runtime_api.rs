//! The AWS Lambda Runtime API (`2018-06-01`), served to one instance on a loopback port of its
//! own (`AWS_LAMBDA_RUNTIME_API`): the runtime client in the process asks for the next event
//! (`GET /runtime/invocation/next`, held until there is one) and posts its result
//! (`.../{id}/response` or `.../{id}/error`), or its failure to start (`/runtime/init/error`).
//!
//! The instance is ready at its first `next`. A call is a [`Job`]: handed out at `next`, kept
//! by its request id until the result comes, which goes back to the waiting call.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use serde_json::json;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{InvokeError, truncate};

/// The API's version, the first segment of every path.
const VERSION: &str = "2018-06-01";
/// The largest error report read; longer ones are cut.
const MAX_ERROR: usize = 64 * 1024;
/// The most of an error's message kept for the logs and the dead letter.
const ERROR_TEXT: usize = 1024;

/// A call waiting for an instance's runtime.
#[derive(Debug)]
pub(super) struct Job {
    id: String,
    body: Bytes,
    traceparent: Option<String>,
    deadline: Instant,
    done: oneshot::Sender<Result<Bytes, InvokeError>>,
}

impl Job {
    /// A call with the payload `body`, due by `deadline`, whose result goes to `done`.
    pub(super) fn new(
        body: Bytes,
        traceparent: Option<String>,
        deadline: Instant,
        done: oneshot::Sender<Result<Bytes, InvokeError>>,
    ) -> Self {
        Self {
            id: uuid::Uuid::new_v4().to_string(),
            body,
            traceparent,
            deadline,
            done,
        }
    }
}

/// Where the runtime is in its start.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Init,
    Polled,
    InitError(String),
}

#[derive(Debug)]
struct Shared {
    arn: String,
    phase: watch::Sender<Phase>,
    jobs: tokio::sync::Mutex<mpsc::UnboundedReceiver<Job>>,
    pending: Mutex<HashMap<String, oneshot::Sender<Result<Bytes, InvokeError>>>>,
    closed: CancellationToken,
}

impl Shared {
    fn take(&self, id: &str) -> Option<oneshot::Sender<Result<Bytes, InvokeError>>> {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id)
    }
}

/// One instance's Runtime API, served until closed or dropped.
#[derive(Debug)]
pub(super) struct Api {
    shared: Arc<Shared>,
    sender: mpsc::UnboundedSender<Job>,
    server: JoinHandle<()>,
}

/// Serves a Runtime API for an instance of `function` on a free loopback port: the API and
/// its address (`127.0.0.1:PORT`, the value of `AWS_LAMBDA_RUNTIME_API`).
pub(super) async fn serve(function: &str) -> Result<(Api, String), String> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .map_err(|e| format!("cannot listen for the Runtime API: {e}"))?;
    let address = listener
        .local_addr()
        .map_err(|e| format!("cannot listen for the Runtime API: {e}"))?
        .to_string();
    let (sender, queue) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        arn: format!("arn:aws:lambda:local:000000000000:function:{function}"),
        phase: watch::Sender::new(Phase::Init),
        jobs: tokio::sync::Mutex::new(queue),
        pending: Mutex::default(),
        closed: CancellationToken::new(),
    });
    let runtime = format!("/{VERSION}/runtime");
    let router = Router::new()
        .route(&format!("{runtime}/invocation/next"), get(next))
        .route(
            &format!("{runtime}/invocation/{{id}}/response"),
            post(response),
        )
        .route(&format!("{runtime}/invocation/{{id}}/error"), post(error))
        .route(&format!("{runtime}/init/error"), post(init_error))
        .with_state(Arc::clone(&shared));
    let closed = shared.closed.clone();
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(closed.cancelled_owned())
            .await;
    });
    Ok((
        Api {
            shared,
            sender,
            server,
        },
        address,
    ))
}

impl Api {
    /// Resolves once the runtime asked for its first event; an error when it reported that
    /// it cannot start.
    pub(super) async fn started(&self) -> Result<(), String> {
        let mut phase = self.shared.phase.subscribe();
        let seen = phase
            .wait_for(|p| *p != Phase::Init)
            .await
            .map(|p| p.clone());
        match seen {
            Ok(Phase::InitError(e)) => Err(e),
            Ok(_) => Ok(()),
            Err(_) => Err("the Runtime API closed".into()),
        }
    }

    /// The init error the runtime reported, if it did.
    pub(super) fn init_error(&self) -> Option<String> {
        match &*self.shared.phase.borrow() {
            Phase::InitError(e) => Some(e.clone()),
            _ => None,
        }
    }

    /// Where calls go to be handed to the runtime.
    pub(super) fn jobs(&self) -> mpsc::UnboundedSender<Job> {
        self.sender.clone()
    }

    /// Ends the API: the calls still pending fail (their callers see the instance's end).
    pub(super) fn close(&self) {
        self.shared.closed.cancel();
        self.shared
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        self.shared.closed.cancel();
        self.server.abort();
    }
}

/// `GET /runtime/invocation/next`: the next call, held until there is one.
async fn next(State(shared): State<Arc<Shared>>) -> Response {
    shared.phase.send_if_modified(|p| {
        let first = *p == Phase::Init;
        if first {
            *p = Phase::Polled;
        }
        first
    });
    loop {
        let job = {
            let mut queue = shared.jobs.lock().await;
            tokio::select! {
                job = queue.recv() => job,
                () = shared.closed.cancelled() => None,
            }
        };
        let Some(job) = job else {
            return (StatusCode::GONE, "the instance is being stopped\n").into_response();
        };
        // A call that gave up while queued is not handed out.
        if job.done.is_closed() {
            continue;
        }
        let left = job.deadline.saturating_duration_since(Instant::now());
        let deadline_ms = (SystemTime::now() + left)
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_millis();
        let mut headers = HeaderMap::new();
        let mut set = |name: &'static str, value: String| {
            if let Ok(v) = HeaderValue::try_from(value) {
                headers.insert(name, v);
            }
        };
        set("lambda-runtime-aws-request-id", job.id.clone());
        set("lambda-runtime-deadline-ms", deadline_ms.to_string());
        set("lambda-runtime-invoked-function-arn", shared.arn.clone());
        // Always sent: a runtime may need it (awslambdaric 4.2.2 crashes without it).
        set(
            "lambda-runtime-trace-id",
            trace_id(job.traceparent.as_deref()),
        );
        set("content-type", "application/json".into());
        shared
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(job.id, job.done);
        return (StatusCode::OK, headers, Body::from(job.body)).into_response();
    }
}

/// `POST /runtime/invocation/{id}/response`: the result, which becomes the call's reply.
async fn response(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: Body,
) -> Response {
    let Some(done) = shared.take(&id) else {
        return unknown_request(&id);
    };
    match axum::body::to_bytes(body, crate::MAX_REPLY).await {
        Ok(body) => {
            let _ = done.send(Ok(body));
            accepted()
        }
        Err(_) => {
            let _ = done.send(Err(InvokeError::Output(format!(
                "the function's response is larger than {} MiB",
                crate::MAX_REPLY / (1024 * 1024)
            ))));
            (
                StatusCode::PAYLOAD_TOO_LARGE,
                axum::Json(json!({
                    "errorMessage": "the response is too large",
                    "errorType": "RequestEntityTooLarge"
                })),
            )
                .into_response()
        }
    }
}

/// `POST /runtime/invocation/{id}/error`: the handler failed; the call fails with the error's
/// type and message.
async fn error(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(done) = shared.take(&id) else {
        return unknown_request(&id);
    };
    let message = error_text(&headers, body).await;
    let _ = done.send(Err(InvokeError::Function {
        message,
        retryable: true,
    }));
    accepted()
}

/// `POST /runtime/init/error`: the runtime cannot start (its handler does not import).
async fn init_error(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Body) -> Response {
    let message = error_text(&headers, body).await;
    shared.phase.send_replace(Phase::InitError(message));
    accepted()
}

/// An error report as one line: `type: message`, from its JSON body
/// (`{"errorType", "errorMessage"}`) or its `Lambda-Runtime-Function-Error-Type` header.
async fn error_text(headers: &HeaderMap, body: Body) -> String {
    #[derive(serde::Deserialize, Default)]
    #[serde(rename_all = "camelCase")]
    struct Report {
        error_type: Option<String>,
        error_message: Option<String>,
    }
    let bytes = axum::body::to_bytes(body, MAX_ERROR)
        .await
        .unwrap_or_default();
    let report: Report = serde_json::from_slice(&bytes).unwrap_or_default();
    let kind = report
        .error_type
        .or_else(|| {
            headers
                .get("lambda-runtime-function-error-type")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_else(|| "Unhandled".into());
    let message = report
        .error_message
        .unwrap_or_else(|| String::from_utf8_lossy(&bytes).trim().to_string());
    truncate(format!("{kind}: {message}"), ERROR_TEXT)
}

fn accepted() -> Response {
    (StatusCode::ACCEPTED, axum::Json(json!({"status": "OK"}))).into_response()
}

fn unknown_request(id: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({
            "errorMessage": format!("no invocation {id} is waiting for a result"),
            "errorType": "InvalidRequestID"
        })),
    )
        .into_response()
}

/// The X-Ray trace header of a call (`Root=1-...;Parent=...;Sampled=...`), from the event's W3C
/// `traceparent` when it has one (its trace id split as X-Ray writes it), else a new trace.
pub(super) fn trace_id(traceparent: Option<&str>) -> String {
    let parts = traceparent.and_then(|tp| {
        let mut it = tp.split('-');
        let (_version, trace, span, flags) = (it.next()?, it.next()?, it.next()?, it.next()?);
        let ok = trace.len() == 32
            && span.len() == 16
            && trace
                .bytes()
                .chain(span.bytes())
                .all(|b| b.is_ascii_hexdigit());
        ok.then(|| {
            let sampled = u8::from_str_radix(flags, 16).map_or(0, |f| f & 1);
            format!(
                "Root=1-{}-{};Parent={span};Sampled={sampled}",
                &trace[..8],
                &trace[8..]
            )
        })
    });
    parts.unwrap_or_else(|| {
        let random = uuid::Uuid::new_v4().simple().to_string();
        let seconds = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        format!("Root=1-{seconds:08x}-{};Sampled=0", &random[..24])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_becomes_an_xray_trace_header() {
        assert_eq!(
            trace_id(Some(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            )),
            "Root=1-4bf92f35-77b34da6a3ce929d0e0e4736;Parent=00f067aa0ba902b7;Sampled=1"
        );
        let fresh = trace_id(None);
        assert!(
            fresh.starts_with("Root=1-") && fresh.ends_with(";Sampled=0"),
            "{fresh}"
        );
        assert_eq!(
            fresh.len(),
            "Root=1-".len() + 8 + 1 + 24 + ";Sampled=0".len()
        );
        assert!(trace_id(Some("garbage")).starts_with("Root=1-"));
    }
}

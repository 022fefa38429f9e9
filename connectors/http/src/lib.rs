//! The HTTP ingress connector: CloudEvents over HTTP, and plain webhooks.
//!
//! One listener per connector; every trigger names a path (`topic: /orders`), and triggers that
//! name the same path share its events (fan-out). A request is read in any content mode of the
//! CloudEvents HTTP binding: binary (`ce-` headers, percent-decoded), structured
//! (`application/cloudevents+json`) or batch (`application/cloudevents-batch+json`); any other
//! POST is a plain message, normalized into an event whose `source` is
//! `http://<connector>/<path>`.
//!
//! Answers:
//! - `202 Accepted` once the event is routed (async mode, the default). HTTP has no redelivery:
//!   an event accepted this way is lost if the process dies before its delivery finished.
//! - With `sync: true`, the answer waits for the delivery: `200` with the function's reply as a
//!   binary-mode CloudEvent, `204` when it had none, `502` (or `504` when the last attempt timed
//!   out) with the reason when the delivery failed, so the caller can retry.
//! - `400` with a one-line reason for an invalid CloudEvent, `413` for a body over `max_body` or
//!   a batch of more than `max_batch` events,
//!   `404` for a path no trigger listens on, `405` for a method other than POST, `503` while
//!   stopping. A batch is accepted whole or not at all.
#![forbid(unsafe_code)]
#![deny(unreachable_pub)]
#![warn(missing_docs)]

mod auth;
mod config;
pub mod server;

pub use auth::{Auth, BasicAuth, HmacAlgorithm, HmacAuth, Refused};

pub use config::{HttpSettings, HttpSourceSettings, Plugin};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::response::{IntoResponse, Response};
use fnbroker_core::binding::http::{self as binding, Mode};
use fnbroker_core::event::{self, Event, PlainMessage};
use fnbroker_core::{
    AckHandle, Connector, ConnectorError, Incoming, Origin, Settlement, Sink, Source, Subscription,
};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use http::{HeaderMap, Method, StatusCode};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The HTTP ingress connector.
pub struct HttpIngress {
    name: String,
    listen: SocketAddr,
    max_body: usize,
    max_batch: usize,
    auth: Option<Arc<Auth>>,
    limits: server::Limits,
    counts: Arc<server::Counts>,
    routes: Arc<RwLock<HashMap<String, Route>>>,
    server: Mutex<Option<JoinHandle<()>>>,
    ready: Arc<AtomicBool>,
    stopping: CancellationToken,
}

/// The most events of one batch request unless configured.
const DEFAULT_MAX_BATCH: usize = 1000;

/// A message on its way to the engine, and the signal that the engine took it.
type Handoff = (Incoming, oneshot::Sender<()>);

#[derive(Clone)]
struct Route {
    tx: mpsc::Sender<Handoff>,
    sync: bool,
}

#[derive(Clone)]
struct AppState {
    name: Arc<str>,
    max_body: usize,
    max_batch: usize,
    body_timeout: Duration,
    auth: Option<Arc<Auth>>,
    routes: Arc<RwLock<HashMap<String, Route>>>,
}

impl HttpIngress {
    /// An ingress named `name` that will listen on `listen` and accept bodies up to `max_body`.
    pub fn new(name: impl Into<String>, listen: SocketAddr, max_body: usize) -> Self {
        Self {
            name: name.into(),
            listen,
            max_body,
            max_batch: DEFAULT_MAX_BATCH,
            auth: None,
            limits: server::Limits {
                max_connections: 10_000,
                header_timeout: Duration::from_secs(20),
                tls: None,
            },
            counts: Arc::default(),
            routes: Arc::default(),
            server: Mutex::new(None),
            ready: Arc::new(AtomicBool::new(false)),
            stopping: CancellationToken::new(),
        }
    }

    /// Refuses batches of more than `max` events with 413 (default 1000).
    pub fn with_max_batch(mut self, max: usize) -> Self {
        self.max_batch = max;
        self
    }

    /// Requires every request to authenticate this way.
    pub fn with_auth(mut self, auth: Option<Auth>) -> Self {
        self.auth = auth.map(Arc::new);
        self
    }

    /// Sets the listener's connection limits.
    pub fn with_limits(mut self, limits: server::Limits) -> Self {
        self.limits = limits;
        self
    }

    fn io_error(&self, message: String) -> ConnectorError {
        ConnectorError::io(&self.name, message)
    }
}

impl Drop for HttpIngress {
    fn drop(&mut self) {
        if let Ok(mut server) = self.server.lock()
            && let Some(handle) = server.take()
        {
            handle.abort();
        }
    }
}

#[async_trait]
impl Connector for HttpIngress {
    fn kind(&self) -> &'static str {
        "http"
    }

    async fn subscribe(&self, sub: &Subscription) -> Result<Box<dyn Source>, ConnectorError> {
        let path = sub.from.topic().to_string();
        let settings: HttpSourceSettings = sub.settings()?;
        // The engine pulls only while it has room, so a small buffer is enough: a full one makes
        // the request wait, which is the backpressure an HTTP client can see.
        let (tx, rx) = mpsc::channel(fnbroker_core::kit::source_buffer(sub.max_in_flight));
        let mut routes = self
            .routes
            .write()
            .map_err(|_| self.io_error("route table poisoned".into()))?;
        if routes.contains_key(&path) {
            return Err(self.io_error(format!("path `{path}` is subscribed twice")));
        }
        routes.insert(
            path,
            Route {
                tx,
                sync: settings.sync,
            },
        );
        // A sync caller gets 502 or 504 and may send the request again; an async one got 202
        // and will not.
        let redelivery = if settings.sync {
            fnbroker_core::Redelivery::Later
        } else {
            fnbroker_core::Redelivery::None
        };
        Ok(Box::new(HttpSource { rx, redelivery }))
    }

    async fn sink(
        &self,
        _: &fnbroker_core::config::Destination,
    ) -> Result<Arc<dyn Sink>, ConnectorError> {
        Err(ConnectorError::Unsupported {
            connector: self.name.clone(),
            kind: "http",
            what: "publish (name a function as the destination instead)",
        })
    }

    async fn start(&self) -> Result<(), ConnectorError> {
        let listener = tokio::net::TcpListener::bind(self.listen)
            .await
            .map_err(|e| self.io_error(format!("cannot listen on {}: {e}", self.listen)))?;
        let state = AppState {
            name: self.name.as_str().into(),
            max_body: self.max_body,
            max_batch: self.max_batch,
            body_timeout: self.limits.header_timeout,
            auth: self.auth.clone(),
            routes: Arc::clone(&self.routes),
        };
        let app = Router::new()
            .fallback(handle)
            .layer(DefaultBodyLimit::max(self.max_body))
            .with_state(state);
        let name = self.name.clone();
        let ready = Arc::clone(&self.ready);
        ready.store(true, Ordering::Release);
        let serving = server::spawn(
            name,
            listener,
            app,
            self.limits.clone(),
            Arc::clone(&self.counts),
            self.stopping.clone(),
        );
        let handle = tokio::spawn(async move {
            let _ = serving.await;
            ready.store(false, Ordering::Release);
        });
        if let Ok(mut server) = self.server.lock() {
            *server = Some(handle);
        }
        tracing::info!(connector = %self.name, listen = %self.listen, "http ingress listening");
        Ok(())
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    fn listener_counts(&self) -> Option<fnbroker_core::ListenerCounts> {
        Some(self.counts.get())
    }

    /// Stops accepting connections and waits (up to 5 s) for the requests in progress to get
    /// their answers.
    async fn stop(&self) {
        self.stopping.cancel();
        let handle = self.server.lock().ok().and_then(|mut s| s.take());
        if let Some(handle) = handle
            && tokio::time::timeout(Duration::from_secs(5), handle)
                .await
                .is_err()
        {
            tracing::warn!(connector = %self.name, "http ingress did not finish its requests in time");
        }
    }
}

/// The events of one path.
struct HttpSource {
    rx: mpsc::Receiver<Handoff>,
    redelivery: fnbroker_core::Redelivery,
}

#[async_trait]
impl Source for HttpSource {
    async fn next(&mut self) -> Option<Incoming> {
        loop {
            let (incoming, taken) = self.rx.recv().await?;
            // The request may have gone away meanwhile; its event is then not ours to deliver.
            if taken.send(()).is_ok() {
                return Some(incoming);
            }
        }
    }

    fn redelivery(&self) -> fnbroker_core::Redelivery {
        self.redelivery
    }
}

fn text(status: StatusCode, msg: impl Into<String>) -> Response {
    let mut msg = msg.into();
    msg.push('\n');
    (status, [(CONTENT_TYPE, "text/plain; charset=utf-8")], msg).into_response()
}

async fn handle(State(state): State<AppState>, request: Request) -> Response {
    // Credentials first: an unauthenticated client learns nothing, not even which paths exist.
    if let Some(auth) = state.auth.as_deref().filter(|a| !a.needs_body())
        && let Err(refused) = auth.check(request.headers(), &[])
    {
        return refused.into_response();
    }
    let path = request.uri().path().to_string();
    let route = match state.routes.read() {
        Ok(routes) => routes.get(&path).cloned(),
        Err(_) => None,
    };
    let Some(route) = route else {
        return text(
            StatusCode::NOT_FOUND,
            format!("no trigger listens on `{path}`"),
        );
    };
    if request.method() != Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "use POST");
    }
    let (parts, body) = request.into_parts();
    let too_large = || {
        text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than {} bytes", state.max_body),
        )
    };
    if parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .is_some_and(|len| len > state.max_body)
    {
        return too_large();
    }
    let body = match tokio::time::timeout(
        state.body_timeout,
        axum::body::to_bytes(body, state.max_body),
    )
    .await
    {
        Ok(Ok(b)) => b,
        Ok(Err(_)) => return too_large(),
        Err(_) => {
            return text(
                StatusCode::REQUEST_TIMEOUT,
                format!("the body did not arrive within {:?}", state.body_timeout),
            );
        }
    };
    if let Some(auth) = state.auth.as_deref().filter(|a| a.needs_body())
        && let Err(refused) = auth.check(&parts.headers, &body)
    {
        return refused.into_response();
    }
    let body_size = body.len();
    let events = match decode(&state.name, state.max_batch, &path, &parts.headers, &body) {
        Ok(events) => events,
        Err(event::BatchError::TooMany(max)) => {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the batch holds more than {max} events (max_batch)"),
            );
        }
        Err(event::BatchError::Invalid(reason)) => {
            return text(StatusCode::BAD_REQUEST, reason.0);
        }
    };

    let mut waiting = Vec::with_capacity(if route.sync { events.len() } else { 0 });
    // A batch's body is shared out among its events.
    let size = body_size / events.len().max(1);
    for (event, origin) in events {
        let ack = if route.sync {
            let (tx, rx) = oneshot::channel();
            waiting.push(rx);
            AckHandle::new(move |s| {
                let _ = tx.send(s);
            })
        } else {
            AckHandle::none()
        };
        let incoming = Incoming {
            event,
            origin,
            key: 0,
            redeliveries: 0,
            size,
            ack,
        };
        // Answer only once the engine took the event: an event still in the queue when
        // fnbroker stops is refused with 503, never accepted and then lost.
        let (taken_tx, taken_rx) = oneshot::channel();
        if route.tx.send((incoming, taken_tx)).await.is_err() || taken_rx.await.is_err() {
            return text(StatusCode::SERVICE_UNAVAILABLE, "fnbroker is stopping");
        }
    }
    if !route.sync {
        return StatusCode::ACCEPTED.into_response();
    }
    let mut outcomes = Vec::with_capacity(waiting.len());
    for rx in waiting {
        outcomes.push(rx.await.unwrap_or(Settlement::Released));
    }
    sync_response(outcomes)
}

/// Decodes a request to `path` on the connector named `connector` into events: one, or several
/// (at most `max_batch`) for a batch; all valid, or an error.
pub(crate) fn decode(
    connector: &str,
    max_batch: usize,
    path: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Vec<(Event, Origin)>, event::BatchError> {
    match binding::mode(headers) {
        Mode::Binary => Ok(vec![(
            binding::decode_binary(headers, body.to_vec())?,
            Origin::CloudEvent,
        )]),
        Mode::Structured => Ok(vec![(event::from_json_slice(body)?, Origin::CloudEvent)]),
        Mode::Batch => Ok(event::batch_from_json_slice_max(body, max_batch)?
            .into_iter()
            .map(|e| (e, Origin::CloudEvent))
            .collect()),
        Mode::Plain => {
            let content_type = binding::content_type(headers);
            let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
            let event = event::normalize(
                PlainMessage {
                    kind: "http",
                    connector,
                    topic: path,
                    content_type,
                    traceparent: header("traceparent"),
                    tracestate: header("tracestate"),
                    ..Default::default()
                },
                body.to_vec(),
            );
            Ok(vec![(event, Origin::Plain)])
        }
    }
}

/// The answer of a sync request once every event of it was settled.
fn sync_response(outcomes: Vec<Settlement>) -> Response {
    let mut replies = Vec::new();
    for outcome in outcomes {
        match outcome {
            Settlement::Delivered { reply } => replies.extend(reply.map(|r| *r)),
            Settlement::Failed { reason, timed_out } => {
                let status = if timed_out {
                    StatusCode::GATEWAY_TIMEOUT
                } else {
                    StatusCode::BAD_GATEWAY
                };
                return text(status, format!("delivery failed: {reason}"));
            }
            Settlement::Retry { .. } | Settlement::Released => {
                return text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "fnbroker is stopping; the event was not delivered",
                );
            }
        }
    }
    match replies.len() {
        0 => StatusCode::NO_CONTENT.into_response(),
        1 => {
            let reply = replies.remove(0);
            let mut headers = HeaderMap::new();
            binding::encode_binary(&reply, &mut headers);
            let body = Body::from(event::data_bytes(&reply).into_owned());
            (StatusCode::OK, headers, body).into_response()
        }
        _ => {
            let mut headers = HeaderMap::new();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static(event::BATCH_JSON));
            (StatusCode::OK, headers, event::batch_to_json_vec(&replies)).into_response()
        }
    }
}

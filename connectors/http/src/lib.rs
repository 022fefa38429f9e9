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
mod budget;
mod config;
mod encoding;
pub mod server;
mod shape;
mod webhook;

pub use webhook::WebhookSettings;

pub use auth::{Auth, BasicAuth, HmacAlgorithm, HmacAuth, Refused, TimedAuth};

use budget::{Budget, Held, Unread};

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
    webhook: Option<Arc<webhook::Webhook>>,
    limits: server::Limits,
    /// `max_pending` when configured; else the budgets grow with every path subscribed.
    max_pending: Option<usize>,
    listener_budget: Budget,
    unverified_budget: Budget,
    /// The listener's budget as derived so far, when `max_pending` is not set.
    derived_pending: Mutex<usize>,
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
    /// The trigger's topic, which may have `{name}` segments.
    pattern: Arc<shape::Pattern>,
    /// What plain requests' attributes are made of (`from.attributes`).
    attributes: Arc<shape::Attributes>,
    /// What the path's requests may hold before the engine takes their events:
    /// `max_in_flight` bodies of `max_body`.
    budget: Budget,
}

#[derive(Clone)]
struct AppState {
    name: Arc<str>,
    max_body: usize,
    max_batch: usize,
    body_timeout: Duration,
    auth: Option<Arc<Auth>>,
    webhook: Option<Arc<webhook::Webhook>>,
    routes: Arc<RwLock<HashMap<String, Route>>>,
    /// Every body the listener holds (`max_pending`).
    listener: Budget,
    /// The share of it bodies whose signature is not checked yet may hold: half.
    unverified: Budget,
    counts: Arc<server::Counts>,
    refusals: Arc<Refusals>,
}

/// The bodies the listener may hold when `max_pending` is not set, besides `max_in_flight` per
/// path: this many of `max_body`, so that a signed body has room before its path is known.
const UNROUTED_BODIES: usize = 4;

/// The most the derived `max_pending` grows to with the paths' `max_in_flight` (it is never
/// less than [`UNROUTED_BODIES`] bodies): set `max_pending` to hold more.
const DERIVED_MAX_PENDING: usize = 64 * 1024 * 1024;

/// Refused requests, logged at debug each and as one warning every [`REFUSALS_EVERY`]: a wall
/// of 401s (a rotated webhook secret) is seen without a line per request.
#[derive(Debug, Default)]
struct Refusals {
    since: Mutex<Option<(std::time::Instant, u64)>>,
}

/// The least time between two warnings about refused requests.
const REFUSALS_EVERY: Duration = Duration::from_secs(10);

impl Refusals {
    fn note(&self, connector: &str, status: StatusCode) {
        tracing::debug!(connector, status = status.as_u16(), "request refused");
        if status == StatusCode::NOT_FOUND || status == StatusCode::METHOD_NOT_ALLOWED {
            return;
        }
        let Ok(mut since) = self.since.lock() else {
            return;
        };
        let now = std::time::Instant::now();
        match since.as_mut() {
            Some((at, n)) if now.duration_since(*at) < REFUSALS_EVERY => *n += 1,
            _ => {
                let before = since.map_or(0, |(_, n)| n);
                tracing::warn!(
                    connector,
                    status = status.as_u16(),
                    refused_before = before,
                    "requests refused (fnbroker_http_requests_total counts them by status)"
                );
                *since = Some((now, 0));
            }
        }
    }
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
            webhook: None,
            max_pending: None,
            listener_budget: Budget::new(max_body.saturating_mul(UNROUTED_BODIES)),
            unverified_budget: Budget::new(max_body.saturating_mul(UNROUTED_BODIES) / 2),
            derived_pending: Mutex::new(max_body.saturating_mul(UNROUTED_BODIES)),
            limits: server::Limits {
                max_connections: 10_000,
                header_timeout: Duration::from_secs(20),
                tls: None,
                reserve: None,
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

    /// Answers the CloudEvents webhook handshake and holds deliveries to it.
    pub fn with_webhook(mut self, settings: Option<&WebhookSettings>) -> Self {
        self.webhook = settings.map(webhook::Webhook::new);
        self
    }

    /// Holds at most `bytes` of request bodies not yet taken by the engine, all paths together
    /// (half of it for bodies whose signature is not checked yet). Unset, the budget is
    /// `max_body` x (4 + the `max_in_flight` of every path), at most 64 MiB unless four bodies
    /// need more.
    pub fn with_max_pending(mut self, bytes: Option<usize>) -> Self {
        if let Some(bytes) = bytes {
            self.listener_budget = Budget::new(bytes);
            self.unverified_budget = Budget::new(bytes / 2);
        }
        self.max_pending = bytes;
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

    fn name(&self) -> &str {
        &self.name
    }

    async fn subscribe(&self, sub: &Subscription) -> Result<Box<dyn Source>, ConnectorError> {
        let path = sub.from.topic().to_string();
        let settings: HttpSourceSettings = sub.settings()?;
        let pattern = shape::Pattern::parse(&path)
            .map_err(|e| ConnectorError::permanent(&self.name, format!("path `{path}`: {e}")))?;
        let attributes = shape::Attributes::parse(&settings.attributes, &pattern).map_err(|e| {
            let errors: Vec<String> = e.into_iter().map(|(n, e)| format!("`{n}`: {e}")).collect();
            ConnectorError::permanent(
                &self.name,
                format!("path `{path}` attributes: {}", errors.join("; ")),
            )
        })?;
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
        let bodies = self.max_body.saturating_mul(sub.max_in_flight.max(1));
        if self.max_pending.is_none() {
            let mut derived = self
                .derived_pending
                .lock()
                .map_err(|_| self.io_error("budget poisoned".into()))?;
            let floor = self.max_body.saturating_mul(UNROUTED_BODIES);
            let wanted = derived
                .saturating_add(bodies)
                .min(DERIVED_MAX_PENDING.max(floor));
            self.listener_budget.grow(wanted - *derived);
            self.unverified_budget.grow(wanted / 2 - *derived / 2);
            *derived = wanted;
        }
        routes.insert(
            path,
            Route {
                tx,
                sync: settings.sync,
                pattern: Arc::new(pattern),
                attributes: Arc::new(attributes),
                budget: Budget::new(bodies),
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
        _: &fnbroker_core::values::Destination,
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
            webhook: self.webhook.clone(),
            routes: Arc::clone(&self.routes),
            listener: self.listener_budget.clone(),
            unverified: self.unverified_budget.clone(),
            counts: Arc::clone(&self.counts),
            refusals: Arc::default(),
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

    fn capabilities(&self) -> fnbroker_core::SourceCapabilities {
        fnbroker_core::SourceCapabilities::redelivering(self.redelivery)
    }
}

fn text(status: StatusCode, msg: impl Into<String>) -> Response {
    let mut msg = msg.into();
    msg.push('\n');
    (status, [(CONTENT_TYPE, "text/plain; charset=utf-8")], msg).into_response()
}

async fn handle(State(state): State<AppState>, request: Request) -> Response {
    let response = serve(&state, request).await;
    let status = response.status();
    state.counts.answered(status);
    if status.is_client_error() || status.is_server_error() {
        state.refusals.note(&state.name, status);
    }
    response
}

/// A request answered before its event reached the engine (boxed: a response is large and
/// this is the uncommon way out).
type Answer = Box<Response>;

fn refuse(response: Response) -> Answer {
    Box::new(response)
}

async fn serve(state: &AppState, request: Request) -> Response {
    match accept(state, request).await {
        Ok(response) => response,
        Err(response) => *response,
    }
}

/// Authenticates, routes, reads and decodes a request, then hands its events to the engine.
///
/// The order is what an attacker can learn and what they can cost: credentials come first (an
/// unauthenticated client learns nothing, not even which paths exist); a signature, which
/// needs the body, is checked before the path is looked up, its body charged meanwhile to the
/// share of the budget unverified bodies may hold. Every body byte is charged to a budget from
/// the first byte read until the engine takes the event, so nothing is ever held without bound.
async fn accept(state: &AppState, request: Request) -> Result<Response, Answer> {
    let path = request.uri().path().to_string();
    if request.method() == Method::OPTIONS
        && let Some(webhook) = &state.webhook
    {
        return handshake(state, webhook, &path, request.headers());
    }
    let (parts, mut body) = request.into_parts();
    let mut held = Held::default();
    let (route, body) = match take(state, &parts, &path, &mut body, &mut held).await {
        Ok(taken) => taken,
        Err(answer) => {
            linger(body, state.body_timeout);
            return Err(answer);
        }
    };
    let body = decompress(state, &parts.headers, body, &route, &mut held)?;
    let body_size = body.len();
    let events = match decode(&state.name, state.max_batch, &path, &parts.headers, &body) {
        Ok(mut events) => {
            if !route.attributes.is_empty() {
                for (event, origin) in &mut events {
                    if *origin == Origin::Plain {
                        route
                            .attributes
                            .apply(event, &parts.headers, &route.pattern, &path)
                            .map_err(|e| refuse(text(StatusCode::BAD_REQUEST, e)))?;
                    }
                }
            }
            events
        }
        Err(event::BatchError::TooMany(max)) => {
            return Err(refuse(text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the batch holds more than {max} events (max_batch)"),
            )));
        }
        Err(event::BatchError::Invalid(reason)) => {
            return Err(refuse(text(StatusCode::BAD_REQUEST, reason.0)));
        }
    };
    drop(body);

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
            return Err(refuse(text(
                StatusCode::SERVICE_UNAVAILABLE,
                "fnbroker is stopping",
            )));
        }
    }
    // The engine holds the events now, within its own `max_in_flight`.
    drop(held);
    if !route.sync {
        return Ok(StatusCode::ACCEPTED.into_response());
    }
    let mut outcomes = Vec::with_capacity(waiting.len());
    for rx in waiting {
        outcomes.push(rx.await.unwrap_or(Settlement::Released));
    }
    Ok(sync_response(outcomes))
}

/// Authenticates and routes a request and reads its body, charged to the budgets.
async fn take(
    state: &AppState,
    parts: &http::request::Parts,
    path: &str,
    body: &mut Body,
    held: &mut Held,
) -> Result<(Route, bytes::Bytes), Answer> {
    if let Some(auth) = state.auth.as_deref() {
        auth.precheck(&parts.headers)
            .map_err(|r| refuse(r.into_response()))?;
    }
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    match state.auth.as_deref().filter(|a| a.needs_body()) {
        Some(auth) => {
            let budgets = [&state.listener, &state.unverified];
            let bytes = read_body(state, body, declared, &budgets, held).await?;
            auth.check(&parts.headers, &bytes)
                .map_err(|r| refuse(r.into_response()))?;
            let route = find_route(state, path, &parts.method)?;
            held_to_handshake(state, &parts.headers)?;
            held.release(&state.unverified);
            if !held.charge(&[&route.budget], bytes.len()) {
                return Err(refuse(busy()));
            }
            Ok((route, bytes))
        }
        None => {
            let route = find_route(state, path, &parts.method)?;
            held_to_handshake(state, &parts.headers)?;
            let budgets = [&route.budget, &state.listener];
            let bytes = read_body(state, body, declared, &budgets, held).await?;
            Ok((route, bytes))
        }
    }
}

/// The most of a refused request's body read and dropped after the answer, and for how long.
const LINGER_BYTES: usize = 64 * 1024 * 1024;
const LINGER_TIME: Duration = Duration::from_secs(5);

/// What is left of the body of a request answered before it was read whole is read and dropped
/// in the background (at most [`LINGER_BYTES`] within [`LINGER_TIME`] or `timeout`): a client
/// that sends its whole body before it reads the answer, as most do, then sees the answer
/// instead of a connection reset under its writes. Nothing read is kept.
fn linger(mut body: Body, timeout: Duration) {
    use http_body_util::BodyExt as _;
    tokio::spawn(async move {
        let drain = async {
            let mut read = 0usize;
            while let Some(Ok(frame)) = body.frame().await {
                read += frame.data_ref().map_or(0, bytes::Bytes::len);
                if read > LINGER_BYTES {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(timeout.min(LINGER_TIME), drain).await;
    });
}

/// The answer to the CloudEvents webhook handshake. Credentials are not asked for (the
/// handshake grants no access, and senders such as Azure Event Grid send none with it); so
/// that an unauthenticated client learns no paths, the answer depends on the path only where
/// the listener asks no credentials (404 for a path no trigger listens on).
fn handshake(
    state: &AppState,
    webhook: &webhook::Webhook,
    path: &str,
    headers: &HeaderMap,
) -> Result<Response, Answer> {
    if state.auth.is_none() {
        find_route(state, path, &Method::POST)?;
    }
    let (status, answer, message) = webhook.handshake(headers);
    let mut response = if message.is_empty() {
        status.into_response()
    } else {
        text(status, message)
    };
    response.headers_mut().extend(answer);
    Ok(response)
}

/// A delivery that names its origin (`WebHook-Request-Origin`) is held to the handshake: 403
/// for an origin not granted, 429 past its rate.
fn held_to_handshake(state: &AppState, headers: &HeaderMap) -> Result<(), Answer> {
    let Some(webhook) = &state.webhook else {
        return Ok(());
    };
    match webhook.delivery(headers) {
        webhook::Delivery::Allowed => Ok(()),
        webhook::Delivery::Forbidden(origin) => Err(refuse(text(
            StatusCode::FORBIDDEN,
            format!("origin `{origin}` is not allowed to deliver here"),
        ))),
        webhook::Delivery::Throttled(secs) => {
            let mut response = text(
                StatusCode::TOO_MANY_REQUESTS,
                "this origin sent more than its granted rate (webhook.rate per minute)",
            );
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                response.headers_mut().insert(http::header::RETRY_AFTER, v);
            }
            Err(refuse(response))
        }
    }
}

/// The route of `path`: 404 when no trigger listens on it, 405 for another method than POST.
/// An exact topic wins over one with `{name}` segments.
fn find_route(state: &AppState, path: &str, method: &Method) -> Result<Route, Answer> {
    let route = match state.routes.read() {
        Ok(routes) => routes.get(path).cloned().or_else(|| {
            routes
                .values()
                .find(|r| r.pattern.has_params() && r.pattern.matches(path))
                .cloned()
        }),
        Err(_) => None,
    };
    let Some(route) = route else {
        return Err(refuse(text(
            StatusCode::NOT_FOUND,
            format!("no trigger listens on `{path}`"),
        )));
    };
    if method != Method::POST {
        return Err(refuse(text(StatusCode::METHOD_NOT_ALLOWED, "use POST")));
    }
    Ok(route)
}

/// Reads a body within `max_body` and `body_timeout`, charged to `budgets`.
async fn read_body(
    state: &AppState,
    body: &mut Body,
    declared: Option<usize>,
    budgets: &[&Budget],
    held: &mut Held,
) -> Result<bytes::Bytes, Answer> {
    let reading = budget::read(body, declared, state.max_body, budgets, held);
    match tokio::time::timeout(state.body_timeout, reading).await {
        Ok(Ok(body)) => Ok(body),
        Ok(Err(Unread::TooLarge)) => Err(refuse(too_large(state.max_body))),
        Ok(Err(Unread::Busy)) => Err(refuse(busy())),
        Ok(Err(Unread::Broken)) => Err(refuse(text(
            StatusCode::BAD_REQUEST,
            "the body could not be read",
        ))),
        Err(_) => Err(refuse(text(
            StatusCode::REQUEST_TIMEOUT,
            format!("the body did not arrive within {:?}", state.body_timeout),
        ))),
    }
}

/// The body as its sender meant it: `Content-Encoding` undone (gzip, deflate, br), the result
/// bounded by `max_body` and charged to the route's budget; 415 for any other encoding.
fn decompress(
    state: &AppState,
    headers: &HeaderMap,
    body: bytes::Bytes,
    route: &Route,
    held: &mut Held,
) -> Result<bytes::Bytes, Answer> {
    let encoding = match headers.get(http::header::CONTENT_ENCODING) {
        None => return Ok(body),
        Some(v) => v.to_str().unwrap_or_default().trim().to_ascii_lowercase(),
    };
    let decoded = match encoding::decode(&encoding, &body, state.max_body) {
        Ok(Some(decoded)) => decoded,
        Ok(None) => return Ok(body),
        Err(encoding::Refused::Unsupported) => {
            return Err(refuse(text(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("content encoding `{encoding}` is not supported (gzip, deflate, br)"),
            )));
        }
        Err(encoding::Refused::TooLarge) => return Err(refuse(too_large(state.max_body))),
        Err(encoding::Refused::Corrupt) => {
            return Err(refuse(text(
                StatusCode::BAD_REQUEST,
                format!("the body is not valid `{encoding}`"),
            )));
        }
    };
    if !held.charge(&[&route.budget, &state.listener], decoded.len()) {
        return Err(refuse(busy()));
    }
    Ok(decoded)
}

fn too_large(max_body: usize) -> Response {
    text(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the body is larger than {max_body} bytes"),
    )
}

/// The answer when a budget is full: come back in a second.
fn busy() -> Response {
    let mut response = text(
        StatusCode::SERVICE_UNAVAILABLE,
        "fnbroker holds as many undelivered bytes as max_pending allows; retry later",
    );
    response
        .headers_mut()
        .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// The headers of a message given by hand, as a request would carry them (raw UTF-8 allowed).
pub(crate) fn sample_headers(
    sample: &fnbroker_core::binding::Sample<'_>,
) -> Result<HeaderMap, String> {
    let mut headers = HeaderMap::new();
    for (k, v) in sample.headers {
        let name =
            http::HeaderName::from_bytes(k.as_bytes()).map_err(|e| format!("header `{k}`: {e}"))?;
        let value =
            HeaderValue::from_bytes(v.as_bytes()).map_err(|e| format!("header `{k}`: {e}"))?;
        headers.append(name, value);
    }
    Ok(headers)
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

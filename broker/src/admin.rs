//! The admin endpoint: `/healthz` (the process is up), `/readyz` (every connector is connected
//! and every function whose instances fnbroker runs can start them),
//! `/metrics` (Prometheus text), and read-only JSON views `/v1/triggers`, `/v1/functions` and
//! `/v1/config` (the revision running).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use fnbroker_config::{self as config, Config};

use crate::connectors::REGISTRY;
use fnbroker_http::Auth;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// The admin listener's limits: a few operators and scrapers, never a flood.
const MAX_CONNECTIONS: usize = 256;
const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Connections kept for `/healthz` and `/readyz` beyond `MAX_CONNECTIONS`: a liveness probe is
/// answered even while other clients hold every other connection.
const PROBE_CONNECTIONS: usize = 16;
/// How long a callback's body may take to arrive.
const BODY_TIMEOUT: std::time::Duration = HEADER_TIMEOUT;

/// What the admin endpoint reads.
pub(crate) struct AdminState {
    pub(crate) metrics: Arc<Metrics>,
    /// The admin listener's own counts.
    pub(crate) counts: Arc<fnbroker_http::server::Counts>,
    /// The bearer token required beyond the probes.
    pub(crate) token: Option<String>,
    /// TLS for the admin listener.
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
    /// How long a subscription may have messages waiting and take none before it is stuck.
    pub(crate) stuck_after: std::time::Duration,
    /// What the running configuration has: its connectors, triggers, functions and revision
    /// (replaced by a reload).
    pub(crate) live: Arc<arc_swap::ArcSwap<Live>>,
    /// The triggers discovery runs now.
    pub(crate) discovered: crate::discovery::Views,
    /// The asynchronous OpenFaaS calls waiting for their callback.
    pub(crate) callbacks: Arc<fnbroker_functions::Callbacks>,
}

/// The part of the admin views a reload replaces.
pub(crate) struct Live {
    /// The running connectors.
    pub(crate) connectors: Vec<(String, Arc<dyn fnbroker_core::Connector>)>,
    /// `/v1/triggers`: the configured triggers.
    pub(crate) triggers: Value,
    /// `/v1/functions`, as configured.
    pub(crate) functions: Value,
    /// The running functions, for their live state (the circuit breaker's).
    pub(crate) runtimes: Vec<(String, Arc<crate::engine::FunctionRuntime>)>,
    /// `/v1/config`: the revision running, when it was loaded, the reloads.
    pub(crate) config: Value,
}

impl Live {
    /// Nothing running.
    pub(crate) fn empty() -> Self {
        Self {
            connectors: Vec::new(),
            triggers: Value::Array(Vec::new()),
            functions: Value::Array(Vec::new()),
            runtimes: Vec::new(),
            config: Value::Null,
        }
    }
}

/// One connector as `/readyz` and `/metrics` show it.
#[derive(Debug, Clone)]
pub(crate) struct ConnectorState {
    pub(crate) name: String,
    pub(crate) kind: &'static str,
    pub(crate) ready: bool,
    /// Where it connects, its password masked (empty for a listener).
    pub(crate) address: String,
    /// The cause of the connection failures going on now.
    pub(crate) last_error: Option<String>,
    pub(crate) reconnects: u64,
    /// What its subscriptions have waiting at the broker.
    pub(crate) backlog: Vec<fnbroker_core::backlog::Backlog>,
}

impl ConnectorState {
    /// The state of `connector`, named `name`, now.
    pub(crate) fn of(name: &str, connector: &dyn fnbroker_core::Connector) -> Self {
        let link = connector.link();
        Self {
            name: name.to_string(),
            kind: connector.kind(),
            ready: connector.is_ready(),
            address: link.map(|l| l.address().to_string()).unwrap_or_default(),
            last_error: link.and_then(fnbroker_core::kit::Link::last_error),
            reconnects: link.map_or(0, fnbroker_core::kit::Link::reconnects),
            backlog: connector.backlog(),
        }
    }

    fn view(&self) -> Value {
        json!({
            "name": self.name, "kind": self.kind, "ready": self.ready, "address": self.address,
            "last_error": self.last_error, "reconnects": self.reconnects,
        })
    }
}

/// The largest callback body taken: a function's answer, as large as an `exec` reply may be.
const MAX_CALLBACK_BODY: usize = fnbroker_functions::MAX_STDOUT;

/// Binds `listen` and serves until `shutdown`.
pub(crate) async fn serve(
    listen: SocketAddr,
    state: AdminState,
    shutdown: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("admin: cannot listen on {listen}"))?;
    let counts = Arc::clone(&state.counts);
    let auth = state.token.clone().map(|t| Arc::new(Auth::Bearer(vec![t])));
    let tls = state.tls.clone();
    if auth.is_none() && !listen.ip().is_loopback() {
        tracing::warn!(%listen, "the admin endpoint listens beyond loopback without a token: anyone who reaches it reads the configuration views and metrics (set admin.token)");
    }
    let state = Arc::new(state);
    let app =
        Router::new()
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .route("/", get(status_page))
            .route("/v1/status", get(status))
            .route("/metrics", get(metrics))
            .route(
                "/v1/triggers",
                get(|State(s): State<Arc<AdminState>>| async move { Json(s.triggers_now()) }),
            )
            .route(
                "/v1/functions",
                get(|State(s): State<Arc<AdminState>>| async move { Json(s.functions_now()) }),
            )
            .route(
                "/v1/config",
                get(|State(s): State<Arc<AdminState>>| async move {
                    Json(s.live.load().config.clone())
                }),
            )
            .route(
                "/v1/callbacks/openfaas/{secret}",
                axum::routing::post(openfaas_callback),
            )
            .with_state(Arc::clone(&state))
            .layer(axum::middleware::from_fn(
                move |request: Request, next: Next| {
                    let auth = auth.clone();
                    async move { authorize(auth, request, next).await }
                },
            ));
    // What the connections kept for the probes serve: the probes, and 503 for the rest.
    let probes = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(|| async {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "the admin listener is at its connection limit; only /healthz and /readyz are answered\n",
            )
        })
        .with_state(state);
    tracing::info!(%listen, tls = tls.is_some(), "admin endpoint listening");
    // Its own listener with its own limits: a flood on the ingress does not reach it.
    Ok(fnbroker_http::server::spawn(
        "admin".into(),
        listener,
        app,
        fnbroker_http::server::Limits {
            max_connections: MAX_CONNECTIONS,
            header_timeout: HEADER_TIMEOUT,
            tls: tls.clone(),
            reserve: Some(fnbroker_http::server::Reserve {
                connections: PROBE_CONNECTIONS,
                app: probes,
            }),
        },
        counts,
        shutdown,
    ))
}

/// With a token, every path but the probes needs `Authorization: Bearer <token>`: the ingress's
/// bearer check, with its constant-time comparison and its 401.
async fn authorize(auth: Option<Arc<Auth>>, request: Request, next: Next) -> Response {
    // The probes are open; a callback carries its own secret in its path (the gateway's queue
    // worker sends no token).
    let path = request.uri().path();
    // The status page's HTML holds no data (its script reads the rest with the token).
    let open = matches!(path, "/healthz" | "/readyz" | "/") || path.starts_with("/v1/callbacks/");
    match auth
        .filter(|_| !open)
        .map(|a| a.check(request.headers(), &[]))
    {
        Some(Err(refused)) => refused.into_response(),
        _ => next.run(request).await,
    }
}

impl AdminState {
    /// Every connector's state, for `/readyz` and `connector_up`.
    fn connectors(&self) -> Vec<ConnectorState> {
        self.live
            .load()
            .connectors
            .iter()
            .map(|(name, c)| ConnectorState::of(name, c.as_ref()))
            .collect()
    }

    /// The counts of every listening connector.
    fn listeners(&self) -> Vec<(String, fnbroker_core::ListenerCounts)> {
        self.live
            .load()
            .connectors
            .iter()
            .filter_map(|(name, c)| c.listener_counts().map(|n| (name.clone(), n)))
            .collect()
    }

    /// The configured functions, with the state of their circuit breakers and of the
    /// instances fnbroker runs.
    fn functions_now(&self) -> Value {
        let live = self.live.load();
        let mut view = live.functions.clone();
        for (name, f) in &live.runtimes {
            let Some(Value::Object(m)) = view.get_mut(name) else {
                continue;
            };
            if let Some(state) = f
                .guard
                .as_ref()
                .and_then(crate::engine::guard::Guard::breaker_state)
            {
                m.insert("circuit_state".into(), json!(state.as_str()));
            }
            if let Some(status) = f.invoker.status() {
                m.insert("instances".into(), json!(status.instances));
                if let Some(why) = status.unavailable {
                    m.insert("unavailable".into(), json!(why));
                }
            }
        }
        view
    }

    /// The functions that cannot be called now, with why (the instances of a `process`
    /// function that fail to start).
    fn unavailable_functions(&self) -> Vec<(String, String)> {
        self.live
            .load()
            .runtimes
            .iter()
            .filter_map(|(name, f)| Some((name.clone(), f.invoker.status()?.unavailable?)))
            .collect()
    }

    /// The configured triggers and those discovery runs now.
    fn triggers_now(&self) -> Value {
        let mut all = self
            .live
            .load()
            .triggers
            .as_array()
            .cloned()
            .unwrap_or_default();
        let discovered = self
            .discovered
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        all.extend(discovered.values().cloned());
        Value::Array(all)
    }
}

/// An OpenFaaS queue worker posting a function's answer (`X-Call-Id`, `X-Function-Status`, the
/// function's headers and body). The route answers only while an asynchronous OpenFaaS function
/// runs, and only to the secret in its path: anything else is 404 before a byte of the body is
/// read. The body is read within `MAX_CALLBACK_BODY` and `BODY_TIMEOUT`.
async fn openfaas_callback(
    State(s): State<Arc<AdminState>>,
    axum::extract::Path(secret): axum::extract::Path<String>,
    request: Request,
) -> Response {
    if !s.callbacks.in_use() {
        return StatusCode::NOT_FOUND.into_response();
    }
    if !s.callbacks.is_secret(&secret) {
        tracing::warn!("an OpenFaaS callback with a wrong secret in its path was refused");
        return StatusCode::NOT_FOUND.into_response();
    }
    let (parts, body) = request.into_parts();
    let Some(call_id) = parts
        .headers
        .get(fnbroker_functions::CALL_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
    else {
        return (StatusCode::BAD_REQUEST, "X-Call-Id is missing\n").into_response();
    };
    let body =
        match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, MAX_CALLBACK_BODY))
            .await
        {
            Ok(Ok(body)) => body,
            Ok(Err(_)) => {
                return (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("a callback's body is at most {MAX_CALLBACK_BODY} bytes\n"),
                )
                    .into_response();
            }
            Err(_) => {
                return (
                    StatusCode::REQUEST_TIMEOUT,
                    format!("the body did not arrive within {BODY_TIMEOUT:?}\n"),
                )
                    .into_response();
            }
        };
    let completion = fnbroker_functions::Completion::from_callback(parts.headers, body);
    if s.callbacks.complete(&secret, &call_id, completion) {
        StatusCode::ACCEPTED.into_response()
    } else {
        StatusCode::NOT_FOUND.into_response()
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// 200 when every connector is ready and every `process` function can start its instances,
/// else 503; either way a JSON body naming what is not ready (`{"ready": false, "not_ready":
/// [{"name", "kind", "reason"}]}`, `kind` being `function` for a function).
async fn readyz(State(s): State<Arc<AdminState>>) -> Response {
    let mut not_ready: Vec<Value> = s
        .connectors()
        .into_iter()
        .filter(|c| !c.ready)
        .map(|c| {
            let why = c.last_error.clone().unwrap_or_else(|| {
                "connecting, or waiting for its subscriptions to be acknowledged".into()
            });
            json!({ "name": c.name, "kind": c.kind, "reason": why })
        })
        .collect();
    // A function this replica runs itself and cannot start is as bad as a connector that
    // cannot connect: the replica cannot serve, and a load balancer should send elsewhere.
    not_ready.extend(
        s.unavailable_functions()
            .into_iter()
            .map(|(name, why)| json!({ "name": name, "kind": "function", "reason": why })),
    );
    let status = if not_ready.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    // Stuck subscriptions are reported, not made unready: the cause is usually beyond this
    // process (a function down, a broker that serves nothing), which a restart does not cure.
    let now = std::time::Instant::now();
    let stuck: Vec<Value> = s
        .connectors()
        .iter()
        .flat_map(|c| {
            c.backlog
                .iter()
                .filter(|b| b.stalled_for(now) >= s.stuck_after)
                .map(|b| {
                    json!({
                        "connector": c.name, "source": b.source, "partition": b.partition,
                        "waiting": b.messages, "stalled_seconds": b.stalled_for(now).as_secs(),
                    })
                })
                .collect::<Vec<_>>()
        })
        .collect();
    // Drops of an at-most-once source (a slow consumer) are reported the same way: the process
    // is fine, its triggers are behind what is published.
    let dropping = dropping(&s);
    let destinations = failing_destinations(&s);
    (
        status,
        axum::Json(json!({
            "ready": not_ready.is_empty(), "not_ready": not_ready, "stuck": stuck,
            "dropping": dropping, "failing_destinations": destinations,
        })),
    )
        .into_response()
}

/// The status page: one self-contained HTML file (no external assets) whose script reads
/// `/v1/status`, `/v1/triggers`, `/v1/functions` and `/metrics` every second. With a token, open
/// it as `/#token=<token>`: the fragment never leaves the browser, and the script sends it as a
/// bearer token.
async fn status_page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        include_str!("status.html"),
    )
        .into_response()
}

/// The connectors' state and the last warnings and errors, for the status page.
/// The subscriptions whose source dropped messages within `stuck_after` (a slow consumer).
fn dropping(s: &AdminState) -> Vec<Value> {
    s.metrics
        .drops
        .recent(s.stuck_after)
        .into_iter()
        .map(|(subscription, dropped, ago)| {
            json!({ "subscription": subscription, "dropped": dropped, "last_seconds_ago": ago.as_secs() })
        })
        .collect()
}

/// The reply, dead-letter and retry destinations whose last publish failed for good: reported,
/// not made unready (a restart does not create a missing queue).
fn failing_destinations(s: &AdminState) -> Vec<Value> {
    s.metrics
        .destinations
        .failing_now()
        .into_iter()
        .map(|(destination, error, since)| {
            json!({ "destination": destination, "error": error, "failing_seconds": since.as_secs() })
        })
        .collect()
}

async fn status(State(s): State<Arc<AdminState>>) -> Response {
    let connectors: Vec<Value> = s.connectors().iter().map(ConnectorState::view).collect();
    let errors: Vec<Value> = crate::recent::entries()
        .into_iter()
        .map(|e| json!({ "time": e.time, "level": e.level, "target": e.target, "text": e.text }))
        .collect();
    axum::Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "connectors": connectors,
        "dropping": dropping(&s),
        "failing_destinations": failing_destinations(&s),
        "errors": errors,
    }))
    .into_response()
}

/// The OpenMetrics content type, and the classic text format's.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const CLASSIC: &str = "text/plain; version=0.0.4; charset=utf-8";

/// OpenMetrics unless the scraper's `Accept` prefers the classic text format: a `text/plain`
/// with a higher quality than any `application/openmetrics-text` (Prometheus asks for both,
/// OpenMetrics first; `curl` sends `*/*`).
fn wants_classic(accept: Option<&str>) -> bool {
    let Some(accept) = accept else { return false };
    let mut best = (0.0f32, 0.0f32);
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default().to_ascii_lowercase();
        let q = parts
            .find_map(|p| p.strip_prefix("q="))
            .and_then(|q| q.parse::<f32>().ok())
            .unwrap_or(1.0);
        match media.as_str() {
            "application/openmetrics-text" => best.0 = best.0.max(q),
            "text/plain" => best.1 = best.1.max(q),
            _ => {}
        }
    }
    best.1 > best.0
}

async fn metrics(State(s): State<Arc<AdminState>>, headers: axum::http::HeaderMap) -> Response {
    let mut listeners = s.listeners();
    listeners.push(("admin".into(), s.counts.get()));
    s.metrics.listeners(&listeners);
    s.metrics.connectors(&s.connectors());
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    if wants_classic(accept) {
        (
            [(header::CONTENT_TYPE, CLASSIC)],
            s.metrics.encode_classic(),
        )
            .into_response()
    } else {
        ([(header::CONTENT_TYPE, OPENMETRICS)], s.metrics.encode()).into_response()
    }
}

/// The JSON view of the triggers.
pub(crate) fn triggers_view(cfg: &Config) -> Value {
    Value::Array(
        cfg.triggers
            .iter()
            .map(|t| {
                json!({
                    "name": t.name.as_str(),
                    "from": source(&t.from),
                    "filter": t.filter.as_ref().map(config::Filter::written),
                    "to": t.to.as_str(),
                    "delivery": {
                        "retries": t.delivery.retries,
                        "backoff": format!("{:?}", t.delivery.backoff).to_lowercase(),
                        "delay": t.delivery.delay.text().as_str(),
                        "max_delay": t.delivery.max_delay.text().as_str(),
                        "ordered": t.delivery.ordered,
                        "max_in_flight": *t.delivery.max_in_flight,
                    },
                    "dead_letter": t.dead_letter.as_ref().map(destination),
                    "reply": t.reply.as_ref().map(destination),
                })
            })
            .collect(),
    )
}

/// `connector` and `topic`, then the keys of the connector's kind as written.
fn source(from: &config::TriggerSource) -> Value {
    let mut view = serde_json::Map::new();
    view.insert("connector".into(), from.connector.as_str().into());
    view.insert(
        "topic".into(),
        from.topic.as_ref().map(|s| s.as_str()).into(),
    );
    for (k, v) in from.keys.raw() {
        view.insert(k.clone(), v.clone());
    }
    Value::Object(view)
}

fn destination(d: &config::Destination) -> Value {
    let mut view = json!({
        "connector": d.connector.as_ref().map(|s| s.as_str()),
        "topic": d.topic,
        "function": d.function.as_ref().map(|s| s.as_str()),
    });
    for (k, v) in d.keys.raw() {
        view[k] = v.clone();
    }
    view
}

/// The JSON view of the functions. Nothing that may be a secret is shown: URLs without their
/// password and query values, static headers by name only, a command's program without its
/// arguments (their number instead), environment variables by name only.
pub(crate) fn functions_view(cfg: &Config) -> Value {
    Value::Object(
        cfg.functions
            .iter()
            .map(|(name, f)| {
                let kind = f.kind().and_then(|entry| {
                    let settings = entry.settings()?;
                    let view = REGISTRY.function(entry.kind())?.view(settings);
                    Some(json!({ entry.kind(): view }))
                });
                let kind = kind.unwrap_or(Value::Null);
                let mut v = kind;
                if let Value::Object(m) = &mut v {
                    m.insert("timeout".into(), json!(format!("{:?}", f.timeout())));
                    m.insert("concurrency".into(), json!(*f.concurrency));
                    if let Some(r) = &f.rate_limit {
                        m.insert(
                            "rate_limit".into(),
                            json!({ "per_second": *r.per_second, "burst": r.burst.as_ref().map(|b| **b) }),
                        );
                    }
                    if let Some(b) = &f.circuit_breaker {
                        m.insert(
                            "circuit_breaker".into(),
                            json!({
                                "failure_ratio": *b.failure_ratio,
                                "min_calls": *b.min_calls,
                                "window": format!("{:?}", b.window.get()),
                                "open_for": format!("{:?}", b.open_for.get()),
                            }),
                        );
                    }
                }
                (name.clone(), v)
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::wants_classic;

    #[test]
    fn the_exposition_format_follows_accept() {
        // Prometheus 2.x's scrape header: OpenMetrics first.
        assert!(!wants_classic(Some(
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
        )));
        assert!(wants_classic(Some("text/plain;version=0.0.4")));
        assert!(wants_classic(Some(
            "text/plain; q=0.9, application/openmetrics-text; q=0.5"
        )));
        assert!(!wants_classic(Some("*/*")));
        assert!(!wants_classic(None));
    }
}

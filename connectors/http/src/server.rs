//! Serving HTTP/1.1 on a socket that faces the network, with the limits that keep it answering
//! under abuse: shared by the ingress and the admin endpoint.
//!
//! - **`max_connections`**: past it, a new connection gets a short `503` and is closed at once
//!   (refused, counted, logged at most every few seconds), so that a flood can neither exhaust the
//!   process's file descriptors nor take the other listeners down with it. The cap is lowered,
//!   with a warning, to what the process's file descriptor limit allows.
//! - **`header_timeout`**: a connection must deliver a complete request head within it, counted
//!   from when the connection starts waiting for one: a new connection, an idle keep-alive
//!   connection between requests, and a client trickling its headers (slowloris) are all closed
//!   after it. hyper runs this one timer for both cases, so the idle keep-alive timeout is the
//!   same duration.
//! - **`tls`**: the handshake runs on the connection's own task, bounded by `header_timeout`;
//!   a client without the certificate `client_ca` requires is refused by the handshake.
//! - A failing `accept` (out of descriptors) is logged and retried after a pause instead of
//!   spinning.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use fnbroker_core::ListenerCounts;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long an `accept` that failed (out of file descriptors) waits before the next.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// The least time between two log lines about refused connections or failed accepts.
const LOG_EVERY: Duration = Duration::from_secs(5);
/// File descriptors kept for everything else (broker connections, functions, files).
const FD_RESERVE: u64 = 256;
/// The most a connection buffers of what it reads (a request head must fit).
const READ_BUFFER: usize = 64 * 1024;
/// What a refused connection reads before it is closed.
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-type: text/plain\r\ncontent-length: 21\r\n\r\ntoo many connections\n";

/// The limits of one listener.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The most connections open at once.
    pub max_connections: usize,
    /// How long a connection may wait for a complete request head (and a request for its body,
    /// and a TLS handshake).
    pub header_timeout: Duration,
    /// TLS, when the listener serves HTTPS.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Connections beyond `max_connections` kept for a few requests only (the admin's probes).
    pub reserve: Option<Reserve>,
}

/// Connections a listener keeps beyond its `max_connections`, served by an app of their own:
/// when every other connection is taken (by a flood, or by clients stalling their bodies), a
/// liveness probe still gets its answer.
#[derive(Debug, Clone)]
pub struct Reserve {
    /// How many.
    pub connections: usize,
    /// What they are served: the few requests they are for, and a `503` for the rest.
    pub app: Router,
}

/// The counts of one listener, shared with whoever reports them.
#[derive(Debug, Default)]
pub struct Counts {
    open: AtomicU64,
    refused: AtomicU64,
    requests: std::sync::Mutex<std::collections::BTreeMap<u16, u64>>,
}

impl Counts {
    /// The counts now.
    pub fn get(&self) -> ListenerCounts {
        ListenerCounts {
            open: self.open.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            requests: self
                .requests
                .lock()
                .map(|r| r.iter().map(|(s, n)| (*s, *n)).collect())
                .unwrap_or_default(),
        }
    }

    /// Counts a request answered with `status`.
    pub fn answered(&self, status: http::StatusCode) {
        if let Ok(mut requests) = self.requests.lock() {
            *requests.entry(status.as_u16()).or_default() += 1;
        }
    }
}

/// The most connections the process's file descriptor limit leaves room for: the soft limit
/// (raised to the hard one at start) less a reserve.
pub fn fd_allowance() -> Option<usize> {
    let (soft, _) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).ok()?;
    usize::try_from(soft.saturating_sub(FD_RESERVE).max(16)).ok()
}

/// Raises the soft file descriptor limit to the hard one, as servers do at start; returns the
/// limit in force.
pub fn raise_fd_limit() -> Option<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return Some(hard);
    }
    Some(soft)
}

/// Serves `app` on `listener` within `limits` until `stop`, then lets the open connections finish
/// the requests they are in (a graceful shutdown) before the returned task ends.
pub fn spawn(
    name: String,
    listener: TcpListener,
    app: Router,
    limits: Limits,
    counts: Arc<Counts>,
    stop: CancellationToken,
) -> JoinHandle<()> {
    let max = match fd_allowance() {
        Some(allowed) if allowed < limits.max_connections => {
            tracing::warn!(
                listener = %name,
                max_connections = limits.max_connections,
                allowed,
                "max_connections is above what the file descriptor limit allows; using the lower number (raise `ulimit -n`)"
            );
            allowed
        }
        _ => limits.max_connections,
    };
    tokio::spawn(accept_loop(name, listener, app, limits, max, counts, stop))
}

async fn accept_loop(
    name: String,
    listener: TcpListener,
    app: Router,
    limits: Limits,
    max: usize,
    counts: Arc<Counts>,
    stop: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(max));
    let reserve = limits
        .reserve
        .as_ref()
        .map(|r| (Arc::new(Semaphore::new(r.connections)), r.app.clone()));
    let connections = TaskTracker::new();
    let mut http = http1::Builder::new();
    // A connection's read buffer stays small (hyper lets it grow to ~400 KiB): a request head
    // larger than this is refused, and many connections sending bodies cost little each.
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(READ_BUFFER);
    let acceptor = limits.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    let mut quiet_until: Option<Instant> = None;
    let mut refused_unlogged = 0u64;
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                if quiet_until.is_none_or(|t| Instant::now() >= t) {
                    tracing::warn!(listener = %name, error = %e, "cannot accept a connection");
                    quiet_until = Some(Instant::now() + LOG_EVERY);
                }
                tokio::time::sleep(ACCEPT_PAUSE).await;
                continue;
            }
        };
        let taken = match Arc::clone(&permits).try_acquire_owned() {
            Ok(permit) => Some((permit, app.clone())),
            Err(_) => reserve.as_ref().and_then(|(permits, app)| {
                Arc::clone(permits)
                    .try_acquire_owned()
                    .ok()
                    .map(|p| (p, app.clone()))
            }),
        };
        let Some((permit, app)) = taken else {
            counts.refused.fetch_add(1, Ordering::Relaxed);
            // Best effort: the answer fits any socket buffer; a client that sent nothing yet
            // reads it, one that did may see a reset instead.
            let _ = stream.try_write(REFUSAL);
            drop(stream);
            refused_unlogged += 1;
            if quiet_until.is_none_or(|t| Instant::now() >= t) {
                tracing::warn!(
                    listener = %name,
                    max_connections = max,
                    refused = refused_unlogged,
                    "connections refused: the listener is at max_connections"
                );
                refused_unlogged = 0;
                quiet_until = Some(Instant::now() + LOG_EVERY);
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let stop = stop.clone();
        let counts = Arc::clone(&counts);
        let http = http.clone();
        let acceptor = acceptor.clone();
        let handshake_timeout = limits.header_timeout;
        let name = name.clone();
        counts.open.fetch_add(1, Ordering::Relaxed);
        connections.spawn(async move {
            match acceptor {
                None => serve_one(&http, stream, app, &stop).await,
                Some(acceptor) => {
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => serve_one(&http, tls, app, &stop).await,
                        Ok(Err(e)) => {
                            tracing::debug!(listener = %name, error = %e, "TLS handshake failed");
                        }
                        Err(_) => {
                            tracing::debug!(listener = %name, "TLS handshake timed out");
                        }
                    }
                }
            }
            counts.open.fetch_sub(1, Ordering::Relaxed);
            drop(permit);
        });
    }
    connections.close();
    connections.wait().await;
}

/// Serves one connection until it ends, or gracefully once `stop` is cancelled.
async fn serve_one<I>(http: &http1::Builder, io: I, app: Router, stop: &CancellationToken)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let connection = http.serve_connection(TokioIo::new(io), TowerToHyperService::new(app));
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => {}
        () = stop.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

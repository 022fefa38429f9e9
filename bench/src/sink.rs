//! The function side: a minimal HTTP/1.1 server (hyper, keep-alive) that every path of the
//! benchmark delivers to. It reads the payload header the publisher wrote (phase, sequence
//! number, publish time), counts each sequence number once, and records latencies when asked.
//! It can also be made slow, to build a backlog behind it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// Nanoseconds since the first call: the clock the publisher stamps and the sink reads, both in
/// this process.
pub(crate) fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Length of the header every payload starts with: `P{phase:05}:{seq:010}:{ns:020}:`.
pub(crate) const HEADER_LEN: usize = 1 + 5 + 1 + 10 + 1 + 20 + 1;

/// A payload of `size` bytes (at least the header) for one event.
pub(crate) fn payload(phase: u32, seq: u64, size: usize) -> Bytes {
    let mut p = format!("P{phase:05}:{seq:010}:{:020}:", now_ns()).into_bytes();
    p.resize(size.max(HEADER_LEN), b'x');
    Bytes::from(p)
}

/// `(phase, seq, published_ns)` of a payload written by [`payload`].
pub(crate) fn parse(p: &[u8]) -> Option<(u32, u64, u64)> {
    let head = std::str::from_utf8(p.get(..HEADER_LEN)?).ok()?;
    let mut parts = head.strip_prefix('P')?.split(':');
    let phase = parts.next()?.parse().ok()?;
    let seq = parts.next()?.parse().ok()?;
    let ns = parts.next()?.parse().ok()?;
    Some((phase, seq, ns))
}

/// The header of a payload that may be wrapped: at the start, or inside (a change event of the
/// PostgreSQL connector carries it as a column value in its JSON data).
fn find(p: &[u8]) -> Option<(u32, u64, u64)> {
    if let Some(found) = parse(p) {
        return Some(found);
    }
    (0..p.len().saturating_sub(HEADER_LEN))
        .filter(|i| p[*i] == b'P')
        .find_map(|i| parse(&p[i..]))
}

/// What one phase expects to receive and what it did receive.
pub(crate) struct Tally {
    phase: u32,
    expected: u64,
    bits: Vec<AtomicU64>,
    unique: AtomicU64,
    duplicates: AtomicU64,
    first_ns: AtomicU64,
    last_ns: AtomicU64,
    latencies: Option<Mutex<Vec<u64>>>,
    done: Notify,
}

impl Tally {
    fn new(phase: u32, expected: u64, record_latency: bool) -> Self {
        let words = usize::try_from(expected.div_ceil(64)).unwrap_or(0);
        Tally {
            phase,
            expected,
            bits: (0..words).map(|_| AtomicU64::new(0)).collect(),
            unique: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            first_ns: AtomicU64::new(u64::MAX),
            last_ns: AtomicU64::new(0),
            latencies: record_latency.then(|| Mutex::new(Vec::new())),
            done: Notify::new(),
        }
    }

    /// Counts one payload; anything of another phase is ignored.
    pub(crate) fn record(&self, payload: &[u8]) {
        let Some((phase, seq, published)) = find(payload) else {
            return;
        };
        if phase != self.phase || seq >= self.expected {
            return;
        }
        let now = now_ns();
        let (word, bit) = (usize::try_from(seq / 64).unwrap_or(0), seq % 64);
        let before = self.bits[word].fetch_or(1 << bit, Ordering::Relaxed);
        if before & (1 << bit) != 0 {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.first_ns.fetch_min(now, Ordering::Relaxed);
        self.last_ns.fetch_max(now, Ordering::Relaxed);
        if let Some(l) = &self.latencies
            && let Ok(mut l) = l.lock()
        {
            l.push(now.saturating_sub(published));
        }
        let unique = self.unique.fetch_add(1, Ordering::AcqRel) + 1;
        if unique == self.expected || unique.is_multiple_of(256) {
            self.done.notify_waiters();
        }
    }

    /// Events received at least once.
    pub(crate) fn unique(&self) -> u64 {
        self.unique.load(Ordering::Acquire)
    }

    /// Events received more than once (redeliveries).
    pub(crate) fn duplicates(&self) -> u64 {
        self.duplicates.load(Ordering::Relaxed)
    }

    /// Receive time of the last new event.
    pub(crate) fn last_ns(&self) -> u64 {
        self.last_ns.load(Ordering::Relaxed)
    }

    /// Waits until `unique() >= at_least` or `deadline` passed; whether it got there.
    pub(crate) async fn wait_for(&self, at_least: u64, deadline: Instant) -> bool {
        loop {
            let notified = self.done.notified();
            if self.unique() >= at_least {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            // Woken every 256 events; the timeout covers the tail between wakes.
            let _ = tokio::time::timeout(Duration::from_millis(5), notified).await;
        }
    }

    /// Latencies in nanoseconds, sorted.
    pub(crate) fn sorted_latencies(&self) -> Vec<u64> {
        let mut l = self
            .latencies
            .as_ref()
            .and_then(|l| l.lock().ok().map(|l| l.clone()))
            .unwrap_or_default();
        l.sort_unstable();
        l
    }
}

/// The function server.
pub(crate) struct Sink {
    addr: SocketAddr,
    tally: RwLock<Arc<Tally>>,
    slow: AtomicBool,
}

impl Sink {
    /// Binds 127.0.0.1 on a free port and serves until the process ends.
    pub(crate) async fn start() -> anyhow::Result<Arc<Sink>> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("cannot bind the function server")?;
        let sink = Arc::new(Sink {
            addr: listener.local_addr()?,
            tally: RwLock::new(Arc::new(Tally::new(0, 0, false))),
            slow: AtomicBool::new(false),
        });
        let served = sink.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let sink = served.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let sink = sink.clone();
                        async move { Ok::<_, Infallible>(sink.handle(req).await) }
                    });
                    let _ = http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(sink)
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        // Spans of a traced run: taken and dropped.
        let spans = req.uri().path() == "/v1/traces";
        let body = match req.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return status(StatusCode::BAD_REQUEST),
        };
        if spans {
            return status(StatusCode::OK);
        }
        if self.slow.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        if body.first() == Some(&b'[') {
            // A batch (`application/cloudevents-batch+json`): each event's data is a payload.
            let tally = self.current();
            for data in batch_payloads(&body) {
                tally.record(&data);
            }
        } else {
            self.current().record(&body);
        }
        status(StatusCode::OK)
    }

    /// The server's base URL (an OTLP endpoint for traced runs).
    pub(crate) fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The URL functions are configured with.
    pub(crate) fn url(&self) -> String {
        format!("http://{}/fn", self.addr)
    }

    /// Starts counting a new phase, replacing the previous tally.
    pub(crate) fn begin(&self, phase: u32, expected: u64, record_latency: bool) -> Arc<Tally> {
        let t = Arc::new(Tally::new(phase, expected, record_latency));
        if let Ok(mut cur) = self.tally.write() {
            *cur = t.clone();
        }
        t
    }

    /// The tally of the current phase.
    pub(crate) fn current(&self) -> Arc<Tally> {
        self.tally
            .read()
            .map(|t| t.clone())
            .unwrap_or_else(|_| Arc::new(Tally::new(0, 0, false)))
    }

    /// Makes every request take a second (a slow function, for the backlog measurement).
    pub(crate) fn set_slow(&self, slow: bool) {
        self.slow.store(slow, Ordering::Relaxed);
    }
}

/// The data of each event of a batch in the JSON format: `data_base64` decoded, or `data` as
/// text.
fn batch_payloads(body: &[u8]) -> Vec<Vec<u8>> {
    use base64::Engine as _;
    let Ok(serde_json::Value::Array(events)) = serde_json::from_slice::<serde_json::Value>(body)
    else {
        return Vec::new();
    };
    events
        .iter()
        .filter_map(|e| match (e.get("data_base64"), e.get("data")) {
            (Some(serde_json::Value::String(b)), _) => {
                base64::engine::general_purpose::STANDARD.decode(b).ok()
            }
            (_, Some(serde_json::Value::String(text))) => Some(text.clone().into_bytes()),
            _ => None,
        })
        .collect()
}

fn status(code: StatusCode) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = code;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_header_round_trips() {
        let p = payload(7, 123_456, 256);
        assert_eq!(p.len(), 256);
        let (phase, seq, _) = parse(&p).expect("parses");
        assert_eq!((phase, seq), (7, 123_456));
        assert_eq!(payload(1, 1, 4).len(), HEADER_LEN);
    }

    #[test]
    fn tally_counts_each_event_once() {
        let t = Tally::new(3, 100, true);
        for seq in [0, 5, 5, 99, 100] {
            t.record(&payload(3, seq, 64));
        }
        t.record(&payload(4, 1, 64));
        assert_eq!(t.unique(), 3);
        assert_eq!(t.duplicates(), 1);
        assert_eq!(t.sorted_latencies().len(), 3);
    }
}

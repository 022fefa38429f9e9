//! OpenFaaS asynchronous invocation: `POST {gateway}/async-function/{name}` queues the call (the
//! gateway answers 202) and the queue worker POSTs the function's answer to the `X-Callback-Url`
//! it was given, with the function's status in `X-Function-Status`, its headers, and the call's
//! `X-Call-Id` (openfaas/faas `gateway/README.md`, "Asynchronous functions"; the queue worker's
//! `postResult`).
//!
//! fnbroker sends its own `X-Call-Id` (the gateway's call-id middleware keeps one it is given),
//! serves the callback on the admin listener under a path with a per-process secret, and the
//! attempt waits, within its timeout, for the callback of its call: the function's answer is the
//! attempt's outcome (a failure is retried, a reply published) as with a synchronous call, while
//! the gateway's queue absorbs what the function cannot take at once and its timeouts do not
//! apply. Should the gateway answer with another call id, the waiter follows it.

use fnbroker_core::function::BuildError;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use fnbroker_core::event::Event;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use tokio::sync::oneshot;

use crate::http_fn::{decode_reply, status_error};
use crate::{HttpInvoker, InvokeError, Invoker, Success};

/// The header that correlates a call with its callback.
pub const CALL_ID: HeaderName = HeaderName::from_static("x-call-id");
const CALLBACK_URL: HeaderName = HeaderName::from_static("x-callback-url");
const FUNCTION_STATUS: &str = "x-function-status";

/// How many callbacks of unknown calls are kept for a moment (a callback that overtook the
/// gateway's 202 naming another call id), how many bytes of bodies they may hold together, and
/// for how long. Such a callback is rare (the gateway keeps the call id it is given), so the
/// bounds are small: past them a callback of no known call is dropped with a warning.
const EARLY_MAX: usize = 64;
const EARLY_BYTES: usize = 32 * 1024 * 1024;
const EARLY_FOR: Duration = Duration::from_secs(60);

/// The function's answer, as the queue worker posted it.
#[derive(Debug)]
pub struct Completion {
    /// `X-Function-Status`: the function's HTTP status (500 when the header is missing).
    pub status: u16,
    /// The function's response headers (the queue worker copies them).
    pub headers: HeaderMap,
    /// The function's response body.
    pub body: Bytes,
}

impl Completion {
    /// A callback request as a completion.
    pub fn from_callback(headers: HeaderMap, body: Bytes) -> Self {
        let status = headers
            .get(FUNCTION_STATUS)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(500);
        Self {
            status,
            headers,
            body,
        }
    }
}

enum Slot {
    Waiting(oneshot::Sender<Completion>),
    Arrived(Completion, Instant),
}

/// The calls waiting for their callback, by call id; shared by every asynchronous OpenFaaS
/// function and the admin listener's callback route.
pub struct Callbacks {
    secret: String,
    slots: Mutex<HashMap<String, Slot>>,
    /// The asynchronous OpenFaaS functions running: without one, the route answers nothing.
    users: AtomicUsize,
}

impl std::fmt::Debug for Callbacks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Callbacks").finish_non_exhaustive()
    }
}

impl Default for Callbacks {
    fn default() -> Self {
        Self::new()
    }
}

impl Callbacks {
    /// A registry with a fresh secret (256 random bits) in its path.
    pub fn new() -> Self {
        let secret = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        Self {
            secret,
            slots: Mutex::new(HashMap::new()),
            users: AtomicUsize::new(0),
        }
    }

    /// Whether an asynchronous OpenFaaS function runs now: the callback route exists only then.
    pub fn in_use(&self) -> bool {
        self.users.load(Ordering::Acquire) > 0
    }

    /// Whether `secret` is this process' (compared in constant time); a request with another
    /// one is answered 404 before any of its body is read.
    pub fn is_secret(&self, secret: &str) -> bool {
        constant_time_eq(secret.as_bytes(), self.secret.as_bytes())
    }

    /// The callback route's path on the admin listener.
    pub fn path(&self) -> String {
        format!("/v1/callbacks/openfaas/{}", self.secret)
    }

    /// Hands a callback to the call waiting for `call_id`. False when `secret` is not this
    /// process' (the caller answers 404).
    pub fn complete(&self, secret: &str, call_id: &str, completion: Completion) -> bool {
        if !self.is_secret(secret) {
            return false;
        }
        let mut slots = self.lock();
        match slots.remove(call_id) {
            Some(Slot::Waiting(tx)) => {
                let _ = tx.send(completion);
            }
            // A second callback of a call, or one nobody waits for (any more): keep it for a
            // moment in case its call names this id next, within the bounds.
            _ => {
                let now = Instant::now();
                slots.retain(|_, s| !matches!(s, Slot::Arrived(_, at) if now - *at > EARLY_FOR));
                let (count, bytes) = slots
                    .values()
                    .filter_map(|s| match s {
                        Slot::Arrived(c, _) => Some(c.body.len()),
                        Slot::Waiting(_) => None,
                    })
                    .fold((0, 0), |(n, b), len| (n + 1, b + len));
                if count < EARLY_MAX && bytes + completion.body.len() <= EARLY_BYTES {
                    slots.insert(call_id.to_string(), Slot::Arrived(completion, now));
                } else {
                    tracing::warn!(
                        kept = count,
                        bytes,
                        "an OpenFaaS callback of no waiting call was dropped: as many are kept as the bounds allow"
                    );
                }
            }
        }
        true
    }

    /// The callbacks of no waiting call kept now: how many, and their bodies' bytes.
    #[cfg(test)]
    fn early(&self) -> (usize, usize) {
        self.lock()
            .values()
            .filter_map(|s| match s {
                Slot::Arrived(c, _) => Some(c.body.len()),
                Slot::Waiting(_) => None,
            })
            .fold((0, 0), |(n, b), len| (n + 1, b + len))
    }

    /// Waits for the callback of `call_id` from now on.
    fn register(self: &Arc<Self>, call_id: String) -> Waiter {
        let (tx, rx) = oneshot::channel();
        self.lock().insert(call_id.clone(), Slot::Waiting(tx));
        Waiter {
            callbacks: Arc::clone(self),
            call_id,
            rx,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        self.slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// One call's wait; gives its slot up when dropped (finished, timed out or cancelled).
struct Waiter {
    callbacks: Arc<Callbacks>,
    call_id: String,
    rx: oneshot::Receiver<Completion>,
}

impl Waiter {
    /// The gateway named the call `id`: wait under that id (or take its callback, if it came
    /// first).
    fn follow(&mut self, id: &str) {
        if id == self.call_id {
            return;
        }
        let mut slots = self.callbacks.lock();
        let Some(Slot::Waiting(tx)) = slots.remove(&self.call_id) else {
            return;
        };
        match slots.remove(id) {
            Some(Slot::Arrived(completion, _)) => {
                let _ = tx.send(completion);
            }
            _ => {
                slots.insert(id.to_string(), Slot::Waiting(tx));
            }
        }
        self.call_id = id.to_string();
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut slots = self.callbacks.lock();
        if matches!(slots.get(&self.call_id), Some(Slot::Waiting(_))) {
            slots.remove(&self.call_id);
        }
    }
}

/// Invokes an OpenFaaS function through the gateway's queue and waits for its callback.
#[derive(Debug)]
pub struct OpenFaasAsyncInvoker {
    request: HttpInvoker,
    callbacks: Arc<Callbacks>,
    callback_url: HeaderValue,
}

impl OpenFaasAsyncInvoker {
    /// `request` POSTs to the function's `/async-function/` URL; `callback_base` is the URL at
    /// which the queue worker reaches fnbroker's admin listener.
    pub(crate) fn new(
        request: HttpInvoker,
        callbacks: Arc<Callbacks>,
        callback_base: &str,
    ) -> Result<Self, BuildError> {
        let url = format!(
            "{}{}",
            callback_base.trim_end_matches('/'),
            callbacks.path()
        );
        let callback_url = HeaderValue::try_from(url)
            .map_err(|_| "`callback_url` holds characters a header cannot".to_string())?;
        callbacks.users.fetch_add(1, Ordering::AcqRel);
        Ok(Self {
            request,
            callbacks,
            callback_url,
        })
    }

    async fn call(&self, event: &Event) -> Result<Success, InvokeError> {
        let id = uuid::Uuid::new_v4().to_string();
        let mut waiter = self.callbacks.register(id.clone());
        let (mut headers, body) = self.request.request(event);
        headers.insert(
            CALL_ID,
            HeaderValue::try_from(id.as_str())
                .map_err(|e| InvokeError::Request(format!("call id: {e}")))?,
        );
        headers.insert(CALLBACK_URL, self.callback_url.clone());
        let (_, headers, _) = self.request.post((headers, body)).await?;
        if let Some(theirs) = headers.get(CALL_ID).and_then(|v| v.to_str().ok()) {
            waiter.follow(theirs);
        }
        let completion = (&mut waiter.rx)
            .await
            .map_err(|_| InvokeError::Connect("the callback registry was dropped".into()))?;
        if !(200..300).contains(&completion.status) {
            return Err(status_error(
                completion.status,
                &completion.headers,
                &completion.body,
            ));
        }
        Ok(Success {
            status: completion.status,
            reply: decode_reply(&completion.headers, completion.body)?,
        })
    }
}

impl Drop for OpenFaasAsyncInvoker {
    fn drop(&mut self) {
        self.callbacks.users.fetch_sub(1, Ordering::AcqRel);
    }
}

#[async_trait]
impl Invoker for OpenFaasAsyncInvoker {
    async fn invoke(&self, event: &Event, timeout: Duration) -> Result<Success, InvokeError> {
        crate::within(timeout, self.call(event)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(status: &str) -> Completion {
        let mut h = HeaderMap::new();
        h.insert(
            FUNCTION_STATUS,
            HeaderValue::try_from(status).expect("value"),
        );
        Completion::from_callback(h, Bytes::from_static(b"out"))
    }

    fn secret(c: &Callbacks) -> String {
        c.path().rsplit('/').next().expect("secret").to_string()
    }

    #[tokio::test]
    async fn a_callback_reaches_its_call_and_a_wrong_secret_reaches_nothing() {
        let callbacks = Arc::new(Callbacks::new());
        let mut waiter = callbacks.register("a".into());
        assert!(!callbacks.complete("guess", "a", done("200")));
        assert!(callbacks.complete(&secret(&callbacks), "a", done("201")));
        assert_eq!((&mut waiter.rx).await.expect("completion").status, 201);
        drop(waiter);
        assert!(callbacks.lock().is_empty());
    }

    #[tokio::test]
    async fn the_waiter_follows_the_gateways_call_id_even_after_its_callback() {
        let callbacks = Arc::new(Callbacks::new());
        let mut early = callbacks.register("ours".into());
        // The callback under the gateway's id overtook the 202 that names it.
        assert!(callbacks.complete(&secret(&callbacks), "theirs", done("200")));
        early.follow("theirs");
        assert_eq!((&mut early.rx).await.expect("completion").status, 200);

        let mut late = callbacks.register("ours2".into());
        late.follow("theirs2");
        assert!(callbacks.complete(&secret(&callbacks), "theirs2", done("502")));
        assert_eq!((&mut late.rx).await.expect("completion").status, 502);
        drop((early, late));
        assert!(callbacks.lock().is_empty());
    }

    /// Callbacks of no waiting call (before: up to 1,024 of 16 MiB each for 60 s; 12 x 15 MiB
    /// measured 254 MB) are kept within a count and a byte bound.
    #[test]
    fn callbacks_of_no_call_are_kept_within_bounds() {
        let callbacks = Callbacks::new();
        let big = |n: usize| Completion {
            status: 200,
            headers: HeaderMap::new(),
            body: Bytes::from(vec![0u8; n]),
        };
        for i in 0..12 {
            assert!(callbacks.complete(&secret(&callbacks), &format!("big{i}"), big(15 << 20)));
        }
        let (n, bytes) = callbacks.early();
        assert_eq!((n, bytes), (2, 30 << 20));
        for i in 0..200 {
            callbacks.complete(&secret(&callbacks), &format!("small{i}"), big(1));
        }
        assert_eq!(callbacks.early().0, EARLY_MAX);
    }

    #[test]
    fn a_missing_status_is_a_failure() {
        let c = Completion::from_callback(HeaderMap::new(), Bytes::new());
        assert_eq!(c.status, 500);
    }
}

//! Warm functions: a supervised pool of processes running one command, each called through the
//! AWS Lambda Runtime API ([`runtime_api`]) or over HTTP on `$PORT`.
//!
//! The pool keeps `min` instances running and starts more, up to `max`, while calls wait for
//! one; an instance idle for `idle_timeout` above `min` is stopped. A call leases one instance
//! with room (`concurrency` calls each) for its attempt. What goes wrong is the instance's
//! business, never the next call's: an instance that exits is replaced (its calls fail their
//! attempt and follow the retry policy), an attempt past its timeout kills its instance (the
//! whole process group), and starts that fail in a row back off, then make the function
//! unavailable, so that the broker holds deliveries as in any outage until a start succeeds.
//!
//! Dropping the invoker (a reload replaced the function, fnbroker stops) stops every instance:
//! SIGTERM, then SIGKILL after `grace_period`. Nothing is in flight by then: a call borrows the
//! invoker for as long as it runs.

mod instance;
mod logs;
mod metrics;
mod runtime_api;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use fnbroker_core::event::{self, Event};
use fnbroker_core::function::{BuildError, InvokeContext};
use fnbroker_core::invoke::{Instances, Status};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::kinds::http::ContentMode;
use crate::kinds::process::{ProcessFunction, Protocol};
use crate::{HttpInvoker, InvokeError, Invoker, Success};

pub use metrics::ProcessMetrics;

/// What every instance of a pool is started with.
#[derive(Debug)]
struct Spec {
    function: String,
    program: String,
    args: Vec<String>,
    /// The environment every instance starts from (base, inherited, `env`); the protocol's
    /// variables are added per instance.
    env: BTreeMap<String, String>,
    directory: Option<PathBuf>,
    protocol: Protocol,
    min: usize,
    max: usize,
    per_instance: usize,
    idle_timeout: Duration,
    init_timeout: Duration,
    init_failures: u32,
    grace: Duration,
    handler: String,
    memory_size: u32,
    path: String,
    ready: Option<String>,
    mode: ContentMode,
}

/// How an instance is called once it is ready.
#[derive(Debug)]
enum Conn {
    /// Calls handed to its Runtime API, which gives them out at `GET .../invocation/next`.
    Lambda(mpsc::UnboundedSender<runtime_api::Job>),
    /// Its HTTP server on `$PORT`.
    Http(Box<HttpInvoker>),
}

/// A ready instance, as a call uses it.
#[derive(Debug)]
struct Ready {
    conn: Conn,
    /// Why the instance ended, once it did: the reason a call it had in flight failed.
    ended: Arc<std::sync::OnceLock<String>>,
}

/// One instance in the pool's books.
#[derive(Debug)]
struct Slot {
    id: u64,
    /// The instance's number (the smallest free one), in logs and metrics.
    index: usize,
    /// Set once it is ready; `None` while it starts.
    ready: Option<Arc<Ready>>,
    /// Calls in flight.
    busy: usize,
    /// Since when it has had no call in flight.
    idle_since: Instant,
    /// Being stopped: no new call is given to it.
    stopping: bool,
    /// Asks the instance to stop (SIGTERM, then SIGKILL after the grace period).
    stop: CancellationToken,
    /// Kills the instance at once (a call past its timeout).
    kill: CancellationToken,
}

/// The pool's books.
#[derive(Debug, Default)]
struct State {
    instances: Vec<Slot>,
    next_id: u64,
    /// Calls waiting for an instance with room.
    waiting: usize,
    /// Starts (or early exits) that failed in a row.
    failures: u32,
    /// Ready instances that exited by themselves in a row, each within [`STABLE`] of being
    /// ready: what paces their replacements.
    crashes: u32,
    /// No start before this (a backoff after failures).
    not_before: Option<Instant>,
    /// The last start's error, while starts fail.
    last_error: Option<String>,
    /// Whether `init_failures` starts in a row failed: calls fail at once until one succeeds.
    unavailable: bool,
}

impl State {
    fn counts(&self) -> Instances {
        let mut c = Instances::default();
        for s in &self.instances {
            match (&s.ready, s.busy) {
                (None, _) => c.starting += 1,
                (Some(_), 0) => c.idle += 1,
                (Some(_), _) => c.running += 1,
            }
        }
        c
    }

    fn starting(&self) -> usize {
        self.instances.iter().filter(|s| s.ready.is_none()).count()
    }

    /// Instances that count towards `min` and `max`: all but those being stopped.
    fn live(&self) -> usize {
        self.instances.iter().filter(|s| !s.stopping).count()
    }

    fn start_allowed(&self, now: Instant) -> bool {
        self.not_before.is_none_or(|t| t <= now)
    }

    /// The instance a new call goes to: ready, not stopping, with room; the least busy, and of
    /// those the one idle the shortest (so that the others stay idle and can be stopped).
    fn pick(&mut self, per_instance: usize) -> Option<&mut Slot> {
        self.instances
            .iter_mut()
            .filter(|s| s.ready.is_some() && !s.stopping && s.busy < per_instance)
            .min_by_key(|s| (s.busy, std::cmp::Reverse(s.idle_since)))
    }
}

/// The shared part of a pool.
#[derive(Debug)]
struct Pool {
    spec: Spec,
    state: Mutex<State>,
    /// Wakes calls waiting for an instance and the supervisor.
    changed: Notify,
    /// Set when the invoker is dropped: every instance stops.
    closed: CancellationToken,
    metrics: metrics::Handle,
    tasks: TaskTracker,
}

/// How long a ready instance must have run for its exit not to count as one more crash in a row.
const STABLE: Duration = Duration::from_secs(10);

/// The backoff before the next start after `failures` in a row: 100 ms, doubling, at most 30 s.
fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(9);
    (Duration::from_millis(100) * 2u32.pow(exp)).min(Duration::from_secs(30))
}

impl Pool {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Publishes the instance counts (a pool that closed leaves them to its successor).
    fn publish(&self, state: &State) {
        if !self.closed.is_cancelled() {
            self.metrics.instances(state.counts());
        }
    }

    /// Starts a new instance (the caller checked the limits).
    fn start(self: &Arc<Self>, state: &mut State) {
        let id = state.next_id;
        state.next_id += 1;
        let index = (0..)
            .find(|i| state.instances.iter().all(|s| s.index != *i))
            .unwrap_or_default();
        let slot = Slot {
            id,
            index,
            ready: None,
            busy: 0,
            idle_since: Instant::now(),
            stopping: false,
            stop: CancellationToken::new(),
            kill: CancellationToken::new(),
        };
        let (stop, kill) = (slot.stop.clone(), slot.kill.clone());
        state.instances.push(slot);
        self.publish(state);
        self.tasks
            .spawn(instance::run(Arc::clone(self), id, index, stop, kill));
    }

    /// The instance `id` is ready to take calls after `took`.
    fn ready(&self, id: u64, ready: Ready, took: Duration) {
        let mut state = self.state();
        state.failures = 0;
        state.not_before = None;
        state.last_error = None;
        if state.unavailable {
            tracing::info!(function = %self.spec.function, "the function's instances start again: it is available");
        }
        state.unavailable = false;
        if let Some(slot) = state.instances.iter_mut().find(|s| s.id == id) {
            slot.ready = Some(Arc::new(ready));
            slot.idle_since = Instant::now();
            tracing::info!(
                function = %self.spec.function,
                instance = slot.index,
                cold_start_ms = took.as_millis() as u64,
                "instance ready (cold start)"
            );
        }
        self.metrics.cold_start(took);
        self.publish(&state);
        drop(state);
        self.changed.notify_waiters();
    }

    /// The instance `id` ended: before it was ready (`up: None`, a failed start) or after
    /// running `up`; `asked` when the pool stopped or killed it. Failed starts and crashes
    /// back off the next start; after `init_failures` failed starts in a row the function is
    /// unavailable.
    fn ended(&self, id: u64, index: usize, up: Option<Duration>, asked: Ended, reason: &str) {
        let started = up.is_some();
        let mut state = self.state();
        state.instances.retain(|s| s.id != id);
        let now = Instant::now();
        let function = &self.spec.function;
        match asked {
            Ended::Stopped => {}
            Ended::Killed => self.metrics.restart(index),
            Ended::Failed if !started => {
                state.failures += 1;
                state.not_before = Some(now + backoff(state.failures));
                state.last_error = Some(reason.to_string());
                if state.failures >= self.spec.init_failures && !self.closed.is_cancelled() {
                    if !state.unavailable {
                        tracing::error!(%function, instance = index, error = %reason, failures = state.failures, "the function's instances fail to start: it is unavailable until one starts");
                    }
                    state.unavailable = true;
                } else {
                    tracing::warn!(%function, instance = index, error = %reason, "an instance failed to start");
                }
            }
            Ended::Failed => {
                state.crashes = match up {
                    Some(up) if up < STABLE => state.crashes + 1,
                    _ => 1,
                };
                state.not_before = Some(now + backoff(state.crashes));
                self.metrics.restart(index);
                tracing::warn!(%function, instance = index, reason = %reason, "an instance exited; it is replaced");
            }
        }
        self.publish(&state);
        drop(state);
        self.changed.notify_waiters();
    }

    /// Takes the instance `id` out of service at once (it is being killed, or it ended): no
    /// call is given to it between now and its end.
    fn retire(&self, id: u64) {
        let mut state = self.state();
        if let Some(slot) = state.instances.iter_mut().find(|s| s.id == id) {
            slot.stopping = true;
        }
    }

    /// A call gives its instance back.
    fn release(&self, id: u64) {
        let mut state = self.state();
        if let Some(slot) = state.instances.iter_mut().find(|s| s.id == id) {
            slot.busy = slot.busy.saturating_sub(1);
            if slot.busy == 0 {
                slot.idle_since = Instant::now();
            }
        }
        self.publish(&state);
        drop(state);
        self.changed.notify_waiters();
    }

    /// An instance with room for one more call, started if need be, waited for until
    /// `deadline`.
    async fn lease(self: &Arc<Self>, deadline: Instant) -> Result<Lease, InvokeError> {
        let mut waiting: Option<Waiting<'_>> = None;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let retry_at = {
                let mut state = self.state();
                let now = Instant::now();
                if let Some(slot) = state.pick(self.spec.per_instance)
                    && let Some(ready) = slot.ready.clone()
                {
                    slot.busy += 1;
                    let lease = Lease {
                        pool: Arc::clone(self),
                        id: slot.id,
                        index: slot.index,
                        kill: slot.kill.clone(),
                        ready,
                    };
                    self.publish(&state);
                    return Ok(lease);
                }
                if self.closed.is_cancelled() {
                    return Err(InvokeError::Connect("the function is being stopped".into()));
                }
                if state.unavailable && !state.start_allowed(now) {
                    return Err(InvokeError::Connect(format!(
                        "its instances fail to start: {}",
                        state.last_error.as_deref().unwrap_or("no reason given")
                    )));
                }
                if waiting.is_none() {
                    state.waiting += 1;
                    waiting = Some(Waiting(self));
                }
                // One start per waiting call at most: a call that waits for a starting instance
                // does not start another.
                if state.starting() < state.waiting && state.live() < self.spec.max {
                    if state.start_allowed(now) {
                        self.start(&mut state);
                        None
                    } else {
                        state.not_before
                    }
                } else {
                    None
                }
            };
            tokio::select! {
                () = &mut changed => {}
                () = tokio::time::sleep_until(deadline) => {
                    return Err(InvokeError::Timeout(Duration::ZERO));
                }
                () = async { tokio::time::sleep_until(retry_at.unwrap_or(deadline)).await }, if retry_at.is_some() => {}
            }
        }
    }

    /// Keeps `min` instances and stops those idle past `idle_timeout` above it; at close,
    /// stops them all.
    async fn supervise(self: Arc<Self>) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let wake = {
                let mut state = self.state();
                let now = Instant::now();
                let mut wake = now + Duration::from_secs(1);
                if state.live() < self.spec.min && !self.closed.is_cancelled() {
                    if state.start_allowed(now) {
                        while state.live() < self.spec.min {
                            self.start(&mut state);
                        }
                    } else if let Some(t) = state.not_before {
                        wake = wake.min(t);
                    }
                }
                let mut extra = state.live().saturating_sub(self.spec.min);
                for slot in state.instances.iter_mut() {
                    if extra == 0 {
                        break;
                    }
                    if slot.stopping || slot.ready.is_none() || slot.busy > 0 {
                        continue;
                    }
                    let due = slot.idle_since + self.spec.idle_timeout;
                    if due <= now {
                        tracing::info!(function = %self.spec.function, instance = slot.index, "stopping an idle instance");
                        slot.stopping = true;
                        slot.stop.cancel();
                        extra -= 1;
                    } else {
                        wake = wake.min(due);
                    }
                }
                wake
            };
            tokio::select! {
                () = self.closed.cancelled() => break,
                () = &mut changed => {}
                () = tokio::time::sleep_until(wake) => {}
            }
        }
        let mut state = self.state();
        for slot in &mut state.instances {
            slot.stopping = true;
            slot.stop.cancel();
        }
        drop(state);
        self.metrics.instances(Instances::default());
    }
}

/// How an instance ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// The pool stopped it (idle, closed).
    Stopped,
    /// The pool killed it (a call past its timeout).
    Killed,
    /// It exited by itself, failed its start, or reported an init error.
    Failed,
}

/// A call counted among those waiting, until it leaves.
struct Waiting<'a>(&'a Pool);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut state = self.0.state();
        state.waiting = state.waiting.saturating_sub(1);
    }
}

/// A call's hold on an instance: given back when dropped (whatever ended the call).
struct Lease {
    pool: Arc<Pool>,
    id: u64,
    index: usize,
    kill: CancellationToken,
    ready: Arc<Ready>,
}

impl Lease {
    /// Kills the instance: out of service now, its process group killed by its task.
    fn kill(&self) {
        self.pool.retire(self.id);
        self.kill.cancel();
    }

    /// The reason a call failed when its instance went away under it.
    fn gone(&self, ready: &Ready, detail: &str) -> InvokeError {
        let why = ready
            .ended
            .get()
            .cloned()
            .unwrap_or_else(|| detail.to_string());
        InvokeError::Function {
            message: format!("instance {} ended during the call: {why}", self.index),
            retryable: true,
        }
    }

    /// Runs one call on the instance, bounded by `deadline`; past it, kills the instance.
    async fn call(
        &self,
        payload: Payload<'_>,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<Success, InvokeError> {
        let ready = &*self.ready;
        let outcome = match (&ready.conn, payload) {
            (Conn::Lambda(jobs), Payload::Lambda { body, traceparent }) => {
                let (done, answer) = oneshot::channel();
                let job = runtime_api::Job::new(body, traceparent, deadline, done);
                if jobs.send(job).is_err() {
                    return Err(self.gone(ready, "its Runtime API closed"));
                }
                match tokio::time::timeout_at(deadline, answer).await {
                    Err(_) => Err(InvokeError::Timeout(timeout)),
                    Ok(Err(_)) => Err(self.gone(ready, "it did not answer")),
                    Ok(Ok(Err(e))) => Err(e),
                    Ok(Ok(Ok(body))) => {
                        crate::lambda::reply(body).map(|reply| Success { status: 200, reply })
                    }
                }
            }
            (Conn::Http(http), payload) => {
                let left = deadline.saturating_duration_since(Instant::now());
                let result = match payload {
                    Payload::One(event) => http.invoke(event, left).await,
                    Payload::Batch(events) => http.invoke_batch(events, left).await,
                    Payload::Lambda { .. } => Err(InvokeError::Request(
                        "a Lambda payload for an HTTP instance".into(),
                    )),
                };
                match result {
                    Err(e) if e.is_timeout() => Err(InvokeError::Timeout(timeout)),
                    Err(InvokeError::Connect(detail)) => {
                        // A server on the loopback that cannot be reached is gone or broken:
                        // replaced, and the call retried elsewhere.
                        self.kill();
                        Err(self.gone(ready, &detail))
                    }
                    other => other,
                }
            }
            (Conn::Lambda(_), _) => Err(InvokeError::Request(
                "an HTTP payload for a Lambda runtime".into(),
            )),
        };
        if outcome.as_ref().is_err_and(InvokeError::is_timeout) {
            tracing::warn!(function = %self.pool.spec.function, instance = self.index, ?timeout, "a call ran past its timeout: its instance is killed and replaced");
            self.kill();
        }
        outcome
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.pool.release(self.id);
    }
}

/// What one call sends, in the form its instance's protocol takes.
enum Payload<'a> {
    /// The Lambda payload (the structured event, or a batch as its JSON array) and the
    /// first event's `traceparent`, for `Lambda-Runtime-Trace-Id`.
    Lambda {
        body: Bytes,
        traceparent: Option<String>,
    },
    /// One event, as the `http` kind sends it.
    One(&'a Event),
    /// A batch, as the `http` kind sends it.
    Batch(&'a [Event]),
}

/// An event's `traceparent` extension.
fn traceparent(event: &Event) -> Option<String> {
    match event.extension("traceparent")? {
        fnbroker_core::event::ExtensionValue::String(tp) => Some(tp.clone()),
        _ => None,
    }
}

/// Calls a function whose instances fnbroker runs and keeps warm.
#[derive(Debug)]
pub struct ProcessInvoker {
    pool: Arc<Pool>,
}

impl ProcessInvoker {
    /// Builds the pool of `f` and starts its `min` instances (and its supervisor) on the
    /// current Tokio runtime.
    pub fn start(f: &ProcessFunction, context: &InvokeContext) -> Result<Self, BuildError> {
        let (program, args) = f
            .command
            .split_first()
            .ok_or_else(|| "the command is empty".to_string())?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| "a `process` function runs only inside fnbroker's runtime".to_string())?;
        let env = crate::exec::base_env(&f.inherit_env, &f.env);
        let spec = Spec {
            function: context.function.clone(),
            program: program.clone(),
            args: args.to_vec(),
            env,
            directory: f.directory.as_ref().map(|d| PathBuf::from(d.as_str())),
            protocol: f.protocol,
            min: f.instances.min,
            max: f.instances.max.max(1),
            per_instance: f.concurrency.max(1),
            idle_timeout: f.idle_timeout.get(),
            init_timeout: f.init_timeout.get(),
            init_failures: f.init_failures.max(1),
            grace: f.grace_period.get(),
            handler: f.handler(),
            memory_size: f.memory_size,
            path: f.path.clone().unwrap_or_else(|| "/".into()),
            ready: f.ready.clone(),
            mode: f.mode.unwrap_or_default(),
        };
        let tasks = context
            .extensions
            .get::<TaskTracker>()
            .cloned()
            .unwrap_or_default();
        let metrics = context
            .extensions
            .get::<ProcessMetrics>()
            .cloned()
            .unwrap_or_default()
            .handle(&context.function);
        let pool = Arc::new(Pool {
            spec,
            state: Mutex::default(),
            changed: Notify::new(),
            closed: CancellationToken::new(),
            metrics,
            tasks,
        });
        let _enter = runtime.enter();
        pool.tasks.spawn(Arc::clone(&pool).supervise());
        Ok(Self { pool })
    }

    async fn call(&self, payload: Payload<'_>, timeout: Duration) -> Result<Success, InvokeError> {
        let deadline = Instant::now() + timeout;
        let lease = match self.pool.lease(deadline).await {
            Ok(lease) => lease,
            Err(InvokeError::Timeout(_)) => {
                return Err(InvokeError::Timeout(timeout));
            }
            Err(e) => return Err(e),
        };
        lease.call(payload, deadline, timeout).await
    }
}

impl Drop for ProcessInvoker {
    fn drop(&mut self) {
        self.pool.closed.cancel();
    }
}

#[async_trait]
impl Invoker for ProcessInvoker {
    async fn invoke(&self, event: &Event, timeout: Duration) -> Result<Success, InvokeError> {
        let payload = match self.pool.spec.protocol {
            Protocol::Lambda => Payload::Lambda {
                body: Bytes::from(event::to_json_vec(event)),
                traceparent: traceparent(event),
            },
            Protocol::Http => Payload::One(event),
        };
        self.call(payload, timeout).await
    }

    /// A Lambda runtime gets the JSON array of the structured events; an HTTP instance the
    /// batch as the `http` kind sends it. Either may name the failed events in its answer.
    async fn invoke_batch(
        &self,
        events: &[Event],
        timeout: Duration,
    ) -> Result<Success, InvokeError> {
        let payload = match self.pool.spec.protocol {
            Protocol::Lambda => Payload::Lambda {
                body: Bytes::from(event::batch_to_json_vec(events)),
                traceparent: events.first().and_then(traceparent),
            },
            Protocol::Http => Payload::Batch(events),
        };
        self.call(payload, timeout).await
    }

    fn status(&self) -> Option<Status> {
        let state = self.pool.state();
        Some(Status {
            unavailable: state.unavailable.then(|| {
                state
                    .last_error
                    .clone()
                    .unwrap_or_else(|| "its instances fail to start".into())
            }),
            instances: state.counts(),
        })
    }
}

#[cfg(test)]
mod tests;

//! The delivery engine: from "a source gave us a message" to "every trigger that matched it
//! finished", and only then the acknowledgement.
//!
//! One [`pump`] task per subscription pulls messages while fewer than `max_in_flight` are in
//! flight, so a slow function slows consumption and memory is bounded by configuration, not by
//! the backlog. Each message is matched against the subscription's triggers and delivered to
//! every match at once (fan-out); its [`AckHandle`](fnbroker_core::AckHandle) is settled when the
//! last of them finished: delivered, dead-lettered, or dropped by policy. A message that is still
//! in flight when the process stops is released, never acknowledged: its broker redelivers it.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fnbroker_core::event::{self, AttributesReader, AttributesWriter, Data, Event};
use fnbroker_core::{ErrorKind, Incoming, Origin, Settlement, Sink, Source};
use fnbroker_functions::{InvokeError, Invoker, Reply};
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::filter::Filter;
use crate::health::{Health, Turn};
use crate::metrics::{FunctionStats, TriggerStats};
use crate::retry::RetryPolicy;

/// A function as the engine calls it: its invoker, its concurrency limit, its timeout.
pub(crate) struct FunctionRuntime {
    pub(crate) name: String,
    pub(crate) invoker: Box<dyn Invoker>,
    pub(crate) limit: Arc<Semaphore>,
    pub(crate) timeout: Duration,
    pub(crate) stats: FunctionStats,
    /// Whether the function is down (an outage) rather than failing single events.
    pub(crate) health: Health,
}

impl FunctionRuntime {
    /// One attempt, waiting for a free slot of the function's `concurrency` first.
    async fn call(
        &self,
        event: &Event,
        timeout: Duration,
    ) -> Result<fnbroker_functions::Success, InvokeError> {
        // The semaphore is never closed, so acquiring only fails if it were; treat that as a
        // connection error so the attempt is retried rather than lost.
        let _permit = self
            .limit
            .acquire()
            .await
            .map_err(|_| InvokeError::Connect("function limiter closed".into()))?;
        self.stats.calls.inc();
        self.stats.in_flight.inc();
        let result = self.invoker.invoke(event, timeout).await;
        self.stats.in_flight.dec();
        if result.is_err() {
            self.stats.failures.inc();
        }
        self.health
            .record(result.as_ref().is_err_and(InvokeError::is_unavailable));
        result
    }
}

/// Where dead letters or replies go.
pub(crate) enum Target {
    /// A connector's topic.
    Sink { sink: Arc<dyn Sink>, topic: String },
    /// A function, called with the trigger's retry policy.
    Function(Arc<FunctionRuntime>),
}

/// A trigger as the engine runs it.
pub(crate) struct TriggerRuntime {
    pub(crate) name: String,
    pub(crate) filter: Option<Filter>,
    pub(crate) event_type: Option<String>,
    pub(crate) function: Arc<FunctionRuntime>,
    pub(crate) policy: RetryPolicy,
    pub(crate) timeout: Duration,
    pub(crate) dead_letter: Option<Target>,
    pub(crate) reply: Option<Target>,
    pub(crate) stats: TriggerStats,
}

/// How one trigger finished with one message.
#[derive(Debug)]
enum Outcome {
    Delivered(Option<Box<Event>>),
    /// Dead-lettered, or dropped by policy: final.
    Failed {
        reason: String,
        timed_out: bool,
    },
    /// Not finished (stopping, or the dead letter could not be published): redeliver.
    Released,
    /// Failed an attempt; the broker redelivers it after the delay (broker-side retries).
    Retry(Duration),
}

impl TriggerRuntime {
    /// The event as this trigger sees it: a plain message gets the trigger's `event.type`.
    fn view<'a>(&self, event: &'a Event, origin: &Origin) -> std::borrow::Cow<'a, Event> {
        match (&self.event_type, origin) {
            (Some(ty), Origin::Plain) => {
                let mut e = event.clone();
                e.set_type(ty.as_str());
                std::borrow::Cow::Owned(e)
            }
            _ => std::borrow::Cow::Borrowed(event),
        }
    }

    fn matches(&self, event: &Event) -> bool {
        self.filter.as_ref().is_none_or(|f| f.matches(event))
    }

    /// Delivers one event with retries; then dead-letters it if it failed for good.
    ///
    /// With `broker_retry`, the broker delivered the message that many times before, and waits
    /// between attempts itself: a failed attempt that may be retried returns [`Outcome::Retry`]
    /// instead of sleeping here.
    ///
    /// While the function is down (see [`crate::health`]), a failure that says so spends no
    /// attempt: the event is held here (also with `broker_retry`: the broker must not count an
    /// outage against it either) and one delivery at a time probes the function.
    async fn deliver(
        &self,
        event: &Event,
        shutdown: &CancellationToken,
        broker_retry: Option<u32>,
    ) -> Outcome {
        let started = Instant::now();
        let mut attempt: u32 = broker_retry.unwrap_or(0);
        let health = &self.function.health;
        let mut probing = None;
        loop {
            match health.turn(probing.take(), shutdown).await {
                Turn::Stop => return Outcome::Released,
                Turn::Call => {}
                Turn::Probe(permit) => probing = Some(permit),
            }
            let error = match self.function.call(event, self.timeout).await {
                Ok(success) => {
                    let reply = success
                        .reply
                        .map(|r| reply_event(event, &self.function.name, r));
                    if let (Some(reply), Some(target)) = (&reply, &self.reply)
                        && !self.publish(target, reply, "reply", shutdown).await
                    {
                        // The function is not called again for it: the broker redelivers the
                        // message after the pause, and only then is it delivered again.
                        return self.hand_back(shutdown).await;
                    }
                    self.stats.delivered.inc();
                    self.stats.latency.observe(started.elapsed().as_secs_f64());
                    return Outcome::Delivered(reply.map(Box::new));
                }
                Err(e) => e,
            };
            if error.is_unavailable() && health.is_down() {
                self.stats.held.inc();
                tracing::debug!(trigger = %self.name, id = event.id(), error = %error, "function unavailable; holding the event");
                if let Some(permit) = probing.take() {
                    // The next probe waits out the backoff, and is another held delivery's
                    // (the semaphore is fair): an event that fails on its own cannot keep a
                    // function marked down while others would succeed.
                    let wait = health.next_probe_delay(&mut rand::rng());
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = shutdown.cancelled() => return Outcome::Released,
                    }
                    drop(permit);
                }
                continue;
            }
            probing = None;
            attempt += 1;
            if !error.is_retryable() || attempt > self.policy.retries {
                return self.fail(event, &error, attempt, shutdown).await;
            }
            let wait = self
                .policy
                .delay(attempt, error.retry_after(), &mut rand::rng());
            tracing::debug!(trigger = %self.name, id = event.id(), attempt, ?wait, error = %error, "retrying");
            self.stats.retried.inc();
            if broker_retry.is_some() {
                return Outcome::Retry(wait);
            }
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = shutdown.cancelled() => return Outcome::Released,
            }
        }
    }

    /// The delivery failed for good: dead-letter the event, or drop it by policy.
    async fn fail(
        &self,
        event: &Event,
        error: &InvokeError,
        attempts: u32,
        shutdown: &CancellationToken,
    ) -> Outcome {
        let reason = error.to_string();
        let outcome = Outcome::Failed {
            reason: reason.clone(),
            timed_out: error.is_timeout(),
        };
        let Some(target) = &self.dead_letter else {
            tracing::warn!(trigger = %self.name, function = %self.function.name, id = event.id(), attempts, error = %reason, "delivery failed; no dead_letter configured, dropping the event");
            self.stats.dropped.inc();
            return outcome;
        };
        let letter = dead_letter_event(
            event,
            &reason,
            error.status(),
            attempts,
            &self.name,
            &self.function.name,
        );
        if self.publish(target, &letter, "dead letter", shutdown).await {
            self.stats.dead_lettered.inc();
            outcome
        } else {
            self.hand_back(shutdown).await
        }
    }

    /// Dead-letters an event that could not become a valid CloudEvent.
    async fn reject_invalid(
        &self,
        event: &Event,
        reason: &str,
        shutdown: &CancellationToken,
    ) -> Outcome {
        self.stats.received.inc();
        let outcome = Outcome::Failed {
            reason: reason.to_string(),
            timed_out: false,
        };
        let Some(target) = &self.dead_letter else {
            tracing::warn!(trigger = %self.name, id = event.id(), error = reason, "invalid CloudEvent; no dead_letter configured, dropping it");
            self.stats.dropped.inc();
            return outcome;
        };
        let letter = dead_letter_event(event, reason, None, 0, &self.name, &self.function.name);
        if self.publish(target, &letter, "dead letter", shutdown).await {
            self.stats.dead_lettered.inc();
            outcome
        } else {
            self.hand_back(shutdown).await
        }
    }

    /// Publishes a reply or a dead letter (`what`) to `target`, through the one path both take.
    /// A transient failure is tried again with the trigger's backoff, at least
    /// [`PUBLISH_RETRIES`] times (the function is not called again for it); a permanent one
    /// (the destination does not exist) is not. `false` when it could not be published.
    async fn publish(
        &self,
        target: &Target,
        event: &Event,
        what: &'static str,
        shutdown: &CancellationToken,
    ) -> bool {
        let mut tries = 0;
        loop {
            tries += 1;
            let result = match target {
                Target::Sink { sink, topic } => sink.publish(topic, event).await.map_err(|e| {
                    let transient = e.kind() == ErrorKind::Transient;
                    (format!("{e} (topic `{topic}`)"), transient)
                }),
                Target::Function(f) => f
                    .call(event, f.timeout)
                    .await
                    .map(|_| ())
                    .map_err(|e| (format!("function `{}`: {e}", f.name), e.is_retryable())),
            };
            let Err((error, transient)) = result else {
                return true;
            };
            self.stats.publish_failed.inc();
            if !transient || tries > self.policy.retries.max(PUBLISH_RETRIES) {
                tracing::warn!(trigger = %self.name, id = event.id(), what, error = %error, transient, tries, "cannot publish; handing the message back to its broker");
                return false;
            }
            tracing::debug!(trigger = %self.name, id = event.id(), what, error = %error, tries, "publish failed; trying again");
            let wait = self.policy.delay(tries, None, &mut rand::rng());
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = shutdown.cancelled() => return false,
            }
        }
    }

    /// Hands the message back to its broker for redelivery, after a pause of `max_delay`: a
    /// destination that stays broken costs one delivery per pause, never a tight loop, and the
    /// message is never dropped.
    async fn hand_back(&self, shutdown: &CancellationToken) -> Outcome {
        self.stats.handed_back.inc();
        tokio::select! {
            () = tokio::time::sleep(self.policy.max_delay()) => {}
            () = shutdown.cancelled() => return Outcome::Released,
        }
        Outcome::Retry(Duration::ZERO)
    }
}

/// A reply or dead letter whose publish fails transiently is tried at least this many times
/// more, whatever the trigger's `retries`.
pub(crate) const PUBLISH_RETRIES: u32 = 3;

/// The dead letter of `event`: the original id, source, type and data, and the `dlq*`
/// extensions that say why.
pub(crate) fn dead_letter_event(
    event: &Event,
    reason: &str,
    status: Option<u16>,
    attempts: u32,
    trigger: &str,
    function: &str,
) -> Event {
    let mut letter = event.clone();
    letter.set_extension("dlqreason", reason);
    if let Some(status) = status {
        letter.set_extension("dlqstatus", i64::from(status));
    }
    letter.set_extension("dlqattempts", i64::from(attempts));
    letter.set_extension("dlqtrigger", trigger);
    letter.set_extension("dlqfunction", function);
    letter
}

/// A function's reply as an event: a CloudEvent as it is; any other body wrapped with a new id,
/// type `<original type>.reply`, source `fnbroker://functions/<name>` and the answer's content
/// type.
pub(crate) fn reply_event(original: &Event, function: &str, reply: Reply) -> Event {
    match reply {
        Reply::Event(e) => *e,
        Reply::Raw { content_type, body } => {
            let mut e = event::normalize(
                event::PlainMessage {
                    kind: "fnbroker",
                    connector: "functions",
                    topic: function,
                    ..Default::default()
                },
                Vec::new(),
            );
            e.set_type(format!("{}.reply", original.ty()));
            e.set_subject(original.subject());
            e.set_datacontenttype(
                content_type
                    .as_deref()
                    .filter(|ct| event::is_valid_media_type(ct)),
            );
            e.set_data_unchecked(Data::Binary(body.to_vec()));
            e
        }
    }
}

/// Settles one message once all its triggers finished.
async fn process(
    msg: Incoming,
    triggers: Arc<[Arc<TriggerRuntime>]>,
    shutdown: CancellationToken,
    broker_retries: bool,
) -> u64 {
    let Incoming {
        event,
        origin,
        key,
        ack,
        redeliveries,
    } = msg;

    if let Origin::Invalid(reason) = &origin {
        let outcomes = futures::future::join_all(
            triggers
                .iter()
                .map(|t| t.reject_invalid(&event, reason, &shutdown)),
        )
        .await;
        ack.settle(combine(outcomes));
        return key;
    }

    let views: Vec<_> = triggers
        .iter()
        .filter_map(|t| {
            let view = t.view(&event, &origin);
            t.matches(&view).then_some((t, view))
        })
        .collect();
    if views.is_empty() {
        ack.settle(Settlement::Delivered { reply: None });
        return key;
    }
    for (t, _) in &views {
        t.stats.received.inc();
        t.stats.in_flight.inc();
    }
    // The broker may wait between attempts only when one trigger matched: a redelivery goes to
    // every trigger of the subscription again.
    let broker_retry = (broker_retries && views.len() == 1).then_some(redeliveries);
    let outcomes = futures::future::join_all(views.iter().map(|(t, view)| async {
        let outcome = t.deliver(view, &shutdown, broker_retry).await;
        t.stats.in_flight.dec();
        outcome
    }))
    .await;
    ack.settle(combine(outcomes));
    key
}

/// One settlement from the outcomes of every matched trigger: released if any must see the
/// message again, retried later if one asked for it, else failed if any failed, else delivered
/// with the first reply.
fn combine(outcomes: Vec<Outcome>) -> Settlement {
    let mut failure = None;
    let mut reply = None;
    let mut retry = None;
    for outcome in outcomes {
        match outcome {
            Outcome::Released => return Settlement::Released,
            Outcome::Retry(delay) => retry = Some(delay),
            Outcome::Failed { reason, timed_out } => {
                failure.get_or_insert(Settlement::Failed { reason, timed_out });
            }
            Outcome::Delivered(r) => {
                if reply.is_none() {
                    reply = r;
                }
            }
        }
    }
    if let Some(delay) = retry {
        return Settlement::Retry { delay };
    }
    failure.unwrap_or(Settlement::Delivered { reply })
}

/// What a pump needs to run one subscription.
pub(crate) struct PumpConfig {
    pub(crate) name: String,
    pub(crate) triggers: Arc<[Arc<TriggerRuntime>]>,
    pub(crate) max_in_flight: usize,
    pub(crate) ordered: bool,
    pub(crate) shutdown_timeout: Duration,
}

/// Pulls messages from `source` while fewer than `max_in_flight` are in flight, delivers them,
/// and on `shutdown` stops pulling, lets what is in flight finish within the shutdown timeout,
/// and releases the rest.
///
/// With `ordered`, messages with the same key wait for the one before them; they count
/// against `max_in_flight` while they wait, so memory stays bounded.
pub(crate) async fn pump(
    mut source: Box<dyn Source>,
    cfg: PumpConfig,
    shutdown: CancellationToken,
) {
    // Broker-side retries would let the next message of a key overtake a failed one.
    let broker_retries = source.redelivers_with_delay() && !cfg.ordered;
    let mut in_flight = FuturesUnordered::new();
    // Ordered mode: keys with a message in flight, and the messages waiting behind them.
    let mut waiting: HashMap<u64, VecDeque<Incoming>> = HashMap::new();
    let mut queued = 0usize;
    let mut open = true;

    while open {
        let room = in_flight.len() + queued < cfg.max_in_flight;
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            Some(key) = in_flight.next(), if !in_flight.is_empty() => {
                if cfg.ordered {
                    let next = waiting.get_mut(&key).and_then(VecDeque::pop_front);
                    match next {
                        Some(msg) => {
                            queued -= 1;
                            in_flight.push(process(
                        msg,
                        Arc::clone(&cfg.triggers),
                        shutdown.clone(),
                        broker_retries,
                    ));
                        }
                        None => {
                            waiting.remove(&key);
                        }
                    }
                }
            }
            msg = source.next(), if room => match msg {
                None => open = false,
                Some(msg) => {
                    if cfg.ordered {
                        if let Some(queue) = waiting.get_mut(&msg.key) {
                            queue.push_back(msg);
                            queued += 1;
                            continue;
                        }
                        waiting.insert(msg.key, VecDeque::new());
                    }
                    in_flight.push(process(
                        msg,
                        Arc::clone(&cfg.triggers),
                        shutdown.clone(),
                        broker_retries,
                    ));
                }
            },
        }
    }

    // Stopping: messages waiting behind a key were never started; release them now.
    source.stopping();
    drop(waiting);
    let pending = in_flight.len();
    if pending > 0 {
        tracing::info!(subscription = %cfg.name, pending, "waiting for in-flight deliveries");
        let drain = async { while in_flight.next().await.is_some() {} };
        if tokio::time::timeout(cfg.shutdown_timeout, drain)
            .await
            .is_err()
        {
            tracing::warn!(subscription = %cfg.name, left = in_flight.len(), "shutdown timeout reached; releasing the rest for redelivery");
        }
    }
    // Dropping the futures drops their acknowledgement handles: released, not acknowledged.
    drop(in_flight);
    source.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use fnbroker_core::AckHandle;
    use fnbroker_core::config::Delivery;
    use fnbroker_functions::Success;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::sync::mpsc;

    /// An invoker that fails `failures` times with `error`, then succeeds; it records the
    /// (paused) time of every call.
    struct Flaky {
        failures: usize,
        error: InvokeError,
        calls: Arc<Mutex<Vec<tokio::time::Instant>>>,
    }

    #[async_trait]
    impl Invoker for Flaky {
        async fn invoke(&self, _: &Event, _: Duration) -> Result<Success, InvokeError> {
            let n = {
                let mut calls = self.calls.lock().expect("lock");
                calls.push(tokio::time::Instant::now());
                calls.len()
            };
            if n <= self.failures {
                Err(self.error.clone())
            } else {
                Ok(Success {
                    status: 200,
                    reply: None,
                })
            }
        }
    }

    struct Capture(Arc<Mutex<Vec<Event>>>);

    #[async_trait]
    impl Sink for Capture {
        async fn publish(&self, _: &str, e: &Event) -> Result<(), fnbroker_core::ConnectorError> {
            self.0.lock().expect("lock").push(e.clone());
            Ok(())
        }
    }

    fn function(invoker: impl Invoker + 'static) -> Arc<FunctionRuntime> {
        Arc::new(FunctionRuntime {
            name: "f".into(),
            invoker: Box::new(invoker),
            limit: Arc::new(Semaphore::new(8)),
            timeout: Duration::from_secs(1),
            stats: FunctionStats::detached(),
            health: Health::default(),
        })
    }

    fn trigger(f: Arc<FunctionRuntime>, retries: u32, dead: Option<Target>) -> Arc<TriggerRuntime> {
        let delivery: Delivery = serde_saphyr::from_str(&format!(
            "{{ retries: {retries}, backoff: constant, delay: 1s, max_delay: 10s }}"
        ))
        .expect("delivery");
        Arc::new(TriggerRuntime {
            name: "t".into(),
            filter: None,
            event_type: None,
            function: f,
            policy: RetryPolicy::from_config(&delivery),
            timeout: Duration::from_secs(1),
            dead_letter: dead,
            reply: None,
            stats: TriggerStats::detached(),
        })
    }

    fn incoming(id: &str, key: u64) -> (Incoming, mpsc::UnboundedReceiver<Settlement>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let event = event::normalize(
            event::PlainMessage {
                kind: "http",
                connector: "web",
                topic: "/t",
                id: Some(id.into()),
                ..Default::default()
            },
            b"x".to_vec(),
        );
        let ack = AckHandle::new(move |s| {
            let _ = tx.send(s);
        });
        (
            Incoming {
                event,
                origin: Origin::Plain,
                key,
                redeliveries: 0,
                ack,
            },
            rx,
        )
    }

    async fn process_test(
        msg: Incoming,
        triggers: Arc<[Arc<TriggerRuntime>]>,
        shutdown: CancellationToken,
    ) -> u64 {
        process(msg, triggers, shutdown, false).await
    }

    #[tokio::test(start_paused = true)]
    async fn broker_side_retries_settle_retry_then_dead_letter() {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let f = function(Flaky {
            failures: usize::MAX,
            error: InvokeError::Status {
                status: 503,
                retry_after: None,
                body: String::new(),
            },
            calls: Arc::clone(&calls),
        });
        let letters = Arc::new(Mutex::new(Vec::new()));
        let dead = Target::Sink {
            sink: Arc::new(Capture(Arc::clone(&letters))),
            topic: "dlq".into(),
        };
        let t = trigger(f, 2, Some(dead));
        // First delivery: one attempt, then the broker is asked to redeliver after the delay.
        let (msg, mut rx) = incoming("a", 0);
        process(
            msg,
            Arc::from(vec![t.clone()]),
            CancellationToken::new(),
            true,
        )
        .await;
        assert!(
            matches!(rx.recv().await, Some(Settlement::Retry { delay }) if delay == Duration::from_secs(1))
        );
        assert_eq!(calls.lock().expect("lock").len(), 1);
        // The third delivery (two before it) is the last attempt: dead-lettered, not retried.
        let (mut msg, mut rx) = incoming("a", 0);
        msg.redeliveries = 2;
        process(msg, Arc::from(vec![t]), CancellationToken::new(), true).await;
        assert!(matches!(rx.recv().await, Some(Settlement::Failed { .. })));
        assert_eq!(calls.lock().expect("lock").len(), 2);
        let letters = letters.lock().expect("lock");
        assert_eq!(
            event::attribute(&letters[0], "dlqattempts").as_deref(),
            Some("3")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn retries_wait_and_then_succeed() {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let f = function(Flaky {
            failures: 2,
            error: InvokeError::Status {
                status: 503,
                retry_after: None,
                body: String::new(),
            },
            calls: Arc::clone(&calls),
        });
        let t = trigger(f, 3, None);
        let (msg, mut rx) = incoming("a", 0);
        process_test(msg, Arc::from(vec![t.clone()]), CancellationToken::new()).await;
        assert!(matches!(
            rx.recv().await,
            Some(Settlement::Delivered { .. })
        ));
        let calls = calls.lock().expect("lock");
        assert_eq!(calls.len(), 3);
        assert_eq!(calls[1] - calls[0], Duration::from_secs(1));
        assert_eq!(t.stats.retried.get(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_is_honoured() {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let f = function(Flaky {
            failures: 1,
            error: InvokeError::Status {
                status: 429,
                retry_after: Some(Duration::from_secs(7)),
                body: String::new(),
            },
            calls: Arc::clone(&calls),
        });
        let (msg, mut rx) = incoming("a", 0);
        process_test(
            msg,
            Arc::from(vec![trigger(f, 3, None)]),
            CancellationToken::new(),
        )
        .await;
        assert!(matches!(
            rx.recv().await,
            Some(Settlement::Delivered { .. })
        ));
        let calls = calls.lock().expect("lock");
        assert_eq!(calls[1] - calls[0], Duration::from_secs(7));
    }

    #[tokio::test(start_paused = true)]
    async fn client_errors_go_straight_to_the_dead_letter() {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let f = function(Flaky {
            failures: usize::MAX,
            error: InvokeError::Status {
                status: 400,
                retry_after: None,
                body: "bad".into(),
            },
            calls: Arc::clone(&calls),
        });
        let letters = Arc::new(Mutex::new(Vec::new()));
        let dead = Target::Sink {
            sink: Arc::new(Capture(Arc::clone(&letters))),
            topic: "dlq".into(),
        };
        let (msg, mut rx) = incoming("a", 0);
        process_test(
            msg,
            Arc::from(vec![trigger(f, 5, Some(dead))]),
            CancellationToken::new(),
        )
        .await;
        assert!(matches!(rx.recv().await, Some(Settlement::Failed { .. })));
        assert_eq!(calls.lock().expect("lock").len(), 1);
        let letters = letters.lock().expect("lock");
        assert_eq!(letters[0].id(), "a");
        assert_eq!(
            event::attribute(&letters[0], "dlqstatus").as_deref(),
            Some("400")
        );
        assert_eq!(
            event::attribute(&letters[0], "dlqattempts").as_deref(),
            Some("1")
        );
        assert_eq!(
            event::attribute(&letters[0], "dlqtrigger").as_deref(),
            Some("t")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn exhausted_retries_count_every_attempt() {
        // Two timeouts in a row: fewer than an outage takes (three), so a per-event failure.
        let calls = Arc::new(Mutex::new(Vec::new()));
        let f = function(Flaky {
            failures: usize::MAX,
            error: InvokeError::Timeout(Duration::from_secs(1)),
            calls: Arc::clone(&calls),
        });
        let letters = Arc::new(Mutex::new(Vec::new()));
        let dead = Target::Sink {
            sink: Arc::new(Capture(Arc::clone(&letters))),
            topic: "dlq".into(),
        };
        let (msg, mut rx) = incoming("a", 0);
        process_test(
            msg,
            Arc::from(vec![trigger(f, 1, Some(dead))]),
            CancellationToken::new(),
        )
        .await;
        assert!(matches!(
            rx.recv().await,
            Some(Settlement::Failed {
                timed_out: true,
                ..
            })
        ));
        assert_eq!(calls.lock().expect("lock").len(), 2);
        let letters = letters.lock().expect("lock");
        assert_eq!(
            event::attribute(&letters[0], "dlqattempts").as_deref(),
            Some("2")
        );
        assert_eq!(event::attribute(&letters[0], "dlqstatus"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn invalid_messages_are_dead_lettered_with_their_bytes_and_reason() {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let f = function(Flaky {
            failures: 0,
            error: InvokeError::Connect(String::new()),
            calls: Arc::clone(&calls),
        });
        let letters = Arc::new(Mutex::new(Vec::new()));
        let dead = Target::Sink {
            sink: Arc::new(Capture(Arc::clone(&letters))),
            topic: "dlq".into(),
        };
        let (mut msg, mut rx) = incoming("raw-1", 0);
        msg.origin = Origin::Invalid("missing required attribute `id`".into());
        process_test(
            msg,
            Arc::from(vec![trigger(f, 3, Some(dead))]),
            CancellationToken::new(),
        )
        .await;
        assert!(matches!(rx.recv().await, Some(Settlement::Failed { .. })));
        assert!(
            calls.lock().expect("lock").is_empty(),
            "the function is not called"
        );
        let letters = letters.lock().expect("lock");
        assert_eq!(&*event::data_bytes(&letters[0]), b"x");
        assert_eq!(
            event::attribute(&letters[0], "dlqreason").as_deref(),
            Some("missing required attribute `id`")
        );
        assert_eq!(
            event::attribute(&letters[0], "dlqattempts").as_deref(),
            Some("0")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_dead_letter_that_cannot_be_published_releases_the_message() {
        struct Broken;
        #[async_trait]
        impl Sink for Broken {
            async fn publish(
                &self,
                _: &str,
                _: &Event,
            ) -> Result<(), fnbroker_core::ConnectorError> {
                Err(fnbroker_core::ConnectorError::Io {
                    connector: "k".into(),
                    message: "down".into(),
                })
            }
        }
        let f = function(Flaky {
            failures: usize::MAX,
            error: InvokeError::Status {
                status: 500,
                retry_after: None,
                body: String::new(),
            },
            calls: Arc::default(),
        });
        let dead = Target::Sink {
            sink: Arc::new(Broken),
            topic: "dlq".into(),
        };
        let (msg, mut rx) = incoming("a", 0);
        process_test(
            msg,
            Arc::from(vec![trigger(f, 1, Some(dead))]),
            CancellationToken::new(),
        )
        .await;
        assert!(matches!(rx.recv().await, Some(Settlement::Retry { .. })));
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_during_backoff_releases() {
        let f = function(Flaky {
            failures: usize::MAX,
            error: InvokeError::Connect("refused".into()),
            calls: Arc::default(),
        });
        let shutdown = CancellationToken::new();
        let (msg, mut rx) = incoming("a", 0);
        let task = tokio::spawn(process_test(
            msg,
            Arc::from(vec![trigger(f, 5, None)]),
            shutdown.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        shutdown.cancel();
        task.await.expect("join");
        assert!(matches!(rx.recv().await, Some(Settlement::Released)));
    }

    /// A source that hands out a fixed list of messages, then waits forever.
    struct ListSource(VecDeque<Incoming>);

    #[async_trait]
    impl Source for ListSource {
        async fn next(&mut self) -> Option<Incoming> {
            match self.0.pop_front() {
                Some(m) => Some(m),
                None => futures::future::pending().await,
            }
        }
    }

    /// Counts concurrent calls and records the order of ids.
    struct Slow {
        current: AtomicUsize,
        peak: AtomicUsize,
        order: Mutex<Vec<String>>,
    }

    struct SlowRef(Arc<Slow>);

    #[async_trait]
    impl Invoker for SlowRef {
        async fn invoke(&self, e: &Event, _: Duration) -> Result<Success, InvokeError> {
            let slow = &self.0;
            let now = slow.current.fetch_add(1, Ordering::SeqCst) + 1;
            slow.peak.fetch_max(now, Ordering::SeqCst);
            slow.order.lock().expect("lock").push(e.id().to_string());
            tokio::time::sleep(Duration::from_millis(200)).await;
            slow.current.fetch_sub(1, Ordering::SeqCst);
            Ok(Success {
                status: 200,
                reply: None,
            })
        }
    }

    async fn run_pump(
        max_in_flight: usize,
        ordered: bool,
        keys: &[u64],
    ) -> (Arc<Slow>, Vec<Settlement>) {
        let slow = Arc::new(Slow {
            current: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            order: Mutex::default(),
        });
        let f = function(SlowRef(Arc::clone(&slow)));
        let mut msgs = VecDeque::new();
        let mut rxs = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let (m, rx) = incoming(&format!("{key}-{i}"), *key);
            msgs.push_back(m);
            rxs.push(rx);
        }
        let shutdown = CancellationToken::new();
        let cfg = PumpConfig {
            name: "s".into(),
            triggers: Arc::from(vec![trigger(f, 0, None)]),
            max_in_flight,
            ordered,
            shutdown_timeout: Duration::from_secs(30),
        };
        let task = tokio::spawn(pump(Box::new(ListSource(msgs)), cfg, shutdown.clone()));
        let mut settled = Vec::new();
        for rx in &mut rxs {
            settled.push(rx.recv().await.expect("settled"));
        }
        shutdown.cancel();
        task.await.expect("join");
        (slow, settled)
    }

    #[tokio::test(start_paused = true)]
    async fn max_in_flight_bounds_concurrency() {
        let (slow, settled) = run_pump(4, false, &[0; 20]).await;
        assert_eq!(slow.peak.load(Ordering::SeqCst), 4);
        assert!(
            settled
                .iter()
                .all(|s| matches!(s, Settlement::Delivered { .. }))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn ordered_keys_are_serial_but_keys_run_in_parallel() {
        let keys = [1, 2, 1, 2, 1, 2, 1, 2];
        let (slow, _) = run_pump(16, true, &keys).await;
        assert_eq!(slow.peak.load(Ordering::SeqCst), 2);
        let order = slow.order.lock().expect("lock").clone();
        let of = |k: &str| {
            order
                .iter()
                .filter(|id| id.starts_with(k))
                .cloned()
                .collect::<Vec<_>>()
        };
        assert_eq!(of("1-"), vec!["1-0", "1-2", "1-4", "1-6"]);
        assert_eq!(of("2-"), vec!["2-1", "2-3", "2-5", "2-7"]);
    }

    /// An invoker that is down (connection refused) until `until`, then answers 200; it counts
    /// calls and the most at once.
    struct DownUntil {
        until: tokio::time::Instant,
        calls: AtomicUsize,
        current: AtomicUsize,
        peak: AtomicUsize,
    }

    struct DownRef(Arc<DownUntil>);

    #[async_trait]
    impl Invoker for DownRef {
        async fn invoke(&self, _: &Event, _: Duration) -> Result<Success, InvokeError> {
            let d = &self.0;
            d.calls.fetch_add(1, Ordering::SeqCst);
            let now = d.current.fetch_add(1, Ordering::SeqCst) + 1;
            d.peak.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(5)).await;
            d.current.fetch_sub(1, Ordering::SeqCst);
            if tokio::time::Instant::now() < d.until {
                Err(InvokeError::Connect("connection refused".into()))
            } else {
                Ok(Success {
                    status: 200,
                    reply: None,
                })
            }
        }
    }

    /// Finding 9 of issue 12: a function down for 5 s and for 60 s, default delivery settings
    /// and no dead letter: every event is held (no attempt spent, one probe at a time) and
    /// delivered once the function answers; none is dropped.
    #[tokio::test(start_paused = true)]
    async fn an_outage_holds_events_instead_of_spending_their_retries() {
        for outage in [Duration::from_secs(5), Duration::from_secs(60)] {
            let down = Arc::new(DownUntil {
                until: tokio::time::Instant::now() + outage,
                calls: AtomicUsize::new(0),
                current: AtomicUsize::new(0),
                peak: AtomicUsize::new(0),
            });
            let f = function(DownRef(Arc::clone(&down)));
            let t = Arc::new(TriggerRuntime {
                name: "t".into(),
                filter: None,
                event_type: None,
                function: f,
                policy: RetryPolicy::from_config(&Delivery::default()),
                timeout: Duration::from_secs(1),
                dead_letter: None,
                reply: None,
                stats: TriggerStats::detached(),
            });
            let triggers: Arc<[Arc<TriggerRuntime>]> = Arc::from(vec![Arc::clone(&t)]);
            let mut tasks = Vec::new();
            let mut rxs = Vec::new();
            for i in 0..50 {
                let (msg, rx) = incoming(&format!("e{i}"), i);
                rxs.push(rx);
                tasks.push(tokio::spawn(process_test(
                    msg,
                    Arc::clone(&triggers),
                    CancellationToken::new(),
                )));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            for task in tasks {
                task.await.expect("join");
            }
            for rx in &mut rxs {
                let settled = rx.recv().await;
                assert!(
                    matches!(settled, Some(Settlement::Delivered { .. })),
                    "outage {outage:?}: {settled:?}"
                );
            }
            assert_eq!(t.stats.dropped.get(), 0, "outage {outage:?}");
            assert_eq!(t.stats.delivered.get(), 50, "outage {outage:?}");
            // Probing is one call at a time with backoff capped at 5 s: a few per second at
            // most, not 50 events x 4 attempts in the first second.
            let calls = down.calls.load(Ordering::SeqCst);
            assert!(
                calls < 50 + 10 + 3 * outage.as_secs() as usize,
                "outage {outage:?}: {calls} calls"
            );
        }
    }

    struct Replying;

    #[async_trait]
    impl Invoker for Replying {
        async fn invoke(&self, _: &Event, _: Duration) -> Result<Success, InvokeError> {
            Ok(Success {
                status: 200,
                reply: Some(Reply::Raw {
                    content_type: Some("text/plain".into()),
                    body: bytes::Bytes::from_static(b"pong"),
                }),
            })
        }
    }

    /// A sink failing `failures` times with `kind` of error, then publishing.
    struct FailingSink {
        failures: usize,
        permanent: bool,
        tries: AtomicUsize,
    }

    #[async_trait]
    impl Sink for FailingSink {
        async fn publish(&self, _: &str, _: &Event) -> Result<(), fnbroker_core::ConnectorError> {
            let n = self.tries.fetch_add(1, Ordering::SeqCst) + 1;
            if n > self.failures {
                return Ok(());
            }
            let (connector, message) = ("rabbit".to_string(), "unroutable".to_string());
            Err(if self.permanent {
                fnbroker_core::ConnectorError::Permanent { connector, message }
            } else {
                fnbroker_core::ConnectorError::Io { connector, message }
            })
        }
    }

    fn replying_trigger(
        sink: Arc<FailingSink>,
        calls: Arc<Mutex<Vec<tokio::time::Instant>>>,
    ) -> Arc<TriggerRuntime> {
        struct Counting(Arc<Mutex<Vec<tokio::time::Instant>>>);
        #[async_trait]
        impl Invoker for Counting {
            async fn invoke(&self, e: &Event, t: Duration) -> Result<Success, InvokeError> {
                self.0
                    .lock()
                    .expect("lock")
                    .push(tokio::time::Instant::now());
                Replying.invoke(e, t).await
            }
        }
        let base = trigger(function(Counting(calls)), 3, None);
        Arc::new(TriggerRuntime {
            name: "t".into(),
            filter: None,
            event_type: None,
            function: Arc::clone(&base.function),
            policy: base.policy.clone(),
            timeout: base.timeout,
            dead_letter: None,
            reply: Some(Target::Sink {
                sink,
                topic: "replies".into(),
            }),
            stats: TriggerStats::detached(),
        })
    }

    /// Finding 5 of issue 12: a reply that cannot be published (no queue behind the routing
    /// key) does not call the function again: one call, one publish try (it is permanent), then
    /// the message goes back to its broker after `max_delay`, counted.
    #[tokio::test(start_paused = true)]
    async fn an_unpublishable_reply_hands_the_message_back_without_calling_again() {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::new(FailingSink {
            failures: usize::MAX,
            permanent: true,
            tries: AtomicUsize::new(0),
        });
        let t = replying_trigger(Arc::clone(&sink), Arc::clone(&calls));
        let (msg, mut rx) = incoming("a", 0);
        let started = tokio::time::Instant::now();
        process_test(
            msg,
            Arc::from(vec![Arc::clone(&t)]),
            CancellationToken::new(),
        )
        .await;
        assert!(matches!(rx.recv().await, Some(Settlement::Retry { .. })));
        assert_eq!(
            calls.lock().expect("lock").len(),
            1,
            "the function was called again"
        );
        assert_eq!(
            sink.tries.load(Ordering::SeqCst),
            1,
            "a permanent failure is not retried"
        );
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(10),
            "handed back after max_delay"
        );
        assert_eq!(t.stats.handed_back.get(), 1);
        assert_eq!(t.stats.publish_failed.get(), 1);
    }

    /// A transient reply failure is retried on its own, without another call.
    #[tokio::test(start_paused = true)]
    async fn a_transient_reply_failure_is_published_again_not_called_again() {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::new(FailingSink {
            failures: 2,
            permanent: false,
            tries: AtomicUsize::new(0),
        });
        let t = replying_trigger(Arc::clone(&sink), Arc::clone(&calls));
        let (msg, mut rx) = incoming("a", 0);
        process_test(
            msg,
            Arc::from(vec![Arc::clone(&t)]),
            CancellationToken::new(),
        )
        .await;
        assert!(matches!(
            rx.recv().await,
            Some(Settlement::Delivered { .. })
        ));
        assert_eq!(calls.lock().expect("lock").len(), 1);
        assert_eq!(sink.tries.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn raw_replies_are_wrapped() {
        let (msg, _rx) = incoming("a", 0);
        let reply = reply_event(
            &msg.event,
            "thermostat",
            Reply::Raw {
                content_type: Some("application/json".into()),
                body: bytes::Bytes::from_static(b"{}"),
            },
        );
        assert_eq!(reply.ty(), "fnbroker.http.message.reply");
        assert_eq!(reply.source(), "fnbroker://functions/thermostat");
        assert_eq!(reply.datacontenttype(), Some("application/json"));
        assert_ne!(reply.id(), "a");
    }
}

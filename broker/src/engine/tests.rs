//! The engine's tests, with paused time.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use fnbroker_core::event::{self, AttributesReader, Event};
use fnbroker_core::{Incoming, Origin, Settlement, Sink, Source};
use fnbroker_functions::{InvokeError, Invoker, Reply};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::engine::health::Health;
use crate::engine::retry::RetryPolicy;

use super::delivery::*;
use super::flow::*;
use super::settle::*;
use super::*;
use async_trait::async_trait;
use fnbroker_config::Delivery;
use fnbroker_core::AckHandle;
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
        guard: None,
    })
}

fn trigger(f: Arc<FunctionRuntime>, retries: u32, dead: Option<Target>) -> Arc<TriggerRuntime> {
    Arc::new(runtime(
        f,
        &format!("{{ retries: {retries}, backoff: constant, delay: 1s, max_delay: 10s }}"),
        dead,
    ))
}

/// The trigger `t` of `f` with the `delivery` written, dead-lettering to `dead`; the tests
/// set what else they need (a reply, batches, a retry topic) on it.
fn runtime(f: Arc<FunctionRuntime>, delivery: &str, dead: Option<Target>) -> TriggerRuntime {
    let delivery: Delivery = serde_saphyr::from_str(delivery).expect("delivery");
    TriggerRuntime {
        name: "t".into(),
        filter: None,
        event_type: None,
        function: f,
        policy: RetryPolicy::from_config(&delivery),
        timeout: Duration::from_secs(1),
        dead_letter: dead,
        reply: None,
        stats: TriggerStats::detached(),
        telemetry: None,
        batch: BatchConfig::from_config(&delivery).map(Batcher::new),
        retry: None,
        redelivery: fnbroker_core::Redelivery::Later,
        ordered: delivery.ordered,
        dedup: None,
    }
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
            size: 0,
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
        async fn publish(&self, _: &str, _: &Event) -> Result<(), fnbroker_core::ConnectorError> {
            Err(fnbroker_core::ConnectorError::Io {
                connector: "k".into(),
                message: "down".into(),
                source: None,
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
        triggers: Arc::new(super::TriggerSet::new(vec![trigger(f, 0, None)])),
        max_in_flight,
        ordered,
        shutdown_timeout: Duration::from_secs(30),
        retire: Arc::default(),
        drops: Default::default(),
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

/// A function down for 5 s and for 60 s, default delivery settings
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
        // The default delivery settings.
        let t = Arc::new(runtime(f, "{}", None));
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
            fnbroker_core::ConnectorError::Permanent {
                connector,
                message,
                source: None,
            }
        } else {
            fnbroker_core::ConnectorError::Io {
                connector,
                message,
                source: None,
            }
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
    let mut t = runtime(
        function(Counting(calls)),
        "{ retries: 3, backoff: constant, delay: 1s, max_delay: 10s }",
        None,
    );
    t.reply = Some(Target::Sink {
        sink,
        topic: "replies".into(),
    });
    Arc::new(t)
}

/// A reply that cannot be published (no queue behind the routing
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
    assert_eq!(
        t.stats.dead_letter_failed.get() + t.stats.reply_failed.get(),
        1
    );
}

/// Ordered: a reply that cannot be published is not handed back (the broker would send the
/// message again after later ones of its key): the message and its key are held, the reply is
/// published again after each pause of `max_delay`, and the function is called once.
#[tokio::test(start_paused = true)]
async fn ordered_an_unpublishable_reply_is_published_again_in_place() {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::new(FailingSink {
        failures: 3,
        permanent: true,
        tries: AtomicUsize::new(0),
    });
    let t = replying_trigger(Arc::clone(&sink), Arc::clone(&calls));
    let mut t = Arc::into_inner(t).expect("one owner");
    t.ordered = true;
    let t = Arc::new(t);
    let (msg, mut rx) = incoming("a", 0);
    let started = tokio::time::Instant::now();
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
    assert_eq!(sink.tries.load(Ordering::SeqCst), 4);
    assert_eq!(started.elapsed(), Duration::from_secs(30), "three pauses");
    assert_eq!(t.stats.handed_back.get(), 0);

    // Stopping while held releases the message (it is redelivered at the next start).
    let sink = Arc::new(FailingSink {
        failures: usize::MAX,
        permanent: true,
        tries: AtomicUsize::new(0),
    });
    let mut t = Arc::into_inner(replying_trigger(sink, Arc::default())).expect("one owner");
    t.ordered = true;
    let (msg, mut rx) = incoming("b", 0);
    let stop = CancellationToken::new();
    let stopping = stop.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(25)).await;
        stopping.cancel();
    });
    process_test(msg, Arc::from(vec![Arc::new(t)]), stop).await;
    assert!(matches!(rx.recv().await, Some(Settlement::Released)));
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

/// What a batch answer is, by the call's number (0-based) and the batch's ids.
type Answer = dyn Fn(usize, &[String]) -> Result<Vec<String>, InvokeError> + Send + Sync;

/// A function that takes batches: it records each batch's ids and the calls of single events,
/// counts batches at once, and answers with the item failures `answer` gives.
struct Batches {
    batches: Mutex<Vec<Vec<String>>>,
    singles: Mutex<Vec<String>>,
    single_fails: bool,
    current: AtomicUsize,
    peak: AtomicUsize,
    answer: Box<Answer>,
}

struct BatchesRef(Arc<Batches>);

#[async_trait]
impl Invoker for BatchesRef {
    async fn invoke(&self, e: &Event, _: Duration) -> Result<Success, InvokeError> {
        self.0
            .singles
            .lock()
            .expect("lock")
            .push(e.id().to_string());
        if self.0.single_fails {
            return Err(InvokeError::Status {
                status: 500,
                retry_after: None,
                body: String::new(),
            });
        }
        Ok(Success {
            status: 200,
            reply: None,
        })
    }

    async fn invoke_batch(&self, events: &[Event], _: Duration) -> Result<Success, InvokeError> {
        let b = &self.0;
        let ids: Vec<String> = events.iter().map(|e| e.id().to_string()).collect();
        let n = {
            let mut batches = b.batches.lock().expect("lock");
            batches.push(ids.clone());
            batches.len() - 1
        };
        let now = b.current.fetch_add(1, Ordering::SeqCst) + 1;
        b.peak.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(50)).await;
        b.current.fetch_sub(1, Ordering::SeqCst);
        let failed = (b.answer)(n, &ids)?;
        let body = serde_json::json!({
            "batchItemFailures": failed.iter().map(|id| serde_json::json!({ "itemIdentifier": id })).collect::<Vec<_>>()
        });
        Ok(Success {
            status: 200,
            reply: Some(Reply::Raw {
                content_type: Some("application/json".into()),
                body: bytes::Bytes::from(body.to_string()),
            }),
        })
    }
}

/// How many events each batch `b` received held, in order.
fn batch_sizes(b: &Batches) -> Vec<usize> {
    b.batches
        .lock()
        .expect("lock")
        .iter()
        .map(Vec::len)
        .collect()
}

fn batches(single_fails: bool, answer: Box<Answer>) -> Arc<Batches> {
    Arc::new(Batches {
        batches: Mutex::default(),
        singles: Mutex::default(),
        single_fails,
        current: AtomicUsize::new(0),
        peak: AtomicUsize::new(0),
        answer,
    })
}

/// A trigger that batches up to `max_events` (1 KiB, 100 ms), `retries` retries 1 s apart.
fn batch_trigger(
    f: Arc<FunctionRuntime>,
    retries: u32,
    ordered: bool,
    max_events: usize,
    dead: Option<Target>,
) -> Arc<TriggerRuntime> {
    Arc::new(runtime(
        f,
        &format!(
            "{{ retries: {retries}, backoff: constant, delay: 1s, max_delay: 10s, ordered: {ordered}, batch: {{ max_events: {max_events}, max_bytes: 1KiB, max_wait: 100ms }} }}"
        ),
        dead,
    ))
}

/// Runs `n` messages (ids `0`..`n`, one key) through a pump of `t`: their settlements in order.
async fn run_batches(t: Arc<TriggerRuntime>, n: usize, ordered: bool) -> Vec<Settlement> {
    run_batches_of(t, n, ordered, None).await
}

/// [`run_batches`], each event with `size` bytes of data when given.
async fn run_batches_of(
    t: Arc<TriggerRuntime>,
    n: usize,
    ordered: bool,
    size: Option<usize>,
) -> Vec<Settlement> {
    let mut msgs = VecDeque::new();
    let mut rxs = Vec::new();
    for i in 0..n {
        let (mut m, rx) = incoming(&i.to_string(), 7);
        if let Some(size) = size {
            m.event
                .set_data_unchecked(event::Data::Binary(vec![b'x'; size]));
        }
        msgs.push_back(m);
        rxs.push(rx);
    }
    let shutdown = CancellationToken::new();
    let cfg = PumpConfig {
        name: "s".into(),
        triggers: Arc::new(super::TriggerSet::new(vec![t])),
        max_in_flight: 64,
        ordered,
        shutdown_timeout: Duration::from_secs(30),
        retire: Arc::default(),
        drops: Default::default(),
    };
    let task = tokio::spawn(pump(Box::new(ListSource(msgs)), cfg, shutdown.clone()));
    let mut settled = Vec::new();
    for rx in &mut rxs {
        settled.push(rx.recv().await.expect("settled"));
    }
    shutdown.cancel();
    task.await.expect("join");
    settled
}

#[tokio::test(start_paused = true)]
async fn batches_close_at_max_events_and_after_max_wait() {
    let b = batches(false, Box::new(|_, _| Ok(Vec::new())));
    let t = batch_trigger(function(BatchesRef(Arc::clone(&b))), 3, false, 10, None);
    let settled = run_batches(Arc::clone(&t), 25, false).await;
    assert!(
        settled
            .iter()
            .all(|s| matches!(s, Settlement::Delivered { .. }))
    );
    let sizes = batch_sizes(&b);
    assert_eq!(sizes, [10, 10, 5], "the last one went after max_wait");
    assert!(b.singles.lock().expect("lock").is_empty());
    assert_eq!(t.stats.delivered.get(), 25);
}

/// A batch cannot hold more events than the trigger may have in flight: it closes at that many
/// instead of waiting out `max_wait` for events the pump will not take.
#[tokio::test(start_paused = true)]
async fn a_batch_closes_at_max_in_flight() {
    let b = batches(false, Box::new(|_, _| Ok(Vec::new())));
    let t = Arc::new(runtime(
        function(BatchesRef(Arc::clone(&b))),
        "{ max_in_flight: 4, batch: { max_events: 100, max_wait: 10s } }",
        None,
    ));
    let started = tokio::time::Instant::now();
    let settled = run_batches(t, 8, false).await;
    assert!(
        settled
            .iter()
            .all(|s| matches!(s, Settlement::Delivered { .. }))
    );
    let sizes = batch_sizes(&b);
    assert_eq!(sizes, [4, 4]);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn max_bytes_closes_a_batch_before_it_is_full() {
    let b = batches(false, Box::new(|_, _| Ok(Vec::new())));
    let t = batch_trigger(function(BatchesRef(Arc::clone(&b))), 3, false, 10, None);
    run_batches_of(t, 4, false, Some(400)).await;
    assert_eq!(batch_sizes(&b), [2, 2], "400 B events, 1 KiB batches");
}

/// Unordered: the events a batch answer names are tried again alone, with what is left of the
/// policy, then dead-lettered; the rest are delivered at once.
#[tokio::test(start_paused = true)]
async fn named_failures_are_retried_alone_then_dead_lettered() {
    let b = batches(
        true,
        Box::new(|_, ids| Ok(ids.iter().filter(|id| *id == "3").cloned().collect())),
    );
    let letters = Arc::new(Mutex::new(Vec::new()));
    let dead = Target::Sink {
        sink: Arc::new(Capture(Arc::clone(&letters))),
        topic: "dlq".into(),
    };
    let t = batch_trigger(
        function(BatchesRef(Arc::clone(&b))),
        2,
        false,
        10,
        Some(dead),
    );
    let settled = run_batches(Arc::clone(&t), 5, false).await;
    for (i, s) in settled.iter().enumerate() {
        match i {
            3 => assert!(matches!(s, Settlement::Failed { .. }), "{s:?}"),
            _ => assert!(matches!(s, Settlement::Delivered { .. }), "{i}: {s:?}"),
        }
    }
    assert_eq!(b.batches.lock().expect("lock").len(), 1);
    assert_eq!(
        *b.singles.lock().expect("lock"),
        ["3", "3"],
        "the two retries the policy leaves, alone"
    );
    let letters = letters.lock().expect("lock");
    assert_eq!(letters.len(), 1);
    assert_eq!(
        event::attribute(&letters[0], "dlqattempts").as_deref(),
        Some("3")
    );
}

/// Any answer but 2xx fails the whole batch: it is tried again whole, then every event is
/// dead-lettered.
#[tokio::test(start_paused = true)]
async fn a_failed_batch_is_retried_whole_then_each_event_dead_lettered() {
    let b = batches(
        false,
        Box::new(|_, _| {
            Err(InvokeError::Status {
                status: 500,
                retry_after: None,
                body: String::new(),
            })
        }),
    );
    let letters = Arc::new(Mutex::new(Vec::new()));
    let dead = Target::Sink {
        sink: Arc::new(Capture(Arc::clone(&letters))),
        topic: "dlq".into(),
    };
    let t = batch_trigger(
        function(BatchesRef(Arc::clone(&b))),
        1,
        false,
        10,
        Some(dead),
    );
    let settled = run_batches(t, 3, false).await;
    assert!(
        settled
            .iter()
            .all(|s| matches!(s, Settlement::Failed { .. }))
    );
    assert_eq!(
        *b.batches.lock().expect("lock"),
        vec![vec!["0", "1", "2"]; 2],
        "the whole batch, twice"
    );
    assert!(b.singles.lock().expect("lock").is_empty());
    assert_eq!(letters.lock().expect("lock").len(), 3);
}

/// Ordered, one key: one batch at a time, several events of the key in each; a named failure
/// sends it and every event after it again (no event overtakes an earlier one), and the next
/// batch waits for that.
#[tokio::test(start_paused = true)]
async fn ordered_batches_keep_the_order_inside_and_across_batches() {
    let b = batches(
        false,
        Box::new(|call, ids| {
            Ok(if call == 0 {
                ids.iter().filter(|id| *id == "2").cloned().collect()
            } else {
                Vec::new()
            })
        }),
    );
    let t = batch_trigger(function(BatchesRef(Arc::clone(&b))), 3, true, 4, None);
    let settled = run_batches(t, 10, true).await;
    assert!(
        settled
            .iter()
            .all(|s| matches!(s, Settlement::Delivered { .. }))
    );
    let seen = b.batches.lock().expect("lock").clone();
    assert_eq!(
        seen,
        [
            vec!["0", "1", "2", "3"],
            vec!["2", "3"],
            vec!["4", "5", "6", "7"],
            vec!["8", "9"],
        ]
    );
    assert_eq!(b.peak.load(Ordering::SeqCst), 1, "one batch at a time");
}

/// An invoker that always fails with 500 and records the events it was called with.
struct Refusing(Arc<Mutex<Vec<(tokio::time::Instant, Event)>>>);

#[async_trait]
impl Invoker for Refusing {
    async fn invoke(&self, e: &Event, _: Duration) -> Result<Success, InvokeError> {
        self.0
            .lock()
            .expect("lock")
            .push((tokio::time::Instant::now(), e.clone()));
        Err(InvokeError::Status {
            status: 500,
            retry_after: None,
            body: String::new(),
        })
    }
}

/// A trigger (`retries: 2`, 1 s apart) whose retries go to a topic (captured), as the trigger
/// itself or as the consumer of that topic.
fn retrying_trigger(
    f: Arc<FunctionRuntime>,
    consumer: bool,
    parked: &Arc<Mutex<Vec<Event>>>,
    letters: &Arc<Mutex<Vec<Event>>>,
) -> Arc<TriggerRuntime> {
    let dead = Target::Sink {
        sink: Arc::new(Capture(Arc::clone(letters))),
        topic: "dlq".into(),
    };
    let mut t = runtime(
        f,
        "{ retries: 2, backoff: constant, delay: 1s, max_delay: 10s }",
        Some(dead),
    );
    t.retry = Some(RetryTopicRuntime {
        sink: Arc::new(Capture(Arc::clone(parked))),
        topic: "retry".into(),
        consumer,
    });
    Arc::new(t)
}

/// The message of an event (from the retry topic).
fn incoming_event(event: Event) -> (Incoming, mpsc::UnboundedReceiver<Settlement>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let ack = AckHandle::new(move |s| {
        let _ = tx.send(s);
    });
    (
        Incoming {
            event,
            origin: Origin::CloudEvent,
            key: 0,
            redeliveries: 0,
            size: 0,
            ack,
        },
        rx,
    )
}

/// `retry_topic`: a failed attempt moves the event to the retry topic (its attempts, when the
/// next is due, whose it is) and acknowledges the source at once; consumed back, it waits
/// until due, is tried again without those attributes, moved again, and after the last
/// attempt the policy allows it is dead-lettered. Another trigger's retries are passed over.
#[tokio::test(start_paused = true)]
async fn a_retry_topic_holds_the_retry_state_between_attempts() {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let f = function(Refusing(Arc::clone(&calls)));
    let (parked, letters) = (Arc::default(), Arc::default());
    let source = retrying_trigger(Arc::clone(&f), false, &parked, &letters);
    let consumer = retrying_trigger(f, true, &parked, &letters);
    let start = tokio::time::Instant::now();

    let (msg, mut rx) = incoming("a", 0);
    process_test(msg, Arc::from(vec![source]), CancellationToken::new()).await;
    assert!(matches!(
        rx.recv().await,
        Some(Settlement::Delivered { .. })
    ));
    let copy = parked.lock().expect("lock").pop().expect("moved");
    assert_eq!(
        event::attribute(&copy, "retryattempts").as_deref(),
        Some("1")
    );
    assert_eq!(
        event::attribute(&copy, "retrytrigger").as_deref(),
        Some("t")
    );
    assert!(event::attribute(&copy, "retryat").is_some());
    assert_eq!(calls.lock().expect("lock").len(), 1);

    // Another trigger's: passed over, not called.
    let mut foreign = copy.clone();
    foreign.set_extension("retrytrigger", "other");
    let (msg, mut rx) = incoming_event(foreign);
    process_test(
        msg,
        Arc::from(vec![Arc::clone(&consumer)]),
        CancellationToken::new(),
    )
    .await;
    assert!(matches!(
        rx.recv().await,
        Some(Settlement::Delivered { .. })
    ));
    assert_eq!(calls.lock().expect("lock").len(), 1);

    // Back from the retry topic: due after the delay, called without the retry attributes,
    // moved again with two attempts.
    let (msg, mut rx) = incoming_event(copy);
    process_test(
        msg,
        Arc::from(vec![Arc::clone(&consumer)]),
        CancellationToken::new(),
    )
    .await;
    assert!(matches!(
        rx.recv().await,
        Some(Settlement::Delivered { .. })
    ));
    {
        let calls = calls.lock().expect("lock");
        let (at, called) = &calls[1];
        assert!(
            *at - start >= Duration::from_millis(900),
            "{:?}",
            *at - start
        );
        assert!(event::attribute(called, "retryattempts").is_none());
        assert!(event::attribute(called, "retryat").is_none());
    }
    let copy = parked.lock().expect("lock").pop().expect("moved again");
    assert_eq!(
        event::attribute(&copy, "retryattempts").as_deref(),
        Some("2")
    );

    // The third attempt is the last one `retries: 2` allows: dead-lettered.
    let (msg, mut rx) = incoming_event(copy);
    process_test(msg, Arc::from(vec![consumer]), CancellationToken::new()).await;
    assert!(matches!(rx.recv().await, Some(Settlement::Failed { .. })));
    assert_eq!(calls.lock().expect("lock").len(), 3);
    assert!(parked.lock().expect("lock").is_empty());
    let letters = letters.lock().expect("lock");
    assert_eq!(
        event::attribute(&letters[0], "dlqattempts").as_deref(),
        Some("3")
    );
    assert!(event::attribute(&letters[0], "retrytrigger").is_none());
}

/// Takes `took` for every call, cut off at the attempt's timeout as the real invokers do;
/// counts the calls.
struct Sleepy {
    /// Milliseconds.
    took: std::sync::atomic::AtomicU64,
    calls: AtomicUsize,
}

impl Sleepy {
    fn new(took: Duration) -> Arc<Self> {
        Arc::new(Self {
            took: std::sync::atomic::AtomicU64::new(took.as_millis() as u64),
            calls: AtomicUsize::new(0),
        })
    }
}

struct SleepyRef(Arc<Sleepy>);

#[async_trait]
impl Invoker for SleepyRef {
    async fn invoke(&self, _: &Event, timeout: Duration) -> Result<Success, InvokeError> {
        self.0.calls.fetch_add(1, Ordering::SeqCst);
        let took = Duration::from_millis(self.0.took.load(Ordering::SeqCst));
        match tokio::time::timeout(timeout, tokio::time::sleep(took)).await {
            Ok(()) => Ok(Success {
                status: 200,
                reply: None,
            }),
            Err(_) => Err(InvokeError::Timeout(timeout)),
        }
    }
}

/// One event whose call takes 3 s against a 500 ms timeout, with nothing else flowing: its
/// timeouts are its own failures, not an outage. It spends its three attempts and reaches its
/// dead letter; the function is never marked down.
#[tokio::test(start_paused = true)]
async fn one_slow_event_spends_its_attempts_and_is_dead_lettered() {
    let slow = Sleepy::new(Duration::from_secs(3));
    let f = function(SleepyRef(Arc::clone(&slow)));
    let letters = Arc::new(Mutex::new(Vec::new()));
    let dead = Target::Sink {
        sink: Arc::new(Capture(Arc::clone(&letters))),
        topic: "dlq".into(),
    };
    let mut t = runtime(
        Arc::clone(&f),
        "{ retries: 2, backoff: constant, delay: 100ms, max_delay: 1s }",
        Some(dead),
    );
    t.timeout = Duration::from_millis(500);
    let (msg, mut rx) = incoming("slow", 0);
    let run = process_test(msg, Arc::from(vec![Arc::new(t)]), CancellationToken::new());
    // Held as an outage, it would be called again and again for as long as it is let run.
    let finished = tokio::time::timeout(Duration::from_secs(60), run).await;
    assert!(finished.is_ok(), "still held after 60 s");
    assert!(matches!(
        rx.recv().await,
        Some(Settlement::Failed {
            timed_out: true,
            ..
        })
    ));
    assert_eq!(slow.calls.load(Ordering::SeqCst), 3);
    assert!(!f.health.is_down());
    let letters = letters.lock().expect("lock");
    assert_eq!(letters.len(), 1);
    assert_eq!(
        event::attribute(&letters[0], "dlqattempts").as_deref(),
        Some("3")
    );
}

/// Several events timing out at once are an outage all the same: they are held, not
/// dead-lettered, and delivered once the function answers in time again.
#[tokio::test(start_paused = true)]
async fn many_events_timing_out_are_held_as_an_outage() {
    let slow = Sleepy::new(Duration::from_secs(3));
    let f = function(SleepyRef(Arc::clone(&slow)));
    let mut t = runtime(
        Arc::clone(&f),
        "{ retries: 1, backoff: constant, delay: 100ms, max_delay: 1s }",
        None,
    );
    t.timeout = Duration::from_millis(500);
    let triggers: Arc<[Arc<TriggerRuntime>]> = Arc::from(vec![Arc::new(t)]);
    let mut rxs = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..5 {
        let (msg, rx) = incoming(&format!("e{i}"), i);
        rxs.push(rx);
        tasks.push(tokio::spawn(process_test(
            msg,
            Arc::clone(&triggers),
            CancellationToken::new(),
        )));
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(f.health.is_down());
    // The function is fast again: the held events are delivered, none dropped.
    slow.took.store(10, Ordering::SeqCst);
    for task in tasks {
        task.await.expect("join");
    }
    for rx in &mut rxs {
        let settled = rx.recv().await;
        assert!(
            matches!(settled, Some(Settlement::Delivered { .. })),
            "{settled:?}"
        );
    }
}

/// A delivery dropped in the middle of its call (the drain at a stop or a reload ran out of
/// time) gives its unit of the in-flight gauges back: they do not stay up for good.
#[tokio::test(start_paused = true)]
async fn in_flight_gauges_come_down_when_a_drain_times_out() {
    let slow = Sleepy::new(Duration::from_secs(3600));
    let f = function(SleepyRef(Arc::clone(&slow)));
    let mut t = runtime(Arc::clone(&f), "{ retries: 0 }", None);
    t.timeout = Duration::from_secs(3600);
    let t = Arc::new(t);
    let (msg, mut rx) = incoming("stuck", 0);
    let shutdown = CancellationToken::new();
    let cfg = PumpConfig {
        name: "s".into(),
        triggers: Arc::new(super::TriggerSet::new(vec![Arc::clone(&t)])),
        max_in_flight: 4,
        ordered: false,
        shutdown_timeout: Duration::from_secs(1),
        retire: Arc::default(),
        drops: Default::default(),
    };
    let task = tokio::spawn(pump(
        Box::new(ListSource(VecDeque::from([msg]))),
        cfg,
        shutdown.clone(),
    ));
    while slow.calls.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(t.stats.in_flight.get(), 1);
    assert_eq!(f.stats.in_flight.get(), 1);
    shutdown.cancel();
    task.await.expect("join");
    assert!(matches!(rx.recv().await, Some(Settlement::Released)));
    assert_eq!(t.stats.in_flight.get(), 0, "trigger in-flight gauge");
    assert_eq!(f.stats.in_flight.get(), 0, "function in-flight gauge");
}

/// The triggers of one message are merged by the same rule as the parts of a split handle:
/// released over retried (the longest delay, so every trigger waits long enough) over failed
/// (the first reason) over delivered (the first reply).
#[test]
fn the_outcomes_of_a_message_merge_by_the_one_rule() {
    let failed = |r: &str| Outcome::Failed {
        reason: r.into(),
        timed_out: false,
    };
    let retry = combine([
        Outcome::Retry(Duration::from_secs(1)),
        failed("a"),
        Outcome::Retry(Duration::from_secs(5)),
        Outcome::Retry(Duration::from_secs(2)),
    ]);
    assert!(matches!(retry, Settlement::Retry { delay } if delay == Duration::from_secs(5)));
    let released = combine([Outcome::Retry(Duration::from_secs(1)), Outcome::Released]);
    assert!(matches!(released, Settlement::Released));
    let first = combine([Outcome::Delivered(None), failed("first"), failed("second")]);
    assert!(matches!(first, Settlement::Failed { ref reason, .. } if reason == "first"));
    let reply = |id: &str| {
        let (m, _) = incoming(id, 0);
        Outcome::Delivered(Some(Box::new(m.event)))
    };
    let delivered = combine([Outcome::Delivered(None), reply("r1"), reply("r2")]);
    assert!(
        matches!(delivered, Settlement::Delivered { reply: Some(ref e) } if e.id() == "r1"),
        "{delivered:?}"
    );
    assert!(matches!(
        combine(Vec::<Outcome>::new()),
        Settlement::Delivered { reply: None }
    ));
}

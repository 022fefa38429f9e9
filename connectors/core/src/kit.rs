//! The connector kit: the parts every broker connector shares, so that each connector crate is
//! left with its protocol and nothing else.
//!
//! # Acknowledgements: [`Acker`]
//!
//! A connector gives every message an [`AckHandle`] built by its [`Acker`]. Settling the handle
//! (or dropping it) sends the settlement to one task per source, which applies it to the broker
//! with the connector's [`Settler`] (`basic.ack`, a JetStream `+ACK`, a PUBACK), many at once so
//! that one round trip does not hold the next. That task is owned: [`AckerTask::finish`] waits
//! until every handle that was given out was settled or dropped and every acknowledgement it
//! caused was sent. A source calls it in [`Source::close`](crate::Source::close) *before* it
//! closes its connection, so a clean stop acknowledges everything that finished and a restart
//! redelivers nothing that was delivered.
//!
//! # Leases
//!
//! Brokers that redeliver what is not acknowledged within a deadline (JetStream's `ack_wait`,
//! SQS-like visibility timeouts) would hand a message to another consumer while fnbroker still
//! holds it (its deliveries retry in memory, or wait behind an ordered key). With
//! [`Acker::with_lease`], the task remembers every message handed out and not yet settled and
//! calls [`Settler::extend`] for each of them on an interval, so the broker never redelivers a
//! message fnbroker still works on.
//!
//! # Reconnecting: [`Backoff`]
//!
//! One jittered exponential schedule for every connector's reconnect loop.
//!
//! # The channel-backed source: [`ChannelSource`]
//!
//! A connector's consume loop runs on a task of its own and sends [`Incoming`] messages into a
//! bounded channel; [`ChannelSource`] is the [`Source`](crate::Source) the engine reads. Its
//! `next` is cancel-safe (a message is either returned or still in the channel), and its `close`
//! stops the loop, releases what it fetched but never handed out, and waits for it; the loop
//! finishes its acknowledgements (with [`AckerTask::finish`]) before it returns.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::contract::{AckHandle, Incoming, Settlement};

/// The wait before reconnecting to a broker: exponential from `min` to `max`, with full jitter
/// (drawn from zero up to the current ceiling), so that replicas that lost a broker together do
/// not reconnect together. Every connector's reconnect loop uses it.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    /// The usual reconnect schedule: 500 ms doubling up to 30 s.
    pub fn reconnect() -> Self {
        Self::new(Duration::from_millis(500), Duration::from_secs(30))
    }

    /// A schedule from `min` up to `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            failures: 0,
        }
    }

    /// The wait after one more failure.
    pub fn next_delay(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        full_jitter(
            exponential_ceiling(self.min, self.max, self.failures),
            &mut rand::rng(),
        )
    }

    /// Back to the start, after a success.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// Sleeps `delay` unless `stop` fires first; true when it did (the caller stops). The wait of
/// every reconnect loop.
pub async fn sleep_unless_stopped(stop: &CancellationToken, delay: Duration) -> bool {
    tokio::select! {
        () = stop.cancelled() => true,
        () = tokio::time::sleep(delay) => false,
    }
}

/// The longest wait after `failure` failures (1 for the first): `min * 2^(failure - 1)`, capped
/// at `max`. The one exponential schedule of fnbroker: reconnects ([`Backoff`]) and the engine's
/// retries between delivery attempts both use it.
pub fn exponential_ceiling(min: Duration, max: Duration, failure: u32) -> Duration {
    let factor = 1u32.checked_shl(failure.max(1) - 1).unwrap_or(u32::MAX);
    min.saturating_mul(factor).min(max)
}

/// A wait drawn uniformly between zero and `ceiling` ("full jitter"): clients that failed together
/// spread out instead of coming back together.
pub fn full_jitter(ceiling: Duration, rng: &mut impl rand::Rng) -> Duration {
    rng.random_range(Duration::ZERO..=ceiling)
}

/// The ordering key of a message (see [`Incoming::key`](crate::Incoming::key)): a hash of
/// what orders it in its broker (an MQTT topic, a NATS subject, an AMQP routing key, a Kafka
/// topic and partition).
pub fn ordering_key(parts: impl std::hash::Hash) -> u64 {
    use std::hash::Hasher;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    parts.hash(&mut h);
    h.finish()
}

/// One unit of a shared count (subscriptions open, consumers reading), held while the guard
/// lives: added when it is made, taken back when it is dropped. A task aborted or a source
/// dropped without being closed (a drain that ran out of time) still takes its unit back, so a
/// readiness that compares such counts never stays wrong for good.
#[must_use = "the unit is taken back when the guard is dropped"]
#[derive(Debug)]
pub struct Counted(Arc<std::sync::atomic::AtomicUsize>);

impl Counted {
    /// Adds one to `count` until the guard is dropped.
    pub fn new(count: &Arc<std::sync::atomic::AtomicUsize>) -> Self {
        count.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Self(Arc::clone(count))
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// How many messages a source's channel holds at most, between its consume loop and the engine,
/// whatever the subscription's `max_in_flight`: a bound on memory per subscription.
pub const MAX_SOURCE_BUFFER: usize = 1024;

/// The size of a source's channel for a subscription with `max_in_flight`.
pub fn source_buffer(max_in_flight: usize) -> usize {
    max_in_flight.clamp(1, MAX_SOURCE_BUFFER)
}

/// A name for this replica's consumer on a broker, `fnbroker-<connector>-<hostname>`
/// (`HOSTNAME`, a Kubernetes pod's name, else the kernel's host name): stable across restarts,
/// so the broker keeps what it holds for it (an MQTT session, a Redis consumer's pending
/// entries), and different on every replica, so replicas sharing one configuration do not
/// knock each other off the broker or take each other's messages. Characters outside
/// `[A-Za-z0-9_-]` become `-`.
pub fn replica_name(connector: &str) -> String {
    replica_name_on(connector, &hostname())
}

fn replica_name_on(connector: &str, hostname: &str) -> String {
    format!("fnbroker-{connector}-{hostname}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// This replica's host name: `HOSTNAME` (a Kubernetes pod's name), else the kernel's.
fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// Applies settlements to one broker. Implemented by each connector for its acknowledgement
/// token (a lapin `Acker`, a JetStream message, an MQTT packet id).
#[async_trait]
pub trait Settler: Send + Sync + 'static {
    /// What the broker needs to acknowledge one message.
    type Token: Send + Sync + 'static;

    /// Tells the broker how the message was settled. Errors are the settler's to log: the
    /// broker redelivers what it did not hear about.
    async fn settle(&self, token: &Self::Token, settlement: Settlement);

    /// Tells the broker that the message is still being worked on (JetStream `+WPI`). Called
    /// only for an [`Acker::with_lease`].
    async fn extend(&self, _token: &Self::Token) {}
}

enum TokenRef<T> {
    /// The token travels with the handle.
    Owned(T),
    /// The token is held by the acker task (leases), under this id.
    Held(u64),
}

enum Command<T> {
    Hold(u64, T),
    Settle(TokenRef<T>, Settlement),
}

/// Builds the [`AckHandle`]s of one source; cheap to clone. See the module documentation.
pub struct Acker<T> {
    tx: mpsc::UnboundedSender<Command<T>>,
    leased: bool,
    ids: Arc<AtomicU64>,
}

impl<T> Clone for Acker<T> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            leased: self.leased,
            ids: Arc::clone(&self.ids),
        }
    }
}

/// The task that applies an [`Acker`]'s settlements; see [`AckerTask::finish`].
#[must_use = "finish the acker task before closing the connection, or acknowledgements are lost"]
pub struct AckerTask {
    task: JoinHandle<()>,
}

impl<T: Send + Sync + 'static> Acker<T> {
    /// An acker applying settlements with `settler`.
    pub fn new<S: Settler<Token = T>>(settler: S) -> (Self, AckerTask) {
        Self::start(settler, None)
    }

    /// An acker that also calls [`Settler::extend`] every `every` for each message it handed out
    /// and that is not settled yet.
    pub fn with_lease<S: Settler<Token = T>>(settler: S, every: Duration) -> (Self, AckerTask) {
        Self::start(settler, Some(every))
    }

    fn start<S: Settler<Token = T>>(settler: S, lease: Option<Duration>) -> (Self, AckerTask) {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(Arc::new(settler), rx, lease));
        let acker = Self {
            tx,
            leased: lease.is_some(),
            ids: Arc::default(),
        };
        (acker, AckerTask { task })
    }

    /// The acknowledgement handle of one message.
    pub fn handle(&self, token: T) -> AckHandle {
        let tx = self.tx.clone();
        let token = if self.leased {
            let id = self.ids.fetch_add(1, Ordering::Relaxed);
            // The task is gone only after every sender, this one included, was dropped.
            let _ = self.tx.send(Command::Hold(id, token));
            TokenRef::Held(id)
        } else {
            TokenRef::Owned(token)
        };
        AckHandle::new(move |settlement| {
            let _ = tx.send(Command::Settle(token, settlement));
        })
    }
}

impl AckerTask {
    /// Waits until every handle of the acker was settled or dropped, the acker itself (and its
    /// clones) dropped, and every acknowledgement sent. Call it after the consume loop let go
    /// of its [`Acker`], and before closing the connection.
    pub async fn finish(self) {
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "the acknowledgement task failed");
        }
    }
}

type Pending = Pin<Box<dyn Future<Output = ()> + Send>>;

async fn run<S: Settler>(
    settler: Arc<S>,
    mut rx: mpsc::UnboundedReceiver<Command<S::Token>>,
    lease: Option<Duration>,
) {
    let mut held: HashMap<u64, Arc<S::Token>> = HashMap::new();
    let mut pending: FuturesUnordered<Pending> = FuturesUnordered::new();
    let mut tick = tokio::time::interval(lease.unwrap_or(Duration::from_secs(3600)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.reset();
    loop {
        tokio::select! {
            // Cancel safe: `recv` loses nothing when another branch wins.
            command = rx.recv() => match command {
                None => break,
                Some(Command::Hold(id, token)) => {
                    held.insert(id, Arc::new(token));
                }
                Some(Command::Settle(token, settlement)) => {
                    let token = match token {
                        TokenRef::Owned(t) => Some(Arc::new(t)),
                        TokenRef::Held(id) => held.remove(&id),
                    };
                    if let Some(token) = token {
                        let settler = Arc::clone(&settler);
                        pending.push(Box::pin(async move { settler.settle(&token, settlement).await }));
                    }
                }
            },
            Some(()) = pending.next(), if !pending.is_empty() => {}
            _ = tick.tick(), if lease.is_some() && !held.is_empty() => {
                for token in held.values() {
                    let settler = Arc::clone(&settler);
                    let token = Arc::clone(token);
                    pending.push(Box::pin(async move { settler.extend(&token).await }));
                }
            }
        }
    }
    while pending.next().await.is_some() {}
}

/// The [`Source`](crate::Source) of a connector whose consume loop runs on a task of its own and
/// sends messages into a bounded channel (see the module documentation).
pub struct ChannelSource {
    rx: mpsc::Receiver<Incoming>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
    redelivery: crate::Redelivery,
    stopping: Option<CancellationToken>,
}

impl ChannelSource {
    /// Spawns `consume` with the sending side of a channel of `buffer` messages and a token that
    /// asks it to stop. The loop must return once the token fires or the channel closes, after
    /// dropping its [`Acker`] and awaiting [`AckerTask::finish`], and only then close its
    /// connection.
    pub fn spawn<F, Fut>(buffer: usize, consume: F) -> Self
    where
        F: FnOnce(mpsc::Sender<Incoming>, CancellationToken) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(buffer.max(1));
        let stop = CancellationToken::new();
        let task = tokio::spawn(consume(tx, stop.clone()));
        Self {
            rx,
            stop,
            task: Some(task),
            redelivery: crate::Redelivery::Later,
            stopping: None,
        }
    }

    /// Cancels `token` when the engine starts stopping (see
    /// [`Source::stopping`](crate::Source::stopping)).
    pub fn notify_stopping(mut self, token: CancellationToken) -> Self {
        self.stopping = Some(token);
        self
    }

    /// Says how the source's broker redelivers (see
    /// [`Source::redelivery`](crate::Source::redelivery)); [`crate::Redelivery::Later`] unless
    /// said.
    pub fn with_redelivery(mut self, redelivery: crate::Redelivery) -> Self {
        self.redelivery = redelivery;
        self
    }
}

#[async_trait]
impl crate::Source for ChannelSource {
    /// Cancel safe: a message is either returned or still in the channel.
    async fn next(&mut self) -> Option<Incoming> {
        self.rx.recv().await
    }

    async fn close(mut self: Box<Self>) {
        // The loop stops fetching first; only then is what it fetched and never handed out
        // released (its handles drop). Released earlier, a message would be redelivered into
        // the fetch still running here (a JetStream pull) and sit there unseen, pending, while
        // the next consumer gets it too. Meanwhile the loop finishes its acknowledgements,
        // which wait for those handles, and closes its connection.
        self.stop.cancel();
        let Some(mut task) = self.task.take() else {
            return;
        };
        let finished = loop {
            tokio::select! {
                joined = &mut task => break joined,
                msg = self.rx.recv() => match msg {
                    Some(released) => drop(released),
                    None => break (&mut task).await,
                },
            }
        };
        self.rx.close();
        while self.rx.try_recv().is_ok() {}
        if let Err(e) = finished {
            tracing::error!(error = %e, "a consume task failed");
        }
    }

    fn redelivery(&self) -> crate::Redelivery {
        self.redelivery
    }

    fn stopping(&mut self) {
        if let Some(token) = &self.stopping {
            token.cancel();
        }
    }
}

/// The health of one connector's connection to its broker, and the one way connectors report
/// it: the first failure of a run of failures is a warning naming the connector, the address
/// (its password masked) and the root cause; while the failures go on, one summary warning per
/// [`Link::SUMMARY_EVERY`] (how many, the last cause) instead of a line per attempt; a recovery
/// is said once at info. The last cause is what `/readyz` and the status page show, and the
/// reconnections are counted for `fnbroker_connector_reconnects_total`.
#[derive(Debug)]
pub struct Link {
    connector: String,
    server: &'static str,
    address: String,
    state: std::sync::Mutex<LinkState>,
    reconnects: std::sync::atomic::AtomicU64,
}

#[derive(Debug, Default)]
struct LinkState {
    /// Connected at least once in this run.
    was_up: bool,
    /// Failing now: since when, how many failures, the last cause.
    failing: Option<(std::time::Instant, u64)>,
    last_error: Option<String>,
    /// When the last warning went out, and how many failures since.
    warned: Option<(std::time::Instant, u64)>,
}

impl Link {
    /// How often a run of failures is summed up in one warning.
    pub const SUMMARY_EVERY: Duration = Duration::from_secs(30);

    /// The link of `connector`, which connects to `server` (`the AMQP server`) at `address`
    /// (masked here before it is kept).
    pub fn new(connector: &str, server: &'static str, address: &str) -> Arc<Self> {
        let masked: Vec<String> = address
            .split(',')
            .map(|a| crate::redact::url(a.trim()).into_owned())
            .collect();
        Arc::new(Self {
            connector: connector.to_string(),
            server,
            address: masked.join(","),
            state: std::sync::Mutex::default(),
            reconnects: std::sync::atomic::AtomicU64::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LinkState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A connection attempt failed, or the connection was lost, because of `cause` (the whole
    /// error chain, root cause last). `hint` says what to check, if anything.
    pub fn failed(&self, cause: &str, hint: &str) {
        self.failed_at(cause, hint, std::time::Instant::now());
    }

    fn failed_at(&self, cause: &str, hint: &str, now: std::time::Instant) {
        let mut s = self.lock();
        let (since, count) = s.failing.get_or_insert((now, 0));
        *count += 1;
        let (since, count) = (*since, *count);
        s.last_error = Some(cause.to_string());
        match &mut s.warned {
            None => {
                s.warned = Some((now, 0));
                drop(s);
                tracing::warn!(connector = %self.connector, address = %self.address, cause, "cannot connect to {}; retrying{hint}", self.server);
            }
            Some((at, since_warning)) => {
                *since_warning += 1;
                if now.duration_since(*at) >= Self::SUMMARY_EVERY {
                    let n = *since_warning;
                    *at = now;
                    *since_warning = 0;
                    drop(s);
                    tracing::warn!(connector = %self.connector, address = %self.address, failures = n, failing_for = ?now.duration_since(since), total = count, last_cause = cause, "still cannot connect to {}; retrying{hint}", self.server);
                } else {
                    drop(s);
                    tracing::debug!(connector = %self.connector, address = %self.address, cause, "cannot connect; retrying");
                }
            }
        }
    }

    /// Connected (again).
    pub fn connected(&self) {
        let mut s = self.lock();
        let failing = s.failing.take();
        let again = std::mem::replace(&mut s.was_up, true) && failing.is_some();
        s.warned = None;
        s.last_error = None;
        drop(s);
        if again {
            self.reconnects
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        if let Some((since, failures)) = failing {
            tracing::info!(connector = %self.connector, address = %self.address, failures, after = ?since.elapsed(), "connected to {} again", self.server);
        }
    }

    /// The cause of the failures going on now, if any.
    pub fn last_error(&self) -> Option<String> {
        self.lock().last_error.clone()
    }

    /// The address, its password masked.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// How many times the connection came back after it was up and then failed.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[cfg(test)]
mod link_tests {
    use super::*;

    #[test]
    fn a_run_of_failures_is_said_once_then_summed_up_and_a_recovery_is_a_reconnect() {
        let link = Link::new("bus", "the NATS server", "nats://user:secret@10.0.0.1:4222");
        assert_eq!(link.address(), "nats://user:***@10.0.0.1:4222");
        link.connected();
        assert_eq!(link.reconnects(), 0, "the first connection is no reconnect");
        let t0 = std::time::Instant::now();
        link.failed_at("connection refused", "", t0);
        for i in 1..100 {
            link.failed_at("connection refused", "", t0 + Duration::from_millis(i * 10));
        }
        {
            let s = link.lock();
            assert_eq!(s.failing.map(|f| f.1), Some(100));
            assert_eq!(s.warned.map(|w| w.1), Some(99), "one warning, 99 held back");
        }
        link.failed_at("tls: UnknownIssuer", "", t0 + Link::SUMMARY_EVERY);
        assert_eq!(
            link.lock().warned.map(|w| w.1),
            Some(0),
            "summed up after 30 s"
        );
        assert_eq!(link.last_error().as_deref(), Some("tls: UnknownIssuer"));
        link.connected();
        assert_eq!(link.reconnects(), 1);
        assert_eq!(link.last_error(), None);
        link.connected();
        assert_eq!(
            link.reconnects(),
            1,
            "connected twice without a failure between"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A unit held across an await comes back when the future holding it is dropped midway
    /// (a task aborted, a drain that ran out of time), not only when it runs to its end.
    #[tokio::test(start_paused = true)]
    async fn a_counted_unit_comes_back_when_its_future_is_dropped() {
        let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let held = {
            let count = Arc::clone(&count);
            tokio::spawn(async move {
                let _unit = Counted::new(&count);
                std::future::pending::<()>().await;
            })
        };
        tokio::task::yield_now().await;
        assert_eq!(count.load(std::sync::atomic::Ordering::Acquire), 1);
        held.abort();
        let _ = held.await;
        assert_eq!(count.load(std::sync::atomic::Ordering::Acquire), 0);
    }
    use crate::Source;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Log(Arc<Mutex<Vec<String>>>);

    #[async_trait]
    impl Settler for Log {
        type Token = u32;
        async fn settle(&self, token: &u32, settlement: Settlement) {
            // A broker round trip.
            tokio::time::sleep(Duration::from_millis(10)).await;
            let name = match settlement {
                Settlement::Delivered { .. } => "ack",
                Settlement::Failed { .. } => "term",
                Settlement::Retry { .. } => "retry",
                Settlement::Released => "release",
            };
            self.0.lock().expect("lock").push(format!("{name} {token}"));
        }
        async fn extend(&self, token: &u32) {
            self.0.lock().expect("lock").push(format!("extend {token}"));
        }
    }

    fn sorted(log: &Arc<Mutex<Vec<String>>>) -> Vec<String> {
        let mut v = log.lock().expect("lock").clone();
        v.sort();
        v
    }

    #[test]
    fn the_replica_name_names_the_connector_and_the_host() {
        assert_eq!(
            replica_name_on("iot", "pod-7f9c.example"),
            "fnbroker-iot-pod-7f9c-example"
        );
    }

    #[test]
    fn backoff_grows_to_its_cap_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let ceilings = [100, 200, 400, 800, 1000, 1000];
        for ceiling in ceilings {
            assert!(b.next_delay() <= Duration::from_millis(ceiling));
        }
        b.reset();
        let firsts: std::collections::HashSet<Duration> = (0..20)
            .map(|_| {
                let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
                b.next_delay()
            })
            .collect();
        assert!(firsts.len() > 5, "no jitter: {firsts:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn finish_waits_for_every_acknowledgement() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let (acker, task) = Acker::new(Log(Arc::clone(&log)));
        let a = acker.handle(1);
        let b = acker.handle(2);
        drop(acker);
        a.settle(Settlement::Delivered { reply: None });
        drop(b);
        task.finish().await;
        assert_eq!(sorted(&log), vec!["ack 1", "release 2"]);
    }

    #[tokio::test(start_paused = true)]
    async fn leases_are_extended_until_settled() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let (acker, task) = Acker::with_lease(Log(Arc::clone(&log)), Duration::from_secs(5));
        let a = acker.handle(1);
        let b = acker.handle(2);
        tokio::time::sleep(Duration::from_millis(5001)).await;
        a.settle(Settlement::Delivered { reply: None });
        tokio::time::sleep(Duration::from_millis(5001)).await;
        b.settle(Settlement::Failed {
            reason: "x".into(),
            timed_out: false,
        });
        tokio::time::sleep(Duration::from_secs(20)).await;
        drop(acker);
        task.finish().await;
        assert_eq!(
            sorted(&log),
            vec!["ack 1", "extend 1", "extend 2", "extend 2", "term 2"]
        );
    }

    /// `Source::next` is cancel safe: a call dropped by a `select!` loses no message.
    #[tokio::test(start_paused = true)]
    async fn next_is_cancel_safe() {
        let mut source = ChannelSource::spawn(4, move |tx, stop| async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let event = crate::event::normalize(crate::event::PlainMessage::default(), vec![]);
            let incoming = Incoming {
                event,
                origin: crate::Origin::Plain,
                key: 7,
                redeliveries: 0,
                size: 0,
                ack: AckHandle::none(),
            };
            let _ = tx.send(incoming).await;
            stop.cancelled().await;
        });
        // Cancelled while waiting, before the message exists...
        tokio::select! {
            _ = source.next() => panic!("no message yet"),
            () = tokio::time::sleep(Duration::from_millis(10)) => {}
        }
        // ...and the message still arrives on the next call.
        let got = source.next().await.expect("the message");
        assert_eq!(got.key, 7);
        Box::new(source).close().await;
    }

    #[tokio::test(start_paused = true)]
    async fn closing_a_channel_source_releases_what_was_never_handed_out() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let closed = Arc::new(Mutex::new(false));
        let log2 = Arc::clone(&log);
        let closed2 = Arc::clone(&closed);
        let mut source = Box::new(ChannelSource::spawn(4, move |tx, stop| async move {
            let (acker, task) = Acker::new(Log(log2));
            for i in 0..3 {
                let event = crate::event::normalize(crate::event::PlainMessage::default(), vec![]);
                let incoming = Incoming {
                    event,
                    origin: crate::Origin::Plain,
                    key: 0,
                    redeliveries: 0,
                    size: 0,
                    ack: acker.handle(i),
                };
                if tx.send(incoming).await.is_err() {
                    break;
                }
            }
            stop.cancelled().await;
            drop(acker);
            task.finish().await;
            *closed2.lock().expect("lock") = true;
        }));
        let first = source.next().await.expect("a message");
        first.ack.settle(Settlement::Delivered { reply: None });
        source.close().await;
        assert!(*closed.lock().expect("lock"), "the loop finished first");
        assert_eq!(sorted(&log), vec!["ack 0", "release 1", "release 2"]);
    }
}

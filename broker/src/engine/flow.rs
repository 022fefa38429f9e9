//! The pump of one subscription: pulls while fewer than `max_in_flight` are in flight, keeps
//! messages of one key in order when asked, and drains within the shutdown budget.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use fnbroker_core::{Incoming, Source};
use futures::stream::{FuturesUnordered, StreamExt};
use tokio_util::sync::CancellationToken;

use super::TriggerRuntime;
use super::settle::process;

/// What a pump needs to run one subscription.
pub(crate) struct PumpConfig {
    pub(crate) name: String,
    pub(crate) triggers: Arc<TriggerSet>,
    pub(crate) max_in_flight: usize,
    pub(crate) ordered: bool,
    pub(crate) shutdown_timeout: Duration,
    /// Set when the subscription is given up for good rather than stopped with the broker
    /// (a discovered trigger removed): the source is retired before it closes.
    pub(crate) retire: Arc<std::sync::atomic::AtomicBool>,
    /// Where the subscription's drops (a slow consumer) are shown.
    pub(crate) drops: crate::metrics::DropLog,
}

/// How often the pump asks its source what it dropped, when no message comes.
const DROPS_EVERY: Duration = Duration::from_secs(1);

/// How long without a drop ends an episode of drops (said once at WARN when it starts).
const EPISODE_QUIET: Duration = Duration::from_secs(10);

/// A run of drops by the source, said once when it starts and summed up when it ends.
struct Dropping {
    total: u64,
    last: tokio::time::Instant,
}

/// Counts what the source dropped since the last look on every trigger of the subscription.
fn count_drops(source: &mut dyn Source, cfg: &PumpConfig, episode: &mut Option<Dropping>) {
    let n = source.take_dropped();
    let now = tokio::time::Instant::now();
    if n == 0 {
        if let Some(d) = episode
            && now.duration_since(d.last) >= EPISODE_QUIET
        {
            tracing::info!(subscription = %cfg.name, dropped = d.total, "the source no longer drops messages");
            *episode = None;
        }
        return;
    }
    for t in cfg.triggers.current().iter() {
        t.stats.dropped_slow.inc_by(n);
    }
    cfg.drops.record(&cfg.name, n);
    match episode {
        Some(d) => {
            d.total += n;
            d.last = now;
        }
        None => {
            tracing::warn!(subscription = %cfg.name, dropped = n, "messages dropped before a trigger saw them: the source's buffer is full (a slow consumer; an at-most-once source keeps nothing for a subscriber that falls behind)");
            *episode = Some(Dropping {
                total: n,
                last: now,
            });
        }
    }
}

/// The triggers of one subscription. A reload that changes triggers but not the subscription
/// swaps them here: each message is matched against the set current when it arrives, and
/// deliveries in flight finish with the set they started with.
pub(crate) struct TriggerSet(arc_swap::ArcSwap<Arc<[Arc<TriggerRuntime>]>>);

impl TriggerSet {
    /// A set of `triggers`.
    pub(crate) fn new(triggers: Vec<Arc<TriggerRuntime>>) -> Self {
        Self(arc_swap::ArcSwap::from_pointee(Arc::from(triggers)))
    }

    /// The triggers now.
    pub(crate) fn current(&self) -> Arc<[Arc<TriggerRuntime>]> {
        Arc::clone(&self.0.load())
    }

    /// Replaces the triggers, for the messages that arrive from now on.
    pub(crate) fn replace(&self, triggers: Vec<Arc<TriggerRuntime>>) {
        self.0.store(Arc::new(Arc::from(triggers)));
    }
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
    let capabilities = source.capabilities();
    let broker_retries =
        capabilities.redelivery == fnbroker_core::Redelivery::Delayed && !cfg.ordered;
    let mut in_flight = FuturesUnordered::new();
    // Ordered mode: keys with a message in flight, and the messages waiting behind them.
    let mut waiting: HashMap<u64, VecDeque<Incoming>> = HashMap::new();
    let mut queued = 0usize;
    let mut open = true;
    // A source that drains at stop is read to its end once stopping, within the timeout.
    let drains = capabilities.at_stop == fnbroker_core::AtStop::FinishUnit;
    let mut draining = false;
    let mut drain_by = std::pin::pin!(tokio::time::sleep(Duration::MAX));
    let mut drops = tokio::time::interval(DROPS_EVERY);
    drops.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut dropping = None;

    while open {
        let room = in_flight.len() + queued < cfg.max_in_flight;
        tokio::select! {
            biased;
            () = shutdown.cancelled(), if !draining => {
                if !drains {
                    break;
                }
                draining = true;
                source.stopping();
                drain_by.as_mut().reset(tokio::time::Instant::now() + cfg.shutdown_timeout);
            }
            _ = drops.tick() => count_drops(source.as_mut(), &cfg, &mut dropping),
            () = &mut drain_by, if draining => {
                tracing::warn!(subscription = %cfg.name, "shutdown timeout reached while the source finished its unit; the rest goes back");
                break;
            }
            Some(key) = in_flight.next(), if !in_flight.is_empty() => {
                if cfg.ordered {
                    let next = waiting.get_mut(&key).and_then(VecDeque::pop_front);
                    match next {
                        Some(msg) => {
                            queued -= 1;
                            in_flight.push(process(
                        msg,
                        cfg.triggers.current(),
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
                    let triggers = cfg.triggers.current();
                    // Batching triggers keep the order themselves (one batch at a time, its
                    // events in arrival order): a key need not wait for them.
                    if cfg.ordered && !triggers.iter().all(|t| t.batch.is_some()) {
                        if let Some(queue) = waiting.get_mut(&msg.key) {
                            queue.push_back(msg);
                            queued += 1;
                            continue;
                        }
                        waiting.insert(msg.key, VecDeque::new());
                    }
                    in_flight.push(process(msg, triggers, shutdown.clone(), broker_retries));
                }
            },
        }
    }

    count_drops(source.as_mut(), &cfg, &mut dropping);
    if let Some(d) = dropping {
        tracing::info!(subscription = %cfg.name, dropped = d.total, "dropped by the source in its last episode");
    }
    // Stopping: messages waiting behind a key were never started; release them now.
    if !draining {
        source.stopping();
    }
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
    if cfg.retire.load(std::sync::atomic::Ordering::Acquire) {
        source.retire();
    }
    source.close().await;
}

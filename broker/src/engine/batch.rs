//! Batching (`delivery.batch`): the events of one trigger collected into one call of its
//! function.
//!
//! Each message's delivery to a batching trigger puts its event into the trigger's
//! [`Batcher`] and waits for that event's own outcome, so acknowledgement stays per message.
//! A task per trigger (started with its first event) closes a batch at `max_events`, before
//! `max_bytes`, or `max_wait` after its first event, and delivers it:
//!
//! - a 2xx answer delivers every event but those its `batchItemFailures` name; unordered, those
//!   are tried again alone with the trigger's policy (their first attempt spent), then
//!   dead-lettered; ordered, the first named event and every one after it are tried again as
//!   a batch, so no event overtakes an earlier one;
//! - any other answer fails the whole batch: it is tried again whole with the backoff, and after
//!   the last attempt each event is dead-lettered (or dropped) per policy;
//! - while the function is down (an outage, see [`crate::engine::health`]) the batch is held, spending
//!   no attempt, as single deliveries are.
//!
//! Ordered triggers deliver one batch at a time, each finished (its failures included) before
//! the next; unordered ones let batches overlap, bounded by the function's `concurrency`.

use std::collections::HashSet;
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use fnbroker_core::event::{self, AttributesReader, Event};
use fnbroker_functions::InvokeError;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{Outcome, TriggerRuntime};
use crate::engine::health::Turn;

/// How a trigger batches.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BatchConfig {
    pub(crate) max_events: usize,
    pub(crate) max_bytes: usize,
    pub(crate) max_wait: Duration,
    /// One batch at a time, failures retried in order before the next.
    pub(crate) ordered: bool,
}

impl BatchConfig {
    /// From a trigger's validated `delivery`. A batch never holds more than `max_in_flight`
    /// events (no more of the trigger's can be in flight at once), so it closes at that many
    /// rather than waiting out `max_wait` for events that cannot come.
    pub(crate) fn from_config(delivery: &fnbroker_config::Delivery) -> Option<Self> {
        delivery.batch.as_ref().map(|b| Self {
            max_events: (*b.max_events).min(*delivery.max_in_flight).max(1),
            max_bytes: usize::try_from(b.max_bytes.get()).unwrap_or(usize::MAX),
            max_wait: b.max_wait.get(),
            ordered: delivery.ordered,
        })
    }
}

/// One event waiting in a batch, and where its outcome goes.
pub(super) struct Item {
    event: Event,
    done: oneshot::Sender<Outcome>,
    shutdown: CancellationToken,
}

/// A trigger's batches: the channel to its task, opened with the first event.
pub(crate) struct Batcher {
    cfg: BatchConfig,
    tx: OnceLock<mpsc::UnboundedSender<Item>>,
}

impl Batcher {
    pub(crate) fn new(cfg: BatchConfig) -> Self {
        Self {
            cfg,
            tx: OnceLock::new(),
        }
    }
}

impl TriggerRuntime {
    /// Puts `event` into the trigger's next batch and waits for its outcome. The event joins
    /// the batch at the call, before the first await: messages join in the order their
    /// deliveries start (the pump's order).
    pub(super) fn batched(
        self: &Arc<Self>,
        batcher: &Batcher,
        event: Event,
        shutdown: &CancellationToken,
    ) -> impl std::future::Future<Output = Outcome> + use<> {
        let tx = batcher.tx.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(collect(Arc::downgrade(self), batcher.cfg, rx));
            tx
        });
        let (done, outcome) = oneshot::channel();
        let item = Item {
            event,
            done,
            shutdown: shutdown.clone(),
        };
        // The task ends only with the trigger, which the caller holds: a send cannot fail but
        // at exit, and then the dropped item releases the message.
        let _ = tx.send(item);
        async move { outcome.await.unwrap_or(Outcome::Released) }
    }

    /// Delivers one batch, in order, and settles every event of it.
    async fn deliver_batch(&self, items: Vec<Item>, ordered: bool) {
        let Some(shutdown) = items.first().map(|i| i.shutdown.clone()) else {
            return;
        };
        let started = Instant::now();
        let (mut events, mut dones): (Vec<Event>, Vec<oneshot::Sender<Outcome>>) =
            items.into_iter().map(|i| (i.event, i.done)).unzip();
        let mut attempt: u32 = 0;
        let health = &self.function.health;
        let mut probing = None;
        loop {
            match health.turn(probing.take(), &shutdown).await {
                Turn::Stop => return,
                Turn::Call => {}
                Turn::Probe(permit) => probing = Some(permit),
            }
            let result = self
                .function
                .call_batch(&events, self.timeout)
                .await
                .and_then(|success| failed_items(&events, success.reply.as_ref()));
            let wait = match result {
                Ok(failed) if failed.is_empty() => {
                    for done in dones {
                        self.delivered(started, done);
                    }
                    return;
                }
                Ok(failed) => {
                    probing = None;
                    attempt += 1;
                    if !ordered || attempt > self.policy.retries {
                        let reported = InvokeError::Function {
                            message: "the function named it in its batchItemFailures".into(),
                            retryable: true,
                        };
                        self.settle_items(
                            Settled {
                                events,
                                dones,
                                failed: &failed,
                                error: &reported,
                                attempts: attempt,
                            },
                            started,
                            &shutdown,
                            ordered,
                        )
                        .await;
                        return;
                    }
                    // Ordered: what comes before the first failure is delivered; it and every
                    // event after it go again, as a batch.
                    let cut = events
                        .iter()
                        .position(|e| failed.contains(e.id()))
                        .unwrap_or(events.len());
                    let rest_events = events.split_off(cut);
                    let rest_dones = dones.split_off(cut);
                    for done in std::mem::replace(&mut dones, rest_dones) {
                        self.delivered(started, done);
                    }
                    events = rest_events;
                    self.stats.retried.inc_by(failed.len() as u64);
                    self.policy.delay(attempt, None, &mut rand::rng())
                }
                Err(error) if error.is_unavailable() && health.is_down() => {
                    self.stats.held.inc_by(events.len() as u64);
                    tracing::debug!(trigger = %self.name, events = events.len(), error = %error, "function unavailable; holding the batch");
                    if let Some(permit) = probing.take() {
                        let wait = health.next_probe_delay(&mut rand::rng());
                        tokio::select! {
                            () = tokio::time::sleep(wait) => {}
                            () = shutdown.cancelled() => return,
                        }
                        drop(permit);
                    }
                    continue;
                }
                Err(error) => {
                    probing = None;
                    attempt += 1;
                    if !error.is_retryable() || attempt > self.policy.retries {
                        let all: HashSet<String> =
                            events.iter().map(|e| e.id().to_string()).collect();
                        self.settle_items(
                            Settled {
                                events,
                                dones,
                                failed: &all,
                                error: &error,
                                attempts: attempt,
                            },
                            started,
                            &shutdown,
                            ordered,
                        )
                        .await;
                        return;
                    }
                    self.stats.retried.inc_by(events.len() as u64);
                    tracing::debug!(trigger = %self.name, events = events.len(), attempt, error = %error, "retrying the batch");
                    self.policy
                        .delay(attempt, error.retry_after(), &mut rand::rng())
                }
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// The end of a batch: events not in `failed` are delivered; those in it are tried again
    /// alone with what is left of the policy (unordered), or dead-lettered.
    async fn settle_items(
        &self,
        settled: Settled<'_>,
        started: Instant,
        shutdown: &CancellationToken,
        ordered: bool,
    ) {
        let Settled {
            events,
            dones,
            failed,
            error,
            attempts,
        } = settled;
        let retry_alone = !ordered && attempts <= self.policy.retries && error.is_retryable();
        let mut alone = Vec::new();
        for (event, done) in events.into_iter().zip(dones) {
            if !failed.contains(event.id()) {
                self.delivered(started, done);
            } else if retry_alone {
                alone.push((event, done));
            } else {
                let outcome = self.fail(&event, error, attempts, shutdown, None).await;
                let _ = done.send(outcome);
            }
        }
        let retries = alone.into_iter().map(|(event, done)| async move {
            self.stats.retried.inc();
            let wait = self.policy.delay(attempts, None, &mut rand::rng());
            let outcome = tokio::select! {
                () = tokio::time::sleep(wait) => self.resume(&event, shutdown, attempts).await,
                () = shutdown.cancelled() => Outcome::Released,
            };
            let _ = done.send(outcome);
        });
        futures::future::join_all(retries).await;
    }

    fn delivered(&self, started: Instant, done: oneshot::Sender<Outcome>) {
        self.stats.delivered.inc();
        self.stats.latency.observe(started.elapsed().as_secs_f64());
        let _ = done.send(Outcome::Delivered(None));
    }
}

/// How a batch ended: its events and their outcome channels, the ids that failed, why, and the
/// attempts spent.
struct Settled<'a> {
    events: Vec<Event>,
    dones: Vec<oneshot::Sender<Outcome>>,
    failed: &'a HashSet<String>,
    error: &'a InvokeError,
    attempts: u32,
}

/// The ids a batch's answer names as failed. An id that names no event of the batch fails the
/// whole batch, as Lambda does.
fn failed_items(
    events: &[Event],
    reply: Option<&fnbroker_functions::Reply>,
) -> Result<HashSet<String>, InvokeError> {
    let Some(ids) = fnbroker_functions::item_failures(reply)? else {
        return Ok(HashSet::new());
    };
    let ids: HashSet<String> = ids.into_iter().collect();
    if let Some(stranger) = ids.iter().find(|id| !events.iter().any(|e| e.id() == *id)) {
        return Err(InvokeError::Function {
            message: format!(
                "batchItemFailures names `{stranger}`, which is not in the batch: the whole batch failed"
            ),
            retryable: true,
        });
    }
    Ok(ids)
}

/// The task of one trigger's batches: collects events into batches and delivers them. It ends
/// when the trigger is dropped (the channel closes).
async fn collect(
    trigger: Weak<TriggerRuntime>,
    cfg: BatchConfig,
    mut rx: mpsc::UnboundedReceiver<Item>,
) {
    let mut next: Option<Item> = None;
    loop {
        let first = match next.take() {
            Some(item) => item,
            None => match rx.recv().await {
                Some(item) => item,
                None => return,
            },
        };
        let deadline = tokio::time::Instant::now() + cfg.max_wait;
        let mut bytes = event::data_len(&first.event);
        let mut items = vec![first];
        while items.len() < cfg.max_events {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(item)) => {
                    let size = event::data_len(&item.event);
                    if bytes.saturating_add(size) > cfg.max_bytes {
                        next = Some(item);
                        break;
                    }
                    bytes += size;
                    items.push(item);
                }
                Ok(None) | Err(_) => break,
            }
        }
        // A trigger gone (a reload replaced it) takes its events' outcomes with it: dropped
        // senders release the messages.
        let Some(trigger) = trigger.upgrade() else {
            return;
        };
        if cfg.ordered {
            trigger.deliver_batch(items, true).await;
        } else {
            tokio::spawn(async move { trigger.deliver_batch(items, false).await });
        }
    }
}

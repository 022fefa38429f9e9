//! Acknowledgements of a consumer channel, coalesced.
//!
//! RabbitMQ numbers the deliveries of a channel 1, 2, 3... and `basic.ack` with `multiple`
//! acknowledges every outstanding delivery up to its tag in one frame. Deliveries settle out of
//! order (functions answer in any order), so the [`Ledger`] keeps the tags handed out and not
//! settled yet; the acknowledgements waiting below the lowest of them go out as one `multiple`
//! ack, those above it one by one (a slow message never holds back the acknowledgement of the
//! ones after it: RabbitMQ's prefetch window keeps moving). Rejections and requeues always go
//! out one by one, and before any `multiple` ack that could cover their tag.
//!
//! One settlement at a time sends (the flusher); what settles meanwhile waits in the ledger and
//! goes out with the flusher's next round, so under load one frame acknowledges many deliveries
//! and at a trickle every acknowledgement goes out at once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use fnbroker_core::Settlement;
use fnbroker_core::kit::Settler;
use lapin::Acker;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};

/// What one round of the flusher sends, in this order.
#[derive(Debug)]
pub(crate) struct Batch<A> {
    /// Rejections and requeues, one frame each, in the order they settled.
    pub(crate) singles: Vec<(A, Settlement)>,
    /// The acknowledgement with `multiple` of every delivery up to this one.
    pub(crate) multiple: Option<A>,
    /// Acknowledgements above an unsettled delivery, one frame each.
    pub(crate) each: Vec<A>,
}

/// The deliveries of the current channel: those handed out and not settled, and the settled
/// ones whose frame has not gone out yet. Bounded by the prefetch window and one round of
/// settlements. `A` is what acknowledges one delivery (a lapin [`Acker`]).
#[derive(Debug)]
pub(crate) struct Ledger<A> {
    /// The channel these tags belong to; tags of an earlier one are stale.
    generation: u64,
    /// Handed out, not settled.
    outstanding: BTreeSet<u64>,
    /// Delivered, the acknowledgement not sent yet.
    acks: BTreeMap<u64, A>,
    /// Rejected or handed back, the frame not sent yet.
    singles: Vec<(A, Settlement)>,
    /// A settlement is sending; the others leave their settlement here and return.
    flushing: bool,
}

impl<A> Default for Ledger<A> {
    fn default() -> Self {
        Self {
            generation: 0,
            outstanding: BTreeSet::new(),
            acks: BTreeMap::new(),
            singles: Vec::new(),
            flushing: false,
        }
    }
}

impl<A> Ledger<A> {
    /// A new channel: the tags of the old one are gone with it (RabbitMQ requeued what was not
    /// acknowledged). Returns the generation its deliveries carry.
    pub(crate) fn reopened(&mut self) -> u64 {
        self.generation += 1;
        self.outstanding.clear();
        self.acks.clear();
        self.singles.clear();
        self.generation
    }

    /// A delivery of channel `generation` is handed out.
    pub(crate) fn handed_out(&mut self, generation: u64, tag: u64) {
        if generation == self.generation {
            self.outstanding.insert(tag);
        }
    }

    /// Records a settlement. Returns false for a delivery of an earlier channel: nothing can
    /// acknowledge it any more.
    pub(crate) fn settled(
        &mut self,
        generation: u64,
        tag: u64,
        acker: A,
        settlement: Settlement,
    ) -> bool {
        if generation != self.generation || !self.outstanding.remove(&tag) {
            return false;
        }
        match settlement {
            Settlement::Delivered { .. } => {
                self.acks.insert(tag, acker);
            }
            other => self.singles.push((acker, other)),
        }
        true
    }

    /// Becomes the flusher unless one is at work. Returns whether the caller is the flusher.
    pub(crate) fn start_flushing(&mut self) -> bool {
        !std::mem::replace(&mut self.flushing, true)
    }

    /// What to send next, or `None` (and the flusher stops) when nothing waits.
    pub(crate) fn next_batch(&mut self) -> Option<Batch<A>> {
        if self.singles.is_empty() && self.acks.is_empty() {
            self.flushing = false;
            return None;
        }
        // Every tag below the lowest outstanding one is settled: either its frame went out or
        // its acknowledgement waits here. So one `multiple` ack with the highest waiting tag
        // below it covers exactly those waiting (rejections go out first).
        let lowest = self.outstanding.first().copied().unwrap_or(u64::MAX);
        let each = self.acks.split_off(&lowest);
        let multiple = std::mem::take(&mut self.acks).pop_last().map(|(_, a)| a);
        Some(Batch {
            singles: std::mem::take(&mut self.singles),
            multiple,
            each: each.into_values().collect(),
        })
    }
}

/// One delivery's acknowledgement token.
pub(crate) struct Delivery {
    generation: u64,
    tag: u64,
    acker: Acker,
}

/// The [`Settler`] of an AMQP source: records each settlement in the shared [`Ledger`] and, if
/// no other settlement is sending, sends until the ledger is empty.
pub(crate) struct AmqpSettler {
    connector: String,
    ledger: Arc<Mutex<Ledger<Acker>>>,
}

impl AmqpSettler {
    /// A settler for `connector`'s consumer.
    pub(crate) fn new(connector: String) -> Self {
        Self {
            connector,
            ledger: Arc::default(),
        }
    }

    /// The consume loop's side of the ledger.
    pub(crate) fn handout(&self) -> Handout {
        Handout(Arc::clone(&self.ledger))
    }
}

/// The consume loop's side of the ledger: a new channel, and each delivery handed out.
pub(crate) struct Handout(Arc<Mutex<Ledger<Acker>>>);

impl Handout {
    /// A new channel; see [`Ledger::reopened`].
    pub(crate) fn reopened(&self) -> u64 {
        lock(&self.0).reopened()
    }

    /// Registers a delivery before it is handed out and returns its token.
    pub(crate) fn delivery(&self, generation: u64, tag: u64, acker: Acker) -> Delivery {
        lock(&self.0).handed_out(generation, tag);
        Delivery {
            generation,
            tag,
            acker,
        }
    }
}

fn lock<A>(ledger: &Mutex<Ledger<A>>) -> std::sync::MutexGuard<'_, Ledger<A>> {
    // The ledger is consistent between calls: a panic elsewhere leaves nothing half done.
    ledger.lock().unwrap_or_else(PoisonError::into_inner)
}

#[async_trait]
impl Settler for AmqpSettler {
    type Token = Delivery;

    async fn settle(&self, d: &Delivery, settlement: Settlement) {
        {
            let mut ledger = lock(&self.ledger);
            if !ledger.settled(d.generation, d.tag, d.acker.clone(), settlement) {
                tracing::debug!(connector = %self.connector, "settled after its channel closed; RabbitMQ redelivers it");
                return;
            }
            if !ledger.start_flushing() {
                return;
            }
        }
        loop {
            let Some(batch) = lock(&self.ledger).next_batch() else {
                return;
            };
            self.send(batch).await;
        }
    }
}

impl AmqpSettler {
    async fn send(&self, batch: Batch<Acker>) {
        // In order: a `multiple` ack must not reach a tag before its rejection does.
        for (acker, settlement) in batch.singles {
            let result = match settlement {
                Settlement::Failed { .. } => {
                    acker.reject(BasicRejectOptions { requeue: false }).await
                }
                _ => {
                    acker
                        .nack(BasicNackOptions {
                            requeue: true,
                            ..Default::default()
                        })
                        .await
                }
            };
            self.sent(result);
        }
        if let Some(acker) = batch.multiple {
            self.sent(acker.ack(BasicAckOptions { multiple: true }).await);
        }
        let each = batch
            .each
            .iter()
            .map(|acker| acker.ack(BasicAckOptions::default()));
        for result in futures::future::join_all(each).await {
            self.sent(result);
        }
    }

    fn sent(&self, result: lapin::Result<bool>) {
        if let Err(e) = result {
            // The channel is gone: RabbitMQ requeued the message when it closed.
            tracing::debug!(connector = %self.connector, error = %e, "acknowledgement on a closed channel; the message is redelivered");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivered() -> Settlement {
        Settlement::Delivered { reply: None }
    }

    fn failed() -> Settlement {
        Settlement::Failed {
            reason: "x".into(),
            timed_out: false,
        }
    }

    fn ledger(tags: std::ops::RangeInclusive<u64>) -> (Ledger<u64>, u64) {
        let mut l = Ledger::default();
        let generation = l.reopened();
        for tag in tags {
            l.handed_out(generation, tag);
        }
        (l, generation)
    }

    /// A batch as (single frames with their kind, the multiple ack's tag, the single acks).
    type Shape = (Vec<(u64, &'static str)>, Option<u64>, Vec<u64>);

    fn next(l: &mut Ledger<u64>) -> Option<Shape> {
        let b = l.next_batch()?;
        let singles = b
            .singles
            .into_iter()
            .map(|(tag, s)| {
                let kind = match s {
                    Settlement::Failed { .. } => "reject",
                    Settlement::Released | Settlement::Retry { .. } => "requeue",
                    Settlement::Delivered { .. } => "ack",
                };
                (tag, kind)
            })
            .collect();
        Some((singles, b.multiple, b.each))
    }

    #[test]
    fn settled_in_order_goes_out_as_one_multiple_ack() {
        let (mut l, g) = ledger(1..=64);
        for tag in 1..=64 {
            assert!(l.settled(g, tag, tag, delivered()));
        }
        assert!(l.start_flushing());
        assert!(!l.start_flushing(), "one flusher at a time");
        assert_eq!(next(&mut l), Some((vec![], Some(64), vec![])));
        assert_eq!(next(&mut l), None);
        assert!(
            l.start_flushing(),
            "the flusher stopped with the ledger empty"
        );
    }

    #[test]
    fn a_slow_delivery_does_not_hold_back_the_acks_after_it() {
        let (mut l, g) = ledger(1..=5);
        for tag in [1, 2, 4, 5] {
            l.settled(g, tag, tag, delivered());
        }
        assert_eq!(next(&mut l), Some((vec![], Some(2), vec![4, 5])));
        // 3 settles: it alone is acknowledged (4 and 5 were, and are not outstanding).
        l.settled(g, 3, 3, delivered());
        assert_eq!(next(&mut l), Some((vec![], Some(3), vec![])));
    }

    #[test]
    fn rejections_go_out_one_by_one_before_the_multiple_ack() {
        let (mut l, g) = ledger(1..=5);
        l.settled(g, 1, 1, delivered());
        l.settled(g, 2, 2, failed());
        l.settled(g, 3, 3, Settlement::Released);
        l.settled(
            g,
            4,
            4,
            Settlement::Retry {
                delay: std::time::Duration::from_secs(1),
            },
        );
        l.settled(g, 5, 5, delivered());
        assert_eq!(
            next(&mut l),
            Some((
                vec![(2, "reject"), (3, "requeue"), (4, "requeue")],
                Some(5),
                vec![]
            ))
        );
    }

    #[test]
    fn the_multiple_ack_never_covers_a_delivery_still_outstanding() {
        let (mut l, g) = ledger(1..=3);
        l.settled(g, 2, 2, delivered());
        l.settled(g, 3, 3, delivered());
        assert_eq!(
            next(&mut l),
            Some((vec![], None, vec![2, 3])),
            "1 is still being worked on"
        );
        // Deliveries handed out later do not matter to what is below them.
        l.handed_out(g, 4);
        l.settled(g, 1, 1, delivered());
        assert_eq!(next(&mut l), Some((vec![], Some(1), vec![])));
    }

    #[test]
    fn a_new_channel_forgets_the_old_tags() {
        let (mut l, old) = ledger(1..=2);
        l.settled(old, 1, 1, delivered());
        let new = l.reopened();
        assert!(
            !l.settled(old, 2, 2, delivered()),
            "stale: its channel is gone"
        );
        assert_eq!(next(&mut l), None, "the old channel's acks are dropped");
        l.handed_out(new, 1);
        assert!(l.settled(new, 1, 1, delivered()));
        assert_eq!(next(&mut l), Some((vec![], Some(1), vec![])));
    }

    #[test]
    fn a_settlement_of_a_tag_never_handed_out_is_ignored() {
        let (mut l, g) = ledger(1..=1);
        assert!(!l.settled(g, 7, 7, delivered()));
        assert!(l.settled(g, 1, 1, delivered()));
        assert!(!l.settled(g, 1, 1, delivered()), "settled twice");
    }
}

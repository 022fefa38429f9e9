//! One message and all the triggers it matched: their outcomes combined into the one settlement
//! its acknowledgement handle gets.

use std::sync::Arc;

use fnbroker_core::event::AttributesReader;
use fnbroker_core::{Incoming, Origin, Settlement};
use tokio_util::sync::CancellationToken;

use super::{Outcome, TriggerRuntime};

/// Settles one message once all its triggers finished.
pub(super) async fn process(
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
        size,
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
            if t.matches(&view) {
                return Some((t, view));
            }
            t.stats.filtered.inc();
            if tracing::enabled!(tracing::Level::DEBUG) {
                let reason = t.filter.as_ref().map(|f| f.explain(&view)).unwrap_or_default();
                tracing::debug!(trigger = %t.name, id = view.id(), ty = view.ty(), source = view.source().as_str(), %reason, "event filtered out");
            }
            None
        })
        .collect();
    if views.is_empty() {
        ack.settle(Settlement::Delivered { reply: None });
        return key;
    }
    for (t, _) in &views {
        if redeliveries == 0 {
            t.stats.received.inc();
        } else {
            t.stats.redelivered.inc();
        }
        t.stats.received_bytes.inc_by(size as u64);
    }
    // The broker may wait between attempts only when one trigger matched: a redelivery goes to
    // every trigger of the subscription again.
    let broker_retry = (broker_retries && views.len() == 1).then_some(redeliveries);
    let shutdown = &shutdown;
    // One matched trigger (the usual case) is awaited as it is: no vector of futures to build
    // and move, which the profile showed as a tenth of the pump's time.
    let mut views = views.into_iter();
    let outcome = match (views.next(), views.len()) {
        (Some((t, view)), 0) => combine([run(t, view, shutdown, broker_retry).await]),
        (first, _) => combine(
            futures::future::join_all(
                first
                    .into_iter()
                    .chain(views)
                    .map(|(t, view)| run(t, view, shutdown, broker_retry)),
            )
            .await,
        ),
    };
    ack.settle(outcome);
    key
}

/// One matched trigger's work on the event.
async fn run(
    t: &Arc<TriggerRuntime>,
    view: std::borrow::Cow<'_, fnbroker_core::Event>,
    shutdown: &CancellationToken,
    broker_retry: Option<u32>,
) -> Outcome {
    // Given back however this ends, also when the future is dropped (a drain that timed out).
    let _in_flight = crate::metrics::Held::new(&t.stats.in_flight);
    let Some(dedup) = &t.dedup else {
        return deliver(t, view, shutdown, broker_retry).await;
    };
    let key = super::dedup::key(&view);
    if dedup.seen(&t.name, key).await {
        t.stats.deduplicated.inc();
        tracing::debug!(trigger = %t.name, id = view.id(), source = view.source().as_str(), "duplicate acknowledged without a call (delivery.dedup)");
        return Outcome::Delivered(None);
    }
    let outcome = deliver(t, view, shutdown, broker_retry).await;
    // Only what the function did is marked: a failure, a dead letter or a hand-back is tried
    // again when it comes again.
    if matches!(outcome, Outcome::Delivered(_)) {
        dedup.mark(&t.name, key).await;
    }
    outcome
}

async fn deliver(
    t: &Arc<TriggerRuntime>,
    view: std::borrow::Cow<'_, fnbroker_core::Event>,
    shutdown: &CancellationToken,
    broker_retry: Option<u32>,
) -> Outcome {
    // A batching trigger takes the event before anything is awaited (this future is polled at
    // once): events join its batches in the order the pump started their messages.
    match &t.batch {
        Some(batcher) => t.batched(batcher, view.into_owned(), shutdown).await,
        None => t.deliver(&view, shutdown, broker_retry).await,
    }
}

/// One settlement from the outcomes of every matched trigger, by the one merge rule
/// ([`fnbroker_core::contract::strongest`]): released if any must see the message again, retried
/// later (after the longest delay asked) if one asked for it, else failed if any failed, else
/// delivered with the first reply.
pub(super) fn combine(outcomes: impl IntoIterator<Item = Outcome>) -> Settlement {
    outcomes
        .into_iter()
        .map(Settlement::from)
        .reduce(fnbroker_core::contract::strongest)
        .unwrap_or(Settlement::Delivered { reply: None })
}

impl From<Outcome> for Settlement {
    fn from(outcome: Outcome) -> Self {
        match outcome {
            Outcome::Delivered(reply) => Settlement::Delivered { reply },
            Outcome::Failed { reason, timed_out } => Settlement::Failed { reason, timed_out },
            Outcome::Released => Settlement::Released,
            Outcome::Retry(delay) => Settlement::Retry { delay },
        }
    }
}

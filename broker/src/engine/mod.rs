//! The delivery engine: from "a source gave us a message" to "every trigger that matched it
//! finished", and only then the acknowledgement.
//!
//! One [`pump`] task per subscription pulls messages while fewer than `max_in_flight` are in
//! flight, so a slow function slows consumption and memory is bounded by configuration, not by
//! the backlog. Each message is matched against the subscription's triggers and delivered to
//! every match at once (fan-out); its [`AckHandle`](fnbroker_core::AckHandle) is settled when the
//! last of them finished: delivered, dead-lettered, or dropped by policy. A message that is still
//! in flight when the process stops is released, never acknowledged: its broker redelivers it.
//!
//! By responsibility:
//! - [`flow`]: the pump: pulling under `max_in_flight`, ordering per key, draining on shutdown.
//! - [`delivery`]: one trigger and one event: filter, attempts with the retry schedule and the
//!   outage hold, and the one publish path of replies and dead letters.
//! - [`settle`]: one message and all its triggers: their outcomes combined into one settlement.
//! - [`batch`]: a trigger's events collected into one call of its function.
//!
//! And its collaborators, which the runtime builds for it:
//! - [`filter`]: a trigger's compiled filter (subscriptions, CloudEvents SQL, CEL).
//! - [`retry`]: the retry schedule of a trigger's delivery policy.
//! - [`guard`]: a function's rate limit and circuit breaker.
//! - [`health`]: a function's outage detection, and a destination's health for `/readyz`.
//! - [`telemetry`]: the spans of a delivery (OpenTelemetry over OTLP).

mod batch;
pub(crate) mod dedup;
mod delivery;
pub(crate) mod filter;
mod flow;
pub(crate) mod guard;
pub(crate) mod health;
pub(crate) mod retry;
mod settle;
pub(crate) mod telemetry;
#[cfg(test)]
mod tests;

pub(crate) use batch::{BatchConfig, Batcher};
#[cfg(test)]
pub(crate) use delivery::dead_letter_event;
pub(crate) use flow::{PumpConfig, TriggerSet, pump};

use std::sync::Arc;
use std::time::Duration;

use fnbroker_core::Sink;
use fnbroker_core::event::{AttributesReader, Event};
use fnbroker_functions::{InvokeError, Invoker};
use tokio::sync::Semaphore;

use crate::engine::filter::Filter;
use crate::engine::health::Health;
use crate::engine::retry::RetryPolicy;
use crate::metrics::{FunctionStats, TriggerStats};

/// A function as the engine calls it: its invoker, its concurrency limit, its timeout.
pub(crate) struct FunctionRuntime {
    pub(crate) name: String,
    pub(crate) invoker: Box<dyn Invoker>,
    pub(crate) limit: Arc<Semaphore>,
    pub(crate) timeout: Duration,
    pub(crate) stats: FunctionStats,
    /// Whether the function is down (an outage) rather than failing single events.
    pub(crate) health: Health,
    /// The function's rate limit and circuit breaker, when configured.
    pub(crate) guard: Option<crate::engine::guard::Guard>,
}

impl FunctionRuntime {
    /// One attempt, waiting for a free slot of the function's `concurrency` first.
    pub(super) async fn call(
        &self,
        event: &Event,
        timeout: Duration,
    ) -> Result<fnbroker_functions::Success, InvokeError> {
        let bytes = fnbroker_core::event::data_len(event) as u64;
        let key = || fnbroker_core::kit::ordering_key((event.source().as_str(), event.id()));
        self.guarded(bytes, key, self.invoker.invoke(event, timeout))
            .await
    }

    /// One attempt with a batch of events: one call, one slot of `concurrency`, one pass of
    /// the rate limit and the breaker.
    pub(super) async fn call_batch(
        &self,
        events: &[Event],
        timeout: Duration,
    ) -> Result<fnbroker_functions::Success, InvokeError> {
        let bytes = events
            .iter()
            .map(|e| fnbroker_core::event::data_len(e) as u64)
            .sum();
        let key = || {
            fnbroker_core::kit::ordering_key(
                events
                    .iter()
                    .map(|e| (e.source().as_str(), e.id()))
                    .collect::<Vec<_>>(),
            )
        };
        self.guarded(bytes, key, self.invoker.invoke_batch(events, timeout))
            .await
    }

    /// Runs one call (`attempt`, of `bytes` of data) under the function's guard, concurrency
    /// and health accounting; `key` names what it carries, for telling a slow event from an
    /// outage.
    async fn guarded(
        &self,
        bytes: u64,
        key: impl FnOnce() -> u64,
        attempt: impl std::future::Future<Output = Result<fnbroker_functions::Success, InvokeError>>,
    ) -> Result<fnbroker_functions::Success, InvokeError> {
        // An exhausted rate or an open breaker holds the call here, before it takes a slot of
        // the function's concurrency: no attempt is spent while it waits.
        let pass = match &self.guard {
            Some(guard) => {
                let pass = guard.pass().await;
                if !pass.waited.is_zero() {
                    self.stats.held.inc();
                }
                Some(pass)
            }
            None => None,
        };
        // The semaphore is never closed, so acquiring only fails if it were; treat that as a
        // connection error so the attempt is retried rather than lost.
        let _permit = self
            .limit
            .acquire()
            .await
            .map_err(|_| InvokeError::Connect("function limiter closed".into()))?;
        self.stats.request_bytes.inc_by(bytes);
        let result = {
            let _in_flight = crate::metrics::Held::new(&self.stats.in_flight);
            attempt.await
        };
        self.stats.record(&result);
        self.health.record(result.as_ref().err(), key);
        if let Some(pass) = pass {
            pass.done(result.as_ref().map(|_| ()));
        }
        result
    }
}

/// Where dead letters or replies go.
#[derive(Clone)]
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
    /// The tracer, when traces are exported.
    pub(crate) telemetry: Option<Arc<crate::engine::telemetry::Telemetry>>,
    /// The trigger's batches, when it batches (`delivery.batch`).
    pub(crate) batch: Option<Batcher>,
    /// The trigger's retry topic, when it keeps its retries there (`delivery.retry_topic`).
    pub(crate) retry: Option<RetryTopicRuntime>,
    /// How the subscription's source redelivers: with [`Redelivery::None`] nothing can be
    /// handed back, so an event whose reply or dead letter cannot be published is
    /// dead-lettered or dropped, and counted.
    ///
    /// [`Redelivery::None`]: fnbroker_core::Redelivery::None
    pub(crate) redelivery: fnbroker_core::Redelivery,
    /// The subscription keeps the order of each key: a message whose reply, dead letter or
    /// retry cannot be published is held and published again in place, never handed back
    /// (the broker would redeliver it after later messages of its key).
    pub(crate) ordered: bool,
    /// `delivery.dedup`: events delivered within its window are acknowledged without a call.
    pub(crate) dedup: Option<dedup::Dedup>,
}

/// A trigger's retry topic: where it publishes events to be tried again, and whether this
/// runtime is the one that consumes them back.
pub(crate) struct RetryTopicRuntime {
    pub(crate) sink: Arc<dyn Sink>,
    pub(crate) topic: String,
    /// This runtime consumes the retry topic (the trigger fnbroker adds for it).
    pub(crate) consumer: bool,
}

/// How one trigger finished with one message.
#[derive(Debug)]
pub(super) enum Outcome {
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

//! One trigger and one event: the filter, the attempts (retry schedule, outage hold, broker-side
//! retries), and the one publish path of replies and dead letters.

use std::time::{Duration, Instant};

use fnbroker_core::event::{self, AttributesReader, AttributesWriter, Data, Event};
use fnbroker_core::{ErrorKind, Origin};
use fnbroker_functions::{InvokeError, Reply};
use tokio_util::sync::CancellationToken;

use crate::engine::health::Turn;

use super::{Outcome, Target, TriggerRuntime};

impl TriggerRuntime {
    /// The event as this trigger sees it: a plain message gets the trigger's `event.type`.
    pub(super) fn view<'a>(
        &self,
        event: &'a Event,
        origin: &Origin,
    ) -> std::borrow::Cow<'a, Event> {
        match (&self.event_type, origin) {
            (Some(ty), Origin::Plain) => {
                let mut e = event.clone();
                e.set_type(ty.as_str());
                std::borrow::Cow::Owned(e)
            }
            _ => std::borrow::Cow::Borrowed(event),
        }
    }

    pub(super) fn matches(&self, event: &Event) -> bool {
        self.filter.as_ref().is_none_or(|f| f.matches(event))
    }

    /// Delivers one event with retries; then dead-letters it if it failed for good.
    ///
    /// With `broker_retry`, the broker delivered the message that many times before, and waits
    /// between attempts itself: a failed attempt that may be retried returns [`Outcome::Retry`]
    /// instead of sleeping here.
    ///
    /// While the function is down (see [`crate::engine::health`]), a failure that says so spends no
    /// attempt: the event is held here (also with `broker_retry`: the broker must not count an
    /// outage against it either) and one delivery at a time probes the function.
    pub(super) async fn deliver(
        &self,
        event: &Event,
        shutdown: &CancellationToken,
        broker_retry: Option<u32>,
    ) -> Outcome {
        if self.retry.as_ref().is_some_and(|r| r.consumer) {
            return self.deliver_due(event, shutdown).await;
        }
        let Some(telemetry) = &self.telemetry else {
            return self
                .attempts(event, shutdown, Spent::from(broker_retry), None)
                .await;
        };
        let traced = telemetry.delivery(&self.name, &self.function.name, event);
        let outcome = self
            .attempts(
                event,
                shutdown,
                Spent::from(broker_retry),
                Some((telemetry, &traced)),
            )
            .await;
        match &outcome {
            Outcome::Delivered(_) => traced.end("delivered", None),
            Outcome::Failed { reason, .. } => traced.end("failed", Some(reason)),
            Outcome::Retry(_) => traced.end("retry", None),
            Outcome::Released => traced.end("released", None),
        }
        outcome
    }

    /// [`TriggerRuntime::deliver`], with the event's span when traced.
    async fn attempts(
        &self,
        event: &Event,
        shutdown: &CancellationToken,
        spent: Spent,
        trace: Trace<'_>,
    ) -> Outcome {
        let started = Instant::now();
        let mut attempt: u32 = spent.attempts;
        let health = &self.function.health;
        let mut probing = None;
        loop {
            match health.turn(probing.take(), shutdown).await {
                Turn::Stop => return Outcome::Released,
                Turn::Call => {}
                Turn::Probe(permit) => probing = Some(permit),
            }
            let result = match trace {
                None => self.function.call(event, self.timeout).await,
                Some((telemetry, traced)) => {
                    let (span, carried) =
                        traced.attempt(telemetry, &self.function.name, attempt + 1, event);
                    let result = self.function.call(&carried, self.timeout).await;
                    let status = match &result {
                        Ok(s) => Some(s.status),
                        Err(e) => e.status(),
                    };
                    span.end(status, result.as_ref().err().map(ToString::to_string));
                    result
                }
            };
            let error = match result {
                Ok(success) => {
                    let reply = success.reply.map(|r| {
                        let mut reply = reply_event(event, &self.function.name, r);
                        match trace {
                            Some((_, traced)) => traced.carry_to(&mut reply),
                            None => carry_context(event, &mut reply),
                        }
                        reply
                    });
                    if let (Some(reply), Some(target)) = (&reply, &self.reply)
                        && let Err(outcome) = self
                            .publish_or_hand_back(
                                target,
                                reply,
                                Publication::Reply,
                                event,
                                shutdown,
                                trace,
                            )
                            .await
                    {
                        // The function is not called again for it here: a message handed back
                        // is delivered again when its broker redelivers it.
                        return outcome;
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
                return self.fail(event, &error, attempt, shutdown, trace).await;
            }
            let wait = self
                .policy
                .delay(attempt, error.retry_after(), &mut rand::rng());
            tracing::debug!(trigger = %self.name, id = event.id(), trace_id = trace.map(|(_, t)| t.trace_id()), span_id = trace.map(|(_, t)| t.span_id()), attempt, ?wait, error = %error, "retrying");
            self.stats.retried.inc();
            if let Some(retry) = &self.retry {
                return self.park(retry, event, attempt, wait, shutdown).await;
            }
            if spent.by_broker {
                return Outcome::Retry(wait);
            }
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = shutdown.cancelled() => return Outcome::Released,
            }
        }
    }

    /// Moves an event that is to be tried again to the trigger's retry topic, with the attempts
    /// it had (`retryattempts`), when the next is due (`retryat`) and whose it is
    /// (`retrytrigger`); its source message is then acknowledged. A publish that fails hands
    /// the message back to its broker, as a dead letter that cannot be published does.
    async fn park(
        &self,
        retry: &super::RetryTopicRuntime,
        event: &Event,
        attempts: u32,
        wait: Duration,
        shutdown: &CancellationToken,
    ) -> Outcome {
        let mut copy = event.clone();
        let due = chrono::Utc::now()
            + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::zero());
        copy.set_extension(RETRY_ATTEMPTS, i64::from(attempts));
        copy.set_extension(RETRY_AT, event::format_time(&due));
        copy.set_extension(RETRY_TRIGGER, self.name.as_str());
        let target = Target::Sink {
            sink: std::sync::Arc::clone(&retry.sink),
            topic: retry.topic.clone(),
        };
        let published = self
            .publish_or_hand_back(&target, &copy, Publication::Retry, event, shutdown, None)
            .await;
        if let Err(outcome) = published {
            outcome
        } else {
            tracing::debug!(trigger = %self.name, id = event.id(), attempts, ?wait, topic = %retry.topic, "moved to the retry topic");
            Outcome::Delivered(None)
        }
    }

    /// An event consumed back from the retry topic: another trigger's is passed over; this
    /// trigger's waits until it is due (held in flight), then gets its next attempt, without
    /// the `retry*` attributes, with what is left of the policy.
    async fn deliver_due(&self, event: &Event, shutdown: &CancellationToken) -> Outcome {
        let Some(parked) = Parked::of(event) else {
            tracing::warn!(trigger = %self.name, id = event.id(), "not a retry of this trigger's (no `retrytrigger`, `retryattempts` and `retryat`) on its retry topic; passed over");
            return Outcome::Delivered(None);
        };
        if parked.trigger != self.name {
            return Outcome::Delivered(None);
        }
        let wait = (parked.at - chrono::Utc::now())
            .to_std()
            .unwrap_or(Duration::ZERO);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shutdown.cancelled() => return Outcome::Released,
        }
        let mut original = event.clone();
        for name in [RETRY_ATTEMPTS, RETRY_AT, RETRY_TRIGGER] {
            original.remove_extension(name);
        }
        let spent = Spent {
            attempts: parked.attempts,
            by_broker: false,
        };
        self.attempts(&original, shutdown, spent, None).await
    }

    /// Delivers one event alone after `spent` attempts of it failed (in a batch), with what is
    /// left of the policy: the attempts that remain, then the dead letter.
    pub(super) async fn resume(
        &self,
        event: &Event,
        shutdown: &CancellationToken,
        spent: u32,
    ) -> Outcome {
        let spent = Spent {
            attempts: spent,
            by_broker: false,
        };
        self.attempts(event, shutdown, spent, None).await
    }

    /// The delivery failed for good: dead-letter the event, or drop it by policy.
    pub(super) async fn fail(
        &self,
        event: &Event,
        error: &InvokeError,
        attempts: u32,
        shutdown: &CancellationToken,
        trace: Trace<'_>,
    ) -> Outcome {
        let reason = error.to_string();
        let outcome = Outcome::Failed {
            reason: reason.clone(),
            timed_out: error.is_timeout(),
        };
        let Some(target) = &self.dead_letter else {
            tracing::warn!(trigger = %self.name, function = %self.function.name, id = event.id(), trace_id = trace.map(|(_, t)| t.trace_id()), span_id = trace.map(|(_, t)| t.span_id()), attempts, error = %reason, "delivery failed; no dead_letter configured, dropping the event");
            self.stats.dropped.inc();
            return outcome;
        };
        let mut letter = dead_letter_event(
            event,
            &reason,
            error.status(),
            attempts,
            &self.name,
            &self.function.name,
        );
        if let Some((_, traced)) = trace {
            traced.carry_to(&mut letter);
        }
        match self
            .publish_or_hand_back(
                target,
                &letter,
                Publication::DeadLetter,
                event,
                shutdown,
                trace,
            )
            .await
        {
            Ok(()) => {
                self.stats.dead_lettered.inc();
                outcome
            }
            Err(held) => held,
        }
    }

    /// Dead-letters an event that could not become a valid CloudEvent.
    pub(super) async fn reject_invalid(
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
        match self
            .publish_or_hand_back(
                target,
                &letter,
                Publication::DeadLetter,
                event,
                shutdown,
                None,
            )
            .await
        {
            Ok(()) => {
                self.stats.dead_lettered.inc();
                outcome
            }
            Err(held) => held,
        }
    }

    /// Publishes a reply or a dead letter (`what`) to `target`, through the one path both take.
    /// A transient failure is tried again with the trigger's backoff, at least
    /// [`PUBLISH_RETRIES`] times (the function is not called again for it); a permanent one
    /// (the destination does not exist) is not. The error, when it could not be published; the
    /// destination's health (`/readyz`) follows.
    pub(super) async fn publish(
        &self,
        target: &Target,
        event: &Event,
        what: Publication,
        shutdown: &CancellationToken,
        trace: Trace<'_>,
    ) -> Result<(), String> {
        let destination = match target {
            Target::Sink { topic, .. } => topic.as_str(),
            Target::Function(f) => f.name.as_str(),
        };
        let mut tries = 0;
        loop {
            tries += 1;
            let span = trace
                .map(|(telemetry, traced)| traced.publish(telemetry, what.as_str(), destination));
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
            if let Some(span) = span {
                span.end(None, result.as_ref().err().map(|(e, _)| e.clone()));
            }
            let Err((error, transient)) = result else {
                if what == Publication::Reply {
                    self.stats.replies.inc();
                }
                self.stats.destinations.ok(destination);
                return Ok(());
            };
            match what {
                Publication::Reply => self.stats.reply_failed.inc(),
                Publication::DeadLetter => self.stats.dead_letter_failed.inc(),
                Publication::Retry => 0,
            };
            if !transient || tries > self.policy.retries.max(PUBLISH_RETRIES) {
                tracing::warn!(trigger = %self.name, id = event.id(), what = what.as_str(), error = %error, transient, tries, "cannot publish");
                self.stats.destinations.failing(destination, &error);
                return Err(error);
            }
            tracing::debug!(trigger = %self.name, id = event.id(), what = what.as_str(), error = %error, tries, "publish failed; trying again");
            let wait = self.policy.delay(tries, None, &mut rand::rng());
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = shutdown.cancelled() => return Err(error),
            }
        }
    }

    /// Publishes `what` (`payload`, made from the source message's `event`) to `target`. When it
    /// cannot be published, an ordered trigger holds the message and its key: it tries again in
    /// place after each pause of `max_delay` until the publish succeeds or fnbroker stops, since
    /// no broker redelivers a message ahead of the ones after it (JetStream, RabbitMQ and Redis
    /// send it again later, MQTT only on a new connection), and a later message of the key must
    /// not overtake it. An unordered trigger hands the message back ([`Self::hand_back`]). The
    /// outcome of the message when it was not published.
    async fn publish_or_hand_back(
        &self,
        target: &Target,
        payload: &Event,
        what: Publication,
        event: &Event,
        shutdown: &CancellationToken,
        trace: Trace<'_>,
    ) -> Result<(), Outcome> {
        loop {
            let error = match self.publish(target, payload, what, shutdown, trace).await {
                Ok(()) => return Ok(()),
                Err(error) => error,
            };
            if !self.ordered {
                return Err(self.hand_back(event, what, &error, shutdown).await);
            }
            tracing::warn!(trigger = %self.name, id = event.id(), what = what.as_str(), pause = ?self.policy.max_delay(), "ordered: holding the message and its key, publishing again after a pause");
            if !self.pause(shutdown).await {
                return Err(Outcome::Released);
            }
        }
    }

    /// Waits `max_delay`, the pause before a failed destination is tried again (in place, or by
    /// the broker's redelivery); `false` when fnbroker stops meanwhile.
    async fn pause(&self, shutdown: &CancellationToken) -> bool {
        tokio::select! {
            () = tokio::time::sleep(self.policy.max_delay()) => true,
            () = shutdown.cancelled() => false,
        }
    }

    /// Hands the message back to its broker for redelivery, after a pause of `max_delay`: a
    /// destination that stays broken costs one delivery per pause, never a tight loop, and the
    /// message is never dropped. `what` (a reply, a dead letter, a retry) could not be
    /// published, with `error`. A source that cannot redeliver has nothing to hand back to: see
    /// [`TriggerRuntime::lose`].
    pub(super) async fn hand_back(
        &self,
        event: &Event,
        what: Publication,
        error: &str,
        shutdown: &CancellationToken,
    ) -> Outcome {
        if self.redelivery == fnbroker_core::Redelivery::None {
            return self.lose(event, what, error, shutdown).await;
        }
        tracing::warn!(trigger = %self.name, id = event.id(), what = what.as_str(), "handing the message back to its broker");
        self.stats.handed_back.inc();
        if !self.pause(shutdown).await {
            return Outcome::Released;
        }
        Outcome::Retry(Duration::ZERO)
    }

    /// An event from a source that cannot redeliver (an HTTP request answered `202`, core
    /// NATS), whose `what` could not be published: it goes to the dead letter with the reason
    /// (unless the dead letter is what failed), else it is dropped, and counted either way.
    async fn lose(
        &self,
        event: &Event,
        what: Publication,
        error: &str,
        shutdown: &CancellationToken,
    ) -> Outcome {
        let reason =
            format!("the {what} could not be published and the source cannot redeliver: {error}");
        let outcome = Outcome::Failed {
            reason: reason.clone(),
            timed_out: false,
        };
        if what != Publication::DeadLetter
            && let Some(target) = &self.dead_letter
        {
            let letter =
                dead_letter_event(event, &reason, None, 0, &self.name, &self.function.name);
            if self
                .publish(target, &letter, Publication::DeadLetter, shutdown, None)
                .await
                .is_ok()
            {
                self.stats.dead_lettered.inc();
                return outcome;
            }
        }
        tracing::warn!(trigger = %self.name, id = event.id(), what = what.as_str(), error, "the event is dropped: it cannot be published and its source cannot redeliver");
        self.stats.dropped.inc();
        outcome
    }
}

/// The attributes of an event on a retry topic.
const RETRY_ATTEMPTS: &str = "retryattempts";
const RETRY_AT: &str = "retryat";
const RETRY_TRIGGER: &str = "retrytrigger";

/// An event's retry state, read back from the retry topic (extensions arrive as text through
/// the bindings that carry them in headers).
struct Parked {
    trigger: String,
    attempts: u32,
    at: chrono::DateTime<chrono::Utc>,
}

impl Parked {
    fn of(event: &Event) -> Option<Self> {
        let text = |name: &str| event::attribute(event, name);
        Some(Self {
            trigger: text(RETRY_TRIGGER)?.into_owned(),
            attempts: text(RETRY_ATTEMPTS)?.parse().ok()?,
            at: event::parse_time(&text(RETRY_AT)?).ok()?,
        })
    }
}

/// The attempts of an event already made before this delivery, and whether its broker counts
/// them and waits between them (broker-side retries).
#[derive(Debug, Clone, Copy)]
struct Spent {
    attempts: u32,
    by_broker: bool,
}

impl From<Option<u32>> for Spent {
    /// A broker-side retry count, or none (in-memory retries from the first attempt).
    fn from(broker_retry: Option<u32>) -> Self {
        Self {
            attempts: broker_retry.unwrap_or(0),
            by_broker: broker_retry.is_some(),
        }
    }
}

/// The tracer and the event's span, when traced.
type Trace<'a> = Option<(
    &'a crate::engine::telemetry::Telemetry,
    &'a crate::engine::telemetry::Delivery,
)>;

/// Untraced, a reply still carries the trace context the event came with, so the next hop
/// continues the trace.
fn carry_context(event: &Event, reply: &mut Event) {
    for name in ["traceparent", "tracestate"] {
        if reply.extension(name).is_none()
            && let Some(v) = event.extension(name)
        {
            reply.set_extension(name, v.clone());
        }
    }
}

/// What [`TriggerRuntime::publish`] publishes, which decides what it counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Publication {
    /// The function's reply.
    Reply,
    /// A message that failed for good.
    DeadLetter,
    /// A message parked on the trigger's retry topic.
    Retry,
}

impl Publication {
    /// As logs and spans name it.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Publication::Reply => "reply",
            Publication::DeadLetter => "dead letter",
            Publication::Retry => "retry",
        }
    }
}

impl std::fmt::Display for Publication {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
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

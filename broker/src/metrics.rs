//! Counters, gauges and the delivery latency histogram, per trigger and per function, in a
//! Prometheus registry that `/metrics` encodes.
//!
//! Each trigger and function gets its handles once at start, so counting on the hot path is an
//! atomic add, never a label lookup.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TriggerLabels {
    trigger: String,
    function: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FunctionLabels {
    function: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 1 ms to about 65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// The handles of one trigger.
#[derive(Debug, Clone)]
pub(crate) struct TriggerStats {
    pub(crate) received: Counter,
    pub(crate) delivered: Counter,
    pub(crate) retried: Counter,
    pub(crate) dead_lettered: Counter,
    pub(crate) dropped: Counter,
    pub(crate) held: Counter,
    pub(crate) publish_failed: Counter,
    pub(crate) handed_back: Counter,
    pub(crate) in_flight: Gauge,
    pub(crate) latency: Histogram,
}

impl TriggerStats {
    /// Handles registered nowhere (unit tests).
    #[cfg(test)]
    pub(crate) fn detached() -> Self {
        Self {
            received: Counter::default(),
            delivered: Counter::default(),
            retried: Counter::default(),
            dead_lettered: Counter::default(),
            dropped: Counter::default(),
            held: Counter::default(),
            publish_failed: Counter::default(),
            handed_back: Counter::default(),
            in_flight: Gauge::default(),
            latency: latency_histogram(),
        }
    }
}

/// The handles of one function.
#[derive(Debug, Clone)]
pub(crate) struct FunctionStats {
    pub(crate) calls: Counter,
    pub(crate) failures: Counter,
    pub(crate) in_flight: Gauge,
}

impl FunctionStats {
    /// Handles registered nowhere (unit tests).
    #[cfg(test)]
    pub(crate) fn detached() -> Self {
        Self {
            calls: Counter::default(),
            failures: Counter::default(),
            in_flight: Gauge::default(),
        }
    }
}

/// Every metric of the process.
pub(crate) struct Metrics {
    registry: Registry,
    received: Family<TriggerLabels, Counter>,
    delivered: Family<TriggerLabels, Counter>,
    retried: Family<TriggerLabels, Counter>,
    dead_lettered: Family<TriggerLabels, Counter>,
    dropped: Family<TriggerLabels, Counter>,
    held: Family<TriggerLabels, Counter>,
    publish_failed: Family<TriggerLabels, Counter>,
    handed_back: Family<TriggerLabels, Counter>,
    in_flight: Family<TriggerLabels, Gauge>,
    latency: HistogramFamily<TriggerLabels>,
    calls: Family<FunctionLabels, Counter>,
    failures: Family<FunctionLabels, Counter>,
    function_in_flight: Family<FunctionLabels, Gauge>,
    connections_open: Family<ListenerLabels, Gauge>,
    connections_refused: Family<ListenerLabels, Counter>,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("fnbroker");
        let m = Self {
            received: Family::default(),
            delivered: Family::default(),
            retried: Family::default(),
            dead_lettered: Family::default(),
            dropped: Family::default(),
            held: Family::default(),
            publish_failed: Family::default(),
            handed_back: Family::default(),
            in_flight: Family::default(),
            latency: HistogramFamily::new_with_constructor(latency_histogram),
            calls: Family::default(),
            failures: Family::default(),
            function_in_flight: Family::default(),
            connections_open: Family::default(),
            connections_refused: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "events_received",
            "Events that matched a trigger",
            m.received.clone(),
        );
        registry.register(
            "events_delivered",
            "Events the function accepted (2xx)",
            m.delivered.clone(),
        );
        registry.register(
            "events_retried",
            "Attempts that failed and were retried",
            m.retried.clone(),
        );
        registry.register(
            "events_dead_lettered",
            "Events published to the dead letter destination",
            m.dead_lettered.clone(),
        );
        registry.register(
            "events_dropped",
            "Events that failed with no dead letter destination",
            m.dropped.clone(),
        );
        registry.register(
            "events_held",
            "Attempts that found the function down (an outage): the event was held, no attempt spent",
            m.held.clone(),
        );
        registry.register(
            "publish_failures",
            "Reply and dead-letter publishes that failed (each try)",
            m.publish_failed.clone(),
        );
        registry.register(
            "events_handed_back",
            "Messages handed back to their broker because a reply or dead letter could not be published",
            m.handed_back.clone(),
        );
        registry.register(
            "events_in_flight",
            "Events being delivered",
            m.in_flight.clone(),
        );
        registry.register(
            "delivery_latency_seconds",
            "From the first attempt to the function's 2xx",
            m.latency.clone(),
        );
        registry.register(
            "function_calls",
            "Attempts to invoke the function",
            m.calls.clone(),
        );
        registry.register(
            "function_failures",
            "Attempts that failed",
            m.failures.clone(),
        );
        registry.register(
            "function_in_flight",
            "Calls in flight to the function",
            m.function_in_flight.clone(),
        );
        registry.register(
            "connections_open",
            "Connections open on a listening socket (an HTTP connector, or `admin`)",
            m.connections_open.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections refused because the listener was at its max_connections",
            m.connections_refused.clone(),
        );
        Self { registry, ..m }
    }

    /// Brings the listeners' counts up to date (they are kept by the listeners themselves).
    pub(crate) fn listeners(&self, counts: &[(String, fnbroker_core::ListenerCounts)]) {
        for (name, c) in counts {
            let l = ListenerLabels {
                listener: name.clone(),
            };
            self.connections_open
                .get_or_create(&l)
                .set(i64::try_from(c.open).unwrap_or(i64::MAX));
            let refused = self.connections_refused.get_or_create(&l);
            refused.inc_by(c.refused.saturating_sub(refused.get()));
        }
    }

    pub(crate) fn trigger(&self, trigger: &str, function: &str) -> TriggerStats {
        let l = TriggerLabels {
            trigger: trigger.to_string(),
            function: function.to_string(),
        };
        TriggerStats {
            received: self.received.get_or_create(&l).clone(),
            delivered: self.delivered.get_or_create(&l).clone(),
            retried: self.retried.get_or_create(&l).clone(),
            dead_lettered: self.dead_lettered.get_or_create(&l).clone(),
            dropped: self.dropped.get_or_create(&l).clone(),
            held: self.held.get_or_create(&l).clone(),
            publish_failed: self.publish_failed.get_or_create(&l).clone(),
            handed_back: self.handed_back.get_or_create(&l).clone(),
            in_flight: self.in_flight.get_or_create(&l).clone(),
            latency: self.latency.get_or_create(&l).clone(),
        }
    }

    pub(crate) fn function(&self, function: &str) -> FunctionStats {
        let l = FunctionLabels {
            function: function.to_string(),
        };
        FunctionStats {
            calls: self.calls.get_or_create(&l).clone(),
            failures: self.failures.get_or_create(&l).clone(),
            in_flight: self.function_in_flight.get_or_create(&l).clone(),
        }
    }

    /// The Prometheus text exposition.
    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_count_into_the_registry() {
        let m = Metrics::new();
        let t = m.trigger("t1", "f1");
        t.received.inc();
        t.latency.observe(0.01);
        m.function("f1").calls.inc();
        let text = m.encode();
        assert!(
            text.contains("fnbroker_events_received_total{trigger=\"t1\",function=\"f1\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "fnbroker_delivery_latency_seconds_count{trigger=\"t1\",function=\"f1\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("fnbroker_function_calls_total{function=\"f1\"} 1"),
            "{text}"
        );
    }
}

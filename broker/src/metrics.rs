//! Counters, gauges and the delivery latency histogram, per trigger, function and connector, in a
//! Prometheus registry that `/metrics` encodes: OpenMetrics 1.0 by default (what
//! prometheus-client writes), the classic text format 0.0.4 when the scraper asks for it
//! (`Accept: text/plain`), each with its own content type.
//!
//! Each trigger and function gets its handles once at start, so counting on the hot path is an
//! atomic add, never a label lookup.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TriggerLabels {
    trigger: String,
    function: String,
}

/// A trigger alone: what does not depend on its function.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TriggerOnlyLabels {
    trigger: String,
}

/// Why events were dropped.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    trigger: String,
    function: String,
    /// `failed`: the delivery failed (or the message was no valid CloudEvent) with no dead
    /// letter destination; `slow_consumer`: an at-most-once source (core NATS) had more than its
    /// buffer waiting and dropped the message before a trigger saw it.
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FunctionLabels {
    function: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    function: String,
    status_class: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    connector: String,
    status: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnectorLabels {
    connector: String,
    kind: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BacklogLabels {
    connector: String,
    source: String,
    partition: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    revision: &'static str,
}

/// The outcome classes of a function call, as `status_class` labels.
const CLASSES: [&str; 7] = ["2xx", "3xx", "4xx", "5xx", "timeout", "connect", "error"];

/// The `status_class` of one call's outcome: the HTTP status class when the function answered
/// (an `exec` function that exited 0 counts as `2xx`), `timeout`, `connect` (not reached), or
/// `error` (a command that failed, a platform's function error, a request not made).
pub(crate) fn status_class(
    result: &Result<fnbroker_functions::Success, fnbroker_functions::InvokeError>,
) -> usize {
    use fnbroker_functions::InvokeError as E;
    let status = match result {
        Ok(s) => Some(s.status),
        Err(e) => e.status(),
    };
    match (status, result) {
        (Some(s), _) if (200..300).contains(&s) => 0,
        (Some(s), _) if (300..400).contains(&s) => 1,
        (Some(s), _) if (400..500).contains(&s) => 2,
        (Some(_), _) => 3,
        (None, Err(E::Timeout(_))) => 4,
        (None, Err(E::Connect(_))) => 5,
        _ => 6,
    }
}

/// The labels of `events_dropped` for a trigger's `l` and `reason`.
fn drop_labels(l: &TriggerLabels, reason: &'static str) -> DropLabels {
    DropLabels {
        trigger: l.trigger.clone(),
        function: l.function.clone(),
        reason,
    }
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 1 ms to about 65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// One unit of a gauge, held while the guard lives: raised when it is made, lowered when it is
/// dropped. A future dropped in the middle of an await (a drain that ran out of time at a reload
/// or a stop) still gives its unit back, so an in-flight gauge never stays up for good.
#[must_use = "the unit is given back when the guard is dropped"]
pub(crate) struct Held<'a>(&'a Gauge);

impl<'a> Held<'a> {
    /// Raises `gauge` by one until the guard is dropped.
    pub(crate) fn new(gauge: &'a Gauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// What the subscriptions' sources dropped before a trigger saw it (slow consumers), by
/// subscription: the total and when the last drop was seen, for `/readyz` and the status page.
#[derive(Debug, Clone, Default)]
pub(crate) struct DropLog(Arc<Mutex<BTreeMap<String, (u64, std::time::Instant)>>>);

impl DropLog {
    /// Records `n` more dropped by `subscription`.
    pub(crate) fn record(&self, subscription: &str, n: u64) {
        if let Ok(mut log) = self.0.lock() {
            let entry = log
                .entry(subscription.to_string())
                .or_insert((0, std::time::Instant::now()));
            entry.0 += n;
            entry.1 = std::time::Instant::now();
        }
    }

    /// The subscriptions that dropped within `within`, with their totals and how long ago the
    /// last drop was.
    pub(crate) fn recent(&self, within: Duration) -> Vec<(String, u64, Duration)> {
        let Ok(log) = self.0.lock() else {
            return Vec::new();
        };
        log.iter()
            .map(|(name, (n, at))| (name.clone(), *n, at.elapsed()))
            .filter(|(_, _, ago)| *ago <= within)
            .collect()
    }
}

/// Reply, dead-letter and retry destinations whose last publish failed for good, with the
/// error and since when they fail, for `/readyz` and the status page. A publish that succeeds
/// takes its destination off.
#[derive(Debug, Clone, Default)]
pub(crate) struct DestinationLog(Arc<Mutex<BTreeMap<String, (String, std::time::Instant)>>>);

impl DestinationLog {
    /// `destination` (a topic, a function) could not be published to.
    pub(crate) fn failing(&self, destination: &str, error: &str) {
        if let Ok(mut log) = self.0.lock() {
            let entry = log
                .entry(destination.to_string())
                .or_insert_with(|| (String::new(), std::time::Instant::now()));
            error.clone_into(&mut entry.0);
        }
    }

    /// `destination` took a publish.
    pub(crate) fn ok(&self, destination: &str) {
        if let Ok(mut log) = self.0.lock()
            && !log.is_empty()
        {
            log.remove(destination);
        }
    }

    /// The failing destinations: name, last error, for how long.
    pub(crate) fn failing_now(&self) -> Vec<(String, String, Duration)> {
        let Ok(log) = self.0.lock() else {
            return Vec::new();
        };
        log.iter()
            .map(|(name, (error, since))| (name.clone(), error.clone(), since.elapsed()))
            .collect()
    }
}

/// The handles of one trigger.
#[derive(Debug, Clone)]
pub(crate) struct TriggerStats {
    pub(crate) received: Counter,
    pub(crate) redelivered: Counter,
    pub(crate) received_bytes: Counter,
    pub(crate) filtered: Counter,
    pub(crate) delivered: Counter,
    pub(crate) retried: Counter,
    pub(crate) dead_lettered: Counter,
    pub(crate) dropped: Counter,
    /// Dropped by the source before the trigger saw them (a slow consumer).
    pub(crate) dropped_slow: Counter,
    /// The health of the destinations it publishes to (shared by every trigger).
    pub(crate) destinations: DestinationLog,
    pub(crate) held: Counter,
    pub(crate) replies: Counter,
    pub(crate) reply_failed: Counter,
    pub(crate) dead_letter_failed: Counter,
    pub(crate) handed_back: Counter,
    /// Acknowledged without a call: delivered within the `delivery.dedup` window before.
    pub(crate) deduplicated: Counter,
    pub(crate) in_flight: Gauge,
    pub(crate) latency: Histogram,
}

impl TriggerStats {
    /// Handles registered nowhere (unit tests).
    #[cfg(test)]
    pub(crate) fn detached() -> Self {
        Self {
            received: Counter::default(),
            redelivered: Counter::default(),
            received_bytes: Counter::default(),
            filtered: Counter::default(),
            delivered: Counter::default(),
            retried: Counter::default(),
            dead_lettered: Counter::default(),
            dropped: Counter::default(),
            dropped_slow: Counter::default(),
            destinations: DestinationLog::default(),
            held: Counter::default(),
            replies: Counter::default(),
            reply_failed: Counter::default(),
            dead_letter_failed: Counter::default(),
            handed_back: Counter::default(),
            deduplicated: Counter::default(),
            in_flight: Gauge::default(),
            latency: latency_histogram(),
        }
    }
}

/// The handles of one function.
#[derive(Debug, Clone)]
pub(crate) struct FunctionStats {
    /// Calls by outcome, indexed by [`status_class`].
    pub(crate) calls: [Counter; CLASSES.len()],
    pub(crate) request_bytes: Counter,
    pub(crate) response_bytes: Counter,
    pub(crate) in_flight: Gauge,
    /// Calls that waited at the function's rate limit or circuit breaker.
    pub(crate) held: Counter,
}

impl FunctionStats {
    /// Handles registered nowhere (unit tests).
    #[cfg(test)]
    pub(crate) fn detached() -> Self {
        Self {
            calls: Default::default(),
            request_bytes: Counter::default(),
            response_bytes: Counter::default(),
            in_flight: Gauge::default(),
            held: Counter::default(),
        }
    }

    /// Counts one finished call.
    pub(crate) fn record(
        &self,
        result: &Result<fnbroker_functions::Success, fnbroker_functions::InvokeError>,
    ) {
        self.calls[status_class(result)].inc();
        if let Ok(fnbroker_functions::Success {
            reply: Some(fnbroker_functions::Reply::Raw { body, .. }),
            ..
        }) = result
        {
            self.response_bytes.inc_by(body.len() as u64);
        }
    }
}

/// Every metric of the process.
pub(crate) struct Metrics {
    registry: Registry,
    /// What sources dropped before a trigger saw it, by subscription.
    pub(crate) drops: DropLog,
    /// Destinations that fail.
    pub(crate) destinations: DestinationLog,
    /// The instances of `process` functions (their pools keep them).
    pub(crate) process: fnbroker_functions::ProcessMetrics,
    received: Family<TriggerLabels, Counter>,
    redelivered: Family<TriggerLabels, Counter>,
    received_bytes: Family<TriggerLabels, Counter>,
    filtered: Family<TriggerLabels, Counter>,
    delivered: Family<TriggerLabels, Counter>,
    retried: Family<TriggerLabels, Counter>,
    dead_lettered: Family<TriggerLabels, Counter>,
    dropped: Family<DropLabels, Counter>,
    held: Family<TriggerLabels, Counter>,
    replies: Family<TriggerLabels, Counter>,
    reply_failed: Family<TriggerLabels, Counter>,
    dead_letter_failed: Family<TriggerLabels, Counter>,
    handed_back: Family<TriggerLabels, Counter>,
    deduplicated: Family<TriggerOnlyLabels, Counter>,
    in_flight: Family<TriggerLabels, Gauge>,
    latency: HistogramFamily<TriggerLabels>,
    calls: Family<CallLabels, Counter>,
    request_bytes: Family<FunctionLabels, Counter>,
    response_bytes: Family<FunctionLabels, Counter>,
    function_in_flight: Family<FunctionLabels, Gauge>,
    function_held: Family<FunctionLabels, Counter>,
    function_circuit: Family<FunctionLabels, Gauge>,
    connector_up: Family<ConnectorLabels, Gauge>,
    connector_reconnects: Family<ConnectorLabels, Counter>,
    consumer_lag: Family<BacklogLabels, Gauge>,
    consumer_stalled: Family<BacklogLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// The backlog labels of the last scrape, to drop those gone since.
    backlog_seen: std::sync::Mutex<Vec<BacklogLabels>>,
    connections_open: Family<ListenerLabels, Gauge>,
    connections_refused: Family<ListenerLabels, Counter>,
    http_requests: Family<RequestLabels, Counter>,
    /// Configuration reloads, by `result` (`success`, `failure`).
    reloads: Family<ReloadLabels, Counter>,
    /// 1 when the last reload applied, 0 when it failed and the previous configuration runs on.
    reload_ok: Gauge,
    /// When the configuration running now was loaded (Unix seconds).
    reload_time: Gauge,
}

/// The labels of `config_reloads`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReloadLabels {
    /// `success` or `failure`.
    pub(crate) result: &'static str,
}

/// Seconds since the Unix epoch.
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut root = Registry::default();
        let m = Self {
            received: Family::default(),
            redelivered: Family::default(),
            received_bytes: Family::default(),
            filtered: Family::default(),
            delivered: Family::default(),
            retried: Family::default(),
            dead_lettered: Family::default(),
            dropped: Family::default(),
            held: Family::default(),
            replies: Family::default(),
            reply_failed: Family::default(),
            dead_letter_failed: Family::default(),
            handed_back: Family::default(),
            deduplicated: Family::default(),
            in_flight: Family::default(),
            latency: HistogramFamily::new_with_constructor(latency_histogram),
            calls: Family::default(),
            request_bytes: Family::default(),
            response_bytes: Family::default(),
            function_in_flight: Family::default(),
            function_held: Family::default(),
            function_circuit: Family::default(),
            connector_up: Family::default(),
            connector_reconnects: Family::default(),
            consumer_lag: Family::default(),
            consumer_stalled: Family::default(),
            backlog_seen: std::sync::Mutex::default(),
            connections_open: Family::default(),
            connections_refused: Family::default(),
            http_requests: Family::default(),
            reloads: Family::default(),
            reload_ok: Gauge::default(),
            reload_time: Gauge::default(),
            registry: Registry::default(),
            drops: DropLog::default(),
            destinations: DestinationLog::default(),
            process: fnbroker_functions::ProcessMetrics::default(),
        };
        let registry = root.sub_registry_with_prefix("fnbroker");
        m.process.register(registry);
        let counters: [(&str, &str, &Family<TriggerLabels, Counter>); 11] = [
            (
                "events_received",
                "Events that matched a trigger, first deliveries by their broker",
                &m.received,
            ),
            (
                "events_redelivered",
                "Events that matched a trigger, delivered again by their broker (after a restart, a handed-back message, a broker-side retry)",
                &m.redelivered,
            ),
            (
                "events_filtered",
                "Events of a trigger's subscription that its filter did not match",
                &m.filtered,
            ),
            (
                "events_delivered",
                "Events the function accepted (2xx)",
                &m.delivered,
            ),
            (
                "events_retried",
                "Attempts that failed and were retried",
                &m.retried,
            ),
            (
                "dead_letter_published",
                "Dead letters published (each confirmed by the destination)",
                &m.dead_lettered,
            ),
            (
                "events_held",
                "Attempts that found the function down (an outage): the event was held, no attempt spent",
                &m.held,
            ),
            (
                "reply_published",
                "Replies published (each confirmed by the destination)",
                &m.replies,
            ),
            (
                "reply_publish_failures",
                "Reply publishes that failed (each try)",
                &m.reply_failed,
            ),
            (
                "dead_letter_publish_failures",
                "Dead-letter publishes that failed (each try)",
                &m.dead_letter_failed,
            ),
            (
                "events_handed_back",
                "Messages handed back to their broker because a reply or dead letter could not be published",
                &m.handed_back,
            ),
        ];
        for (name, help, family) in counters {
            registry.register(name, help, family.clone());
        }
        registry.register(
            "events_deduplicated",
            "Events acknowledged without a call: their (source, id) was delivered within the trigger's delivery.dedup window",
            m.deduplicated.clone(),
        );
        registry.register(
            "events_dropped",
            "Events dropped: failed with no dead letter destination (reason failed), or dropped by an at-most-once source whose buffer was full (reason slow_consumer)",
            m.dropped.clone(),
        );
        registry.register_with_unit(
            "received",
            "Payload bytes of the messages that matched a trigger, redeliveries included",
            Unit::Bytes,
            m.received_bytes.clone(),
        );
        registry.register(
            "events_in_flight",
            "Events being delivered",
            m.in_flight.clone(),
        );
        // Named with its unit but declared without `# UNIT`: OpenMetrics allows a unit on a
        // histogram, the openmetrics-parser crate (0.4) refuses it, and nothing is lost.
        registry.register(
            "delivery_latency_seconds",
            "From the first attempt to the function's 2xx",
            m.latency.clone(),
        );
        registry.register(
            "function_calls",
            "Calls of the function by outcome: status_class 2xx, 3xx, 4xx, 5xx, timeout, connect (not reached) or error",
            m.calls.clone(),
        );
        registry.register_with_unit(
            "function_request",
            "Event data bytes sent to the function",
            Unit::Bytes,
            m.request_bytes.clone(),
        );
        registry.register_with_unit(
            "function_response",
            "Reply bytes the function answered with",
            Unit::Bytes,
            m.response_bytes.clone(),
        );
        registry.register(
            "function_in_flight",
            "Calls in flight to the function",
            m.function_in_flight.clone(),
        );
        registry.register(
            "function_held",
            "Calls that waited at the function's rate limit or open circuit breaker (no attempt spent)",
            m.function_held.clone(),
        );
        registry.register(
            "function_circuit_state",
            "The function's circuit breaker: 0 closed, 1 open, 2 half-open (functions with one)",
            m.function_circuit.clone(),
        );
        registry.register(
            "connector_up",
            "1 when the connector is connected and serving (what /readyz checks), else 0",
            m.connector_up.clone(),
        );
        registry.register(
            "connector_reconnects",
            "Times the connector's connection came back after it failed",
            m.connector_reconnects.clone(),
        );
        registry.register(
            "consumer_lag",
            "Messages waiting at the broker for a subscription (Kafka: high watermark minus committed offset per partition; JetStream: the consumer's pending; AMQP: the queue's ready messages)",
            m.consumer_lag.clone(),
        );
        registry.register(
            "consumer_stalled_seconds",
            "How long a subscription has had messages waiting and taken none (0 while it makes progress)",
            m.consumer_stalled.clone(),
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
        registry.register(
            "http_requests",
            "Requests an HTTP connector answered, by status (a wall of 401s is a rotated webhook secret)",
            m.http_requests.clone(),
        );
        registry.register(
            "config_reloads",
            "Configuration reloads (SIGHUP or --watch), by result; a failed one leaves the previous configuration running",
            m.reloads.clone(),
        );
        registry.register(
            "config_last_reload_successful",
            "1 when the last reload applied, 0 when it failed and the previous configuration runs on",
            m.reload_ok.clone(),
        );
        registry.register(
            "config_last_reload_success_timestamp_seconds",
            "When the configuration running now was loaded (Unix time)",
            m.reload_time.clone(),
        );
        m.reload_ok.set(1);
        m.reload_time.set(unix_now());
        let build: Family<BuildLabels, Gauge> = Family::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                revision: option_env!("FNBROKER_REVISION").unwrap_or("unknown"),
            })
            .set(1);
        registry.register(
            "build_info",
            "fnbroker's version and source revision (the value is 1)",
            build,
        );
        root.register_collector(Box::new(crate::process::Collector::new()));
        Self {
            registry: root,
            ..m
        }
    }

    /// Counts a reload: applied (`ok`) or refused, the previous configuration running on.
    pub(crate) fn reloaded(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.reloads.get_or_create(&ReloadLabels { result }).inc();
        self.reload_ok.set(i64::from(ok));
        if ok {
            self.reload_time.set(unix_now());
        }
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
            for (status, n) in &c.requests {
                let requests = self.http_requests.get_or_create(&RequestLabels {
                    connector: name.clone(),
                    status: status.to_string(),
                });
                requests.inc_by(n.saturating_sub(requests.get()));
            }
        }
    }

    /// Brings `connector_up` up to date: `(name, kind, ready)` of every connector.
    pub(crate) fn connectors(&self, states: &[crate::admin::ConnectorState]) {
        for c in states {
            let l = ConnectorLabels {
                connector: c.name.clone(),
                kind: c.kind.to_string(),
            };
            self.connector_up.get_or_create(&l).set(i64::from(c.ready));
            let reconnects = self.connector_reconnects.get_or_create(&l);
            reconnects.inc_by(c.reconnects.saturating_sub(reconnects.get()));
        }
        let now = std::time::Instant::now();
        let mut seen = Vec::new();
        for c in states {
            for b in &c.backlog {
                let l = BacklogLabels {
                    connector: c.name.clone(),
                    source: b.source.clone(),
                    partition: b.partition.map(|p| p.to_string()).unwrap_or_default(),
                };
                self.consumer_lag
                    .get_or_create(&l)
                    .set(i64::try_from(b.messages).unwrap_or(i64::MAX));
                self.consumer_stalled
                    .get_or_create(&l)
                    .set(b.stalled_for(now).as_secs_f64());
                seen.push(l);
            }
        }
        if let Ok(mut before) = self.backlog_seen.lock() {
            for gone in before.iter().filter(|l| !seen.contains(l)) {
                self.consumer_lag.remove(gone);
                self.consumer_stalled.remove(gone);
            }
            *before = seen;
        }
    }

    pub(crate) fn trigger(&self, trigger: &str, function: &str) -> TriggerStats {
        let l = TriggerLabels {
            trigger: trigger.to_string(),
            function: function.to_string(),
        };
        // One at a time: the guard `get_or_create` returns holds the family's lock until the
        // end of the statement, and the second label set of the same family needs it to write.
        let dropped = self
            .dropped
            .get_or_create(&drop_labels(&l, "failed"))
            .clone();
        let dropped_slow = self
            .dropped
            .get_or_create(&drop_labels(&l, "slow_consumer"))
            .clone();
        TriggerStats {
            received: self.received.get_or_create(&l).clone(),
            redelivered: self.redelivered.get_or_create(&l).clone(),
            received_bytes: self.received_bytes.get_or_create(&l).clone(),
            filtered: self.filtered.get_or_create(&l).clone(),
            delivered: self.delivered.get_or_create(&l).clone(),
            retried: self.retried.get_or_create(&l).clone(),
            dead_lettered: self.dead_lettered.get_or_create(&l).clone(),
            dropped,
            dropped_slow,
            destinations: self.destinations.clone(),
            held: self.held.get_or_create(&l).clone(),
            replies: self.replies.get_or_create(&l).clone(),
            reply_failed: self.reply_failed.get_or_create(&l).clone(),
            dead_letter_failed: self.dead_letter_failed.get_or_create(&l).clone(),
            handed_back: self.handed_back.get_or_create(&l).clone(),
            deduplicated: self
                .deduplicated
                .get_or_create(&TriggerOnlyLabels {
                    trigger: trigger.to_string(),
                })
                .clone(),
            in_flight: self.in_flight.get_or_create(&l).clone(),
            latency: self.latency.get_or_create(&l).clone(),
        }
    }

    pub(crate) fn function(&self, function: &str) -> FunctionStats {
        let l = FunctionLabels {
            function: function.to_string(),
        };
        FunctionStats {
            calls: CLASSES.map(|status_class| {
                self.calls
                    .get_or_create(&CallLabels {
                        function: function.to_string(),
                        status_class,
                    })
                    .clone()
            }),
            request_bytes: self.request_bytes.get_or_create(&l).clone(),
            response_bytes: self.response_bytes.get_or_create(&l).clone(),
            in_flight: self.function_in_flight.get_or_create(&l).clone(),
            held: self.function_held.get_or_create(&l).clone(),
        }
    }

    /// The circuit-breaker state gauge of `function` (only functions with a breaker have one).
    pub(crate) fn circuit(&self, function: &str) -> Gauge {
        self.function_circuit
            .get_or_create(&FunctionLabels {
                function: function.to_string(),
            })
            .clone()
    }

    /// The OpenMetrics 1.0 text exposition.
    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// The classic Prometheus text format (0.0.4), for scrapers that do not take OpenMetrics.
    pub(crate) fn encode_classic(&self) -> String {
        classic(&self.encode())
    }
}

/// OpenMetrics text as the classic format 0.0.4: a counter family is named with its `_total`
/// suffix there; `# UNIT` and `# EOF` do not exist. (Nothing here writes exemplars or
/// `_created` samples, which the classic format would not take either.)
fn classic(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + 16 * counters.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let descriptor = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match descriptor {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                out.push_str(prefix);
                out.push_str(name);
                if counters.contains(name) {
                    out.push_str("_total");
                }
                out.push(' ');
                out.push_str(tail);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
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
        m.function("f1").record(&Ok(fnbroker_functions::Success {
            status: 204,
            reply: None,
        }));
        m.function("f1")
            .record(&Err(fnbroker_functions::InvokeError::Timeout(
                std::time::Duration::from_secs(1),
            )));
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
        for class in ["2xx", "timeout"] {
            assert!(
                text.contains(&format!(
                    "fnbroker_function_calls_total{{function=\"f1\",status_class=\"{class}\"}} 1"
                )),
                "{text}"
            );
        }
        assert!(
            text.contains("fnbroker_build_info{version=\"") && text.ends_with("# EOF\n"),
            "{text}"
        );
        assert!(text.contains("process_cpu_seconds_total "), "{text}");
    }

    #[test]
    fn status_classes() {
        use fnbroker_functions::InvokeError as E;
        let status = |s: u16| E::Status {
            status: s,
            retry_after: None,
            body: String::new(),
        };
        let class = |r| CLASSES[status_class(&r)];
        assert_eq!(class(Err(status(302))), "3xx");
        assert_eq!(class(Err(status(404))), "4xx");
        assert_eq!(class(Err(status(503))), "5xx");
        assert_eq!(class(Err(E::Connect("refused".into()))), "connect");
        assert_eq!(
            class(Err(E::Exit {
                code: Some(1),
                stderr: String::new()
            })),
            "error"
        );
    }

    /// The classic format names counter families with `_total` and has no `# UNIT`/`# EOF`.
    #[test]
    fn the_classic_format_is_written_from_openmetrics() {
        let om = "# HELP a_b Things.\n# TYPE a_b counter\n# UNIT a_b bytes\na_b_total{x=\"1\"} 3\n# HELP g A gauge.\n# TYPE g gauge\ng 2\n# EOF\n";
        assert_eq!(
            classic(om),
            "# HELP a_b_total Things.\n# TYPE a_b_total counter\na_b_total{x=\"1\"} 3\n# HELP g A gauge.\n# TYPE g gauge\ng 2\n"
        );
    }
}

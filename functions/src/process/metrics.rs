//! The metrics of warm functions: instances by state, cold starts and their duration,
//! restarts by instance.

use std::time::Duration;

use fnbroker_core::invoke::Instances;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    function: String,
    /// `starting`, `running` (calls in flight) or `idle`.
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FunctionLabels {
    function: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InstanceLabels {
    function: String,
    /// The instance's number (0 up to `max` - 1).
    instance: String,
}

type Histograms = Family<FunctionLabels, Histogram, fn() -> Histogram>;

fn cold_start_histogram() -> Histogram {
    // 10 ms to about 80 s.
    Histogram::new(exponential_buckets(0.01, 2.0, 14))
}

/// The metric families of every `process` function; the broker registers them once and hands
/// them to each pool (through the build context's extensions).
#[derive(Debug, Clone)]
pub struct ProcessMetrics {
    instances: Family<StateLabels, Gauge>,
    cold_starts: Family<FunctionLabels, Counter>,
    cold_start_seconds: Histograms,
    restarts: Family<InstanceLabels, Counter>,
}

impl Default for ProcessMetrics {
    fn default() -> Self {
        Self {
            instances: Family::default(),
            cold_starts: Family::default(),
            cold_start_seconds: Histograms::new_with_constructor(cold_start_histogram),
            restarts: Family::default(),
        }
    }
}

impl ProcessMetrics {
    /// Registers the families in `registry` (prefixed `fnbroker_` by the caller's registry).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "function_instances",
            "Instances of a process function, by state (starting, running, idle)",
            self.instances.clone(),
        );
        registry.register(
            "function_cold_starts",
            "Instances of a process function started, ready or not",
            self.cold_starts.clone(),
        );
        registry.register_with_unit(
            "function_cold_start",
            "How long an instance of a process function took to become ready",
            prometheus_client::registry::Unit::Seconds,
            self.cold_start_seconds.clone(),
        );
        registry.register(
            "function_instance_restarts",
            "Instances of a process function that exited or were killed (a call past its timeout) and were replaced, by instance number",
            self.restarts.clone(),
        );
    }

    /// The metrics of the function `function`.
    pub(super) fn handle(&self, function: &str) -> Handle {
        let gauge = |state| {
            self.instances
                .get_or_create(&StateLabels {
                    function: function.to_string(),
                    state,
                })
                .clone()
        };
        Handle {
            function: function.to_string(),
            starting: gauge("starting"),
            running: gauge("running"),
            idle: gauge("idle"),
            families: self.clone(),
        }
    }
}

/// One function's metrics.
#[derive(Debug)]
pub(super) struct Handle {
    function: String,
    /// The instance gauges, made once: they are set on every call's lease and release.
    starting: Gauge,
    running: Gauge,
    idle: Gauge,
    families: ProcessMetrics,
}

impl Handle {
    /// Sets the instance gauges.
    pub(super) fn instances(&self, counts: Instances) {
        for (gauge, n) in [
            (&self.starting, counts.starting),
            (&self.running, counts.running),
            (&self.idle, counts.idle),
        ] {
            gauge.set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// An instance became ready after `took`.
    pub(super) fn cold_start(&self, took: Duration) {
        let l = FunctionLabels {
            function: self.function.clone(),
        };
        self.families.cold_starts.get_or_create(&l).inc();
        self.families
            .cold_start_seconds
            .get_or_create(&l)
            .observe(took.as_secs_f64());
    }

    /// The instance `index` ended unasked (or was killed) and is replaced.
    pub(super) fn restart(&self, index: usize) {
        self.families
            .restarts
            .get_or_create(&InstanceLabels {
                function: self.function.clone(),
                instance: index.to_string(),
            })
            .inc();
    }
}

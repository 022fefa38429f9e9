//! Triggers found on a platform: an OpenFaaS gateway's functions with a `topic` annotation each
//! get a trigger from every topic they name (the OpenFaaS connectors' contract). The gateway is
//! read every `refresh`; a function deployed or annotated starts its triggers, one removed or
//! re-annotated stops them: its subscription closes first, then what it had in flight finishes
//! (the drain of a stopping broker), so a message taken is a message delivered.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use fnbroker_config::{self as config, Loc, OpenFaasDiscovery, TriggerSource};
use fnbroker_core::function::FunctionPlugin as _;
use fnbroker_core::{Connector, Subscription};
use fnbroker_functions::kinds::openfaas::{OpenFaas, OpenFaasFunction};
use fnbroker_functions::{Discovered, Gateway, Platform};
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::engine::retry::RetryPolicy;
use crate::engine::{FunctionRuntime, PumpConfig, Target, TriggerRuntime, pump};
use crate::metrics::Metrics;

/// The discovered triggers running now, for `/v1/triggers`.
pub(crate) type Views = Arc<Mutex<BTreeMap<String, Value>>>;

/// What one discovery entry needs from the running broker.
pub(crate) struct Discovery {
    pub(crate) index: usize,
    pub(crate) entry: OpenFaasDiscovery,
    pub(crate) connector: Arc<dyn Connector>,
    pub(crate) dead_letter: Option<Target>,
    pub(crate) reply: Option<Target>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) platform: Platform,
    pub(crate) drain: Duration,
    pub(crate) views: Views,
    pub(crate) telemetry: Option<Arc<crate::engine::telemetry::Telemetry>>,
}

/// One running discovered trigger.
struct Running {
    stop: CancellationToken,
    retire: Arc<std::sync::atomic::AtomicBool>,
    pump: tokio::task::JoinHandle<()>,
}

/// `name.namespace`, the function's key and the name its triggers carry.
fn qualified(f: &Discovered) -> String {
    match &f.namespace {
        Some(ns) => format!("{}.{ns}", f.name),
        None => f.name.clone(),
    }
}

impl Discovery {
    /// Checks what cannot change while running, then reads the gateway every `refresh` until
    /// `shutdown`, and stops every discovered trigger.
    pub(crate) fn spawn(
        self,
        shutdown: CancellationToken,
    ) -> anyhow::Result<tokio::task::JoinHandle<()>> {
        let owner = format!("discover[{}]", self.index);
        anyhow::ensure!(
            crate::connectors::capabilities(self.connector.kind()).subscribes_while_running(),
            "{owner}: connector `{}` ({}) cannot open subscriptions while it runs, which discovery needs; discovery works on kafka, nats, amqp and mqtt connectors",
            *self.entry.connector,
            self.connector.kind()
        );
        // What makes a connector unfit for discovery does not depend on the function or topic:
        // asked once here, it fails the start instead of every refresh.
        self.connector
            .discovery_keys(&self.entry.subscriber("function", "topic"), "topic")
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("{owner}: connector `{}`", *self.entry.connector))?;
        let gateway = Gateway::new(&self.entry)
            .map_err(anyhow::Error::msg)
            .with_context(|| owner.clone())?;
        Ok(tokio::spawn(self.run(gateway, owner, shutdown)))
    }

    async fn run(self, gateway: Gateway, owner: String, shutdown: CancellationToken) {
        let mut running: HashMap<(String, String), Running> = HashMap::new();
        // Triggers stopped and still finishing what they had in flight.
        let mut draining: Vec<tokio::task::JoinHandle<()>> = Vec::new();
        let mut functions: HashMap<String, Arc<FunctionRuntime>> = HashMap::new();
        let mut last_error: Option<String> = None;
        loop {
            match gateway.functions().await {
                Ok(found) => {
                    if last_error.take().is_some() {
                        tracing::info!(discovery = %owner, "the gateway answers again");
                    }
                    draining.retain(|d| !d.is_finished());
                    self.reconcile(&found, &mut running, &mut functions, &shutdown)
                        .await
                        .into_iter()
                        .for_each(|d| draining.push(d));
                }
                Err(e) => {
                    // Said once per kind of failure; the running triggers keep running.
                    if last_error.as_deref() != Some(e.as_str()) {
                        tracing::warn!(discovery = %owner, error = %e, "cannot read the gateway's functions; keeping the triggers as they are");
                        last_error = Some(e);
                    }
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(self.entry.refresh.get()) => {}
            }
        }
        // Stopping with the broker: each pump drains on the shutdown token (a parent of its own).
        for r in running.into_values() {
            let _ = r.pump.await;
        }
        for d in draining {
            let _ = d.await;
        }
    }

    /// Starts the triggers of what is found and not running, stops those running and not found
    /// (their pumps, still finishing what they hold, are returned).
    async fn reconcile(
        &self,
        found: &[Discovered],
        running: &mut HashMap<(String, String), Running>,
        functions: &mut HashMap<String, Arc<FunctionRuntime>>,
        shutdown: &CancellationToken,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let mut stopping = Vec::new();
        let wanted: BTreeMap<(String, String), &Discovered> = found
            .iter()
            .flat_map(|f| f.topics.iter().map(move |t| ((qualified(f), t.clone()), f)))
            .collect();
        let gone: Vec<(String, String)> = running
            .keys()
            .filter(|k| !wanted.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            if let Some(r) = running.remove(&key) {
                tracing::info!(function = %key.0, topic = %key.1, "discovered trigger stopping: the function is gone or no longer names the topic");
                // The subscription closes at once; the deliveries in flight finish (within the
                // drain budget) while the other triggers go on.
                r.retire.store(true, std::sync::atomic::Ordering::Release);
                r.stop.cancel();
                stopping.push(r.pump);
                self.lock_views().remove(&trigger_name(&key));
            }
        }
        functions.retain(|name, _| wanted.keys().any(|(f, _)| f == name));
        for (key, f) in wanted {
            if running.contains_key(&key) {
                continue;
            }
            match self.start(&key, f, functions, shutdown).await {
                Ok(r) => {
                    tracing::info!(function = %key.0, topic = %key.1, "discovered trigger started");
                    running.insert(key, r);
                }
                Err(e) => {
                    tracing::warn!(function = %key.0, topic = %key.1, error = %format!("{e:#}"), "cannot start a discovered trigger; trying again at the next refresh");
                }
            }
        }
        stopping
    }

    async fn start(
        &self,
        key: &(String, String),
        f: &Discovered,
        functions: &mut HashMap<String, Arc<FunctionRuntime>>,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Running> {
        let function = match functions.get(&key.0) {
            Some(f) => Arc::clone(f),
            None => {
                let cfg =
                    OpenFaasFunction::discovered(&self.entry, &f.name, f.namespace.as_deref());
                let concurrency = *self.entry.concurrency;
                let invoker = OpenFaas::build(&cfg, &self.platform.context(&key.0, concurrency))?;
                let runtime = Arc::new(FunctionRuntime {
                    name: key.0.clone(),
                    invoker,
                    limit: Arc::new(Semaphore::new(concurrency)),
                    timeout: self
                        .entry
                        .timeout
                        .as_ref()
                        .map_or(Duration::from_secs(30), config::ConfDuration::get),
                    stats: self.metrics.function(&key.0),
                    health: crate::engine::health::Health::default(),
                    guard: None,
                });
                functions.insert(key.0.clone(), Arc::clone(&runtime));
                runtime
            }
        };
        let name = trigger_name(key);
        let delivery = &self.entry.delivery;
        let timeout = delivery
            .timeout
            .as_ref()
            .map_or(function.timeout, config::ConfDuration::get);
        let from = TriggerSource {
            connector: self.entry.connector.clone(),
            topic: Some(Loc::new(key.1.clone())),
            keys: config::ConnectorKeys::new(
                self.connector
                    .discovery_keys(&self.entry.subscriber(&key.0, &key.1), &key.1)
                    .map_err(anyhow::Error::msg)?,
            ),
        };
        let max_in_flight = *delivery.max_in_flight;
        let source = self
            .connector
            .subscribe(&Subscription {
                from,
                max_in_flight,
                ordered: delivery.ordered,
                attempt_timeout: timeout,
                triggers: vec![name.clone()],
            })
            .await?;
        let trigger = Arc::new(TriggerRuntime {
            name: name.clone(),
            filter: None,
            event_type: None,
            function,
            policy: RetryPolicy::from_config(delivery),
            timeout,
            dead_letter: self.dead_letter.clone(),
            reply: self.reply.clone(),
            stats: self.metrics.trigger(&name, &key.0),
            telemetry: self.telemetry.clone(),
            batch: crate::engine::BatchConfig::from_config(delivery)
                .map(crate::engine::Batcher::new),
            retry: None,
            redelivery: source.capabilities().redelivery,
            ordered: delivery.ordered,
            dedup: None,
        });
        let stop = shutdown.child_token();
        let retire = Arc::<std::sync::atomic::AtomicBool>::default();
        let pump = tokio::spawn(pump(
            source,
            PumpConfig {
                name: format!("{}:{}", *self.entry.connector, key.1),
                triggers: Arc::new(crate::engine::TriggerSet::new(vec![trigger])),
                max_in_flight,
                ordered: delivery.ordered,
                shutdown_timeout: self.drain,
                retire: Arc::clone(&retire),
                drops: self.metrics.drops.clone(),
            },
            stop.clone(),
        ));
        self.lock_views().insert(
            name.clone(),
            json!({
                "name": name,
                "from": { "connector": self.entry.connector.as_str(), "topic": key.1 },
                "to": key.0,
                "discovered": { "openfaas": fnbroker_core::redact::url(&self.entry.gateway) },
            }),
        );
        Ok(Running { stop, retire, pump })
    }

    fn lock_views(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Value>> {
        self.views
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A discovered trigger's name: `openfaas:<function>.<namespace>:<topic>`.
fn trigger_name(key: &(String, String)) -> String {
    format!("openfaas:{}:{}", key.0, key.1)
}

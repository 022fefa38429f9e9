//! The running broker: connectors, functions, triggers and one pump per subscription, built from
//! a validated configuration and brought to a new one by a reload.
//!
//! [`Broker::apply`] does both: it asks [`crate::plan`] what must change between what runs and
//! what the configuration asks for (compared by value), and carries the plan out, touching only
//! what changed. What the plan decides, and why, is documented there.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use fnbroker_config::{self as config, Config};
use fnbroker_core::{Connector, Subscription};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::admin::Live;
use crate::connectors::REGISTRY;
use crate::engine::{FunctionRuntime, PumpConfig, TriggerSet, pump};
use crate::metrics::Metrics;
mod build;

pub(crate) use build::build_connector;
use build::build_function;

use crate::plan::{DiscoverySpec, Fate, Planned, Routing, Running, RunningConnector, SourceSpec};

/// The part of `shutdown_timeout` in-flight deliveries may take to finish; the rest is kept for
/// closing the sources (the last acknowledgements and offset commits) and the connectors, so
/// that what finished is acknowledged before the process exits at `shutdown_timeout`.
pub(crate) fn drain_budget(shutdown_timeout: Duration) -> Duration {
    let reserve = (shutdown_timeout / 5).min(Duration::from_secs(5));
    shutdown_timeout.saturating_sub(reserve)
}

/// How long fnbroker waits at its end for the instances of `process` functions to stop (each
/// is killed after its own grace period before that).
const STOP_INSTANCES: Duration = Duration::from_secs(60);

/// A connector installed from a configuration entry.
struct Installed {
    config: config::ConnectorConfig,
    value: Arc<dyn Connector>,
    /// Started (serving). A reload that failed part way may leave one installed and not
    /// started; the next reload starts it.
    started: bool,
}

/// A function built from a configuration entry.
struct Built {
    config: config::Function,
    value: Arc<FunctionRuntime>,
}

/// A running subscription and its pump.
struct RunningGroup {
    connector: String,
    source: SourceSpec,
    routing: Routing,
    publishes_to: BTreeSet<String>,
    names: Vec<String>,
    triggers: Arc<TriggerSet>,
    /// How its source redelivers (the triggers swapped in are told).
    redelivery: fnbroker_core::Redelivery,
    /// Set before `stop` when the subscription is given up for good (see [`PumpConfig`]).
    retire: Arc<std::sync::atomic::AtomicBool>,
    stop: CancellationToken,
    pump: JoinHandle<()>,
}

/// A running discovery entry.
struct RunningDiscovery {
    spec: DiscoverySpec,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// What one [`Broker::apply`] did, for the log and `/v1/config`.
#[derive(Debug, Default)]
pub(crate) struct Changes {
    /// Connectors, functions and triggers added, by name.
    pub(crate) added: Vec<String>,
    /// Replaced by a new one (a connector's settings, a subscription's source).
    pub(crate) replaced: Vec<String>,
    /// Triggers swapped in on a subscription that stayed open.
    pub(crate) updated: Vec<String>,
    /// Stopped and not replaced.
    pub(crate) removed: Vec<String>,
    /// What could not be done, each with its error: a subscription its broker refused, a
    /// connector that could not start. The rest was done; the next apply tries these again.
    pub(crate) failed: Vec<String>,
}

impl Changes {
    /// Whether nothing changed.
    pub(crate) fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.replaced.is_empty()
            && self.updated.is_empty()
            && self.removed.is_empty()
            && self.failed.is_empty()
    }

    /// The changes as JSON.
    pub(crate) fn view(&self) -> Value {
        json!({
            "added": self.added, "replaced": self.replaced,
            "updated": self.updated, "removed": self.removed,
            "failed": self.failed,
        })
    }
}

/// The running broker.
pub(crate) struct Broker {
    metrics: Arc<Metrics>,
    telemetry: Option<Arc<crate::engine::telemetry::Telemetry>>,
    platform: fnbroker_functions::Platform,
    views: crate::discovery::Views,
    shutdown: CancellationToken,
    drain: Duration,
    connectors: BTreeMap<String, Installed>,
    functions: BTreeMap<String, Built>,
    groups: Vec<RunningGroup>,
    discoveries: Vec<RunningDiscovery>,
    /// Subscriptions and discoveries a reload stopped and that are still finishing.
    stopping: Vec<JoinHandle<()>>,
    /// What the admin views show; replaced by each reload.
    live: Arc<ArcSwap<Live>>,
    admin: Option<JoinHandle<()>>,
    /// The admin and telemetry sections, which a reload cannot change.
    fixed: String,
}

impl Broker {
    /// Connects everything the configuration names and starts consuming; `about` is what
    /// `/v1/config` shows of the configuration loaded.
    pub(crate) async fn start(
        config: &Config,
        about: Value,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Self> {
        let telemetry =
            crate::engine::telemetry::Telemetry::start(config.telemetry.as_ref())?.map(Arc::new);
        let metrics = Arc::new(Metrics::new());
        let mut broker = Self {
            platform: fnbroker_functions::Platform {
                callbacks: Arc::default(),
                admin_url: config.admin.as_ref().and_then(config::Admin::base_url),
                tasks: tokio_util::task::TaskTracker::new(),
                process_metrics: metrics.process.clone(),
            },
            metrics,
            telemetry,
            views: crate::discovery::Views::default(),
            shutdown: shutdown.clone(),
            drain: drain_budget(config.shutdown_timeout.get()),
            connectors: BTreeMap::new(),
            functions: BTreeMap::new(),
            groups: Vec::new(),
            discoveries: Vec::new(),
            stopping: Vec::new(),
            live: Arc::new(ArcSwap::from_pointee(Live::empty())),
            admin: None,
            fixed: fixed_fingerprint(config),
        };
        let changes = broker.apply(config).await?;
        if !changes.failed.is_empty() {
            // At start nothing runs yet that an operator relies on: better a clear exit than
            // a broker that runs part of its configuration.
            anyhow::bail!("{}", changes.failed.join("; "));
        }
        broker.show(config, about);
        if let Some(admin) = &config.admin {
            broker.admin = Some(broker.serve_admin(admin).await?);
        }
        Ok(broker)
    }

    async fn serve_admin(&self, admin: &config::Admin) -> anyhow::Result<JoinHandle<()>> {
        let listen: SocketAddr = admin
            .listen
            .parse()
            .context("admin: invalid listen address")?;
        let state = crate::admin::AdminState {
            stuck_after: admin.stuck_after.get(),
            metrics: Arc::clone(&self.metrics),
            counts: Arc::default(),
            token: admin.token.clone(),
            tls: match &admin.tls {
                Some(tls) => Some(Arc::new(
                    tls.server_config()
                        .map_err(|e| anyhow::anyhow!("admin: tls: {e}"))?,
                )),
                None => None,
            },
            live: Arc::clone(&self.live),
            callbacks: Arc::clone(&self.platform.callbacks),
            discovered: Arc::clone(&self.views),
        };
        crate::admin::serve(listen, state, self.shutdown.clone()).await
    }

    /// Publishes the running configuration to the admin views; `about` is its `/v1/config`.
    pub(crate) fn show(&self, config: &Config, about: Value) {
        self.live.store(Arc::new(Live {
            connectors: self
                .connectors
                .iter()
                .map(|(name, c)| (name.clone(), Arc::clone(&c.value)))
                .collect(),
            triggers: crate::admin::triggers_view(config),
            functions: crate::admin::functions_view(config),
            runtimes: self
                .functions
                .iter()
                .map(|(name, f)| (name.clone(), Arc::clone(&f.value)))
                .collect(),
            config: about,
        }));
    }

    /// Replaces `/v1/config` alone (a reload that was refused).
    pub(crate) fn show_about(&self, about: Value) {
        let live = self.live.load();
        self.live.store(Arc::new(Live {
            connectors: live.connectors.clone(),
            triggers: live.triggers.clone(),
            functions: live.functions.clone(),
            runtimes: live.runtimes.clone(),
            config: about,
        }));
    }

    /// The metrics, to count reloads.
    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// What runs, as the plan sees it.
    fn running(&self) -> Running<'_> {
        Running {
            connectors: self
                .connectors
                .iter()
                .map(|(name, c)| {
                    let running = RunningConnector {
                        config: &c.config,
                        started: c.started,
                        subscribes_while_running: crate::connectors::capabilities(c.value.kind())
                            .subscribes_while_running(),
                    };
                    (name.as_str(), running)
                })
                .collect(),
            functions: self
                .functions
                .iter()
                .map(|(name, f)| (name.as_str(), &f.config))
                .collect(),
            groups: self
                .groups
                .iter()
                .map(|g| crate::plan::RunningGroup {
                    source: &g.source,
                    routing: &g.routing,
                    publishes_to: &g.publishes_to,
                })
                .collect(),
            discoveries: self.discoveries.iter().map(|d| &d.spec).collect(),
        }
    }

    /// Brings the running broker to `config` by the [`plan`](crate::plan) of what changed.
    ///
    /// Everything that can fail without IO (building connectors and functions) is done before
    /// anything stops, so a configuration that cannot be built leaves the running one untouched
    /// (`Err`). A step that fails afterwards (a subscription its broker refuses, a connector
    /// that cannot start) does not stop the others: it is recorded in [`Changes::failed`], and
    /// what it left undone is part of the next plan (a subscription that is not running is
    /// opened, a connector that is not started is started).
    pub(crate) async fn apply(&mut self, config: &Config) -> anyhow::Result<Changes> {
        let with_consumers = with_retry_consumers(config)?;
        let config = &with_consumers;
        if fixed_fingerprint(config) != self.fixed && !self.connectors.is_empty() {
            tracing::warn!(
                "the admin and telemetry sections changed: they take effect at the next restart"
            );
        }
        let plan = crate::plan::plan(&self.running(), config)?;
        let mut changes = Changes::default();

        // Build what is new before anything stops: a failure leaves everything running.
        let mut new_connectors = BTreeMap::new();
        for name in &plan.build_connectors {
            let cfg = &config.connectors[name];
            new_connectors.insert(name.clone(), (cfg.clone(), build_connector(name, cfg)?));
        }
        let mut new_functions = BTreeMap::new();
        for name in &plan.build_functions {
            let cfg = &config.functions[name];
            let function = build_function(name, cfg, &self.metrics, &self.platform)?;
            new_functions.insert(
                name.clone(),
                Built {
                    config: cfg.clone(),
                    value: function,
                },
            );
        }

        // Stop what goes: the subscriptions first (each drains what it has in flight), then
        // the connectors they were on.
        let old_triggers: BTreeSet<String> = self
            .groups
            .iter()
            .flat_map(|g| g.names.iter().cloned())
            .collect();
        let groups = std::mem::take(&mut self.groups);
        // A kept subscription's place among those that remain.
        let mut renumber = BTreeMap::new();
        for (index, group) in groups.into_iter().enumerate() {
            if plan.close_groups.contains(&index) {
                if plan.retire_groups.contains(&index) {
                    group
                        .retire
                        .store(true, std::sync::atomic::Ordering::Release);
                }
                group.stop.cancel();
                self.stopping.push(group.pump);
            } else {
                renumber.insert(index, self.groups.len());
                self.groups.push(group);
            }
        }
        let running = std::mem::take(&mut self.discoveries);
        for (index, d) in running.into_iter().enumerate() {
            if plan.stop_discoveries.contains(&index) {
                d.stop.cancel();
                self.stopping.push(d.task);
            } else {
                self.discoveries.push(d);
            }
        }
        self.finish_stopping().await;
        for name in &plan.stop_connectors {
            if let Some(old) = self.connectors.remove(name) {
                old.value.stop().await;
                if config.connectors.contains_key(name) {
                    changes.replaced.push(format!("connector {name}"));
                } else {
                    changes.removed.push(format!("connector {name}"));
                }
            }
        }

        // Install and open what is new.
        for (name, (cfg, connector)) in new_connectors {
            if !plan.stop_connectors.contains(&name) {
                changes.added.push(format!("connector {name}"));
            }
            self.connectors.insert(
                name,
                Installed {
                    config: cfg,
                    value: connector,
                    started: false,
                },
            );
        }
        for name in &plan.remove_functions {
            self.functions.remove(name);
            changes.removed.push(format!("function {name}"));
        }
        for (name, f) in new_functions {
            let what = if self.functions.contains_key(&name) {
                &mut changes.replaced
            } else {
                &mut changes.added
            };
            what.push(format!("function {name}"));
            self.functions.insert(name, f);
        }
        self.drain = drain_budget(config.shutdown_timeout.get());
        // Connectors with a subscription that could not be opened: one that cannot subscribe
        // once started is left unstarted, so that the next apply can still open it.
        let mut incomplete = BTreeSet::new();
        for (p, fate) in &plan.subscriptions {
            let names = p.names();
            let opened = match fate {
                Fate::Keep(_) => Ok(()),
                Fate::Swap(old) => match renumber.get(old) {
                    Some(i) => self.swap(*i, p).await,
                    None => Err(anyhow::anyhow!("a kept subscription went missing")),
                },
                Fate::Open => self.open(p).await,
            };
            if let Err(e) = opened {
                incomplete.insert(p.connector().to_string());
                changes.failed.push(format!("{e:#}"));
                continue;
            }
            for n in names {
                let list = match fate {
                    Fate::Keep(_) => continue,
                    _ if !old_triggers.contains(&n) => &mut changes.added,
                    Fate::Swap(_) => &mut changes.updated,
                    Fate::Open => &mut changes.replaced,
                };
                list.push(format!("trigger {n}"));
            }
        }
        let new_triggers: BTreeSet<String> = plan
            .subscriptions
            .iter()
            .flat_map(|(p, _)| p.names())
            .collect();
        changes.removed.extend(
            old_triggers
                .difference(&new_triggers)
                .map(|n| format!("trigger {n}")),
        );
        // A connector starts once its subscriptions are in place.
        for name in &plan.start_connectors {
            let Some(c) = self.connectors.get_mut(name) else {
                continue;
            };
            if incomplete.contains(name)
                && !crate::connectors::capabilities(c.value.kind()).subscribes_while_running()
            {
                changes.failed.push(format!(
                    "connector `{name}` not started: a subscription of it could not be opened"
                ));
                continue;
            }
            match c.value.start().await {
                Ok(()) => c.started = true,
                Err(e) => changes.failed.push(format!(
                    "{:#}",
                    anyhow::Error::new(e).context(format!("cannot start connector `{name}`"))
                )),
            }
        }
        for (spec, index) in plan.start_discoveries {
            if let Err(e) = self.discover(config, index, spec).await {
                changes.failed.push(format!("{e:#}"));
            }
        }
        Ok(changes)
    }

    /// Waits for the subscriptions and discoveries being stopped; each is taken off the list
    /// only once it finished, so a stop that interrupts this still waits for the rest.
    async fn finish_stopping(&mut self) {
        while let Some(task) = self.stopping.last_mut() {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "a subscription task failed");
            }
            self.stopping.pop();
        }
    }

    /// Swaps `p`'s triggers into the running subscription `index`, which stays open.
    async fn swap(&mut self, index: usize, p: &Planned<'_>) -> anyhow::Result<()> {
        let redelivery = self
            .groups
            .get(index)
            .context("a kept subscription went missing")?
            .redelivery;
        let list = self.trigger_runtimes(p, redelivery).await?;
        let group = self
            .groups
            .get_mut(index)
            .context("a kept subscription went missing")?;
        group.triggers.replace(list);
        group.routing = p.routing.clone();
        group.publishes_to = p.publishes_to.clone();
        group.names = p.names();
        Ok(())
    }

    /// Subscribes for `p` and starts its pump.
    async fn open(&mut self, p: &Planned<'_>) -> anyhow::Result<()> {
        let connector = Arc::clone(
            &self
                .connectors
                .get(p.connector())
                .with_context(|| format!("unknown connector `{}`", p.connector()))?
                .value,
        );
        let names = p.names();
        let source = connector
            .subscribe(&Subscription {
                from: p.source.from.clone(),
                max_in_flight: p.source.max_in_flight,
                ordered: p.source.ordered,
                attempt_timeout: p.source.attempt_timeout,
                triggers: names.clone(),
            })
            .await
            .with_context(|| format!("cannot subscribe for trigger(s) {}", names.join(", ")))?;
        let redelivery = source.capabilities().redelivery;
        let triggers = self.trigger_runtimes(p, redelivery).await?;
        let triggers = Arc::new(TriggerSet::new(triggers));
        let retire = Arc::default();
        let stop = self.shutdown.child_token();
        let pump = tokio::spawn(pump(
            source,
            PumpConfig {
                name: format!("{}:{}", p.connector(), p.source.from.topic()),
                triggers: Arc::clone(&triggers),
                max_in_flight: p.source.max_in_flight,
                ordered: p.source.ordered,
                shutdown_timeout: self.drain,
                retire: Arc::clone(&retire),
                drops: self.metrics.drops.clone(),
            },
            stop.clone(),
        ));
        self.groups.push(RunningGroup {
            connector: p.connector().to_string(),
            source: p.source.clone(),
            routing: p.routing.clone(),
            publishes_to: p.publishes_to.clone(),
            names,
            triggers,
            redelivery,
            retire,
            stop,
            pump,
        });
        Ok(())
    }

    /// Starts the discovery entry `index` of `config`.
    async fn discover(
        &mut self,
        config: &Config,
        index: usize,
        spec: DiscoverySpec,
    ) -> anyhow::Result<()> {
        let entry = config.discover[index].openfaas.clone();
        let connector = self
            .connectors
            .get(entry.connector.as_str())
            .with_context(|| {
                format!(
                    "discover[{index}]: unknown connector `{}`",
                    *entry.connector
                )
            })?;
        let stop = self.shutdown.child_token();
        let discovery = crate::discovery::Discovery {
            index,
            connector: Arc::clone(&connector.value),
            dead_letter: self.target(entry.dead_letter.as_ref()).await?,
            reply: self.target(entry.reply.as_ref()).await?,
            entry,
            metrics: Arc::clone(&self.metrics),
            platform: self.platform.clone(),
            drain: self.drain,
            views: Arc::clone(&self.views),
            telemetry: self.telemetry.clone(),
        };
        let task = discovery.spawn(stop.clone())?;
        self.discoveries.push(RunningDiscovery { spec, stop, task });
        Ok(())
    }

    /// Whether every connector is connected.
    pub(crate) fn is_ready(&self) -> bool {
        self.connectors.values().all(|c| c.value.is_ready())
    }

    /// [`Broker::is_ready`], for a task of its own; it follows reloads.
    pub(crate) fn readiness(&self) -> impl Fn() -> bool + Send + 'static {
        let live = Arc::clone(&self.live);
        move || live.load().connectors.iter().all(|(_, c)| c.is_ready())
    }

    /// Waits until every pump has drained (after the shutdown token fired), then logs a summary.
    pub(crate) async fn join(mut self) {
        self.finish_stopping().await;
        // Names and counters only: the trigger runtimes hold their functions, which must go
        // before their instances can be stopped.
        let mut summaries = Vec::new();
        for g in self.groups {
            summaries.extend(
                g.triggers
                    .current()
                    .iter()
                    .map(|t| (t.name.clone(), t.stats.clone())),
            );
            drop(g.triggers);
            if let Err(e) = g.pump.await {
                tracing::error!(error = %e, connector = %g.connector, "a subscription task failed");
            }
        }
        for d in self.discoveries {
            if let Err(e) = d.task.await {
                tracing::error!(error = %e, "a discovery task failed");
            }
        }
        for connector in self.connectors.values() {
            connector.value.stop().await;
        }
        if let Some(admin) = self.admin {
            let _ = admin.await;
        }
        // The functions go; `process` functions stop their instances (SIGTERM, then SIGKILL
        // after their grace period), which fnbroker waits for, so that none outlives it.
        self.functions.clear();
        self.live.store(Arc::new(Live::empty()));
        self.platform.tasks.close();
        if tokio::time::timeout(STOP_INSTANCES, self.platform.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "function instances still stopping after {STOP_INSTANCES:?}: they are killed"
            );
        }
        if let Some(telemetry) = self.telemetry {
            // Exporting the last batch blocks (the exporter's own thread does the work).
            let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
        }
        for (name, s) in &summaries {
            tracing::info!(
                trigger = %name,
                received = s.received.get(),
                delivered = s.delivered.get(),
                retried = s.retried.get(),
                dead_lettered = s.dead_lettered.get(),
                dropped = s.dropped.get() + s.dropped_slow.get(),
                "trigger summary"
            );
        }
    }
}

/// The sections a reload cannot change.
fn fixed_fingerprint(config: &Config) -> String {
    format!("{:?}{:?}", config.admin, config.telemetry)
}

/// `config` with, for each trigger that keeps its retries in a topic, the trigger that consumes
/// that topic: the same name, function, policy and destinations, its source the retry topic as
/// the connector's kind consumes it (a durable consumer of its own, shared by the replicas).
/// Added here, the consumer is planned, reloaded and stopped as any subscription is.
pub(crate) fn with_retry_consumers(config: &Config) -> anyhow::Result<Config> {
    let mut out = config.clone();
    for t in &config.triggers {
        let Some(retry) = &t.delivery.retry_topic else {
            continue;
        };
        let name = retry.connector.as_str();
        let kind = config
            .connectors
            .get(name)
            .and_then(|c| REGISTRY.get(c.kind()))
            .with_context(|| format!("trigger `{}`: unknown connector `{name}`", *t.name))?;
        let (topic, keys) = kind
            .retry_source(&t.name, &retry.topic)
            .map_err(|e| anyhow::anyhow!("trigger `{}`: retry_topic: {e}", *t.name))?;
        let mut consumer = t.clone();
        consumer.from = config::TriggerSource {
            connector: retry.connector.clone(),
            topic: topic.map(config::Loc::new),
            keys: config::ConnectorKeys::new(keys),
        };
        consumer.filter = None;
        consumer.event = None;
        consumer.retry_consumer = true;
        out.triggers.push(consumer);
    }
    Ok(out)
}

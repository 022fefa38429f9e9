//! The running broker: connectors, functions, triggers and one pump per subscription, built from
//! a validated configuration and brought to a new one by a reload.
//!
//! [`Broker::apply`] does both. It compares what runs with what the configuration asks for, by
//! fingerprint (the settings after `${...}` substitution), and touches only what changed:
//! - a connector whose settings changed, or that is gone, is stopped once its subscriptions have
//!   drained, and a new one takes its place;
//! - a subscription (the triggers with one `from`) keeps running when neither its source nor its
//!   triggers changed; when only its triggers changed (a filter, a function, a retry policy),
//!   the new triggers are swapped in and the subscription stays open, so no message passes
//!   unseen; when its source changed (topic, keys, `max_in_flight`, `ordered`, the attempt
//!   timeout) it is drained, closed (not retired: what its broker keeps for it stays) and opened
//!   again, so nothing in flight is lost or delivered twice;
//! - discovery entries are restarted when their entry changed.
//!
//! Everything that can fail without IO (building connectors and functions) is done before
//! anything stops, so a configuration that cannot be built leaves the running one untouched.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use fnbroker_core::config::{self, Config, Destination};
use fnbroker_core::{Connector, Subscription};
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::admin::Live;
use crate::connectors::REGISTRY;
use crate::engine::{FunctionRuntime, PumpConfig, Target, TriggerRuntime, TriggerSet, pump};
use crate::filter::Filter;
use crate::metrics::Metrics;
use crate::retry::RetryPolicy;

/// Creates the connector of one (validated) configuration entry, through the registry.
pub(crate) fn build_connector(
    name: &str,
    cfg: &config::ConnectorConfig,
) -> anyhow::Result<Arc<dyn Connector>> {
    let kind = REGISTRY
        .get(cfg.kind())
        .with_context(|| format!("connector `{name}`: unknown kind `{}`", cfg.kind()))?;
    let settings = cfg
        .settings()
        .with_context(|| format!("connector `{name}`: settings not validated"))?;
    Ok(kind.build(name, settings)?)
}

fn build_function(
    name: &str,
    cfg: &config::Function,
    metrics: &Metrics,
    platform: &fnbroker_functions::Platform,
) -> anyhow::Result<Arc<FunctionRuntime>> {
    let concurrency = *cfg.concurrency;
    let kind = cfg
        .kind()
        .with_context(|| format!("function `{name}` has no kind"))?;
    if let Some(tls) = kind.tls() {
        tls.warn_if_insecure("function", name);
    }
    let invoker = fnbroker_functions::build(kind, concurrency, platform)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("function `{name}`"))?;
    Ok(Arc::new(FunctionRuntime {
        name: name.to_string(),
        invoker,
        limit: Arc::new(Semaphore::new(concurrency)),
        timeout: cfg.timeout(),
        stats: metrics.function(name),
        health: crate::health::Health::default(),
        guard: crate::guard::Guard::new(
            cfg.rate_limit.as_ref(),
            cfg.circuit_breaker.as_ref(),
            if cfg.circuit_breaker.is_some() {
                metrics.circuit(name)
            } else {
                prometheus_client::metrics::gauge::Gauge::default()
            },
        ),
    }))
}

/// The part of `shutdown_timeout` in-flight deliveries may take to finish; the rest is kept for
/// closing the sources (the last acknowledgements and offset commits) and the connectors, so
/// that what finished is acknowledged before the process exits at `shutdown_timeout`.
pub(crate) fn drain_budget(shutdown_timeout: Duration) -> Duration {
    let reserve = (shutdown_timeout / 5).min(Duration::from_secs(5));
    shutdown_timeout.saturating_sub(reserve)
}

/// Something built from a configuration entry, with the fingerprint of that entry.
struct Versioned<T> {
    fingerprint: String,
    value: T,
}

/// The fingerprint of a connector entry: its kind and settings, after substitution.
fn connector_fingerprint(cfg: &config::ConnectorConfig) -> String {
    format!("{}:{}", cfg.kind(), cfg.raw())
}

/// The fingerprint of any other entry: its parsed form (locations are not part of it, so
/// moving an entry in the file changes nothing).
fn fingerprint(entry: &impl std::fmt::Debug) -> String {
    format!("{entry:?}")
}

/// The fingerprints of a configuration's connectors and functions, by name.
struct Prints<'a> {
    connectors: BTreeMap<&'a str, String>,
    functions: BTreeMap<&'a str, String>,
}

impl<'a> Prints<'a> {
    fn of(config: &'a Config) -> Self {
        Self {
            connectors: config
                .connectors
                .iter()
                .map(|(name, c)| (name.as_str(), connector_fingerprint(c)))
                .collect(),
            functions: config
                .functions
                .iter()
                .map(|(name, f)| (name.as_str(), fingerprint(f)))
                .collect(),
        }
    }
}

/// One subscription as a configuration asks for it: the triggers with the same `from`.
struct Planned<'a> {
    from: config::TriggerSource,
    triggers: Vec<&'a config::Trigger>,
    max_in_flight: usize,
    ordered: bool,
    attempt_timeout: Duration,
    /// What the subscription is at its broker: a change here needs a new subscription.
    source: String,
    /// What its triggers are, with the functions and connectors they use.
    routing: String,
    /// The connectors its triggers publish to.
    publishes_to: BTreeSet<String>,
}

impl Planned<'_> {
    fn connector(&self) -> &str {
        self.from.connector.as_str()
    }

    fn names(&self) -> Vec<String> {
        self.triggers.iter().map(|t| t.name.to_string()).collect()
    }
}

/// A running subscription and its pump.
struct RunningGroup {
    connector: String,
    source: String,
    routing: String,
    publishes_to: BTreeSet<String>,
    names: Vec<String>,
    triggers: Arc<TriggerSet>,
    stop: CancellationToken,
    pump: JoinHandle<()>,
}

/// A running discovery entry.
struct RunningDiscovery {
    fingerprint: String,
    uses: BTreeSet<String>,
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
}

impl Changes {
    /// Whether nothing changed.
    pub(crate) fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.replaced.is_empty()
            && self.updated.is_empty()
            && self.removed.is_empty()
    }

    /// The changes as JSON.
    pub(crate) fn view(&self) -> Value {
        json!({
            "added": self.added, "replaced": self.replaced,
            "updated": self.updated, "removed": self.removed,
        })
    }
}

/// What becomes of a running subscription.
enum Fate {
    /// Nothing changed.
    Keep(usize),
    /// The source stays open, the triggers are replaced.
    Swap(usize),
    /// A new subscription (a new source, or the running one replaced).
    Open,
}

/// The running broker.
pub(crate) struct Broker {
    metrics: Arc<Metrics>,
    telemetry: Option<Arc<crate::telemetry::Telemetry>>,
    platform: fnbroker_functions::Platform,
    views: crate::discovery::Views,
    shutdown: CancellationToken,
    drain: Duration,
    connectors: BTreeMap<String, Versioned<Arc<dyn Connector>>>,
    functions: BTreeMap<String, Versioned<Arc<FunctionRuntime>>>,
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
            crate::telemetry::Telemetry::start(config.telemetry.as_ref())?.map(Arc::new);
        let mut broker = Self {
            metrics: Arc::new(Metrics::new()),
            telemetry,
            platform: fnbroker_functions::Platform {
                callbacks: Arc::default(),
                admin_url: config.admin.as_ref().and_then(config::Admin::base_url),
            },
            views: crate::discovery::Views::default(),
            shutdown: shutdown.clone(),
            drain: drain_budget(config.shutdown_timeout.get()),
            connectors: BTreeMap::new(),
            functions: BTreeMap::new(),
            groups: Vec::new(),
            discoveries: Vec::new(),
            stopping: Vec::new(),
            live: Arc::new(ArcSwap::from_pointee(Live {
                connectors: Vec::new(),
                triggers: Value::Array(Vec::new()),
                functions: Value::Array(Vec::new()),
                runtimes: Vec::new(),
                config: Value::Null,
            })),
            admin: None,
            fixed: fixed_fingerprint(config),
        };
        broker.apply(config).await?;
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

    /// Brings the running broker to `config`; see the module's documentation for what is
    /// replaced and what is left alone.
    pub(crate) async fn apply(&mut self, config: &Config) -> anyhow::Result<Changes> {
        let with_consumers = with_retry_consumers(config)?;
        let config = &with_consumers;
        let mut changes = Changes::default();
        if fixed_fingerprint(config) != self.fixed && !self.connectors.is_empty() {
            tracing::warn!(
                "the admin and telemetry sections changed: they take effect at the next restart"
            );
        }
        let prints = Prints::of(config);
        let (connector_prints, function_prints) = (&prints.connectors, &prints.functions);
        let plan = plan(config, &prints)?;

        // Connectors that cannot stay: changed or gone; then those that would need a new
        // subscription while running and cannot open one.
        let mut rebuilt: BTreeSet<String> = self
            .connectors
            .iter()
            .filter(|(name, c)| connector_prints.get(name.as_str()) != Some(&c.fingerprint))
            .map(|(name, _)| name.clone())
            .collect();
        let fates = loop {
            let fates: Vec<Fate> = plan.iter().map(|p| self.fate(p, &rebuilt)).collect();
            let cannot: Vec<String> = plan
                .iter()
                .zip(&fates)
                .filter(|(p, fate)| {
                    matches!(fate, Fate::Open)
                        && !rebuilt.contains(p.connector())
                        && self
                            .connectors
                            .get(p.connector())
                            .is_some_and(|c| !c.value.subscribes_while_running())
                })
                .map(|(p, _)| p.connector().to_string())
                .collect();
            if cannot.is_empty() {
                break fates;
            }
            rebuilt.extend(cannot);
        };

        // Build what is new before anything stops: a failure leaves everything running.
        let mut new_connectors = BTreeMap::new();
        for (name, cfg) in &config.connectors {
            if !self.connectors.contains_key(name) || rebuilt.contains(name) {
                let connector = build_connector(name, cfg)?;
                new_connectors.insert(
                    name.clone(),
                    Versioned {
                        fingerprint: connector_prints[name.as_str()].clone(),
                        value: connector,
                    },
                );
            }
        }
        let mut new_functions = BTreeMap::new();
        for (name, cfg) in &config.functions {
            let print = &function_prints[name.as_str()];
            if self
                .functions
                .get(name)
                .is_none_or(|f| &f.fingerprint != print)
            {
                let function = build_function(name, cfg, &self.metrics, &self.platform)?;
                new_functions.insert(
                    name.clone(),
                    Versioned {
                        fingerprint: print.clone(),
                        value: function,
                    },
                );
            }
        }

        // Stop what goes: the subscriptions first (each drains what it has in flight), then
        // the connectors they were on.
        let kept: BTreeSet<usize> = fates
            .iter()
            .filter_map(|f| match f {
                Fate::Keep(i) | Fate::Swap(i) => Some(*i),
                Fate::Open => None,
            })
            .collect();
        let old_triggers: BTreeSet<String> = self
            .groups
            .iter()
            .flat_map(|g| g.names.iter().cloned())
            .collect();
        let groups = std::mem::take(&mut self.groups);
        let mut remaining = Vec::new();
        for (index, group) in groups.into_iter().enumerate() {
            if kept.contains(&index) {
                remaining.push(group);
            } else {
                group.stop.cancel();
                self.stopping.push(group.pump);
            }
        }
        // A kept subscription's place among those that remain.
        let renumber: BTreeMap<usize, usize> = kept
            .iter()
            .enumerate()
            .map(|(new, old)| (*old, new))
            .collect();
        self.groups = remaining;
        let discoveries = self.discovery_prints(config, &prints);
        let running = std::mem::take(&mut self.discoveries);
        for d in running {
            // Its fingerprint holds those of the connectors and functions it uses; a connector
            // rebuilt without a change of its own still takes the discovery with it.
            let stays = discoveries.iter().any(|(print, _)| *print == d.fingerprint)
                && d.uses.is_disjoint(&rebuilt);
            if stays {
                self.discoveries.push(d);
            } else {
                d.stop.cancel();
                self.stopping.push(d.task);
            }
        }
        self.finish_stopping().await;
        for name in &rebuilt {
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
        for (name, c) in new_connectors.iter() {
            if !rebuilt.contains(name) {
                changes.added.push(format!("connector {name}"));
            }
            self.connectors.insert(
                name.clone(),
                Versioned {
                    fingerprint: c.fingerprint.clone(),
                    value: Arc::clone(&c.value),
                },
            );
        }
        self.functions.retain(|name, _| {
            let stays = config.functions.contains_key(name);
            if !stays {
                changes.removed.push(format!("function {name}"));
            }
            stays
        });
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
        for (p, fate) in plan.iter().zip(&fates) {
            let names = p.names();
            match fate {
                Fate::Keep(_) => {}
                Fate::Swap(old) => {
                    let list = self.trigger_runtimes(p).await?;
                    let Some(group) = renumber.get(old).and_then(|i| self.groups.get_mut(*i))
                    else {
                        anyhow::bail!("a kept subscription went missing");
                    };
                    group.triggers.replace(list);
                    group.routing = p.routing.clone();
                    group.publishes_to = p.publishes_to.clone();
                    for n in &names {
                        let what = if old_triggers.contains(n) {
                            &mut changes.updated
                        } else {
                            &mut changes.added
                        };
                        what.push(format!("trigger {n}"));
                    }
                    group.names = names;
                }
                Fate::Open => {
                    for n in &names {
                        let what = if old_triggers.contains(n) {
                            &mut changes.replaced
                        } else {
                            &mut changes.added
                        };
                        what.push(format!("trigger {n}"));
                    }
                    self.open(p).await?;
                }
            }
        }
        let new_triggers: BTreeSet<String> = plan.iter().flat_map(Planned::names).collect();
        changes.removed.extend(
            old_triggers
                .difference(&new_triggers)
                .map(|n| format!("trigger {n}")),
        );
        // A new connector starts once its subscriptions are in place.
        for (name, c) in &new_connectors {
            c.value
                .start()
                .await
                .with_context(|| format!("cannot start connector `{name}`"))?;
        }
        for (print, index) in discoveries {
            if self.discoveries.iter().any(|d| d.fingerprint == print) {
                continue;
            }
            self.discover(config, index, print).await?;
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

    /// What becomes of the running subscription that has `p`'s source, if any.
    fn fate(&self, p: &Planned<'_>, rebuilt: &BTreeSet<String>) -> Fate {
        if rebuilt.contains(p.connector()) {
            return Fate::Open;
        }
        let Some(index) = self.groups.iter().position(|g| g.source == p.source) else {
            return Fate::Open;
        };
        let group = &self.groups[index];
        if !group.publishes_to.is_disjoint(rebuilt) {
            // Its deliveries in flight publish through a connector that is being replaced:
            // drained first, it starts again on the new one.
            Fate::Open
        } else if group.routing == p.routing {
            Fate::Keep(index)
        } else {
            Fate::Swap(index)
        }
    }

    /// The trigger runtimes of a planned subscription, with the connectors and functions
    /// installed now.
    async fn trigger_runtimes(&self, p: &Planned<'_>) -> anyhow::Result<Vec<Arc<TriggerRuntime>>> {
        let mut list = Vec::with_capacity(p.triggers.len());
        for t in &p.triggers {
            let function = Arc::clone(
                &self
                    .functions
                    .get(t.to.as_str())
                    .with_context(|| format!("unknown function `{}`", *t.to))?
                    .value,
            );
            let timeout = t
                .delivery
                .timeout
                .as_ref()
                .map_or(function.timeout, config::ConfDuration::get);
            list.push(Arc::new(TriggerRuntime {
                name: t.name.to_string(),
                filter: t.filter.as_ref().map(Filter::compile),
                event_type: t.event.as_ref().and_then(|e| e.ty.clone()),
                stats: self.metrics.trigger(&t.name, &t.to),
                function,
                policy: RetryPolicy::from_config(&t.delivery),
                timeout,
                dead_letter: self.target(t.dead_letter.as_ref()).await?,
                reply: self.target(t.reply.as_ref()).await?,
                telemetry: self.telemetry.clone(),
                batch: crate::engine::BatchConfig::from_config(&t.delivery)
                    .map(crate::engine::Batcher::new),
                retry: self.retry_topic(t).await?,
            }));
        }
        Ok(list)
    }

    /// Subscribes for `p` and starts its pump.
    async fn open(&mut self, p: &Planned<'_>) -> anyhow::Result<()> {
        let triggers = self.trigger_runtimes(p).await?;
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
                from: p.from.clone(),
                max_in_flight: p.max_in_flight,
                ordered: p.ordered,
                attempt_timeout: p.attempt_timeout,
                triggers: names.clone(),
            })
            .await
            .with_context(|| format!("cannot subscribe for trigger(s) {}", names.join(", ")))?;
        let triggers = Arc::new(TriggerSet::new(triggers));
        let stop = self.shutdown.child_token();
        let pump = tokio::spawn(pump(
            source,
            PumpConfig {
                name: format!("{}:{}", p.connector(), p.from.topic()),
                triggers: Arc::clone(&triggers),
                max_in_flight: p.max_in_flight,
                ordered: p.ordered,
                shutdown_timeout: self.drain,
                retire: Arc::default(),
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
            stop,
            pump,
        });
        Ok(())
    }

    /// The fingerprints of the configuration's discovery entries, with their index.
    fn discovery_prints(&self, config: &Config, prints: &Prints<'_>) -> Vec<(String, usize)> {
        let (connectors, functions) = (&prints.connectors, &prints.functions);
        config
            .discover
            .iter()
            .enumerate()
            .map(|(index, d)| {
                let entry = &d.openfaas;
                let mut print = fingerprint(entry);
                for name in discovery_uses(entry) {
                    let part = connectors
                        .get(name.as_str())
                        .or(functions.get(name.as_str()));
                    print.push_str(part.map_or("", String::as_str));
                }
                (print, index)
            })
            .collect()
    }

    /// Starts the discovery entry `index` of `config`.
    async fn discover(
        &mut self,
        config: &Config,
        index: usize,
        fingerprint: String,
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
        let uses = discovery_uses(&entry);
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
        self.discoveries.push(RunningDiscovery {
            fingerprint,
            uses,
            stop,
            task,
        });
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
        let mut summaries = Vec::new();
        for g in self.groups {
            summaries.extend(g.triggers.current().iter().cloned());
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
        if let Some(telemetry) = self.telemetry {
            // Exporting the last batch blocks (the exporter's own thread does the work).
            let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
        }
        for t in &summaries {
            let s = &t.stats;
            tracing::info!(
                trigger = %t.name,
                received = s.received.get(),
                delivered = s.delivered.get(),
                retried = s.retried.get(),
                dead_lettered = s.dead_lettered.get(),
                dropped = s.dropped.get(),
                "trigger summary"
            );
        }
    }

    /// A trigger's retry topic: the sink that publishes into it so that its consumer (see
    /// [`with_retry_consumers`]) gets the event back.
    async fn retry_topic(
        &self,
        t: &config::Trigger,
    ) -> anyhow::Result<Option<crate::engine::RetryTopicRuntime>> {
        let Some(retry) = &t.delivery.retry_topic else {
            return Ok(None);
        };
        let name = retry.connector.as_str();
        let connector = self
            .connectors
            .get(name)
            .with_context(|| format!("unknown connector `{name}`"))?;
        let kind = REGISTRY
            .get(connector.value.kind())
            .with_context(|| format!("connector `{name}`: unknown kind"))?;
        let (source_topic, keys) = kind
            .retry_source(&t.name, &retry.topic)
            .map_err(|e| anyhow::anyhow!("trigger `{}`: retry_topic: {e}", *t.name))?;
        let source = kind
            .parse_source(
                serde_json::Value::Object(keys.into_iter().collect()),
                &mut |_| {},
            )
            .map_err(|e| anyhow::anyhow!("trigger `{}`: retry_topic: {}", *t.name, e.message))?;
        let (topic, keys) = kind
            .republish_to(&source, source_topic.as_deref(), None)
            .map_err(|e| anyhow::anyhow!("trigger `{}`: retry_topic: {e}", *t.name))?;
        let dest = Destination {
            connector: Some(retry.connector.clone()),
            topic: Some(topic.clone()),
            function: None,
            keys: config::ConnectorKeys::new(keys),
        };
        let sink = connector.value.sink(&dest).await?;
        Ok(Some(crate::engine::RetryTopicRuntime {
            sink,
            topic,
            consumer: t.retry_consumer,
        }))
    }

    async fn target(&self, dest: Option<&Destination>) -> anyhow::Result<Option<Target>> {
        let Some(dest) = dest else {
            return Ok(None);
        };
        if let Some(f) = &dest.function {
            let f = self
                .functions
                .get(f.as_str())
                .with_context(|| format!("unknown function `{}`", **f))?;
            return Ok(Some(Target::Function(Arc::clone(&f.value))));
        }
        let name = dest
            .connector
            .as_ref()
            .context("a destination needs a connector or a function")?;
        let connector = self
            .connectors
            .get(name.as_str())
            .with_context(|| format!("unknown connector `{}`", **name))?;
        let sink = connector.value.sink(dest).await?;
        let topic = dest.topic.clone().unwrap_or_default();
        // A destination that cannot exist is said at start, where an operator looks; the
        // broker still starts (the queue or stream may be created later), and until then each
        // message whose reply or dead letter cannot be published goes back to its broker after
        // a pause.
        if let Err(e) = sink.check(&topic).await {
            tracing::error!(connector = %name.as_str(), %topic, error = %e, kind = ?e.kind(), "a reply or dead-letter destination is not there: messages that need it will be handed back to their broker until it is");
        }
        Ok(Some(Target::Sink { sink, topic }))
    }
}

/// The sections a reload cannot change.
fn fixed_fingerprint(config: &Config) -> String {
    format!("{:?}{:?}", config.admin, config.telemetry)
}

/// The connectors and functions a discovery entry uses.
fn discovery_uses(entry: &config::OpenFaasDiscovery) -> BTreeSet<String> {
    let mut uses = BTreeSet::from([entry.connector.to_string()]);
    for d in [&entry.dead_letter, &entry.reply].into_iter().flatten() {
        uses.extend(d.connector.as_ref().map(|c| c.to_string()));
        uses.extend(d.function.as_ref().map(|f| f.to_string()));
    }
    uses
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

/// The subscriptions `config` asks for: triggers with the same source share one (fan-out).
fn plan<'a>(config: &'a Config, prints: &Prints<'_>) -> anyhow::Result<Vec<Planned<'a>>> {
    let (connectors, functions) = (&prints.connectors, &prints.functions);
    let mut groups: Vec<Planned<'a>> = Vec::new();
    for t in &config.triggers {
        let function = config
            .functions
            .get(t.to.as_str())
            .with_context(|| format!("unknown function `{}`", *t.to))?;
        let timeout = t
            .delivery
            .timeout
            .as_ref()
            .map_or(function.timeout(), config::ConfDuration::get);
        let max = *t.delivery.max_in_flight;
        match groups.iter_mut().find(|g| g.from == t.from) {
            Some(g) => {
                g.max_in_flight = g.max_in_flight.min(max);
                g.ordered |= t.delivery.ordered;
                g.attempt_timeout = g.attempt_timeout.max(timeout);
                g.triggers.push(t);
            }
            None => groups.push(Planned {
                from: t.from.clone(),
                max_in_flight: max,
                ordered: t.delivery.ordered,
                attempt_timeout: timeout,
                triggers: vec![t],
                source: String::new(),
                routing: String::new(),
                publishes_to: BTreeSet::new(),
            }),
        }
    }
    let print = |map: &BTreeMap<&str, String>, name: &str| map.get(name).cloned();
    for g in &mut groups {
        g.source = format!(
            "{:?}|{}|{}|{:?}|{}",
            g.from,
            g.max_in_flight,
            g.ordered,
            g.attempt_timeout,
            print(connectors, g.from.connector.as_str()).unwrap_or_default()
        );
        let mut routing = String::new();
        for t in &g.triggers {
            routing.push_str(&fingerprint(t));
            routing.push_str(&print(functions, t.to.as_str()).unwrap_or_default());
            if let Some(retry) = &t.delivery.retry_topic {
                g.publishes_to.insert(retry.connector.to_string());
            }
            for d in [&t.dead_letter, &t.reply].into_iter().flatten() {
                if let Some(c) = &d.connector {
                    g.publishes_to.insert(c.to_string());
                    routing.push_str(&print(connectors, c.as_str()).unwrap_or_default());
                }
                if let Some(f) = &d.function {
                    routing.push_str(&print(functions, f.as_str()).unwrap_or_default());
                }
            }
        }
        g.routing = routing;
    }
    Ok(groups)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Config {
        match config::load_str("t.yaml", text, |_| None, &REGISTRY) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        }
    }

    const BASE: &str = "
connectors:
  n: { nats: { url: nats://127.0.0.1:4222 } }
functions:
  f: { http: { url: http://127.0.0.1:1/f } }
  g: { http: { url: http://127.0.0.1:1/g } }
triggers:
  - { name: a, from: { connector: n, topic: a }, to: f }
  - { name: b, from: { connector: n, topic: a }, to: g }
  - { name: c, from: { connector: n, topic: c }, to: f }
";

    fn prints(config: &Config) -> Vec<(String, String)> {
        plan(config, &Prints::of(config))
            .map(|p| p.into_iter().map(|g| (g.source, g.routing)).collect())
            .unwrap_or_default()
    }

    fn plan_names(config: &Config) -> Vec<Vec<String>> {
        plan(config, &Prints::of(config))
            .map(|p| p.iter().map(Planned::names).collect())
            .unwrap_or_default()
    }

    #[test]
    fn triggers_with_one_source_share_a_subscription() {
        assert_eq!(
            plan_names(&load(BASE)),
            vec![
                vec!["a".to_string(), "b".to_string()],
                vec!["c".to_string()]
            ]
        );
    }

    /// Moving entries in the file, or rewriting them in another YAML style, is no change.
    #[test]
    fn layout_is_not_a_change() {
        let moved = "
functions:
  g: { http: { url: http://127.0.0.1:1/g } }
  f:
    http:
      url: http://127.0.0.1:1/f
connectors:
  n: { nats: { url: nats://127.0.0.1:4222 } }
triggers:
  - { name: a, from: { connector: n, topic: a }, to: f }
  - { name: b, from: { connector: n, topic: a }, to: g }
  - name: c
    from: { connector: n, topic: c }
    to: f
";
        assert_eq!(prints(&load(BASE)), prints(&load(moved)));
    }

    /// A function's URL changes the routing of the subscriptions that call it, not their
    /// source: they are swapped, not reopened.
    #[test]
    fn a_function_change_is_a_routing_change() {
        let before = prints(&load(BASE));
        let after = prints(&load(&BASE.replace("1/g", "1/g2")));
        assert_eq!(before[0].0, after[0].0);
        assert_ne!(before[0].1, after[0].1);
        assert_eq!(before[1], after[1], "trigger c does not call g");
    }

    /// `max_in_flight` and the connector's settings are the source's.
    #[test]
    fn delivery_limits_and_connector_settings_are_the_source() {
        let before = prints(&load(BASE));
        let limited = BASE.replace(
            "{ name: c, from: { connector: n, topic: c }, to: f }",
            "{ name: c, from: { connector: n, topic: c }, to: f, delivery: { max_in_flight: 7 } }",
        );
        let after = prints(&load(&limited));
        assert_eq!(before[0], after[0]);
        assert_ne!(before[1].0, after[1].0);
        let moved = prints(&load(&BASE.replace("4222", "4223")));
        assert_ne!(before[0].0, moved[0].0);
        assert_ne!(before[1].0, moved[1].0);
    }
}

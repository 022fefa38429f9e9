//! Builds the running broker from a validated configuration: connectors, functions, triggers and
//! one pump per subscription; then runs until asked to stop.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use fnbroker_core::config::{self, Config, Destination};
use fnbroker_core::{Connector, Subscription};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::connectors::REGISTRY;
use crate::engine::{FunctionRuntime, PumpConfig, Target, TriggerRuntime, pump};
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
    }))
}

/// The part of `shutdown_timeout` in-flight deliveries may take to finish; the rest is kept for
/// closing the sources (the last acknowledgements and offset commits) and the connectors, so
/// that what finished is acknowledged before the process exits at `shutdown_timeout`.
pub(crate) fn drain_budget(shutdown_timeout: std::time::Duration) -> std::time::Duration {
    let reserve = (shutdown_timeout / 5).min(std::time::Duration::from_secs(5));
    shutdown_timeout.saturating_sub(reserve)
}

/// Triggers with the same source: they share one subscription.
struct Group {
    from: config::TriggerSource,
    triggers: Vec<Arc<TriggerRuntime>>,
    max_in_flight: usize,
    ordered: bool,
    attempt_timeout: std::time::Duration,
}

/// The running broker.
pub(crate) struct Broker {
    connectors: Arc<HashMap<String, Arc<dyn Connector>>>,
    admin: Option<tokio::task::JoinHandle<()>>,
    pumps: Vec<tokio::task::JoinHandle<()>>,
    /// One task per `discover` entry, owning the pumps of its discovered triggers.
    discoveries: Vec<tokio::task::JoinHandle<()>>,
    triggers: Vec<Arc<TriggerRuntime>>,
    telemetry: Option<Arc<crate::telemetry::Telemetry>>,
}

impl Broker {
    /// Connects everything the configuration names and starts consuming.
    pub(crate) async fn start(
        config: &Config,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Self> {
        let metrics = Arc::new(Metrics::new());
        let telemetry =
            crate::telemetry::Telemetry::start(config.telemetry.as_ref())?.map(Arc::new);
        // Only the connectors that some trigger or destination uses.
        let mut connectors: HashMap<String, Arc<dyn Connector>> = HashMap::new();
        for (name, cfg) in &config.connectors {
            connectors.insert(name.clone(), build_connector(name, cfg)?);
        }
        let platform = fnbroker_functions::Platform {
            callbacks: Arc::default(),
            admin_url: config.admin.as_ref().and_then(config::Admin::base_url),
        };
        let mut functions = HashMap::new();
        for (name, cfg) in &config.functions {
            functions.insert(
                name.clone(),
                build_function(name, cfg, &metrics, &platform)?,
            );
        }

        let mut triggers = Vec::new();
        // Triggers with the same source share one subscription (fan-out).
        let mut groups: Vec<Group> = Vec::new();
        for t in &config.triggers {
            let function = Arc::clone(
                functions
                    .get(t.to.as_str())
                    .with_context(|| format!("unknown function `{}`", *t.to))?,
            );
            let timeout = t
                .delivery
                .timeout
                .as_ref()
                .map_or(function.timeout, config::ConfDuration::get);
            let runtime = Arc::new(TriggerRuntime {
                name: t.name.to_string(),
                filter: t.filter.as_ref().map(Filter::compile),
                event_type: t.event.as_ref().and_then(|e| e.ty.clone()),
                function,
                policy: RetryPolicy::from_config(&t.delivery),
                timeout,
                dead_letter: target(t.dead_letter.as_ref(), &connectors, &functions).await?,
                reply: target(t.reply.as_ref(), &connectors, &functions).await?,
                stats: metrics.trigger(&t.name, &t.to),
                telemetry: telemetry.clone(),
            });
            triggers.push(Arc::clone(&runtime));
            let max = *t.delivery.max_in_flight;
            match groups.iter_mut().find(|g| g.from == t.from) {
                Some(g) => {
                    g.max_in_flight = g.max_in_flight.min(max);
                    g.ordered |= t.delivery.ordered;
                    g.attempt_timeout = g.attempt_timeout.max(runtime.timeout);
                    g.triggers.push(runtime);
                }
                None => groups.push(Group {
                    from: t.from.clone(),
                    max_in_flight: max,
                    ordered: t.delivery.ordered,
                    attempt_timeout: runtime.timeout,
                    triggers: vec![runtime],
                }),
            }
        }

        let mut pumps = Vec::new();
        for Group {
            from,
            triggers: list,
            max_in_flight,
            ordered,
            attempt_timeout,
        } in groups
        {
            let connector = connectors
                .get(from.connector.as_str())
                .with_context(|| format!("unknown connector `{}`", *from.connector))?;
            let names: Vec<String> = list.iter().map(|t| t.name.clone()).collect();
            let sub = Subscription {
                from: from.clone(),
                max_in_flight,
                ordered,
                attempt_timeout,
                triggers: names.clone(),
            };
            let source = connector
                .subscribe(&sub)
                .await
                .with_context(|| format!("cannot subscribe for trigger(s) {}", names.join(", ")))?;
            let cfg = PumpConfig {
                name: format!("{}:{}", *from.connector, from.topic()),
                triggers: Arc::from(list),
                max_in_flight,
                ordered,
                shutdown_timeout: drain_budget(config.shutdown_timeout.get()),
                retire: Arc::default(),
            };
            pumps.push(tokio::spawn(pump(source, cfg, shutdown.clone())));
        }
        for (name, connector) in &connectors {
            connector
                .start()
                .await
                .with_context(|| format!("cannot start connector `{name}`"))?;
        }
        let views = crate::discovery::Views::default();
        let mut discoveries = Vec::new();
        for (index, entry) in config.discover.iter().enumerate() {
            let entry = entry.openfaas.clone();
            let connector = connectors.get(entry.connector.as_str()).with_context(|| {
                format!(
                    "discover[{index}]: unknown connector `{}`",
                    *entry.connector
                )
            })?;
            let discovery = crate::discovery::Discovery {
                index,
                connector: Arc::clone(connector),
                dead_letter: target(entry.dead_letter.as_ref(), &connectors, &functions).await?,
                reply: target(entry.reply.as_ref(), &connectors, &functions).await?,
                entry,
                metrics: Arc::clone(&metrics),
                platform: platform.clone(),
                drain: drain_budget(config.shutdown_timeout.get()),
                views: Arc::clone(&views),
                telemetry: telemetry.clone(),
            };
            discoveries.push(discovery.spawn(shutdown.clone())?);
        }
        let connectors = Arc::new(connectors);
        let admin = match &config.admin {
            None => None,
            Some(admin) => {
                let listen: SocketAddr = admin
                    .listen
                    .parse()
                    .context("admin: invalid listen address")?;
                let ready_connectors = Arc::clone(&connectors);
                let listening = Arc::clone(&connectors);
                let state = crate::admin::AdminState {
                    stuck_after: admin.stuck_after.get(),
                    metrics: Arc::clone(&metrics),
                    listeners: Box::new(move || {
                        listening
                            .iter()
                            .filter_map(|(name, c)| c.listener_counts().map(|n| (name.clone(), n)))
                            .collect()
                    }),
                    counts: Arc::default(),
                    token: admin.token.clone(),
                    tls: match &admin.tls {
                        Some(tls) => Some(Arc::new(
                            tls.server_config()
                                .map_err(|e| anyhow::anyhow!("admin: tls: {e}"))?,
                        )),
                        None => None,
                    },
                    connectors: Box::new(move || {
                        ready_connectors
                            .iter()
                            .map(|(name, c)| crate::admin::ConnectorState::of(name, c.as_ref()))
                            .collect()
                    }),
                    callbacks: Arc::clone(&platform.callbacks),
                    triggers: crate::admin::triggers_view(config),
                    discovered: Arc::clone(&views),
                    functions: crate::admin::functions_view(config),
                };
                Some(crate::admin::serve(listen, state, shutdown.clone()).await?)
            }
        };
        Ok(Self {
            connectors,
            admin,
            pumps,
            discoveries,
            triggers,
            telemetry,
        })
    }

    /// Whether every connector is connected.
    pub(crate) fn is_ready(&self) -> bool {
        self.connectors.values().all(|c| c.is_ready())
    }

    /// [`Broker::is_ready`], for a task of its own.
    pub(crate) fn readiness(&self) -> impl Fn() -> bool + Send + 'static {
        let connectors = Arc::clone(&self.connectors);
        move || connectors.values().all(|c| c.is_ready())
    }

    /// Waits until every pump has drained (after the shutdown token fired), then logs a summary.
    pub(crate) async fn join(self) {
        for p in self.pumps.into_iter().chain(self.discoveries) {
            if let Err(e) = p.await {
                tracing::error!(error = %e, "a subscription task failed");
            }
        }
        for connector in self.connectors.values() {
            connector.stop().await;
        }
        if let Some(admin) = self.admin {
            let _ = admin.await;
        }
        if let Some(telemetry) = self.telemetry {
            // Exporting the last batch blocks (the exporter's own thread does the work).
            let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
        }
        for t in &self.triggers {
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
}

async fn target(
    dest: Option<&Destination>,
    connectors: &HashMap<String, Arc<dyn Connector>>,
    functions: &HashMap<String, Arc<FunctionRuntime>>,
) -> anyhow::Result<Option<Target>> {
    let Some(dest) = dest else {
        return Ok(None);
    };
    if let Some(f) = &dest.function {
        let f = functions
            .get(f.as_str())
            .with_context(|| format!("unknown function `{}`", **f))?;
        return Ok(Some(Target::Function(Arc::clone(f))));
    }
    let name = dest
        .connector
        .as_ref()
        .context("a destination needs a connector or a function")?;
    let connector = connectors
        .get(name.as_str())
        .with_context(|| format!("unknown connector `{}`", **name))?;
    let sink = connector.sink(dest).await?;
    let topic = dest.topic.clone().unwrap_or_default();
    // A destination that cannot exist is said at start, where an operator looks; the broker
    // still starts (the queue or stream may be created later), and until then each message
    // whose reply or dead letter cannot be published goes back to its broker after a pause.
    if let Err(e) = sink.check(&topic).await {
        tracing::error!(connector = %name.as_str(), %topic, error = %e, kind = ?e.kind(), "a reply or dead-letter destination is not there: messages that need it will be handed back to their broker until it is");
    }
    Ok(Some(Target::Sink { sink, topic }))
}

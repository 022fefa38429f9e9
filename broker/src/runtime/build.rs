//! Building what runs from the configuration: connectors and functions through their
//! registries, and a subscription's trigger runtimes with their destinations and retry topics.

use std::sync::Arc;

use tokio::sync::Semaphore;

use anyhow::Context;
use fnbroker_config::{self as config, Destination};
use fnbroker_core::Connector;

use super::Broker;
use crate::connectors::REGISTRY;
use crate::engine::filter::Filter;
use crate::engine::retry::RetryPolicy;
use crate::engine::{FunctionRuntime, Target, TriggerRuntime};
use crate::metrics::Metrics;
use crate::plan::Planned;

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

pub(super) fn build_function(
    name: &str,
    cfg: &config::Function,
    metrics: &Metrics,
    platform: &fnbroker_functions::Platform,
) -> anyhow::Result<Arc<FunctionRuntime>> {
    let concurrency = *cfg.concurrency;
    let entry = cfg
        .kind()
        .with_context(|| format!("function `{name}` has no kind"))?;
    let kind = REGISTRY
        .function(entry.kind())
        .with_context(|| format!("function `{name}`: unknown kind `{}`", entry.kind()))?;
    let settings = entry
        .settings()
        .with_context(|| format!("function `{name}`: settings not validated"))?;
    if let Some(tls) = kind.tls(settings) {
        tls.warn_if_insecure("function", name);
    }
    let invoker = kind
        .build(settings, &platform.context(name, concurrency))
        .with_context(|| format!("function `{name}`"))?;
    Ok(Arc::new(FunctionRuntime {
        name: name.to_string(),
        invoker,
        limit: Arc::new(Semaphore::new(concurrency)),
        timeout: cfg.timeout(),
        stats: metrics.function(name),
        health: crate::engine::health::Health::default(),
        guard: crate::engine::guard::Guard::new(
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

impl Broker {
    /// The trigger runtimes of a planned subscription, with the connectors and functions
    /// installed now.
    pub(super) async fn trigger_runtimes(
        &self,
        p: &Planned<'_>,
        redelivery: fnbroker_core::Redelivery,
    ) -> anyhow::Result<Vec<Arc<TriggerRuntime>>> {
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
                redelivery,
                ordered: p.source.ordered,
                dedup: self.dedup(t)?,
            }));
        }
        Ok(list)
    }

    /// A trigger's `delivery.dedup`: marks in memory, or in a connector's key store under
    /// `dedup:<trigger>`, which every replica running the trigger shares.
    fn dedup(&self, t: &config::Trigger) -> anyhow::Result<Option<crate::engine::dedup::Dedup>> {
        let Some(dedup) = &t.delivery.dedup else {
            return Ok(None);
        };
        let window = dedup.window.get();
        Ok(Some(match &dedup.store {
            config::DedupStore::Memory(_) => {
                crate::engine::dedup::Dedup::memory(window, dedup.max_entries)
            }
            config::DedupStore::Shared(shared) => {
                let name = shared.connector.as_str();
                let connector = self
                    .connectors
                    .get(name)
                    .with_context(|| format!("unknown connector `{name}`"))?;
                let store = connector.value.key_store(&format!("dedup:{}", *t.name))?;
                crate::engine::dedup::Dedup::shared(window, store)
            }
        }))
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

    pub(super) async fn target(
        &self,
        dest: Option<&Destination>,
    ) -> anyhow::Result<Option<Target>> {
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

//! `fnbroker redrive`: dead letters back to where they came from.
//!
//! The dead letters on a connector's topic are read by a consumer of their own (a Kafka group,
//! a JetStream durable, an MQTT session, the AMQP queue: see
//! [`Connector::reader`]), their `dlq*` attributes are
//! stripped, and each is published to the source of the trigger that dead-lettered it (its
//! `dlqtrigger`), or to `--to`. A dead letter is acknowledged only once its republish is
//! confirmed; one that cannot be published stops the run, unacknowledged, so nothing is lost.
//! Dead letters passed over (filtered out, not dead letters, no way back) stay where they are:
//! released at the end of the run for the next one, or, on a log read by position (Kafka),
//! passed (they stay in the log, and the reader's group is past them).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use fnbroker_config::{Config, ConnectorKeys, Destination};
use fnbroker_core::event::{AttributesReader, Event, ExtensionValue};
use fnbroker_core::{AckHandle, Connector, Origin, Settlement, Sink, SourceKeys};
use tokio_util::sync::CancellationToken;

use crate::connectors::REGISTRY;
use crate::runtime::build_connector;

/// The name of the consumer that reads dead letters: its Kafka group, JetStream durable,
/// MQTT client id suffix.
pub(crate) const READER: &str = "fnbroker-redrive";

/// The most dead letters held (passed over, or read in a dry run) before the run stops: a
/// reader's prefetch.
const MAX_HELD: usize = 1000;

/// A connector and a topic, as `CONNECTOR:TOPIC`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Place {
    pub(crate) connector: String,
    pub(crate) topic: String,
}

impl std::str::FromStr for Place {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once(':') {
            Some((connector, topic)) if !connector.is_empty() && !topic.is_empty() => Ok(Self {
                connector: connector.to_string(),
                topic: topic.to_string(),
            }),
            _ => Err(format!("`{s}` is not CONNECTOR:TOPIC")),
        }
    }
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.connector, self.topic)
    }
}

/// What to redrive.
#[derive(Debug)]
pub(crate) struct Plan {
    /// Where the dead letters are.
    pub(crate) from: Place,
    /// Where they all go, instead of their triggers' sources.
    pub(crate) to: Option<Place>,
    /// Only dead letters that pass this CloudEvents SQL expression.
    pub(crate) filter: Option<String>,
    /// At most this many.
    pub(crate) limit: Option<usize>,
    /// Read and print, move nothing.
    pub(crate) dry_run: bool,
    /// Stop when no dead letter arrived for this long (three times this for the first).
    pub(crate) wait: Duration,
}

/// What a run did.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// One line per dead letter.
    pub(crate) lines: String,
    /// Moved (or, in a dry run, would be).
    pub(crate) moved: usize,
    /// Passed over.
    pub(crate) skipped: usize,
    /// Why the run stopped early, when a republish failed.
    pub(crate) failed: Option<String>,
}

/// Where one dead letter goes back to.
struct Route {
    place: Place,
    keys: SourceKeys,
}

/// Runs `plan` against the configuration; `stop` ends it early (SIGINT), releasing what it
/// holds.
pub(crate) async fn redrive(
    cfg: &Config,
    plan: &Plan,
    stop: &CancellationToken,
) -> anyhow::Result<Outcome> {
    let filter = plan
        .filter
        .as_deref()
        .map(|text| {
            fnbroker_filters::cesql::Expr::parse(text).map_err(|e| {
                anyhow::anyhow!(
                    "--filter: {} at position {} of the expression",
                    e.message,
                    e.position
                )
            })
        })
        .transpose()?;
    let mut connectors = Connectors::new(cfg);
    let reader_connector = connectors.get(&plan.from.connector)?;
    let reader = reader_connector
        .reader(READER, &plan.from.topic, MAX_HELD)
        .await
        .with_context(|| format!("cannot read {}", plan.from))?;
    reader_connector.start().await?;
    let mut source = reader.source;
    let mut out = Outcome::default();
    let mut held: Vec<AckHandle> = Vec::new();
    let mut wait = plan.wait * 3;
    loop {
        if plan.limit.is_some_and(|n| out.moved >= n) || held.len() >= MAX_HELD {
            break;
        }
        let incoming = tokio::select! {
            m = source.next() => m,
            () = tokio::time::sleep(wait) => None,
            () = stop.cancelled() => None,
        };
        let Some(incoming) = incoming else { break };
        wait = plan.wait;
        let letter = incoming.event;
        let verdict = match &incoming.origin {
            Origin::CloudEvent => Ok(()),
            Origin::Plain => Err("not a CloudEvent".to_string()),
            Origin::Invalid(reason) => Err(format!("not a valid CloudEvent: {reason}")),
        }
        .and_then(|()| match &filter {
            Some(f) if !f.matches(&letter) => Err("filtered out".to_string()),
            _ => route(cfg, plan, &letter),
        });
        let route = match verdict {
            Ok(route) => route,
            Err(reason) => {
                out.skipped += 1;
                let _ = writeln!(out.lines, "skipped  {}  {reason}", letter.id());
                held.push(incoming.ack);
                continue;
            }
        };
        let event = strip(&letter);
        if plan.dry_run {
            out.moved += 1;
            let _ = writeln!(
                out.lines,
                "would move  {}  {}  -> {}",
                event.id(),
                event.ty(),
                route.place
            );
            held.push(incoming.ack);
            continue;
        }
        let sink = connectors.sink(&route).await?;
        match sink.publish(&route.place.topic, &event).await {
            Ok(()) => {
                incoming.ack.settle(Settlement::Delivered { reply: None });
                out.moved += 1;
                let _ = writeln!(
                    out.lines,
                    "moved  {}  {}  -> {}",
                    event.id(),
                    event.ty(),
                    route.place
                );
            }
            Err(e) => {
                let _ = writeln!(
                    out.lines,
                    "NOT moved  {}  -> {}: {e}",
                    event.id(),
                    route.place
                );
                out.failed = Some(format!("cannot publish to {}: {e}", route.place));
                incoming.ack.settle(Settlement::Released);
                break;
            }
        }
    }
    source.stopping();
    // Passed over: a log read by position must be acknowledged to read on (the dead letter
    // stays in the log); anywhere else it is released for the next run. A dry run moves
    // nothing, not even a position.
    let pass = reader.positional && !plan.dry_run;
    for ack in held {
        ack.settle(if pass {
            Settlement::Delivered { reply: None }
        } else {
            Settlement::Released
        });
    }
    source.close().await;
    connectors.stop().await;
    Ok(out)
}

/// Where `letter` goes back to: `--to`, or the source of the trigger that dead-lettered it.
fn route(cfg: &Config, plan: &Plan, letter: &Event) -> Result<Route, String> {
    if let Some(to) = &plan.to {
        return Ok(Route {
            place: to.clone(),
            keys: SourceKeys::new(),
        });
    }
    let trigger = match letter.extension("dlqtrigger") {
        Some(ExtensionValue::String(t)) => t,
        _ => return Err("not a dead letter (no `dlqtrigger`); give --to".into()),
    };
    let t = cfg
        .triggers
        .iter()
        .find(|t| t.name.as_str() == trigger)
        .ok_or_else(|| format!("its trigger `{trigger}` is not in the configuration; give --to"))?;
    let connector = t.from.connector.as_str();
    let kind = cfg
        .connectors
        .get(connector)
        .and_then(|c| REGISTRY.get(c.kind()))
        .ok_or_else(|| format!("trigger `{trigger}`: no connector `{connector}`"))?;
    if !kind.capabilities().publishes {
        return Err(format!(
            "trigger `{trigger}` reads connector `{connector}`, which cannot publish; give --to"
        ));
    }
    let keys = t
        .from
        .keys
        .parsed()
        .ok_or_else(|| format!("trigger `{trigger}`: its source was not validated"))?;
    let (topic, keys) = kind
        .republish_to(
            keys,
            t.from.topic.as_ref().map(|t| t.as_str()),
            letter.subject(),
        )
        .map_err(|e| format!("trigger `{trigger}`: {e}; give --to"))?;
    Ok(Route {
        place: Place {
            connector: connector.to_string(),
            topic,
        },
        keys,
    })
}

/// The dead letter without the `dlq*` attributes that said why: the event as it first came.
fn strip(letter: &Event) -> Event {
    let mut event = letter.clone();
    let names: Vec<String> = letter
        .iter_extensions()
        .map(|(name, _)| name)
        .filter(|name| name.starts_with("dlq"))
        .map(str::to_string)
        .collect();
    for name in names {
        event.remove_extension(&name);
    }
    event
}

/// The connectors a run uses, each built once, and their sinks.
struct Connectors<'a> {
    cfg: &'a Config,
    built: HashMap<String, Arc<dyn Connector>>,
    sinks: HashMap<(String, String, String), Arc<dyn Sink>>,
}

impl<'a> Connectors<'a> {
    fn new(cfg: &'a Config) -> Self {
        Self {
            cfg,
            built: HashMap::new(),
            sinks: HashMap::new(),
        }
    }

    fn get(&mut self, name: &str) -> anyhow::Result<Arc<dyn Connector>> {
        if let Some(c) = self.built.get(name) {
            return Ok(Arc::clone(c));
        }
        let entry = self
            .cfg
            .connectors
            .get(name)
            .with_context(|| format!("no connector `{name}` in the configuration"))?;
        let connector = build_connector(name, entry)?;
        self.built.insert(name.to_string(), Arc::clone(&connector));
        Ok(connector)
    }

    async fn sink(&mut self, route: &Route) -> anyhow::Result<Arc<dyn Sink>> {
        let key = (
            route.place.connector.clone(),
            route.place.topic.clone(),
            serde_json::to_string(&route.keys).unwrap_or_default(),
        );
        if let Some(s) = self.sinks.get(&key) {
            return Ok(Arc::clone(s));
        }
        let connector = self.get(&route.place.connector)?;
        let destination = Destination {
            connector: None,
            topic: Some(route.place.topic.clone()),
            function: None,
            keys: ConnectorKeys::new(route.keys.clone()),
        };
        let sink = connector.sink(&destination).await?;
        self.sinks.insert(key, Arc::clone(&sink));
        Ok(sink)
    }

    async fn stop(&self) {
        for c in self.built.values() {
            c.stop().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fnbroker_core::event::{PlainMessage, normalize};

    #[test]
    fn places_parse() {
        let p: Place = "bus:dlq.orders".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (p.connector.as_str(), p.topic.as_str()),
            ("bus", "dlq.orders")
        );
        let p: Place = "iot:a/b:c".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.topic, "a/b:c", "only the first colon separates");
        assert!("dlq".parse::<Place>().is_err());
        assert!(":x".parse::<Place>().is_err());
    }

    #[test]
    fn stripping_leaves_the_event_as_it_came() {
        let mut e = normalize(
            PlainMessage {
                kind: "kafka",
                connector: "k",
                topic: "orders",
                ..Default::default()
            },
            b"x".to_vec(),
        );
        e.set_extension("partitionkey", "eu");
        let letter = crate::engine::dead_letter_event(&e, "boom", Some(500), 4, "t", "f");
        assert!(letter.extension("dlqreason").is_some());
        let back = strip(&letter);
        assert_eq!(back, e);
    }
}

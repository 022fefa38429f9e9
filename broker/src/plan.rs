//! The plan of a reload: what has to change to bring what runs to a configuration, worked out
//! from configuration values alone. Nothing is built, stopped or opened here, so every decision
//! is a pure function of (what runs, what is asked for) and tested as a table of cases;
//! [`Broker::apply`](crate::runtime::Broker::apply) carries a plan out.
//!
//! Entries are compared by value (the settings after `${...}` substitution, locations in the
//! file left out): a rotated password is a change even where the value is shown masked.
//!
//! - A connector whose settings changed, or that is gone, is stopped once its subscriptions have
//!   drained, and a new one takes its place. So is a started connector that would need a new
//!   subscription and cannot open one while running (the HTTP ingress).
//! - A subscription (the triggers with one `from`) keeps running when neither its source nor
//!   its triggers changed; when only its triggers changed (a filter, a function, a retry
//!   policy), the new triggers are swapped in and the subscription stays open, so no message
//!   passes unseen; when its source changed (topic, keys, `max_in_flight`, `ordered`, the
//!   attempt timeout, its connector) it is drained, closed (not retired: what its broker keeps
//!   for it stays) and opened again.
//! - Every connector of the configuration that is not started yet is started at the end: a new
//!   one, and one a failed apply left installed but unstarted, so the next apply finishes what
//!   the last one could not.
//! - Discovery entries are restarted when their entry, or what they use, changed.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::Context;
use fnbroker_config::{self as config, Config, ConnectorConfig};

/// What a subscription is at its broker: a change here needs a new subscription.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SourceSpec {
    pub(crate) from: config::TriggerSource,
    pub(crate) max_in_flight: usize,
    pub(crate) ordered: bool,
    pub(crate) attempt_timeout: Duration,
    /// The settings of the connector it is on.
    connector: Option<ConnectorConfig>,
}

/// Something a trigger or a discovery entry uses, by value: a change of it changes them.
#[derive(Debug, Clone, PartialEq)]
enum Used {
    Connector(Option<ConnectorConfig>),
    Function(Option<Box<config::Function>>),
}

/// What a subscription's triggers are, with the functions and connectors they use.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Routing {
    triggers: Vec<config::Trigger>,
    uses: Vec<Used>,
}

/// A discovery entry with the connectors and functions it uses.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DiscoverySpec {
    entry: config::OpenFaasDiscovery,
    uses: Vec<Used>,
}

/// One subscription as a configuration asks for it: the triggers with the same `from`.
pub(crate) struct Planned<'a> {
    pub(crate) triggers: Vec<&'a config::Trigger>,
    pub(crate) source: SourceSpec,
    pub(crate) routing: Routing,
    /// The connectors its triggers publish to.
    pub(crate) publishes_to: BTreeSet<String>,
}

impl Planned<'_> {
    pub(crate) fn connector(&self) -> &str {
        self.source.from.connector.as_str()
    }

    pub(crate) fn names(&self) -> Vec<String> {
        self.triggers.iter().map(|t| t.name.to_string()).collect()
    }
}

/// A running connector, as the plan sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RunningConnector<'a> {
    pub(crate) config: &'a ConnectorConfig,
    /// Started (serving); until then it takes subscriptions whatever its kind.
    pub(crate) started: bool,
    /// Whether it may open a subscription once started.
    pub(crate) subscribes_while_running: bool,
}

/// A running subscription, as the plan sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RunningGroup<'a> {
    pub(crate) source: &'a SourceSpec,
    pub(crate) routing: &'a Routing,
    pub(crate) publishes_to: &'a BTreeSet<String>,
}

/// What runs now, as the plan sees it.
#[derive(Debug, Default)]
pub(crate) struct Running<'a> {
    pub(crate) connectors: BTreeMap<&'a str, RunningConnector<'a>>,
    pub(crate) functions: BTreeMap<&'a str, &'a config::Function>,
    /// In the order the broker keeps them: a [`Fate`] names one by its index.
    pub(crate) groups: Vec<RunningGroup<'a>>,
    pub(crate) discoveries: Vec<&'a DiscoverySpec>,
}

/// What becomes of a planned subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fate {
    /// The running subscription at this index stays as it is.
    Keep(usize),
    /// The running subscription at this index stays open; its triggers are replaced.
    Swap(usize),
    /// A new subscription (a new source, or the running one replaced).
    Open,
}

/// What a reload does, in the order [`Broker::apply`](crate::runtime::Broker::apply) does it.
pub(crate) struct Plan<'a> {
    /// Every subscription of the configuration, with what becomes of it.
    pub(crate) subscriptions: Vec<(Planned<'a>, Fate)>,
    /// Running subscriptions closed (by index): their source changed, or they are gone.
    pub(crate) close_groups: BTreeSet<usize>,
    /// Of those, the ones given up for good (retired): no subscription of the configuration
    /// has their `from` any more, so what their broker keeps for them (an MQTT session's
    /// subscription, a declared AMQP queue's binding) goes too. The others are reopened and
    /// keep it.
    pub(crate) retire_groups: BTreeSet<usize>,
    /// Running discovery entries stopped (by index).
    pub(crate) stop_discoveries: BTreeSet<usize>,
    /// Running connectors stopped: changed, gone, or unable to take a new subscription.
    pub(crate) stop_connectors: BTreeSet<String>,
    /// Connectors built and installed: new ones, and those stopped to be built again.
    pub(crate) build_connectors: BTreeSet<String>,
    /// Functions built: new or changed.
    pub(crate) build_functions: BTreeSet<String>,
    /// Functions gone.
    pub(crate) remove_functions: BTreeSet<String>,
    /// Connectors started once their subscriptions are open: every connector of the
    /// configuration not started yet.
    pub(crate) start_connectors: BTreeSet<String>,
    /// Discovery entries started, with their index in the configuration.
    pub(crate) start_discoveries: Vec<(DiscoverySpec, usize)>,
}

impl Plan<'_> {
    /// Whether carrying it out changes nothing.
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.summary().is_empty()
    }

    /// One line per step, for the tests' tables.
    #[cfg(test)]
    fn summary(&self) -> Vec<String> {
        let mut out = Vec::new();
        out.extend(self.close_groups.iter().map(|i| {
            if self.retire_groups.contains(i) {
                format!("retire #{i}")
            } else {
                format!("close #{i}")
            }
        }));
        out.extend(
            self.stop_discoveries
                .iter()
                .map(|i| format!("stop discovery #{i}")),
        );
        out.extend(self.stop_connectors.iter().map(|c| format!("stop {c}")));
        out.extend(self.build_connectors.iter().map(|c| format!("build {c}")));
        out.extend(self.build_functions.iter().map(|f| format!("build fn {f}")));
        out.extend(
            self.remove_functions
                .iter()
                .map(|f| format!("remove fn {f}")),
        );
        for (p, fate) in &self.subscriptions {
            let names = p.names().join(",");
            match fate {
                Fate::Keep(_) => {}
                Fate::Swap(i) => out.push(format!("swap #{i} {names}")),
                Fate::Open => out.push(format!("open {names}")),
            }
        }
        out.extend(self.start_connectors.iter().map(|c| format!("start {c}")));
        out.extend(
            self.start_discoveries
                .iter()
                .map(|(_, i)| format!("discover [{i}]")),
        );
        out
    }
}

/// The plan that brings `running` to `config` (with its retry consumers already added). Fails
/// only on a configuration that names what it does not have (validation refuses those first).
pub(crate) fn plan<'a>(running: &Running<'_>, config: &'a Config) -> anyhow::Result<Plan<'a>> {
    let subscriptions = subscriptions(config)?;

    // Connectors that cannot stay: changed or gone; then those that would need a new
    // subscription while running and cannot open one.
    let mut stop_connectors: BTreeSet<String> = running
        .connectors
        .iter()
        .filter(|(name, c)| config.connectors.get(**name) != Some(c.config))
        .map(|(name, _)| name.to_string())
        .collect();
    let fates = loop {
        let fates: Vec<Fate> = subscriptions
            .iter()
            .map(|p| fate(running, p, &stop_connectors))
            .collect();
        let cannot: Vec<String> = subscriptions
            .iter()
            .zip(&fates)
            .filter(|(p, fate)| {
                **fate == Fate::Open
                    && !stop_connectors.contains(p.connector())
                    && running
                        .connectors
                        .get(p.connector())
                        .is_some_and(|c| c.started && !c.subscribes_while_running)
            })
            .map(|(p, _)| p.connector().to_string())
            .collect();
        if cannot.is_empty() {
            break fates;
        }
        stop_connectors.extend(cannot);
    };

    let build_connectors: BTreeSet<String> = config
        .connectors
        .keys()
        .filter(|name| {
            !running.connectors.contains_key(name.as_str()) || stop_connectors.contains(*name)
        })
        .cloned()
        .collect();
    let start_connectors: BTreeSet<String> = config
        .connectors
        .keys()
        .filter(|name| {
            build_connectors.contains(*name)
                || running
                    .connectors
                    .get(name.as_str())
                    .is_some_and(|c| !c.started)
        })
        .cloned()
        .collect();
    let build_functions = config
        .functions
        .iter()
        .filter(|(name, f)| running.functions.get(name.as_str()) != Some(f))
        .map(|(name, _)| name.clone())
        .collect();
    let remove_functions = running
        .functions
        .keys()
        .filter(|name| !config.functions.contains_key(**name))
        .map(ToString::to_string)
        .collect();
    let kept: BTreeSet<usize> = fates
        .iter()
        .filter_map(|f| match f {
            Fate::Keep(i) | Fate::Swap(i) => Some(*i),
            Fate::Open => None,
        })
        .collect();
    let close_groups: BTreeSet<usize> = (0..running.groups.len())
        .filter(|i| !kept.contains(i))
        .collect();
    let retire_groups = close_groups
        .iter()
        .copied()
        .filter(|i| {
            let from = &running.groups[*i].source.from;
            !subscriptions.iter().any(|p| p.source.from == *from)
        })
        .collect();

    let wanted = discoveries(config);
    let mut stop_discoveries = BTreeSet::new();
    let mut staying = Vec::new();
    for (index, d) in running.discoveries.iter().enumerate() {
        // A connector rebuilt without a change of its own still takes the discovery with it.
        let rebuilt = discovery_connectors(&d.entry)
            .iter()
            .any(|c| stop_connectors.contains(c));
        if !rebuilt && wanted.iter().any(|(w, _)| w == *d) {
            staying.push(*d);
        } else {
            stop_discoveries.insert(index);
        }
    }
    let start_discoveries = wanted
        .into_iter()
        .filter(|(w, _)| !staying.contains(&w))
        .collect();

    Ok(Plan {
        subscriptions: subscriptions.into_iter().zip(fates).collect(),
        close_groups,
        retire_groups,
        stop_discoveries,
        stop_connectors,
        build_connectors,
        build_functions,
        remove_functions,
        start_connectors,
        start_discoveries,
    })
}

/// What becomes of the running subscription that has `p`'s source, if any.
fn fate(running: &Running<'_>, p: &Planned<'_>, stopped: &BTreeSet<String>) -> Fate {
    if stopped.contains(p.connector()) {
        return Fate::Open;
    }
    let Some(index) = running.groups.iter().position(|g| *g.source == p.source) else {
        return Fate::Open;
    };
    let group = &running.groups[index];
    if !group.publishes_to.is_disjoint(stopped) {
        // Its deliveries in flight publish through a connector that is being replaced:
        // drained first, it starts again on the new one.
        Fate::Open
    } else if *group.routing == p.routing {
        Fate::Keep(index)
    } else {
        Fate::Swap(index)
    }
}

/// The subscriptions `config` asks for: triggers with the same source share one (fan-out).
pub(crate) fn subscriptions(config: &Config) -> anyhow::Result<Vec<Planned<'_>>> {
    let mut groups: Vec<Planned<'_>> = Vec::new();
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
        match groups.iter_mut().find(|g| g.source.from == t.from) {
            Some(g) => {
                g.source.max_in_flight = g.source.max_in_flight.min(max);
                g.source.ordered |= t.delivery.ordered;
                g.source.attempt_timeout = g.source.attempt_timeout.max(timeout);
                g.triggers.push(t);
            }
            None => groups.push(Planned {
                source: SourceSpec {
                    from: t.from.clone(),
                    max_in_flight: max,
                    ordered: t.delivery.ordered,
                    attempt_timeout: timeout,
                    connector: config.connectors.get(t.from.connector.as_str()).cloned(),
                },
                triggers: vec![t],
                routing: Routing {
                    triggers: Vec::new(),
                    uses: Vec::new(),
                },
                publishes_to: BTreeSet::new(),
            }),
        }
    }
    let connector = |name: &str| Used::Connector(config.connectors.get(name).cloned());
    let function = |name: &str| Used::Function(config.functions.get(name).cloned().map(Box::new));
    for g in &mut groups {
        for t in &g.triggers {
            g.routing.triggers.push((*t).clone());
            g.routing.uses.push(function(t.to.as_str()));
            if let Some(retry) = &t.delivery.retry_topic {
                g.publishes_to.insert(retry.connector.to_string());
            }
            for d in [&t.dead_letter, &t.reply].into_iter().flatten() {
                if let Some(c) = &d.connector {
                    g.publishes_to.insert(c.to_string());
                    g.routing.uses.push(connector(c.as_str()));
                }
                if let Some(f) = &d.function {
                    g.routing.uses.push(function(f.as_str()));
                }
            }
        }
    }
    Ok(groups)
}

/// The configuration's discovery entries with what they use, and their index.
fn discoveries(config: &Config) -> Vec<(DiscoverySpec, usize)> {
    config
        .discover
        .iter()
        .enumerate()
        .map(|(index, d)| {
            let entry = &d.openfaas;
            let uses = discovery_uses(entry)
                .into_iter()
                .map(|name| match config.connectors.get(&name) {
                    Some(c) => Used::Connector(Some(c.clone())),
                    None => Used::Function(config.functions.get(&name).cloned().map(Box::new)),
                })
                .collect();
            (
                DiscoverySpec {
                    entry: entry.clone(),
                    uses,
                },
                index,
            )
        })
        .collect()
}

/// The connectors and functions a discovery entry uses, by name.
fn discovery_uses(entry: &config::OpenFaasDiscovery) -> BTreeSet<String> {
    let mut uses = discovery_connectors(entry);
    for d in [&entry.dead_letter, &entry.reply].into_iter().flatten() {
        uses.extend(d.function.as_ref().map(|f| f.to_string()));
    }
    uses
}

/// The connectors a discovery entry uses, by name.
fn discovery_connectors(entry: &config::OpenFaasDiscovery) -> BTreeSet<String> {
    let mut uses = BTreeSet::from([entry.connector.to_string()]);
    for d in [&entry.dead_letter, &entry.reply].into_iter().flatten() {
        uses.extend(d.connector.as_ref().map(|c| c.to_string()));
    }
    uses
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connectors::REGISTRY;

    fn load(text: &str, env: &[(&str, &str)]) -> Config {
        let env: BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        match config::load_str("t.yaml", text, |name| env.get(name).cloned(), &REGISTRY) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        }
    }

    /// What runs after `config` was applied, with what a failed apply may have left undone.
    struct Ran {
        config: Config,
        groups: Vec<(SourceSpec, Routing, BTreeSet<String>)>,
        discoveries: Vec<DiscoverySpec>,
        unstarted: BTreeSet<String>,
    }

    impl Ran {
        fn all(config: Config) -> Self {
            let groups = subscriptions(&config)
                .unwrap_or_else(|e| panic!("{e}"))
                .into_iter()
                .map(|p| (p.source, p.routing, p.publishes_to))
                .collect();
            let discoveries = discoveries(&config).into_iter().map(|(d, _)| d).collect();
            Self {
                config,
                groups,
                discoveries,
                unstarted: BTreeSet::new(),
            }
        }

        /// As if the subscription of trigger `name` could not be opened.
        fn without(mut self, name: &str) -> Self {
            self.groups
                .retain(|(_, routing, _)| !routing.triggers.iter().any(|t| *t.name == name));
            self
        }

        /// As if connector `name` was installed and never started.
        fn unstarted(mut self, name: &str) -> Self {
            self.unstarted.insert(name.to_string());
            self
        }

        fn running(&self) -> Running<'_> {
            Running {
                connectors: self
                    .config
                    .connectors
                    .iter()
                    .map(|(name, c)| {
                        let running = RunningConnector {
                            config: c,
                            started: !self.unstarted.contains(name),
                            // As the kinds say: the HTTP ingress serves the routes it started
                            // with; the brokers' connectors subscribe at any time.
                            subscribes_while_running: c.kind() != "http",
                        };
                        (name.as_str(), running)
                    })
                    .collect(),
                functions: self
                    .config
                    .functions
                    .iter()
                    .map(|(n, f)| (n.as_str(), f))
                    .collect(),
                groups: self
                    .groups
                    .iter()
                    .map(|(source, routing, publishes_to)| RunningGroup {
                        source,
                        routing,
                        publishes_to,
                    })
                    .collect(),
                discoveries: self.discoveries.iter().collect(),
            }
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

    const MOVED: &str = "
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

    const SECRET: &str = "
connectors:
  n: { nats: { url: \"nats://fnb:${NATS_PASSWORD}@127.0.0.1:4222\" } }
functions:
  f: { http: { url: http://127.0.0.1:1/f, headers: { Authorization: \"Bearer ${TOKEN}\" } } }
triggers:
  - { name: a, from: { connector: n, topic: a }, to: f }
";

    const WEB: &str = "
connectors:
  web: { http: { listen: 127.0.0.1:1 } }
  bus: { nats: { url: nats://127.0.0.1:4222 } }
functions:
  f: { http: { url: http://127.0.0.1:1/f } }
triggers:
  - { name: w, from: { connector: web, topic: /w }, to: f }
";

    /// Adds a second HTTP ingress with a trigger and a JetStream trigger (the one a broker may
    /// refuse).
    fn with_web2(base: &str, jetstream: bool) -> String {
        let mut text = base.replace(
            "  bus: { nats",
            "  web2: { http: { listen: 127.0.0.1:2 } }\n  bus: { nats",
        );
        text.push_str("  - { name: w2, from: { connector: web2, topic: /w2 }, to: f }\n");
        if jetstream {
            text.push_str("  - { name: js, from: { connector: bus, stream: NOPE, topic: x, group: g }, to: f }\n");
        }
        text
    }

    struct Case {
        what: &'static str,
        ran: Ran,
        next: Config,
        plan: &'static [&'static str],
    }

    #[test]
    fn the_plan_of_a_reload() {
        let base = || load(BASE, &[]);
        let base_with = |from: &str, to: &str| load(&BASE.replace(from, to), &[]);
        let secret = |p: &str, t: &str| load(SECRET, &[("NATS_PASSWORD", p), ("TOKEN", t)]);
        let cases = [
            Case {
                what: "the same configuration changes nothing",
                ran: Ran::all(base()),
                next: base(),
                plan: &[],
            },
            Case {
                what: "moving entries or another YAML style is no change",
                ran: Ran::all(base()),
                next: load(MOVED, &[]),
                plan: &[],
            },
            Case {
                what: "a function's URL swaps the triggers that call it; their source stays open",
                ran: Ran::all(base()),
                next: base_with("1/g", "1/g2"),
                plan: &["build fn g", "swap #0 a,b"],
            },
            Case {
                what: "max_in_flight is the source's: that subscription alone is reopened",
                ran: Ran::all(base()),
                next: base_with(
                    "{ name: c, from: { connector: n, topic: c }, to: f }",
                    "{ name: c, from: { connector: n, topic: c }, to: f, delivery: { max_in_flight: 7 } }",
                ),
                plan: &["close #1", "open c"],
            },
            Case {
                what: "a changed topic retires the old subscription and opens the new one",
                ran: Ran::all(base()),
                next: base_with("topic: c }", "topic: c2 }"),
                plan: &["retire #1", "open c"],
            },
            Case {
                what: "a removed trigger's subscription is retired",
                ran: Ran::all(base()),
                next: base_with(
                    "  - { name: c, from: { connector: n, topic: c }, to: f }\n",
                    "",
                ),
                plan: &["retire #1"],
            },
            Case {
                what: "a connector's settings reopen every subscription on it",
                ran: Ran::all(base()),
                next: base_with("4222", "4223"),
                plan: &[
                    "close #0", "close #1", "stop n", "build n", "open a,b", "open c", "start n",
                ],
            },
            Case {
                what: "a removed trigger closes its subscription, a removed function goes",
                ran: Ran::all(base()),
                next: base_with(
                    "  - { name: b, from: { connector: n, topic: a }, to: g }\n",
                    "",
                )
                .tap(|c| {
                    c.functions.remove("g");
                }),
                plan: &["remove fn g", "swap #0 a"],
            },
            Case {
                what: "a rotated connector password is a change, though shown masked",
                ran: Ran::all(secret("one", "t")),
                next: secret("two", "t"),
                plan: &["close #0", "stop n", "build n", "open a", "start n"],
            },
            Case {
                what: "a rotated function token is a change",
                ran: Ran::all(secret("one", "t")),
                next: secret("one", "t2"),
                plan: &["build fn f", "swap #0 a"],
            },
            Case {
                what: "a connector a failed apply left unstarted is started",
                ran: Ran::all(base()).unstarted("n"),
                next: base(),
                plan: &["start n"],
            },
            Case {
                what: "a subscription a failed apply could not open is opened",
                ran: Ran::all(base()).without("c"),
                next: base(),
                plan: &["open c"],
            },
            Case {
                what: "after a failed reload, the fixed file starts the new HTTP ingress",
                ran: Ran::all(load(&with_web2(WEB, true), &[]))
                    .without("js")
                    .unstarted("web2"),
                next: load(&with_web2(WEB, false), &[]),
                plan: &["start web2"],
            },
            Case {
                what: "an unstarted HTTP ingress takes a new route without being rebuilt",
                ran: Ran::all(load(&with_web2(WEB, false), &[])).unstarted("web2"),
                next: load(
                    &format!(
                        "{}  - {{ name: w3, from: {{ connector: web2, topic: /w3 }}, to: f }}\n",
                        with_web2(WEB, false)
                    ),
                    &[],
                ),
                plan: &["open w3", "start web2"],
            },
            Case {
                what: "a started HTTP ingress that needs a new route is rebuilt with all its routes",
                ran: Ran::all(load(WEB, &[])),
                next: load(
                    &format!(
                        "{WEB}  - {{ name: w3, from: {{ connector: web, topic: /w3 }}, to: f }}\n"
                    ),
                    &[],
                ),
                plan: &[
                    "close #0",
                    "stop web",
                    "build web",
                    "open w",
                    "open w3",
                    "start web",
                ],
            },
            Case {
                what: "a new connector is built and started once its subscriptions are open",
                ran: Ran::all(load(WEB, &[])),
                next: load(&with_web2(WEB, false), &[]),
                plan: &["build web2", "open w2", "start web2"],
            },
            Case {
                what: "a replaced dead-letter connector reopens what publishes to it",
                ran: Ran::all(load(
                    &format!(
                        "{WEB}  - {{ name: d, from: {{ connector: web, topic: /d }}, to: f, dead_letter: {{ connector: bus, topic: dlq }} }}\n"
                    ),
                    &[],
                )),
                next: load(
                    &format!(
                        "{}  - {{ name: d, from: {{ connector: web, topic: /d }}, to: f, dead_letter: {{ connector: bus, topic: dlq }} }}\n",
                        WEB.replace("4222", "4223")
                    ),
                    &[],
                ),
                plan: &[
                    "close #0",
                    "close #1",
                    "stop bus",
                    "stop web",
                    "build bus",
                    "build web",
                    "open w",
                    "open d",
                    "start bus",
                    "start web",
                ],
            },
        ];
        for case in cases {
            let planned = plan(&case.ran.running(), &case.next).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(planned.summary(), case.plan, "{}", case.what);
            assert_eq!(planned.is_empty(), case.plan.is_empty(), "{}", case.what);
        }
    }

    /// The triggers with one `from` share one subscription.
    #[test]
    fn triggers_with_one_source_share_a_subscription() {
        let config = load(BASE, &[]);
        let names: Vec<Vec<String>> = subscriptions(&config)
            .unwrap_or_else(|e| panic!("{e}"))
            .iter()
            .map(Planned::names)
            .collect();
        assert_eq!(names, [vec!["a", "b"], vec!["c"]]);
    }

    trait Tap: Sized {
        fn tap(mut self, f: impl FnOnce(&mut Self)) -> Self {
            f(&mut self);
            self
        }
    }

    impl Tap for Config {}
}

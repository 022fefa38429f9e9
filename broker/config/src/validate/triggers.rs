//! The `triggers` section: each trigger's source, filter, delivery policy, batching and retry
//! topic.

use super::*;

pub(super) fn validate_trigger(
    connectors: &BTreeMap<String, ConnectorConfig>,
    functions: &BTreeMap<String, Function>,
    index: usize,
    trigger: &mut Trigger,
    registry: &Registry,
    findings: &RefCell<Vec<Finding>>,
    errors: &mut Errors<'_>,
) {
    let tname = trigger.name.to_string();
    let base: Vec<String> = vec!["triggers".into(), index.to_string(), "from".into()];
    let from = &mut trigger.from;
    match connectors.get(from.connector.as_str()) {
        None => errors.at(
            &from.connector,
            format!(
                "unknown connector `{}` in trigger `{tname}`",
                *from.connector
            ),
        ),
        Some(connector) => {
            if let Some(kind) = registry.get(connector.kind()) {
                let parsed = parse_keys(
                    &base,
                    &format!("trigger `{tname}`"),
                    from.keys.object(),
                    |v, ignored| kind.parse_source(v, ignored),
                    |path| {
                        let key = path.join(".");
                        let takes = kind_keys(kind, 1);
                        let with = if takes.is_empty() {
                            String::from("only `connector` and `topic`")
                        } else {
                            format!("{} besides `connector` and `topic`", listed(&takes))
                        };
                        format!(
                            "trigger `{tname}`: `{key}` does not apply to {} source (its `from` takes {with})",
                            with_article(kind.kind())
                        )
                    },
                    errors,
                );
                if let Some(settings) = parsed {
                    let used = SourceUse {
                        trigger: &tname,
                        connector: from.connector.as_str(),
                        topic: from.topic.as_ref().map(|t| t.as_str()),
                    };
                    let report = Report::new(findings, base, format!("trigger `{tname}`"));
                    kind.validate_source(&settings, &used, &report);
                    from.keys.set(settings);
                }
            }
        }
    }
    if !functions.contains_key(trigger.to.as_str()) {
        errors.at(
            &trigger.to,
            format!("unknown function `{}` in trigger `{tname}`", *trigger.to),
        );
    }
    if let Some(filter) = &trigger.filter {
        validate_filter(filter, &tname, &trigger.name, errors);
    }
    let d = &trigger.delivery;
    duration(
        &d.delay,
        &format!("trigger `{tname}` delivery.delay"),
        errors,
    );
    duration(
        &d.max_delay,
        &format!("trigger `{tname}` delivery.max_delay"),
        errors,
    );
    if let Some(t) = &d.timeout {
        duration(t, &format!("trigger `{tname}` delivery.timeout"), errors);
    }
    if d.delay.is_valid() && d.max_delay.is_valid() && d.delay.get() > d.max_delay.get() {
        errors.at(
            d.max_delay.text(),
            format!("trigger `{tname}`: `max_delay` is shorter than `delay`"),
        );
    }
    if *d.max_in_flight == 0 {
        errors.at(
            &d.max_in_flight,
            format!("trigger `{tname}`: `max_in_flight` must be at least 1"),
        );
    }
    if let Some(batch) = &d.batch {
        let refused = functions
            .get(trigger.to.as_str())
            .and_then(Function::kind)
            .filter(|entry| {
                let takes = registry
                    .function(entry.kind())
                    .zip(entry.settings())
                    .is_none_or(|(kind, settings)| kind.takes_batches(settings));
                !takes
            })
            .map(|entry| {
                format!(
                    "function `{}` ({}) cannot take a batch",
                    *trigger.to,
                    entry.kind()
                )
            });
        let at = if refused.is_some() {
            &trigger.to
        } else {
            &trigger.name
        };
        validate_batch(
            batch,
            &format!("trigger `{tname}`"),
            trigger.reply.is_some(),
            refused,
            at,
            errors,
        );
    }
    if let Some(retry) = &d.retry_topic {
        validate_retry_topic(retry, d, connectors, registry, &tname, errors);
    }
    if let Some(dedup) = &d.dedup {
        validate_dedup(dedup, connectors, registry, &tname, &trigger.name, errors);
    }
    for (what, dest) in [
        ("dead_letter", &mut trigger.dead_letter),
        ("reply", &mut trigger.reply),
    ] {
        if let Some(dest) = dest {
            let base = vec!["triggers".into(), index.to_string(), what.to_string()];
            validate_destination(
                connectors, functions, registry, dest, &tname, what, base, findings, errors,
            );
        }
    }
}

/// `delivery.batch`: its sizes, a function that takes batches (`refused` says why not), and no
/// `reply` (a batch's answer reports failed events; it is no reply). `owner` names the trigger
/// or discovery entry, `at` is where an error that has no key of its own is placed.
pub(super) fn validate_batch(
    batch: &Batch,
    owner: &str,
    reply: bool,
    refused: Option<String>,
    at: &Loc<String>,
    errors: &mut Errors<'_>,
) {
    if !(1..=10_000).contains(&*batch.max_events) {
        errors.at(
            &batch.max_events,
            format!("{owner}: `batch.max_events` must be 1 to 10000"),
        );
    }
    if !batch.max_bytes.is_valid() || batch.max_bytes.get() == 0 {
        errors.at(
            batch.max_bytes.text(),
            format!(
                "{owner}: `batch.max_bytes` is not a size: `{}` (write `1MiB`, `512KiB` or bytes)",
                batch.max_bytes.text().as_str()
            ),
        );
    }
    duration(
        &batch.max_wait,
        &format!("{owner} delivery.batch.max_wait"),
        errors,
    );
    if reply {
        errors.at(
            at,
            format!("{owner}: `delivery.batch` and `reply` do not go together (a batch's answer names the events that failed; it is no reply)"),
        );
    }
    if let Some(why) = refused {
        errors.at(at, format!("{owner}: {why}; remove `delivery.batch`"));
    }
}

/// `delivery.dedup`: a window, a bound, and a store the replicas can share.
pub(super) fn validate_dedup(
    dedup: &crate::Dedup,
    connectors: &BTreeMap<String, ConnectorConfig>,
    registry: &Registry,
    tname: &str,
    at: &Loc<String>,
    errors: &mut Errors<'_>,
) {
    let owner = format!("trigger `{tname}`");
    duration(
        &dedup.window,
        &format!("{owner} delivery.dedup.window"),
        errors,
    );
    if dedup.max_entries == 0 {
        errors.at(
            at,
            format!("{owner}: `delivery.dedup.max_entries` must be at least 1"),
        );
    }
    if let crate::DedupStore::Shared(shared) = &dedup.store {
        let connector = shared.connector.as_str();
        match connectors
            .get(connector)
            .map(|c| (c.kind(), registry.get(c.kind())))
        {
            None => errors.at(
                at,
                format!("{owner}: unknown connector `{connector}` in `delivery.dedup.store`"),
            ),
            Some((kind, found)) if !found.is_some_and(|k| k.capabilities().keeps_keys) => {
                errors.at(
                    at,
                    format!(
                        "{owner}: `delivery.dedup.store`: a {kind} connector keeps no keys (name a redis or postgres connector, or write `memory`)"
                    ),
                )
            }
            Some(_) => {}
        }
    }
}

/// `delivery.retry_topic`: a connector that can hold retry state and publish, and a trigger
/// whose order need not be kept (a retried event is overtaken by the next ones) and that does
/// not batch.
pub(super) fn validate_retry_topic(
    retry: &crate::RetryTopic,
    delivery: &crate::Delivery,
    connectors: &BTreeMap<String, ConnectorConfig>,
    registry: &Registry,
    tname: &str,
    errors: &mut Errors<'_>,
) {
    let owner = format!("trigger `{tname}`");
    match connectors
        .get(retry.connector.as_str())
        .and_then(|c| registry.get(c.kind()))
    {
        None => errors.at(
            &retry.connector,
            format!(
                "{owner}: unknown connector `{}` in `retry_topic`",
                *retry.connector
            ),
        ),
        Some(kind) => {
            if retry.topic.is_empty() {
                errors.at(
                    &retry.connector,
                    format!("{owner}: `retry_topic` needs a `topic`"),
                );
            } else if let Err(why) = kind.retry_source(tname, &retry.topic) {
                errors.at(&retry.connector, format!("{owner}: `retry_topic`: {why}"));
            } else if !kind.capabilities().publishes {
                errors.at(
                    &retry.connector,
                    format!(
                        "{owner}: `retry_topic`: a {} connector cannot publish",
                        kind.kind()
                    ),
                );
            }
        }
    }
    if delivery.ordered {
        errors.at(
            &retry.connector,
            format!("{owner}: `retry_topic` and `ordered: true` do not go together (a retried event is overtaken by the ones after it)"),
        );
    }
    if delivery.batch.is_some() {
        errors.at(
            &retry.connector,
            format!("{owner}: `retry_topic` and `batch` do not go together yet"),
        );
    }
}

pub(super) fn validate_filter(
    filter: &Filter,
    tname: &str,
    at: &Loc<String>,
    errors: &mut Errors<'_>,
) {
    match filter {
        Filter::Exact(m) | Filter::Prefix(m) | Filter::Suffix(m) => {
            if m.is_empty() {
                errors.at(
                    at,
                    format!("trigger `{tname}`: a filter dialect needs at least one attribute"),
                );
            }
            for name in m.keys() {
                if !is_valid_attribute_name(name) {
                    errors.at(at, format!("trigger `{tname}`: `{name}` is not a CloudEvents attribute name (lowercase letters and digits)"));
                }
            }
        }
        Filter::All(fs) | Filter::Any(fs) => {
            for f in fs {
                validate_filter(f, tname, at, errors);
            }
        }
        Filter::Not(f) => validate_filter(f, tname, at, errors),
        Filter::Sql(expr) => {
            if let Err(e) = fnbroker_filters::cesql::Expr::parse(expr) {
                errors.at(
                    expr,
                    format!(
                        "trigger `{tname}`: invalid sql filter: {} (at position {} of the expression)",
                        e.message, e.position
                    ),
                );
            }
        }
        Filter::Cel(expr) => {
            if let Err(e) = fnbroker_filters::celexpr::CelExpr::parse(expr) {
                errors.at(
                    expr,
                    format!(
                        "trigger `{tname}`: invalid cel filter: {} (at line {}, column {} of the expression)",
                        e.message, e.line, e.column
                    ),
                );
            }
        }
    }
}

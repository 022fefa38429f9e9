//! Validation of a parsed configuration, a module per section; every problem is reported with
//! its place, and validation goes on after one so that all of them come at once.

mod connectors;
mod destinations;
mod discovery;
mod functions;
mod triggers;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet};

use fnbroker_core::event::is_valid_attribute_name;
use fnbroker_core::function::FunctionUse;
use fnbroker_core::registry::{
    ConnectorKind, Finding, ParseError, Registry, Report, Settings, SourceUse,
};
use fnbroker_core::values;

use crate::load::{Errors, Place, distance, plain_message, suggestion_among};
use crate::{
    Batch, ConfDuration, Config, ConnectorConfig, Destination, Filter, Function,
    FunctionKindConfig, Loc, Trigger,
};

use connectors::{
    kind_keys, listed, parse_keys, schema_keys, unknown_key, validate_connector,
    validate_sources_together, with_article,
};
use destinations::validate_destination;
use discovery::validate_discovery;
use functions::{half_a_login, validate_function};
use triggers::{validate_batch, validate_trigger};

pub(crate) fn validate(config: &mut Config, registry: &Registry, errors: &mut Errors<'_>) {
    let findings = RefCell::new(Vec::new());
    for (name, connector) in &mut config.connectors {
        validate_connector(name, connector, registry, &findings, errors);
    }
    let admin_url = config.admin.as_ref().and_then(super::Admin::base_url);
    let using = FunctionUse {
        admin_url: admin_url.as_deref(),
    };
    for (name, function) in &mut config.functions {
        validate_function(name, function, registry, &using, &findings, errors);
    }
    let mut names = HashSet::new();
    for trigger in &config.triggers {
        if trigger.name.is_empty() {
            errors.at(&trigger.name, "a trigger name must not be empty");
        } else if !names.insert(trigger.name.as_str()) {
            errors.at(
                &trigger.name,
                format!("duplicate trigger name `{}`", *trigger.name),
            );
        }
    }
    let connectors = &config.connectors;
    let functions = &config.functions;
    for (i, trigger) in config.triggers.iter_mut().enumerate() {
        validate_trigger(
            connectors, functions, i, trigger, registry, &findings, errors,
        );
    }
    let mut retry_topics = HashSet::new();
    for trigger in &config.triggers {
        if let Some(retry) = &trigger.delivery.retry_topic
            && !retry_topics.insert((retry.connector.as_str(), retry.topic.as_str()))
        {
            errors.at(
                &retry.connector,
                format!(
                    "trigger `{}`: another trigger keeps its retries in `{}` of `{}` already; each trigger needs a retry topic of its own",
                    *trigger.name,
                    retry.topic,
                    *retry.connector
                ),
            );
        }
    }
    for (i, entry) in config.discover.iter_mut().enumerate() {
        validate_discovery(
            connectors,
            functions,
            registry,
            i,
            &mut entry.openfaas,
            admin_url.is_some(),
            &findings,
            errors,
        );
    }
    validate_sources_together(config, registry, &findings);
    duration(&config.shutdown_timeout, "shutdown_timeout", errors);
    if let Some(telemetry) = &config.telemetry {
        if let Some(endpoint) = telemetry.otlp.as_ref().and_then(|o| o.endpoint.as_ref()) {
            url(
                endpoint,
                &["http", "https"],
                "telemetry.otlp.endpoint",
                errors,
            );
        }
        if let Some(r) = telemetry.sample_ratio
            && !(0.0..=1.0).contains(&r)
        {
            errors.at_path(
                &["telemetry", "sample_ratio"],
                format!("telemetry: `sample_ratio` must be between 0 and 1, not {r}"),
            );
        }
    }
    if let Some(admin) = &config.admin {
        address(&admin.listen, "admin.listen", errors);
        duration(&admin.stuck_after, "admin.stuck_after", errors);
        if let Some(Err(e)) = admin.tls.as_ref().map(fnbroker_core::tls::ServerTls::check) {
            errors.placed(
                vec!["admin".into(), "tls".into(), e.key.into()],
                Place::Value,
                format!("admin.tls.{}: {}", e.key, e.message),
            );
        }
    }
    for Finding { path, message } in findings.into_inner() {
        errors.placed(path, Place::Value, message);
    }
}

fn duration(d: &ConfDuration, what: &str, errors: &mut Errors<'_>) {
    if let Some(problem) = values::duration_problem(d) {
        errors.at(d.text(), format!("{what}: {problem}"));
    }
}

fn address(a: &Loc<String>, what: &str, errors: &mut Errors<'_>) {
    if let Some(problem) = values::address_problem(a) {
        errors.at(a, format!("{what}: {problem}"));
    }
}

fn url(u: &Loc<String>, schemes: &[&str], owner: &str, errors: &mut Errors<'_>) {
    if let Some(problem) = values::url_problem(u, schemes) {
        errors.at(u, format!("`{owner}`: {problem}"));
    }
}

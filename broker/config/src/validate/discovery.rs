//! The `discover` section: OpenFaaS discovery entries.

use super::*;

/// An OpenFaaS discovery entry: its gateway, its connector, and the settings its triggers share.
#[allow(clippy::too_many_arguments)]
pub(super) fn validate_discovery(
    connectors: &BTreeMap<String, ConnectorConfig>,
    functions: &BTreeMap<String, Function>,
    registry: &Registry,
    index: usize,
    d: &mut crate::OpenFaasDiscovery,
    has_admin_url: bool,
    findings: &RefCell<Vec<Finding>>,
    errors: &mut Errors<'_>,
) {
    let owner = format!("discover[{index}]");
    url(&d.gateway, &["http", "https"], &owner, errors);
    if !connectors.contains_key(d.connector.as_str()) {
        errors.at(
            &d.connector,
            format!("{owner}: unknown connector `{}`", *d.connector),
        );
    }
    half_a_login(&d.gateway, &d.username, &d.password, &owner, errors);
    if d.group.trim().is_empty() {
        errors.placed(
            vec![
                "discover".into(),
                index.to_string(),
                "openfaas".into(),
                "group".into(),
            ],
            Place::Value,
            format!(
                "{owner}: `group` must not be empty: it names the replicas' shared subscriptions"
            ),
        );
    }
    duration(&d.refresh, &format!("{owner}.openfaas.refresh"), errors);
    if d.refresh.get() < std::time::Duration::from_secs(1) {
        errors.at(
            d.refresh.text(),
            format!("{owner}: `refresh` must be at least 1s"),
        );
    }
    if let Some(t) = &d.timeout {
        duration(t, &format!("{owner}.openfaas.timeout"), errors);
    }
    if *d.concurrency == 0 {
        errors.at(
            &d.concurrency,
            format!("{owner}: `concurrency` must be at least 1"),
        );
    }
    if let Some(cb) = &d.callback_url {
        url(cb, &["http", "https"], &owner, errors);
    } else if d.asynchronous && !has_admin_url {
        errors.at(
            &d.gateway,
            format!("{owner}: `async: true` needs `callback_url`, or an `admin` listener on a specific address: the gateway's queue worker posts each result there"),
        );
    }
    if d.delivery.retry_topic.is_some() {
        errors.at(
            &d.connector,
            format!("{owner}: `retry_topic` is for triggers written in the file, not for discovered functions (their retries are in memory)"),
        );
    }
    if d.delivery.dedup.is_some() {
        errors.at(
            &d.connector,
            format!(
                "{owner}: `dedup` is for triggers written in the file, not for discovered functions"
            ),
        );
    }
    if let Some(batch) = &d.delivery.batch {
        let refused = d
            .asynchronous
            .then(|| "an asynchronous OpenFaaS call cannot take a batch".to_string());
        validate_batch(
            batch,
            &owner,
            d.reply.is_some(),
            refused,
            &d.connector,
            errors,
        );
    }
    if let Some(Err(e)) = d.tls.as_ref().map(fnbroker_core::tls::Tls::check) {
        errors.placed(
            vec![
                "discover".into(),
                index.to_string(),
                "openfaas".into(),
                "tls".into(),
                e.key.into(),
            ],
            Place::Value,
            format!("{owner}: tls: {}", e.message),
        );
    }
    for (what, dest) in [
        ("dead_letter", d.dead_letter.as_mut()),
        ("reply", d.reply.as_mut()),
    ] {
        if let Some(dest) = dest {
            let base = vec![
                "discover".into(),
                index.to_string(),
                "openfaas".into(),
                what.to_string(),
            ];
            validate_destination(
                connectors, functions, registry, dest, &owner, what, base, findings, errors,
            );
        }
    }
}

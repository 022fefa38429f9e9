//! The `connectors` section: each connector's settings parsed into its kind's types and checked
//! by its plugin, and the sources of each connector's triggers checked together.

use super::*;

pub(super) fn validate_connector(
    name: &str,
    connector: &mut ConnectorConfig,
    registry: &Registry,
    findings: &RefCell<Vec<Finding>>,
    errors: &mut Errors<'_>,
) {
    let kind_name = connector.kind().to_string();
    let base = vec![
        "connectors".to_string(),
        name.to_string(),
        kind_name.clone(),
    ];
    let Some(kind) = registry.get(&kind_name) else {
        if let Some(feature) = registry.feature_of_absent(&kind_name) {
            errors.placed(
                base,
                Place::Key,
                format!(
                    "connector `{name}`: kind `{kind_name}` is not built into this fnbroker; build it with the cargo feature `{feature}` (`cargo build --release --features {feature}`)"
                ),
            );
            return;
        }
        let hint = registry
            .kinds()
            .map(|k| k.kind())
            .find(|k| distance(k, &kind_name) <= 2)
            .map_or(String::new(), |k| format!("; did you mean `{k}`?"));
        errors.placed(
            base,
            Place::Key,
            format!(
                "connector `{name}`: unknown kind `{kind_name}` (the kinds are {}){hint}",
                registry.names()
            ),
        );
        return;
    };
    let owner = format!("connector `{name}`");
    let parsed = parse_keys(
        &base,
        &owner,
        connector.raw().clone(),
        |v, ignored| kind.parse_settings(v, ignored),
        |path| unknown_key(&base, path, &kind_keys(kind, 0)),
        errors,
    );
    if let Some(settings) = parsed {
        kind.validate(&settings, &Report::new(findings, base, owner));
        connector.set_settings(settings);
    }
}

/// The message for a key at `path` below `base` that is not one of `keys`, with the nearest one.
pub(super) fn unknown_key(base: &[String], path: &[String], keys: &[String]) -> String {
    let key = path.last().cloned().unwrap_or_default();
    let place = [base, &path[..path.len().saturating_sub(1)]]
        .concat()
        .join(".");
    let hint =
        suggestion_among(&key, keys).map_or(String::new(), |s| format!("; did you mean `{s}`?"));
    format!("unknown key `{key}` in `{place}`{hint}")
}

/// Parses `value` with `parse` (a kind's type), reporting unknown keys (with `unknown`'s
/// wording) and values that do not fit, below `base`.
pub(super) fn parse_keys(
    base: &[String],
    owner: &str,
    value: serde_json::Value,
    parse: impl FnOnce(serde_json::Value, &mut dyn FnMut(Vec<String>)) -> Result<Settings, ParseError>,
    unknown: impl Fn(&[String]) -> String,
    errors: &mut Errors<'_>,
) -> Option<Settings> {
    let mut ignored = Vec::new();
    let parsed = parse(value, &mut |path| ignored.push(path));
    for path in ignored {
        let message = unknown(&path);
        errors.placed([base, &path].concat(), Place::Key, message);
    }
    match parsed {
        Ok(settings) => Some(settings),
        Err(e) => {
            let key = e.path.last().cloned();
            let message = plain_message(&e.message);
            let message = match key {
                Some(key) => format!("{owner}: `{key}`: {message}"),
                None => format!("{owner}: {message}"),
            };
            errors.placed([base, &e.path].concat(), Place::Value, message);
            None
        }
    }
}

/// The property names of a schema (resolving a reference to a definition).
pub(super) fn schema_keys(
    schema: &schemars::Schema,
    generator: &schemars::SchemaGenerator,
) -> Vec<String> {
    let value = schema.as_value();
    let resolved = match value.get("$ref").and_then(|r| r.as_str()) {
        Some(r) => generator
            .definitions()
            .get(r.trim_start_matches("#/$defs/"))
            .cloned()
            .unwrap_or_default(),
        None => value.clone(),
    };
    resolved
        .get("properties")
        .and_then(|p| p.as_object())
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default()
}

/// The keys a kind takes in its settings (0), its sources (1) or its destinations (2).
pub(super) fn kind_keys(kind: &dyn ConnectorKind, which: usize) -> Vec<String> {
    let mut generator = schemars::SchemaGenerator::default();
    let schemas = kind.schemas(&mut generator);
    schema_keys(&schemas[which], &generator)
}

/// `an amqp`, `a kafka`.
pub(super) fn with_article(kind: &str) -> String {
    let an = kind.starts_with(['a', 'e', 'i', 'o', 'u']);
    format!("{} {kind}", if an { "an" } else { "a" })
}

pub(super) fn listed(keys: &[String]) -> String {
    keys.iter()
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Hands each kind the sources of all triggers on each of its connectors.
pub(super) fn validate_sources_together(
    config: &Config,
    registry: &Registry,
    findings: &RefCell<Vec<Finding>>,
) {
    for (name, connector) in &config.connectors {
        let Some(kind) = registry.get(connector.kind()) else {
            continue;
        };
        let uses: Vec<_> = config
            .triggers
            .iter()
            .enumerate()
            .filter(|(_, t)| t.from.connector.as_str() == name)
            .filter_map(|(i, t)| {
                let settings = t.from.keys.parsed()?;
                let used = SourceUse {
                    trigger: t.name.as_str(),
                    connector: name,
                    topic: t.from.topic.as_ref().map(|t| t.as_str()),
                };
                let base = vec!["triggers".into(), i.to_string(), "from".into()];
                let report = Report::new(findings, base, format!("trigger `{}`", *t.name));
                Some((used, settings, report))
            })
            .collect();
        if !uses.is_empty() {
            kind.validate_together(&uses);
        }
    }
}

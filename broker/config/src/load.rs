//! Loading and validating a configuration file: every error at once, each with its line and
//! column, and no IO beyond reading the file.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::Path;

use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

use fnbroker_core::registry::{
    ConnectorKind, Finding, ParseError, Registry, Report, Settings, SourceUse, path_segments,
};
use fnbroker_core::values;

use super::{
    Batch, ConfDuration, Config, ConnectorConfig, Destination, Filter, Function, FunctionKind, Loc,
    Trigger,
};
use fnbroker_core::event::is_valid_attribute_name;

/// One configuration error, at a place in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file as the user named it.
    pub file: String,
    /// 1-based line (0 when the place is unknown).
    pub line: u64,
    /// 1-based column (0 when the place is unknown).
    pub column: u64,
    /// What is wrong, one lowercase line.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file,
            self.line.max(1),
            self.column.max(1),
            self.message
        )
    }
}

/// Every error found in a configuration, in the order of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Reads, substitutes, parses and validates the configuration file at `path`, with the connector
/// kinds of `registry`.
pub fn load(path: &Path, registry: &Registry) -> Result<Config, ConfigErrors> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: file.clone(),
            line: 0,
            column: 0,
            message: format!("cannot read the file: {e}"),
        }])
    })?;
    load_str(&file, &text, |name| std::env::var(name).ok(), registry)
}

/// Substitutes, parses and validates configuration text; `file` names it in errors and `env`
/// looks up `${VARIABLES}`.
pub fn load_str(
    file: &str,
    text: &str,
    env: impl Fn(&str) -> Option<String>,
    registry: &Registry,
) -> Result<Config, ConfigErrors> {
    let mut errors = Errors::new(file);
    let text = super::substitute::substitute(text, &env, &mut errors);

    let mut ignored = Vec::new();
    let mut config = match parse_collecting_ignored(&text, &mut ignored) {
        Ok(c) => Some(c),
        Err(e) => {
            let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
            let tree =
                serde_saphyr::from_str_with_options::<Spanned<Node>>(&text, yaml_options()).ok();
            let key = tree.as_ref().and_then(|t| key_at(t, line, column));
            let message = plain_message(&yaml_message(&e));
            errors.push(
                line,
                column,
                match key {
                    Some(key) => format!("`{key}`: {message}"),
                    None => message,
                },
            );
            None
        }
    };

    if !ignored.is_empty() {
        let tree = serde_saphyr::from_str_with_options::<Spanned<Node>>(&text, yaml_options()).ok();
        // The location wrapper's internal marker shows up as an ignored key; it is not the user's.
        ignored.retain(|p| !p.iter().any(|s| s.starts_with("__serde_saphyr")));
        for path in ignored {
            let (line, column) = tree
                .as_ref()
                .and_then(|t| locate(t, &path))
                .map_or((0, 0), |f| f.key);
            let key = path.last().cloned().unwrap_or_default();
            let parent = path[..path.len().saturating_sub(1)].join(".");
            let place = if parent.is_empty() {
                "at the top level".to_string()
            } else {
                format!("in `{parent}`")
            };
            let hint = suggestion(&key, registry)
                .map_or(String::new(), |s| format!("; did you mean `{s}`?"));
            errors.push(line, column, format!("unknown key `{key}` {place}{hint}"));
        }
    }

    if let Some(config) = &mut config {
        validate(config, registry, &mut errors);
    }
    if !errors.placed_by_path.is_empty() {
        let tree = serde_saphyr::from_str_with_options::<Spanned<Node>>(&text, yaml_options()).ok();
        for (i, path, place) in std::mem::take(&mut errors.placed_by_path) {
            if let Some(found) = tree.as_ref().and_then(|t| locate(t, &path))
                && let Some(e) = errors.list.get_mut(i)
            {
                (e.line, e.column) = match place {
                    Place::Key => found.key,
                    Place::Value => found.value,
                };
            }
        }
    }
    errors.list.sort_by_key(|e| (e.line, e.column));
    match config {
        Some(c) if errors.list.is_empty() => Ok(c),
        _ => Err(ConfigErrors(errors.list)),
    }
}

fn parse_collecting_ignored(
    text: &str,
    ignored: &mut Vec<Vec<String>>,
) -> Result<Config, serde_saphyr::Error> {
    let mut collect = |path: serde_ignored::Path<'_>| {
        let mut segs = Vec::new();
        path_segments(&path, &mut segs);
        ignored.push(segs);
    };
    serde_saphyr::with_deserializer_from_str_with_options(text, yaml_options(), |de| {
        serde_ignored::deserialize(de, &mut collect)
    })
}

/// How deep mappings and sequences may nest. A configuration needs about ten levels; the parser
/// recurses per level, and the default (64) overflowed the 2 MiB stack of a thread in a debug
/// build (found by fuzzing the loader).
const MAX_DEPTH: usize = 24;

pub(crate) fn yaml_options() -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_depth = MAX_DEPTH;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options
}

/// The key whose value (or whose entry) is written at `line`:`column`, as a dotted path.
fn key_at(root: &Spanned<Node>, line: u64, column: u64) -> Option<String> {
    fn walk(node: &Spanned<Node>, line: u64, column: u64, path: &mut Vec<String>) -> bool {
        match &node.value {
            Node::Map(entries) => {
                // The last entry that starts at or before the place holds it.
                let found = entries.iter().rev().find(|(k, _)| {
                    let (l, c) = (k.referenced.line(), k.referenced.column());
                    l < line || (l == line && c <= column)
                });
                let Some((k, v)) = found else { return false };
                path.push(k.value.0.clone());
                walk(v, line, column, path);
                true
            }
            Node::Seq(items) => {
                let found = items.iter().enumerate().rev().find(|(_, item)| {
                    let (l, c) = (item.referenced.line(), item.referenced.column());
                    l < line || (l == line && c <= column)
                });
                let Some((i, item)) = found else { return false };
                path.push(i.to_string());
                walk(item, line, column, path);
                true
            }
            Node::Scalar(_) => true,
        }
    }
    let mut path = Vec::new();
    walk(root, line, column, &mut path);
    (!path.is_empty()).then(|| path.join("."))
}

/// The parser's wording, in the user's terms.
fn plain_message(message: &str) -> String {
    let number = |kind: &str| -> Option<String> {
        let range = match kind {
            "u8" => "from 0 to 255",
            "u16" => "from 0 to 65535",
            "u32" => "from 0 to 4294967295",
            "u64" | "usize" => "of 0 or more",
            _ => return None,
        };
        Some(format!("expected a whole number {range}"))
    };
    if let Some(kind) = message.strip_prefix("invalid ")
        && let Some(text) = number(kind.trim())
    {
        return text;
    }
    // serde_json's wording, for the settings of a connector kind.
    if let Some((found, kind)) = message.rsplit_once(", expected ")
        && let Some(text) = number(kind.trim())
    {
        let found = found
            .trim_start_matches("invalid value: ")
            .trim_start_matches("invalid type: ");
        return format!("{text}, not {found}");
    }
    if message.contains("expected end of mapping after enum variant value") {
        return "only one kind may be given here (a filter is one dialect)".to_string();
    }
    message.to_string()
}

/// The known key closest to a misspelled one (at most two edits away), from the schema.
fn suggestion(key: &str, registry: &Registry) -> Option<String> {
    fn names(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(serde_json::Value::Object(props)) = m.get("properties") {
                    out.extend(props.keys().cloned());
                }
                for v in m.values() {
                    names(v, out);
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| names(v, out)),
            _ => {}
        }
    }
    let mut known = Vec::new();
    names(&super::json_schema(registry), &mut known);
    suggestion_among(key, &known)
}

/// The one of `known` closest to `key`, at most two edits away.
fn suggestion_among(key: &str, known: &[String]) -> Option<String> {
    known
        .iter()
        .map(|k| (distance(key, k), k))
        .filter(|(d, _)| *d > 0 && *d <= 2)
        .min_by_key(|(d, k)| (*d, *k))
        .map(|(_, k)| k.clone())
}

/// The edit distance between two words.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            let next = (row[j] + 1).min(row[j + 1] + 1).min(previous + cost);
            previous = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

fn yaml_message(e: &serde_saphyr::Error) -> String {
    let text = e.without_snippet().to_string();
    let first = text.lines().next().unwrap_or("invalid YAML").trim();
    // Drop a trailing " at line X column Y" that the parser may add: we print our own.
    let first = match first.find(" at line ") {
        Some(i) => &first[..i],
        None => first,
    };
    let mut msg = first.to_string();
    if let Some(c) = msg.get_mut(0..1) {
        c.make_ascii_lowercase();
    }
    msg
}

pub(crate) struct Errors<'a> {
    file: &'a str,
    pub(crate) list: Vec<ConfigError>,
    /// Errors whose place is a key path, found in the document once validation is done.
    placed_by_path: Vec<(usize, Vec<String>, Place)>,
}

/// Which end of a `key: value` an error points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Key,
    Value,
}

impl<'a> Errors<'a> {
    /// No errors yet, in `file`.
    pub(crate) fn new(file: &'a str) -> Self {
        Self {
            file,
            list: Vec::new(),
            placed_by_path: Vec::new(),
        }
    }

    pub(crate) fn push(&mut self, line: u64, column: u64, message: impl Into<String>) {
        self.list.push(ConfigError {
            file: self.file.to_string(),
            line,
            column,
            message: message.into(),
        });
    }

    fn at<T>(&mut self, loc: &Loc<T>, message: impl Into<String>) {
        self.push(loc.line(), loc.column(), message);
    }

    /// An error at the key `path` (a value with no location of its own: a default, a list).
    fn at_path(&mut self, path: &[&str], message: impl Into<String>) {
        let path = path.iter().map(|s| s.to_string()).collect();
        self.placed(path, Place::Key, message);
    }

    /// An error at the key or the value at `path`, found in the document at the end.
    fn placed(&mut self, path: Vec<String>, place: Place, message: impl Into<String>) {
        self.placed_by_path.push((self.list.len(), path, place));
        self.push(0, 0, message);
    }
}

/// Where a YAML comment starts in `line` (its length when there is none): a `#` at the start or
/// after white space, outside single- and double-quoted text.
pub(crate) fn comment_start(line: &str) -> usize {
    let (mut single, mut double, mut escaped) = (false, false, false);
    // A quote opens quoted text only where a scalar starts (`it's` is plain text).
    let mut at_scalar_start = true;
    let mut after_space = true;
    for (i, c) in line.char_indices() {
        if double {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => double = false,
                _ => {}
            }
        } else if single {
            single = c != '\'';
        } else if c == '#' && after_space {
            return i;
        } else if at_scalar_start && c == '"' {
            double = true;
        } else if at_scalar_start && c == '\'' {
            single = true;
        }
        after_space = c.is_whitespace();
        at_scalar_start = after_space || matches!(c, ':' | '[' | '{' | ',' | '-');
    }
    line.len()
}

/// A YAML document as a tree of located nodes, to find where a key was written.
pub(crate) enum Node {
    /// A scalar, with its text when it is a string.
    Scalar(Option<String>),
    Seq(Vec<Spanned<Node>>),
    Map(Vec<(Spanned<Key>, Spanned<Node>)>),
}

pub(crate) struct Key(String);

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Node;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any YAML node")
            }
            fn visit_bool<E>(self, _: bool) -> Result<Node, E> {
                Ok(Node::Scalar(None))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Node, E> {
                Ok(Node::Scalar(None))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Node, E> {
                Ok(Node::Scalar(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Node, E> {
                Ok(Node::Scalar(None))
            }
            fn visit_str<E>(self, v: &str) -> Result<Node, E> {
                Ok(Node::Scalar(Some(v.to_string())))
            }
            fn visit_unit<E>(self) -> Result<Node, E> {
                Ok(Node::Scalar(None))
            }
            fn visit_none<E>(self) -> Result<Node, E> {
                Ok(Node::Scalar(None))
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
                Node::deserialize(d)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Node::Seq(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(Node::Map(entries))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a scalar key")
            }
            fn visit_str<E>(self, v: &str) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_bool<E>(self, v: bool) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// Where a key and its value were written.
#[derive(Debug, Clone, Copy)]
struct Found {
    key: (u64, u64),
    value: (u64, u64),
}

/// The place of the key at the end of `path`, and of its value. A key that is not found in a
/// one-entry mapping is looked for one level down: that entry is an enum variant (`exec: {...}`),
/// which the path leaves out. Where the path goes deeper than the document, the deepest key found.
fn locate(root: &Spanned<Node>, path: &[String]) -> Option<Found> {
    let at = |s: &Spanned<Node>| (s.referenced.line(), s.referenced.column());
    let mut node = root;
    let mut found = None;
    let mut segs = path.iter().peekable();
    while let Some(seg) = segs.next() {
        match &node.value {
            Node::Map(entries) => {
                if let Some((k, v)) = entries.iter().find(|(k, _)| k.value.0 == *seg) {
                    found = Some(Found {
                        key: (k.referenced.line(), k.referenced.column()),
                        value: at(v),
                    });
                    node = v;
                } else if let [(_, v)] = entries.as_slice() {
                    // Retry the same segment one level down.
                    let rest: Vec<String> =
                        std::iter::once(seg.clone()).chain(segs.cloned()).collect();
                    return locate(v, &rest).or(found);
                } else {
                    return found;
                }
            }
            Node::Seq(items) => {
                let item = items.get(seg.parse::<usize>().ok()?)?;
                found = Some(Found {
                    key: at(item),
                    value: at(item),
                });
                node = item;
            }
            Node::Scalar(_) => return found,
        }
    }
    found
}

fn validate(config: &mut Config, registry: &Registry, errors: &mut Errors<'_>) {
    let findings = RefCell::new(Vec::new());
    for (name, connector) in &mut config.connectors {
        validate_connector(name, connector, registry, &findings, errors);
    }
    for (name, function) in &config.functions {
        validate_function(name, function, errors);
        if let Some(FunctionKind::OpenFaas(f)) = function.kind()
            && f.asynchronous
            && f.callback_url.is_none()
            && config
                .admin
                .as_ref()
                .and_then(super::Admin::base_url)
                .is_none()
        {
            errors.at(
                &f.name,
                format!("function `{name}`: `async: true` needs `callback_url`, or an `admin` listener on a specific address: the gateway's queue worker posts each result there"),
            );
        }
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
    let admin_url = config.admin.as_ref().and_then(super::Admin::base_url);
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

/// Parses `value` with `parse` (a kind's type), reporting unknown keys (with `unknown`'s
/// wording) and values that do not fit, below `base`.
fn parse_keys(
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
fn schema_keys(schema: &schemars::Schema, generator: &schemars::SchemaGenerator) -> Vec<String> {
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
fn kind_keys(kind: &dyn ConnectorKind, which: usize) -> Vec<String> {
    let mut generator = schemars::SchemaGenerator::default();
    let schemas = kind.schemas(&mut generator);
    schema_keys(&schemas[which], &generator)
}

/// `an amqp`, `a kafka`.
fn with_article(kind: &str) -> String {
    let an = kind.starts_with(['a', 'e', 'i', 'o', 'u']);
    format!("{} {kind}", if an { "an" } else { "a" })
}

fn listed(keys: &[String]) -> String {
    keys.iter()
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn validate_connector(
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
        |path| {
            let key = path.last().cloned().unwrap_or_default();
            let place = [&base[..], &path[..path.len().saturating_sub(1)]]
                .concat()
                .join(".");
            let hint = suggestion_among(&key, &kind_keys(kind, 0))
                .map_or(String::new(), |s| format!("; did you mean `{s}`?"));
            format!("unknown key `{key}` in `{place}`{hint}")
        },
        errors,
    );
    if let Some(settings) = parsed {
        kind.validate(&settings, &Report::new(findings, base, owner));
        connector.set_settings(settings);
    }
}

fn validate_function(name: &str, function: &Function, errors: &mut Errors<'_>) {
    let kinds = function.kinds();
    match kinds.as_slice() {
        [] => errors.at_path(
            &["functions", name],
            format!(
                "function `{name}` must have one of `http`, `exec`, `openfaas`, `openwhisk`, `fission`, `knative`, `fn` or `lambda`"
            ),
        ),
        [kind] => validate_function_kind(name, *kind, errors),
        [_, second, ..] => errors.at_path(
            &["functions", name, second.key()],
            format!(
                "function `{name}` must have exactly one kind, not {}",
                kinds.iter().map(|k| format!("`{}`", k.key())).collect::<Vec<_>>().join(" and ")
            ),
        ),
    }
    if let Some(t) = &function.timeout {
        duration(t, &format!("functions.{name}.timeout"), errors);
    }
    if *function.concurrency == 0 {
        errors.at(
            &function.concurrency,
            format!("function `{name}`: `concurrency` must be at least 1"),
        );
    }
    if let Some(r) = &function.rate_limit {
        if *r.per_second == 0 {
            errors.at(
                &r.per_second,
                format!("function `{name}`: `rate_limit.per_second` must be at least 1"),
            );
        }
        if let Some(b) = r.burst.as_ref().filter(|b| ***b == 0) {
            errors.at(
                b,
                format!("function `{name}`: `rate_limit.burst` must be at least 1"),
            );
        }
    }
    if let Some(b) = &function.circuit_breaker {
        let ratio = *b.failure_ratio;
        if !(ratio > 0.0 && ratio <= 1.0) {
            errors.at(
                &b.failure_ratio,
                format!("function `{name}`: `circuit_breaker.failure_ratio` must be above 0 and at most 1, not {ratio}"),
            );
        }
        if *b.min_calls == 0 {
            errors.at(
                &b.min_calls,
                format!("function `{name}`: `circuit_breaker.min_calls` must be at least 1"),
            );
        }
        duration(
            &b.window,
            &format!("functions.{name}.circuit_breaker.window"),
            errors,
        );
        duration(
            &b.open_for,
            &format!("functions.{name}.circuit_breaker.open_for"),
            errors,
        );
    }
}

fn validate_trigger(
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
            .filter(|kind| !kind.takes_batches())
            .map(|kind| {
                format!(
                    "function `{}` ({}) cannot take a batch",
                    *trigger.to,
                    kind.key()
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
fn validate_batch(
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

/// `delivery.retry_topic`: a connector that can hold retry state and publish, and a trigger
/// whose order need not be kept (a retried event is overtaken by the next ones) and that does
/// not batch.
fn validate_retry_topic(
    retry: &super::RetryTopic,
    delivery: &super::Delivery,
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

/// Hands each kind the sources of all triggers on each of its connectors.
fn validate_sources_together(
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

fn validate_filter(filter: &Filter, tname: &str, at: &Loc<String>, errors: &mut Errors<'_>) {
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

/// A gateway login is a user and a password together, or neither.
fn half_a_login(
    at: &Loc<String>,
    username: &Option<String>,
    password: &Option<String>,
    owner: &str,
    errors: &mut Errors<'_>,
) {
    if username.is_some() != password.is_some() {
        errors.at(
            at,
            format!("{owner}: `openfaas` needs both `username` and `password`, or neither"),
        );
    }
}

/// An OpenFaaS discovery entry: its gateway, its connector, and the settings its triggers share.
#[allow(clippy::too_many_arguments)]
fn validate_discovery(
    connectors: &BTreeMap<String, ConnectorConfig>,
    functions: &BTreeMap<String, Function>,
    registry: &Registry,
    index: usize,
    d: &mut super::OpenFaasDiscovery,
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

#[allow(clippy::too_many_arguments)]
fn validate_destination(
    connectors: &BTreeMap<String, ConnectorConfig>,
    functions: &BTreeMap<String, Function>,
    registry: &Registry,
    dest: &mut Destination,
    tname: &str,
    what: &str,
    base: Vec<String>,
    findings: &RefCell<Vec<Finding>>,
    errors: &mut Errors<'_>,
) {
    let kind = dest
        .connector
        .as_ref()
        .and_then(|c| connectors.get(c.as_str()))
        .and_then(|c| registry.get(c.kind()));
    match (&dest.connector, &dest.function) {
        (Some(c), None) => match kind {
            None if !connectors.contains_key(c.as_str()) => errors.at(
                c,
                format!("unknown connector `{}` in {what} of trigger `{tname}`", **c),
            ),
            None => {}
            Some(kind) if !kind.capabilities().publishes => errors.at(
                c,
                format!("{what} of trigger `{tname}`: connector `{}` ({}) cannot publish; name a function instead", **c, kind.kind()),
            ),
            Some(_) if dest.topic.as_deref().is_none_or(str::is_empty) => {
                errors.at(c, format!("{what} of trigger `{tname}` needs a `topic`"));
            }
            Some(_) => {}
        },
        (None, Some(f)) => {
            if !functions.contains_key(f.as_str()) {
                errors.at(f, format!("unknown function `{}` in {what} of trigger `{tname}`", **f));
            }
        }
        (Some(c), Some(_)) => errors.at(
            c,
            format!("{what} of trigger `{tname}` names both a connector and a function; choose one"),
        ),
        (None, None) => errors.placed(
            base.clone(),
            Place::Key,
            format!("{what} of trigger `{tname}` needs a `connector` and `topic`, or a `function`"),
        ),
    }
    let owner = format!("{what} of trigger `{tname}`");
    match kind.filter(|_| dest.function.is_none()) {
        Some(kind) => {
            let parsed = parse_keys(
                &base,
                &owner,
                dest.keys.object(),
                |v, ignored| kind.parse_destination(v, ignored),
                |path| {
                    let takes = kind_keys(kind, 2);
                    let with = if takes.is_empty() {
                        String::new()
                    } else {
                        format!(", {}", listed(&takes))
                    };
                    format!(
                        "{owner}: `{}` does not apply to {} destination (it takes `connector`, `topic`{with})",
                        path.join("."),
                        with_article(kind.kind())
                    )
                },
                errors,
            );
            if let Some(settings) = parsed {
                let report = Report::new(findings, base, owner);
                kind.validate_destination(&settings, dest.topic.as_deref(), &report);
                dest.keys.set(settings);
            }
        }
        None => {
            // A function destination, or a connector already reported: no kind's keys apply.
            for key in dest.keys.raw().keys() {
                let message = if dest.function.is_some() {
                    format!(
                        "{owner}: `{key}` does not apply to a function destination (it takes `function`)"
                    )
                } else {
                    format!("{owner}: unknown key `{key}`")
                };
                errors.placed(
                    [&base[..], std::slice::from_ref(key)].concat(),
                    Place::Key,
                    message,
                );
            }
        }
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

/// The settings of one function kind: URLs parse with the right scheme, names are not empty,
/// the `tls` block's files are readable.
fn validate_function_kind(name: &str, kind: FunctionKind<'_>, errors: &mut Errors<'_>) {
    let web = &["http", "https"];
    let not_empty = |v: &Loc<String>, key: &str, errors: &mut Errors<'_>| {
        if v.trim().is_empty() {
            errors.at(v, format!("function `{name}`: `{key}` must not be empty"));
        }
    };
    match kind {
        FunctionKind::Http(http) => {
            url(&http.url, web, name, errors);
            if let Some(max) = &http.max_reply
                && (!max.is_valid() || max.get() == 0)
            {
                errors.at(
                    max.text(),
                    format!(
                        "function `{name}`: `max_reply` is not a size: `{}` (write `16MiB`, `512KiB` or bytes)",
                        max.text().as_str()
                    ),
                );
            }
        }
        FunctionKind::Exec(exec) => {
            if exec.command.is_empty() || exec.command[0].is_empty() {
                errors.at(
                    &exec.command,
                    format!("function `{name}`: `exec.command` must name a program"),
                );
            }
        }
        FunctionKind::OpenFaas(f) => {
            url(&f.gateway, web, name, errors);
            not_empty(&f.name, "openfaas.name", errors);
            half_a_login(
                &f.gateway,
                &f.username,
                &f.password,
                &format!("function `{name}`"),
                errors,
            );
            if let Some(cb) = &f.callback_url {
                url(cb, web, name, errors);
            }
        }
        FunctionKind::OpenWhisk(f) => {
            url(&f.api, web, name, errors);
            not_empty(&f.action, "openwhisk.action", errors);
            if !f.auth.contains(':') {
                errors.at(
                    &f.auth,
                    format!("function `{name}`: `openwhisk.auth` must be the `uuid:key` string (`wsk property get --auth`)"),
                );
            }
        }
        FunctionKind::Fission(f) => {
            url(&f.router, web, name, errors);
            not_empty(&f.name, "fission.name", errors);
        }
        FunctionKind::Knative(f) => url(&f.url, web, name, errors),
        FunctionKind::Fn(f) => {
            url(&f.endpoint, web, name, errors);
            not_empty(&f.id, "fn.id", errors);
        }
        FunctionKind::Lambda(f) => {
            not_empty(&f.function, "lambda.function", errors);
            if let Some(e) = &f.endpoint {
                url(e, web, name, errors);
            }
            if let Some(r) = &f.region {
                not_empty(r, "lambda.region", errors);
            }
        }
    }
    if let Some(Err(e)) = kind.tls().map(fnbroker_core::tls::Tls::check) {
        errors.placed(
            vec![
                "functions".into(),
                name.into(),
                kind.key().into(),
                "tls".into(),
                e.key.into(),
            ],
            Place::Value,
            format!("function `{name}`: tls: {}", e.message),
        );
    }
}

fn url(u: &Loc<String>, schemes: &[&str], owner: &str, errors: &mut Errors<'_>) {
    if let Some(problem) = values::url_problem(u, schemes) {
        errors.at(u, format!("`{owner}`: {problem}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by fuzzing: 50 nested flow sequences overflowed a 2 MiB stack (a tokio worker's)
    /// in the debug build. Deep nesting is an error now, on such a thread too.
    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let depth = 200;
        let text = format!(
            "connectors:\n  web: {{ http: {{ listen: {}{} }} }}\n",
            "[".repeat(depth),
            "]".repeat(depth)
        );
        let registry = Registry::new(&[]);
        let loaded = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || load_str("deep.yaml", &text, |_| None, &registry).map(|_| ()))
            .expect("thread")
            .join()
            .expect("no stack overflow");
        let errors = loaded.expect_err("too deep");
        assert!(
            errors.to_string().contains("depth"),
            "the error says why: {errors}"
        );
    }

    #[test]
    fn a_function_has_exactly_one_kind_and_each_kind_is_checked() {
        let registry = Registry::new(&[]);
        let load = |functions: &str| {
            load_str(
                "f.yaml",
                &format!("functions:\n{functions}"),
                |_| None,
                &registry,
            )
            .map(|_| ())
            .map_err(|e| e.to_string())
        };
        assert!(load("  a: { knative: { url: \"http://kn\" } }\n").is_ok());
        let both = load(
            "  a: { knative: { url: \"http://kn\" }, fn: { endpoint: \"http://fn\", id: x } }\n",
        )
        .expect_err("two kinds");
        assert!(
            both.contains("f.yaml:2:") && both.contains("`knative` and `fn`"),
            "{both}"
        );
        let none = load("  a: { timeout: 1s }\n").expect_err("no kind");
        assert!(
            none.contains("`openwhisk`") && none.contains("`lambda`"),
            "{none}"
        );
        let whisk = load("  a: { openwhisk: { api: \"http://w\", action: x, auth: nocolon } }\n")
            .expect_err("auth");
        assert!(whisk.contains("uuid:key"), "{whisk}");
        let faas = load("  a: { openfaas: { gateway: \"ftp://gw\", name: x, username: admin } }\n")
            .expect_err("scheme and half a login");
        assert!(
            faas.contains("ftp") && faas.contains("both `username` and `password`"),
            "{faas}"
        );
        let lonely = load("  a: { openfaas: { gateway: \"http://gw\", name: x, async: true } }\n")
            .expect_err("no place for the callback");
        assert!(lonely.contains("`callback_url`"), "{lonely}");
        assert!(load("  a: { openfaas: { gateway: \"http://gw\", name: x, async: true, callback_url: \"http://fnb:9464\" } }\n").is_ok());
    }

    /// The errors of a configuration that must be refused (no connector kinds registered).
    fn refused(file: &str, text: &str) -> String {
        load_str(file, text, |_| None, &Registry::new(&[]))
            .map(|_| ())
            .expect_err("invalid")
            .to_string()
    }

    #[test]
    fn a_discovery_entry_is_checked_where_it_is_written() {
        let errors = refused(
            "d.yaml",
            "discover:\n  - openfaas: { gateway: \"gw:8080\", connector: nope, refresh: 100ms, username: admin, async: true, group: \" \" }\n",
        );
        for expected in [
            "d.yaml:2:",
            "unknown connector `nope`",
            "`refresh` must be at least 1s",
            "both `username` and `password`",
            "`callback_url`",
            "`group` must not be empty",
        ] {
            assert!(errors.contains(expected), "{expected}: {errors}");
        }
    }

    #[test]
    fn telemetry_is_checked_at_load() {
        let errors = refused(
            "t.yaml",
            "telemetry:\n  otlp: { endpoint: \"collector:4318\", protocol: grpc }\n  sample_ratio: 1.5\n",
        );
        for expected in [
            "telemetry.otlp.endpoint",
            "`sample_ratio` must be between 0 and 1",
        ] {
            assert!(errors.contains(expected), "{expected}: {errors}");
        }
        let wrong = refused("t.yaml", "telemetry: { otlp: { protocol: http/json } }\n");
        assert!(wrong.contains("http/json"), "{wrong}");
        assert!(
            load_str(
                "t.yaml",
                "telemetry: { otlp: { endpoint: \"http://c:4317\", protocol: grpc }, sample_ratio: 0.5 }\n",
                |_| None,
                &Registry::new(&[]),
            )
            .is_ok()
        );
    }

    #[test]
    fn comments_start_outside_quotes() {
        assert_eq!(comment_start("url: \"a#b\" # c"), 11);
        assert_eq!(comment_start("url: a#b"), 8);
        assert_eq!(comment_start("it's: 'a # b' # c"), 14);
    }
}

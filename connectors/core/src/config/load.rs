//! Loading and validating a configuration file: every error at once, each with its line and
//! column, and no IO beyond reading the file.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

use super::{ConfDuration, Config, Connector, Destination, Filter, Function, Loc, Trigger};
use crate::event::is_valid_attribute_name;

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

/// Reads, substitutes, parses and validates the configuration file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: file.clone(),
            line: 0,
            column: 0,
            message: format!("cannot read the file: {e}"),
        }])
    })?;
    load_str(&file, &text, |name| std::env::var(name).ok())
}

/// Substitutes, parses and validates configuration text; `file` names it in errors and `env`
/// looks up `${VARIABLES}`.
pub fn load_str(
    file: &str,
    text: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    let mut errors = Errors {
        file,
        list: Vec::new(),
        placed_by_path: Vec::new(),
    };
    let text = substitute_env(text, &env, &mut errors);

    let mut ignored = Vec::new();
    let config = match parse_collecting_ignored(&text, &mut ignored) {
        Ok(c) => Some(c),
        Err(e) => {
            let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
            let tree = serde_saphyr::from_str::<Spanned<Node>>(&text).ok();
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
        let tree = serde_saphyr::from_str::<Spanned<Node>>(&text).ok();
        // The location wrapper's internal marker shows up as an ignored key; it is not the user's.
        ignored.retain(|p| !p.iter().any(|s| s.starts_with("__serde_saphyr")));
        for path in ignored {
            let (line, column) = tree
                .as_ref()
                .and_then(|t| locate(t, &path))
                .unwrap_or((0, 0));
            let key = path.last().cloned().unwrap_or_default();
            let parent = path[..path.len().saturating_sub(1)].join(".");
            let place = if parent.is_empty() {
                "at the top level".to_string()
            } else {
                format!("in `{parent}`")
            };
            let hint = suggestion(&key).map_or(String::new(), |s| format!("; did you mean `{s}`?"));
            errors.push(line, column, format!("unknown key `{key}` {place}{hint}"));
        }
    }

    if let Some(config) = &config {
        validate(config, &mut errors);
    }
    if !errors.placed_by_path.is_empty() {
        let tree = serde_saphyr::from_str::<Spanned<Node>>(&text).ok();
        for (i, path) in std::mem::take(&mut errors.placed_by_path) {
            if let Some((line, column)) = tree.as_ref().and_then(|t| locate(t, &path))
                && let Some(e) = errors.list.get_mut(i)
            {
                e.line = line;
                e.column = column;
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
    serde_saphyr::with_deserializer_from_str(text, |de| {
        serde_ignored::deserialize(de, &mut collect)
    })
}

fn path_segments(path: &serde_ignored::Path<'_>, out: &mut Vec<String>) {
    use serde_ignored::Path as P;
    match path {
        P::Root => {}
        P::Seq { parent, index } => {
            path_segments(parent, out);
            out.push(index.to_string());
        }
        P::Map { parent, key } => {
            path_segments(parent, out);
            out.push(key.clone());
        }
        P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
            path_segments(parent, out)
        }
    }
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
            Node::Scalar => true,
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
    if message.contains("expected end of mapping after enum variant value") {
        return "only one kind may be given here (a connector is one of http, kafka, nats, amqp, mqtt; a filter is one dialect)".to_string();
    }
    message.to_string()
}

/// The known key closest to a misspelled one (at most two edits away), from the schema.
fn suggestion(key: &str) -> Option<String> {
    fn names(v: &serde_json::Value, out: &mut std::collections::BTreeSet<String>) {
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
    let mut known = std::collections::BTreeSet::new();
    names(&super::json_schema(), &mut known);
    known
        .into_iter()
        .map(|k| (distance(key, &k), k))
        .filter(|(d, _)| *d > 0 && *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
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

struct Errors<'a> {
    file: &'a str,
    list: Vec<ConfigError>,
    /// Errors whose place is a key path, found in the document once validation is done.
    placed_by_path: Vec<(usize, Vec<String>)>,
}

impl Errors<'_> {
    fn push(&mut self, line: u64, column: u64, message: impl Into<String>) {
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
        self.placed_by_path.push((
            self.list.len(),
            path.iter().map(|s| s.to_string()).collect(),
        ));
        self.push(0, 0, message);
    }
}

/// Where a YAML comment starts in `line` (its length when there is none): a `#` at the start or
/// after white space, outside single- and double-quoted text.
fn comment_start(line: &str) -> usize {
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

/// Replaces `${NAME}` and `${NAME:-default}` with the environment's values (not inside
/// comments); `$${` is a literal
/// `${`. An unset variable without a default is an error at its place.
fn substitute_env(
    text: &str,
    env: &impl Fn(&str) -> Option<String>,
    errors: &mut Errors<'_>,
) -> String {
    let mut out = String::with_capacity(text.len());
    for (lineno, whole) in text.split_inclusive('\n').enumerate() {
        // A comment is kept as it is: `# or token: ${NATS_TOKEN}` must not need the variable.
        let (line, comment) = whole.split_at(comment_start(whole));
        let mut rest = line;
        let mut col = 1u64;
        while let Some(i) = rest.find('$') {
            out.push_str(&rest[..i]);
            col += rest[..i].chars().count() as u64;
            let after = &rest[i..];
            if let Some(tail) = after.strip_prefix("$${") {
                out.push_str("${");
                rest = tail;
                col += 3;
                continue;
            }
            if !after.starts_with("${") {
                out.push('$');
                rest = &after[1..];
                col += 1;
                continue;
            }
            let Some(end) = after.find('}') else {
                errors.push(
                    lineno as u64 + 1,
                    col,
                    "unclosed `${` (write `$${` for a literal)",
                );
                out.push_str(after);
                rest = "";
                break;
            };
            let inner = &after[2..end];
            let (name, default) = match inner.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (inner, None),
            };
            let valid_name = !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid_name {
                errors.push(
                    lineno as u64 + 1,
                    col,
                    format!("invalid environment variable reference `${{{inner}}}`"),
                );
            } else {
                match (env(name), default) {
                    (Some(v), _) => out.push_str(&v),
                    (None, Some(d)) => out.push_str(d),
                    (None, None) => errors.push(
                        lineno as u64 + 1,
                        col,
                        format!("environment variable `{name}` is not set"),
                    ),
                }
            }
            col += after[..=end].chars().count() as u64;
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        out.push_str(comment);
    }
    out
}

/// A YAML document as a tree of located nodes, to find where a key was written.
enum Node {
    Scalar,
    Seq(Vec<Spanned<Node>>),
    Map(Vec<(Spanned<Key>, Spanned<Node>)>),
}

struct Key(String);

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Node;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any YAML node")
            }
            fn visit_bool<E>(self, _: bool) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_str<E>(self, _: &str) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_unit<E>(self) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_none<E>(self) -> Result<Node, E> {
                Ok(Node::Scalar)
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

/// The place of the key at the end of `path`. A key that is not found in a one-entry mapping is
/// looked for one level down: that entry is an enum variant (`mqtt: {...}`), which the path
/// leaves out.
fn locate(root: &Spanned<Node>, path: &[String]) -> Option<(u64, u64)> {
    let mut node = root;
    let mut place = None;
    let mut segs = path.iter().peekable();
    while let Some(seg) = segs.next() {
        match &node.value {
            Node::Map(entries) => {
                if let Some((k, v)) = entries.iter().find(|(k, _)| k.value.0 == *seg) {
                    place = Some((k.referenced.line(), k.referenced.column()));
                    node = v;
                } else if let [(_, v)] = entries.as_slice() {
                    // Retry the same segment one level down.
                    let rest: Vec<String> =
                        std::iter::once(seg.clone()).chain(segs.cloned()).collect();
                    return locate(v, &rest).or(place);
                } else {
                    return place;
                }
            }
            Node::Seq(items) => {
                let item = items.get(seg.parse::<usize>().ok()?)?;
                place = Some((item.referenced.line(), item.referenced.column()));
                node = item;
            }
            Node::Scalar => return place,
        }
    }
    place
}

fn validate(config: &Config, errors: &mut Errors<'_>) {
    for (name, connector) in &config.connectors {
        validate_connector(name, connector, errors);
    }
    for (name, function) in &config.functions {
        validate_function(name, function, errors);
    }
    let mut names = HashSet::new();
    // HTTP paths per connector, with the `sync` flag the first trigger on it chose.
    let mut http_paths: BTreeMap<(String, String), bool> = BTreeMap::new();
    for trigger in &config.triggers {
        if trigger.name.is_empty() {
            errors.at(&trigger.name, "a trigger name must not be empty");
        } else if !names.insert(trigger.name.as_str()) {
            errors.at(
                &trigger.name,
                format!("duplicate trigger name `{}`", *trigger.name),
            );
        }
        validate_trigger(config, trigger, &mut http_paths, errors);
    }
    duration(&config.shutdown_timeout, "shutdown_timeout", errors);
    if let Some(admin) = &config.admin {
        address(&admin.listen, "admin.listen", errors);
    }
}

fn validate_connector(name: &str, connector: &Connector, errors: &mut Errors<'_>) {
    match connector {
        Connector::Http(http) => {
            address(
                &http.listen,
                &format!("connectors.{name}.http.listen"),
                errors,
            );
            if !http.max_body.is_valid() || http.max_body.get() == 0 {
                errors.at(
                    http.max_body.text(),
                    format!(
                        "`max_body` of connector `{name}` is not a size: `{}` (write `1MiB`, `512KiB` or bytes)",
                        **http.max_body.text()
                    ),
                );
            }
        }
        Connector::Kafka(k) => {
            duration(
                &k.commit_interval,
                &format!("connectors.{name}.kafka.commit_interval"),
                errors,
            );
            if k.brokers.is_empty() {
                errors.at_path(
                    &["connectors", name, "kafka", "brokers"],
                    format!("connector `{name}`: `brokers` must list at least one broker"),
                );
            }
        }
        Connector::Nats(n) => url(&n.url, &["nats", "tls", "ws", "wss"], name, errors),
        Connector::Amqp(a) => url(&a.url, &["amqp", "amqps"], name, errors),
        Connector::Mqtt(m) => {
            url(&m.url, &["mqtt", "tcp"], name, errors);
            duration(
                &m.session_expiry,
                &format!("connectors.{name}.mqtt.session_expiry"),
                errors,
            );
            duration(
                &m.keep_alive,
                &format!("connectors.{name}.mqtt.keep_alive"),
                errors,
            );
            // The MQTT 5 client refuses (panics on) a keep-alive under 5 s; 3.1.1 takes 1 s.
            let v5 = m.version.as_ref().is_none_or(|v| **v == 5);
            let least = if v5 { 5 } else { 1 };
            if m.keep_alive.is_valid() && m.keep_alive.get() < std::time::Duration::from_secs(least)
            {
                errors.at(
                    m.keep_alive.text(),
                    format!(
                        "connector `{name}`: `keep_alive` must be at least {least}s with MQTT {}",
                        if v5 { "5" } else { "3.1.1" }
                    ),
                );
            }
            if m.publish_qos > 2 {
                errors.at_path(
                    &["connectors", name, "mqtt", "publish_qos"],
                    format!("connector `{name}`: `publish_qos` must be 0, 1 or 2"),
                );
            }
            if let Some(v) = m.version.as_ref().filter(|v| !matches!(***v, 3 | 5)) {
                errors.at(
                    v,
                    format!(
                        "connector `{name}`: MQTT `version` must be 3 or 5, not {}",
                        **v
                    ),
                );
            }
        }
    }
}

fn validate_function(name: &str, function: &Function, errors: &mut Errors<'_>) {
    match (&function.http, &function.exec) {
        (Some(http), None) => url(&http.url, &["http", "https"], name, errors),
        (None, Some(exec)) => {
            if exec.command.is_empty() || exec.command[0].is_empty() {
                errors.at(
                    &exec.command,
                    format!("function `{name}`: `exec.command` must name a program"),
                );
            }
        }
        (Some(http), Some(_)) => errors.at(
            &http.url,
            format!("function `{name}` must have exactly one of `http` or `exec`, not both"),
        ),
        (None, None) => errors.at_path(
            &["functions", name],
            format!("function `{name}` must have one of `http` or `exec`"),
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
}

fn validate_trigger(
    config: &Config,
    trigger: &Trigger,
    http_paths: &mut BTreeMap<(String, String), bool>,
    errors: &mut Errors<'_>,
) {
    let tname = trigger.name.as_str();
    let from = &trigger.from;
    match config.connectors.get(from.connector.as_str()) {
        None => errors.at(
            &from.connector,
            format!(
                "unknown connector `{}` in trigger `{tname}`",
                *from.connector
            ),
        ),
        Some(connector) => {
            let kind = connector.kind();
            match (kind, &from.topic) {
                ("amqp", _) if from.queue.is_none() => {
                    errors.at(
                        &from.connector,
                        format!("trigger `{tname}`: an amqp source needs a `queue`"),
                    );
                }
                ("amqp", _) => {}
                (_, None) => errors.at(
                    &from.connector,
                    format!("trigger `{tname}`: `from` needs a `topic`"),
                ),
                ("http", Some(path)) => {
                    if !path.starts_with('/') {
                        errors.at(path, format!("trigger `{tname}`: an http topic is a path starting with `/`, not `{}`", **path));
                    }
                    let key = (from.connector.to_string(), path.to_string());
                    match http_paths.get(&key) {
                        Some(sync) if *sync != from.sync() => errors.at(
                            path,
                            format!("trigger `{tname}`: every trigger on path `{}` must agree on `sync`", **path),
                        ),
                        Some(_) => {}
                        None => {
                            http_paths.insert(key, from.sync());
                        }
                    }
                }
                (_, Some(topic)) if topic.is_empty() => errors.at(
                    topic,
                    format!("trigger `{tname}`: `topic` must not be empty"),
                ),
                _ => {}
            }
            if let Some(q) = from.qos.as_ref().filter(|q| ***q > 2) {
                errors.at(q, format!("trigger `{tname}`: `qos` must be 0, 1 or 2"));
            }
            // Each key of `from` belongs to some connectors: elsewhere it would be ignored,
            // silently, so it is an error at its own place.
            let takes = source_keys(kind);
            for (key, line, column) in from.protocol_keys() {
                if !takes.contains(&key) {
                    let with = if takes.is_empty() {
                        String::from("only `connector` and `topic`")
                    } else {
                        takes
                            .iter()
                            .map(|k| format!("`{k}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    };
                    errors.push(
                        line,
                        column,
                        format!(
                            "trigger `{tname}`: `{key}` does not apply to a {kind} source (its `from` takes {with} besides `connector`{})",
                            if kind == "amqp" { "" } else { " and `topic`" }
                        ),
                    );
                }
            }
            if let Some(c) = &from.create
                && from.stream.is_none()
                && kind == "nats"
            {
                errors.at(
                    c,
                    format!("trigger `{tname}`: `create` needs a JetStream `stream`"),
                );
            }
        }
    }
    if !config.functions.contains_key(trigger.to.as_str()) {
        errors.at(
            &trigger.to,
            format!("unknown function `{}` in trigger `{tname}`", *trigger.to),
        );
    }
    if let Some(filter) = &trigger.filter {
        validate_filter(filter, tname, &trigger.name, errors);
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
    if let Some(dl) = &trigger.dead_letter {
        validate_destination(config, dl, tname, "dead_letter", errors);
    }
    if let Some(r) = &trigger.reply {
        validate_destination(config, r, tname, "reply", errors);
    }
}

/// The keys of `from`, besides `connector` and `topic`, that a connector kind reads.
fn source_keys(kind: &str) -> &'static [&'static str] {
    match kind {
        "kafka" => &["group"],
        "nats" => &["group", "stream", "create"],
        "amqp" => &["queue", "declare"],
        "mqtt" => &["qos", "group"],
        "http" => &["sync"],
        _ => &[],
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
            if let Err(e) = crate::cesql::Expr::parse(expr) {
                errors.at(
                    expr,
                    format!(
                        "trigger `{tname}`: invalid sql filter: {} (at position {} of the expression)",
                        e.message, e.position
                    ),
                );
            }
        }
    }
}

fn validate_destination(
    config: &Config,
    dest: &Destination,
    tname: &str,
    what: &str,
    errors: &mut Errors<'_>,
) {
    match (&dest.connector, &dest.function) {
        (Some(c), None) => match config.connectors.get(c.as_str()) {
            None => errors.at(c, format!("unknown connector `{}` in {what} of trigger `{tname}`", **c)),
            Some(conn) if !conn.can_publish() => errors.at(
                c,
                format!("{what} of trigger `{tname}`: connector `{}` ({}) cannot publish; name a function instead", **c, conn.kind()),
            ),
            Some(_) => {
                if dest.topic.as_deref().is_none_or(str::is_empty) {
                    errors.at(c, format!("{what} of trigger `{tname}` needs a `topic`"));
                }
            }
        },
        (None, Some(f)) => {
            if !config.functions.contains_key(f.as_str()) {
                errors.at(f, format!("unknown function `{}` in {what} of trigger `{tname}`", **f));
            }
        }
        (Some(c), Some(_)) => errors.at(
            c,
            format!("{what} of trigger `{tname}` names both a connector and a function; choose one"),
        ),
        (None, None) => errors.push(
            0,
            0,
            format!("{what} of trigger `{tname}` needs a `connector` and `topic`, or a `function`"),
        ),
    }
}

fn duration(d: &ConfDuration, what: &str, errors: &mut Errors<'_>) {
    if !d.is_valid() {
        errors.at(
            d.text(),
            format!(
                "{what}: `{}` is not a duration (write `250ms`, `5s`, `1m`)",
                **d.text()
            ),
        );
    }
}

fn address(a: &Loc<String>, what: &str, errors: &mut Errors<'_>) {
    if a.parse::<SocketAddr>().is_err() {
        errors.at(
            a,
            format!(
                "{what}: `{}` is not an address `host:port` (e.g. `127.0.0.1:8080`)",
                **a
            ),
        );
    }
}

fn url(u: &Loc<String>, schemes: &[&str], owner: &str, errors: &mut Errors<'_>) {
    match url::Url::parse(u) {
        Ok(parsed) if schemes.contains(&parsed.scheme()) && parsed.has_host() => {}
        Ok(parsed) if !schemes.contains(&parsed.scheme()) => errors.at(
            u,
            format!(
                "`{owner}`: URL scheme `{}` is not one of {}",
                parsed.scheme(),
                schemes.join(", ")
            ),
        ),
        Ok(_) => errors.at(u, format!("`{owner}`: URL `{}` has no host", **u)),
        Err(e) => errors.at(u, format!("`{owner}`: `{}` is not a URL: {e}", **u)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Config, ConfigErrors> {
        load_str("t.yaml", text, |n| {
            (n == "SET").then(|| "value".to_string())
        })
    }

    fn messages(text: &str) -> Vec<String> {
        match load(text) {
            Ok(_) => vec![],
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    }

    const GOOD: &str = "\
connectors:
  web: { http: { listen: 127.0.0.1:8080 } }
functions:
  f: { http: { url: http://127.0.0.1:9000/f } }
triggers:
  - name: t
    from: { connector: web, topic: /orders }
    to: f
";

    #[test]
    fn good_config_loads() {
        let c = load(GOOD).expect("valid");
        assert_eq!(c.triggers[0].to.as_str(), "f");
        assert_eq!(c.triggers[0].delivery.retries, 3);
    }

    #[test]
    fn unknown_keys_are_all_reported_with_places() {
        let text = GOOD.replace(
            "to: f\n",
            "to: f\n    colour: blue\n    delivery: { retriez: 3 }\n",
        );
        let m = messages(&text);
        assert_eq!(m.len(), 2, "{m:?}");
        assert_eq!(m[0], "t.yaml:9:5: unknown key `colour` in `triggers.0`");
        assert!(
            m[1].starts_with("t.yaml:10:17: unknown key `retriez`"),
            "{m:?}"
        );
    }

    /// Finding 8 of issue 12: a key of `from` that the connector does not read was ignored;
    /// now it is an error at its own line and column, saying what the source takes.
    #[test]
    fn a_misplaced_source_key_is_an_error_at_its_place() {
        let text = "\
connectors:
  k: { kafka: { brokers: [127.0.0.1:9092] } }
  bus: { nats: { url: nats://127.0.0.1:4222 } }
  iot: { mqtt: { url: mqtt://127.0.0.1:1883 } }
functions:
  f: { http: { url: http://127.0.0.1:9000/f } }
triggers:
  - { name: a, from: { connector: k, topic: t, queue: q }, to: f }
  - { name: b, from: { connector: bus, topic: t, qos: 1 }, to: f }
  - { name: c, from: { connector: iot, topic: t, stream: s }, to: f }
  - { name: d, from: { connector: k, topic: t, group: g }, to: f }
";
        let m = messages(text);
        assert_eq!(m.len(), 3, "{m:?}");
        assert_eq!(
            m[0],
            "t.yaml:8:55: trigger `a`: `queue` does not apply to a kafka source (its `from` takes `group` besides `connector` and `topic`)"
        );
        assert!(
            m[1].starts_with("t.yaml:9:55: trigger `b`: `qos` does not apply to a nats source"),
            "{m:?}"
        );
        assert!(
            m[2].starts_with("t.yaml:10:58: trigger `c`: `stream` does not apply to a mqtt source"),
            "{m:?}"
        );
    }

    /// Issue 12: `${VAR}` in a comment is left alone (the README's NATS example has
    /// `# or token: ${NATS_TOKEN}`); in values, quoted or not, it is still replaced.
    #[test]
    fn variables_in_comments_are_not_substituted() {
        let text = "a: 1 # or token: ${SURELY_UNSET_VARIABLE}\n# ${ALSO_UNSET}\nb: \"x # ${HOME_X:-d}\"\nc: ${HOME_X:-e} # ${UNSET_TOO}\n";
        let mut errors = Errors {
            file: "t.yaml",
            list: Vec::new(),
            placed_by_path: Vec::new(),
        };
        let out = substitute_env(text, &|_| None, &mut errors);
        assert!(errors.list.is_empty(), "{:?}", errors.list);
        assert_eq!(
            out,
            "a: 1 # or token: ${SURELY_UNSET_VARIABLE}\n# ${ALSO_UNSET}\nb: \"x # d\"\nc: e # ${UNSET_TOO}\n"
        );
        assert_eq!(comment_start("url: \"a#b\" # c"), 11);
        assert_eq!(comment_start("url: a#b"), 8);
        assert_eq!(comment_start("it's: 'a # b' # c"), 14);
    }

    /// rumqttc's MQTT 5 client panics on a keep-alive under 5 s: a located error instead.
    #[test]
    fn a_short_mqtt_5_keep_alive_is_an_error() {
        let text = "connectors:\n  iot: { mqtt: { url: mqtt://127.0.0.1:1883, keep_alive: 2s } }\n  old: { mqtt: { url: mqtt://127.0.0.1:1883, version: 3, keep_alive: 1s } }\n";
        let m = messages(text);
        assert_eq!(m.len(), 1, "{m:?}");
        assert!(
            m[0].starts_with("t.yaml:2:58: connector `iot`: `keep_alive` must be at least 5s"),
            "{m:?}"
        );
    }

    /// Issue 12: an error about a value with no place of its own is at its key, not at 1:1.
    #[test]
    fn a_function_without_a_kind_is_reported_at_its_name() {
        let text = GOOD.replace(
            "f: { http: { url: http://127.0.0.1:9000/f } }",
            "f: { timeout: 5s }",
        );
        assert_eq!(
            messages(&text),
            vec!["t.yaml:4:3: function `f` must have one of `http` or `exec`"]
        );
    }

    /// Issue 12: every message names the key and its place, without serde jargon, and a
    /// misspelled key gets a suggestion.
    #[test]
    fn messages_name_the_key_and_suggest_the_right_one() {
        let typo = GOOD.replace(
            "f: { http: { url: http://127.0.0.1:9000/f } }",
            "f: { http: { url: http://127.0.0.1:9000/f }, concurency: 3 }",
        );
        let m = messages(&typo);
        assert!(
            m[0].ends_with(
                "unknown key `concurency` in `functions.f`; did you mean `concurrency`?"
            ),
            "{m:?}"
        );
        let negative = GOOD.replace("to: f\n", "to: f\n    delivery: { retries: -1 }\n");
        let m = messages(&negative);
        assert_eq!(
            m,
            vec![
                "t.yaml:9:26: `triggers.0.delivery.retries`: expected a whole number from 0 to 4294967295"
            ],
        );
        let two_kinds = GOOD.replace(
            "web: { http: { listen: 127.0.0.1:8080 } }",
            "web: { http: { listen: 127.0.0.1:8080 }, kafka: { brokers: [a] } }",
        );
        let m = messages(&two_kinds);
        assert!(m[0].contains("`connectors.web"), "{m:?}");
        assert!(m[0].contains("only one kind may be given here"), "{m:?}");
    }

    #[test]
    fn unknown_key_inside_a_connector_kind() {
        let text = GOOD.replace("listen: 127.0.0.1:8080", "listen: 127.0.0.1:8080, port: 1");
        let m = messages(&text);
        assert_eq!(m.len(), 1, "{m:?}");
        assert!(m[0].starts_with("t.yaml:2:42: unknown key `port`"), "{m:?}");
    }

    #[test]
    fn semantic_errors_come_together() {
        let text = GOOD
            .replace("to: f", "to: g\n    delivery: { delay: soon }")
            .replace("connector: web", "connector: webb");
        let m = messages(&text);
        assert_eq!(m.len(), 3, "{m:?}");
        assert!(m[0].contains(":7:24: unknown connector `webb`"), "{m:?}");
        assert!(m[1].contains(":8:9: unknown function `g`"), "{m:?}");
        assert!(
            m[2].contains(":9:24: ") && m[2].contains("`soon` is not a duration"),
            "{m:?}"
        );
    }

    #[test]
    fn env_vars_are_substituted_and_unset_ones_reported() {
        let text = GOOD.replace("/orders", "/${SET}/${UNSET}/${MISSING:-x}");
        let m = messages(&text);
        assert_eq!(
            m,
            vec!["t.yaml:7:44: environment variable `UNSET` is not set".to_string()]
        );
        let ok = load(&GOOD.replace("/orders", "\"/${SET}/$${LIT}\"")).expect("valid");
        assert_eq!(ok.triggers[0].from.topic(), "/value/${LIT}");
    }

    #[test]
    fn invalid_yaml_has_a_place() {
        let m = messages("connectors: [\n");
        assert_eq!(m.len(), 1);
        assert!(m[0].starts_with("t.yaml:"), "{m:?}");
    }

    #[test]
    fn bad_urls_and_addresses() {
        let text = GOOD
            .replace("http://127.0.0.1:9000/f", "ftp://x/f")
            .replace("127.0.0.1:8080", "nowhere");
        let m = messages(&text);
        assert_eq!(m.len(), 2, "{m:?}");
        assert!(m[0].contains("not an address"), "{m:?}");
        assert!(m[1].contains("scheme `ftp`"), "{m:?}");
    }

    #[test]
    fn sql_filters_are_parsed_at_load() {
        let ok = GOOD.replace(
            "to: f",
            "to: f\n    filter: { all: [ { sql: \"type = 'x' AND EXISTS subject\" } ] }",
        );
        assert!(load(&ok).is_ok());
        let bad = GOOD.replace("to: f", "to: f\n    filter: { sql: \"type = 'x' AND (\" }");
        let m = messages(&bad);
        assert_eq!(m.len(), 1, "{m:?}");
        assert!(
            m[0].contains(":9:20: trigger `t`: invalid sql filter") && m[0].contains("position 17"),
            "{m:?}"
        );
    }
}

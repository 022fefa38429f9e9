//! Loading and validating a configuration file: every error at once, each with its line and
//! column, and no IO beyond reading the file.

use std::fmt;
use std::path::Path;

use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

use fnbroker_core::registry::{Registry, path_segments};

use super::{Config, Loc};

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
        crate::validate::validate(config, registry, &mut errors);
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
pub(crate) fn plain_message(message: &str) -> String {
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
pub(crate) fn suggestion_among(key: &str, known: &[String]) -> Option<String> {
    known
        .iter()
        .map(|k| (distance(key, k), k))
        .filter(|(d, _)| *d > 0 && *d <= 2)
        .min_by_key(|(d, k)| (*d, *k))
        .map(|(_, k)| k.clone())
}

/// The edit distance between two words.
pub(crate) fn distance(a: &str, b: &str) -> usize {
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
pub(crate) enum Place {
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

    pub(crate) fn at<T>(&mut self, loc: &Loc<T>, message: impl Into<String>) {
        self.push(loc.line(), loc.column(), message);
    }

    /// An error at the key `path` (a value with no location of its own: a default, a list).
    pub(crate) fn at_path(&mut self, path: &[&str], message: impl Into<String>) {
        let path = path.iter().map(|s| s.to_string()).collect();
        self.placed(path, Place::Key, message);
    }

    /// An error at the key or the value at `path`, found in the document at the end.
    pub(crate) fn placed(&mut self, path: Vec<String>, place: Place, message: impl Into<String>) {
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

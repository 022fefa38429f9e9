//! Trigger filters, compiled once at start: the `exact`, `prefix`, `suffix`, `all`, `any` and `not`
//! dialects of the CloudEvents Subscriptions API, `sql` (CloudEvents SQL) and `cel` (the Common
//! Expression Language, over the attributes and the data). A missing attribute does not match;
//! an `sql` or `cel` expression passes only when it yields boolean `true` with no error.

use fnbroker_config as config;
use fnbroker_core::event::{self, Event};

/// A compiled filter.
#[derive(Debug, Clone)]
pub(crate) enum Filter {
    /// Every (attribute, value) pair matches by the given comparison.
    Compare(Compare, Vec<(String, String)>),
    All(Vec<Filter>),
    Any(Vec<Filter>),
    Not(Box<Filter>),
    Sql(std::sync::Arc<fnbroker_filters::cesql::Expr>),
    Cel(fnbroker_filters::celexpr::CelExpr),
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Compare {
    Exact,
    Prefix,
    Suffix,
}

impl Compare {
    fn passes(self, actual: &str, expected: &str) -> bool {
        match self {
            Compare::Exact => actual == expected,
            Compare::Prefix => actual.starts_with(expected),
            Compare::Suffix => actual.ends_with(expected),
        }
    }
}

impl Filter {
    /// Compiles a validated configuration filter. Validation parsed every `sql` expression
    /// already; one that would not parse here matches nothing.
    pub(crate) fn compile(f: &config::Filter) -> Self {
        let pairs = |m: &std::collections::BTreeMap<String, String>| {
            m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        match f {
            config::Filter::Exact(m) => Filter::Compare(Compare::Exact, pairs(m)),
            config::Filter::Prefix(m) => Filter::Compare(Compare::Prefix, pairs(m)),
            config::Filter::Suffix(m) => Filter::Compare(Compare::Suffix, pairs(m)),
            config::Filter::All(fs) => Filter::All(fs.iter().map(Filter::compile).collect()),
            config::Filter::Any(fs) => Filter::Any(fs.iter().map(Filter::compile).collect()),
            config::Filter::Not(f) => Filter::Not(Box::new(Filter::compile(f))),
            config::Filter::Sql(text) => match fnbroker_filters::cesql::Expr::parse(text) {
                Ok(expr) => Filter::Sql(std::sync::Arc::new(expr)),
                Err(_) => Filter::Any(Vec::new()),
            },
            config::Filter::Cel(text) => match fnbroker_filters::celexpr::CelExpr::parse(text) {
                Ok(expr) => Filter::Cel(expr),
                Err(_) => Filter::Any(Vec::new()),
            },
        }
    }

    /// Whether `event` passes.
    pub(crate) fn matches(&self, event: &Event) -> bool {
        match self {
            Filter::Compare(cmp, pairs) => pairs.iter().all(|(name, expected)| {
                event::attribute(event, name).is_some_and(|actual| cmp.passes(&actual, expected))
            }),
            Filter::All(fs) => fs.iter().all(|f| f.matches(event)),
            Filter::Any(fs) => fs.iter().any(|f| f.matches(event)),
            Filter::Not(f) => !f.matches(event),
            Filter::Sql(expr) => expr.matches(event),
            Filter::Cel(expr) => expr.matches(event),
        }
    }
}

impl Filter {
    /// Why `event` does not pass, for the debug line of a filtered-out event.
    pub(crate) fn explain(&self, event: &Event) -> String {
        match self {
            Filter::Compare(cmp, pairs) => pairs
                .iter()
                .find_map(|(name, expected)| match event::attribute(event, name) {
                    None => Some(format!("the event has no `{name}`")),
                    Some(actual) if !cmp.passes(&actual, expected) => Some(format!(
                        "`{name}` is \"{actual}\"; the filter wants {} \"{expected}\"",
                        match cmp {
                            Compare::Exact => "exactly",
                            Compare::Prefix => "the prefix",
                            Compare::Suffix => "the suffix",
                        }
                    )),
                    Some(_) => None,
                })
                .unwrap_or_else(|| "it matches".into()),
            Filter::All(fs) => fs
                .iter()
                .find(|f| !f.matches(event))
                .map_or_else(|| "it matches".into(), |f| f.explain(event)),
            Filter::Any(fs) if fs.is_empty() => "the filter matches nothing".into(),
            Filter::Any(fs) => format!(
                "no alternative matches: {}",
                fs.iter()
                    .map(|f| f.explain(event))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            Filter::Not(_) => "the filter under `not` matches".into(),
            Filter::Cel(expr) => match expr.eval(event) {
                Ok(b) => format!("the cel expression is {b}"),
                Err(error) => format!("the cel expression cannot be evaluated: {error}"),
            },
            Filter::Sql(expr) => {
                use fnbroker_filters::cesql::Value;
                match expr.eval(event) {
                    (_, Some(error)) => format!("the sql expression fails: {error:?}"),
                    (Value::Bool(b), None) => format!("the sql expression is {b}"),
                    (Value::Int(i), None) => {
                        format!("the sql expression is the integer {i}, not a boolean")
                    }
                    (Value::Str(s), None) => {
                        format!("the sql expression is the string '{s}', not a boolean")
                    }
                }
            }
        }
    }
}

impl Filter {
    /// Whether `event` passes, and the part of the filter that decided it (for `fnbroker
    /// explain` and `fnbroker test`): the comparison that failed or held, the alternative that
    /// matched, the sub-expression of an `sql` or `cel` expression.
    pub(crate) fn decide(&self, event: &Event) -> (bool, String) {
        let passes = self.matches(event);
        let why = match self {
            Filter::Compare(cmp, pairs) if passes => pairs
                .iter()
                .map(|(name, expected)| {
                    let how = match cmp {
                        Compare::Exact => "is",
                        Compare::Prefix => "starts with",
                        Compare::Suffix => "ends with",
                    };
                    format!("`{name}` {how} \"{expected}\"")
                })
                .collect::<Vec<_>>()
                .join(" and "),
            Filter::Compare(..) => self.explain(event),
            Filter::All(fs) => match fs.iter().find(|f| !f.matches(event)) {
                Some(f) => format!("all: {}", f.decide(event).1),
                None if fs.is_empty() => "all: nothing to check".into(),
                None => format!(
                    "all: {}",
                    fs.iter()
                        .map(|f| f.decide(event).1)
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            },
            Filter::Any(fs) => match fs.iter().find(|f| f.matches(event)) {
                Some(f) => format!("any: {}", f.decide(event).1),
                None => self.explain(event),
            },
            Filter::Not(f) => format!("not: {}", f.decide(event).1),
            Filter::Sql(expr) => {
                let d = expr.decide(event);
                format!("sql `{}` is {}", d.expression, d.outcome)
            }
            Filter::Cel(expr) => {
                let d = expr.decide(event);
                match d.outcome.strip_prefix("fails: ") {
                    Some(error) => format!("cel `{}` fails: {error}", d.expression),
                    None => format!("cel `{}` is {}", d.expression, d.outcome),
                }
            }
        };
        (passes, why)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fnbroker_core::event::{PlainMessage, normalize};

    fn ev() -> Event {
        normalize(
            PlainMessage {
                kind: "mqtt",
                connector: "iot",
                topic: "sensors/kitchen/temperature",
                ..Default::default()
            },
            vec![],
        )
    }

    fn parse(yaml: &str) -> Filter {
        let f: config::Filter = serde_saphyr::from_str(yaml).expect("filter yaml");
        Filter::compile(&f)
    }

    #[test]
    fn dialects() {
        let e = ev();
        assert!(parse("exact: { type: fnbroker.mqtt.message }").matches(&e));
        assert!(!parse("exact: { type: fnbroker.mqtt }").matches(&e));
        assert!(parse("prefix: { subject: sensors/ }").matches(&e));
        assert!(parse("suffix: { subject: /temperature }").matches(&e));
        assert!(parse("all: [ { prefix: { subject: sensors/ } }, { exact: { source: mqtt://iot/sensors/kitchen/temperature } } ]").matches(&e));
        assert!(
            parse("any: [ { prefix: { subject: x } }, { suffix: { type: message } } ]").matches(&e)
        );
        assert!(!parse("any: []").matches(&e));
        assert!(parse("not: { prefix: { subject: lights/ } }").matches(&e));
        assert!(
            parse("sql: \"subject LIKE 'sensors/%/temperature' AND source != 'x'\"").matches(&e)
        );
        assert!(!parse("sql: \"missing = 'x' OR FALSE\"").matches(&e));
        // Not boolean: no match.
        assert!(!parse("sql: \"'yes'\"").matches(&e));
        assert!(
            parse("all: [ { sql: \"EXISTS subject\" }, { not: { sql: \"EXISTS dataschema\" } } ]")
                .matches(&e)
        );
    }

    #[test]
    fn missing_attributes_do_not_match() {
        let e = ev();
        assert!(!parse("exact: { dataschema: x }").matches(&e));
        assert!(!parse("prefix: { myext: \"\" }").matches(&e));
        // ...and so their negation does.
        assert!(parse("not: { exact: { myext: x } }").matches(&e));
    }

    #[test]
    fn the_deciding_part_is_named_either_way() {
        let e = ev();
        let decide = |yaml: &str| parse(yaml).decide(&e);
        assert_eq!(
            decide(
                "all: [ { prefix: { subject: sensors/ } }, { sql: \"type = 'x' OR subject LIKE '%/humidity'\" } ]"
            ),
            (
                false,
                "all: sql `subject LIKE '%/humidity'` is false".to_string()
            )
        );
        assert_eq!(
            decide("any: [ { exact: { type: x } }, { suffix: { subject: /temperature } } ]"),
            (
                true,
                "any: `subject` ends with \"/temperature\"".to_string()
            )
        );
        assert_eq!(
            decide("not: { cel: \"event.subject.startsWith('lights/')\" }"),
            (
                true,
                "not: cel `event.subject.startsWith('lights/')` is false".to_string()
            )
        );
        let (passes, why) = decide("cel: \"event.data.celsius > 30\"");
        assert!(!passes);
        assert!(
            why.starts_with("cel `event.data.celsius > 30` fails: "),
            "{why}"
        );
    }

    #[test]
    fn a_filtered_out_event_is_explained() {
        let e = ev();
        let exact = Filter::Compare(Compare::Exact, vec![("type".into(), "x".into())]);
        assert!(
            exact.explain(&e).contains("the filter wants exactly \"x\""),
            "{}",
            exact.explain(&e)
        );
        let missing = Filter::Compare(Compare::Prefix, vec![("celsius".into(), "3".into())]);
        assert_eq!(missing.explain(&e), "the event has no `celsius`");
        let sql = Filter::compile(&config::Filter::Sql(fnbroker_config::Loc::new(
            "INT(celsius) > 30".to_string(),
        )));
        assert_eq!(
            sql.explain(&e),
            "the sql expression fails: MissingAttribute"
        );
    }
}

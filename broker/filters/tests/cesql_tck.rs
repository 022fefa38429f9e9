//! Every case of the CloudEvents SQL TCK (`cesql_tck/*.yaml` of the shared conformance data).
//! A missing folder fails the test.

use std::borrow::Cow;
use std::collections::HashMap;

use fnbroker_filters::cesql::{Attributes, ErrorKind, Expr, Value};
use serde_json::Value as Json;

struct Event(HashMap<String, Json>);

impl Attributes for Event {
    fn attribute(&self, name: &str) -> Option<Value<'_>> {
        Some(match self.0.get(name)? {
            Json::Bool(b) => Value::Bool(*b),
            Json::Number(n) => Value::Int(i32::try_from(n.as_i64()?).ok()?),
            Json::String(s) => Value::Str(Cow::Borrowed(s)),
            other => Value::Str(Cow::Owned(other.to_string())),
        })
    }
}

fn error_kind(name: &str) -> ErrorKind {
    match name {
        "parse" => ErrorKind::Parse,
        "math" => ErrorKind::Math,
        "cast" => ErrorKind::Cast,
        "missingAttribute" => ErrorKind::MissingAttribute,
        "missingFunction" => ErrorKind::MissingFunction,
        "functionEvaluation" => ErrorKind::FunctionEvaluation,
        "generic" => ErrorKind::Generic,
        other => panic!("unknown error kind {other}"),
    }
}

fn expected_value(v: &Json) -> Value<'static> {
    match v {
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => Value::Int(n.as_i64().and_then(|i| i32::try_from(i).ok()).expect("i32")),
        Json::String(s) => Value::Str(Cow::Owned(s.clone())),
        other => panic!("unexpected result {other}"),
    }
}

/// The TCK's files, read with the expression kept as the text it is (`TRUE`, `0`).
#[derive(serde::Deserialize)]
struct Suite {
    name: String,
    tests: Vec<Case>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Case {
    name: String,
    expression: String,
    #[serde(default)]
    result: Option<Json>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    event: Option<serde_json::Map<String, Json>>,
    #[serde(default)]
    event_overrides: Option<serde_json::Map<String, Json>>,
}

fn owned(v: Value<'_>) -> Value<'static> {
    match v {
        Value::Bool(b) => Value::Bool(b),
        Value::Int(i) => Value::Int(i),
        Value::Str(s) => Value::Str(Cow::Owned(s.into_owned())),
    }
}

#[test]
fn cesql_tck() {
    let dir = fnbroker_testkit::conformance_dir().join("cesql_tck");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("the CESQL TCK folder {} is missing: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no TCK file in {}", dir.display());
    let mut passed = 0;
    let mut failures = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read");
        let suite: Suite =
            serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        for case in suite.tests {
            let name = format!("{} / {}", suite.name, case.name);
            let expression = case.expression.as_str();
            let mut attrs: HashMap<String, Json> = HashMap::from([
                ("specversion".into(), Json::from("1.0")),
                ("id".into(), Json::from("myId")),
                ("source".into(), Json::from("localhost.localdomain")),
                ("type".into(), Json::from("myType")),
            ]);
            if let Some(event) = &case.event {
                attrs = event.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            }
            if let Some(over) = &case.event_overrides {
                for (k, v) in over {
                    attrs.insert(k.clone(), v.clone());
                }
            }
            let want_error = case.error.as_deref().map(error_kind);
            let want_value = case.result.as_ref().map(expected_value);
            let (value, error) = match Expr::parse(expression) {
                Ok(expr) => {
                    let event = Event(attrs);
                    let (v, e) = expr.eval(&event);
                    (Some(owned(v)), e)
                }
                // An expression that does not parse has the zero value false.
                Err(_) => (Some(Value::Bool(false)), Some(ErrorKind::Parse)),
            };
            let value_ok = want_value.is_none() || want_value == value;
            if value_ok && error == want_error {
                passed += 1;
            } else {
                failures.push(format!(
                    "{name}: `{expression}` gave {value:?} / {error:?}, expected {want_value:?} / {want_error:?}"
                ));
            }
        }
    }
    println!(
        "CESQL TCK: {passed} cases passed, {} failed",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} TCK cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(passed >= 250, "only {passed} cases ran");
}

//! `fnbroker test`: unit tests of a configuration, with no broker and no function running.
//!
//! A test file holds cases; each gives a message as it arrives on a connector and topic, and
//! what should become of it: the CloudEvent (the attributes and data listed), which triggers
//! take it (exactly those), and what each function listed would receive. A failed expectation
//! is shown as a diff of the expected and the actual value.
//!
//! ```yaml
//! tests:
//!   - name: a hot kitchen reaches the thermostat
//!     message:
//!       connector: devices
//!       topic: sensors/kitchen/temperature
//!       headers: { content-type: application/json }
//!       data: { celsius: 31 }          # text as it is; anything else as JSON
//!     expect:
//!       mode: plain                    # cloudevent | plain | invalid
//!       event: { type: fnbroker.mqtt.message, subject: sensors/kitchen/temperature }
//!       triggers: [hot-rooms, everything]
//!       functions:
//!         thermostat: { type: com.example.temperature, data: { celsius: 31 } }
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use fnbroker_config::Config;
use fnbroker_core::Origin;
use fnbroker_core::binding::Sample;
use fnbroker_core::event::{self, Event};
use serde::Deserialize;
use serde_json::Value;

use crate::explain::{self, Arrival, Explained};

/// A test file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    tests: Vec<Case>,
}

/// One case: a message and what should become of it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    message: Message,
    expect: Expect,
}

/// A message as it arrives.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Message {
    connector: String,
    topic: String,
    /// Headers, header-table entries or user properties; `content-type` is the protocol's.
    #[serde(default)]
    headers: BTreeMap<String, String>,
    /// The message key (Kafka).
    #[serde(default)]
    key: Option<String>,
    /// Text as it is; any other value as its JSON text.
    #[serde(default)]
    data: Option<Value>,
}

/// What should become of the message. Every part is optional; what is absent is not checked.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    /// `cloudevent`, `plain` or `invalid`.
    #[serde(default)]
    mode: Option<Mode>,
    /// Attributes (and `data`) the event has; `null` for an attribute it must not have.
    #[serde(default)]
    event: Option<BTreeMap<String, Value>>,
    /// Exactly the triggers whose filters take it (in any order).
    #[serde(default)]
    triggers: Option<Vec<String>>,
    /// What each function listed receives (attributes and `data`, as `event`).
    #[serde(default)]
    functions: Option<BTreeMap<String, BTreeMap<String, Value>>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Mode {
    Cloudevent,
    Plain,
    Invalid,
}

/// One failed expectation: where, what was expected, what there is.
struct Mismatch {
    what: String,
    expected: String,
    actual: String,
}

/// The outcome of running test files: what to print, and whether every case passed.
pub(crate) struct Report {
    /// The report, one line per case and a diff per failed expectation.
    pub(crate) text: String,
    /// How many cases passed and failed.
    pub(crate) passed: usize,
    pub(crate) failed: usize,
}

/// The test files to run: `paths` (a directory gives its `*.test.yaml` and `*_test.yaml`), or,
/// with none, the file beside the configuration named after it (`fnbroker.test.yaml` or
/// `fnbroker_test.yaml` for `fnbroker.yaml`).
pub(crate) fn files(config: &Path, paths: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let is_test = |p: &Path| {
        p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
            [".test.yaml", ".test.yml", "_test.yaml", "_test.yml"]
                .iter()
                .any(|s| n.ends_with(s))
        })
    };
    if paths.is_empty() {
        let stem = config
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("fnbroker");
        let dir = config.parent().unwrap_or(Path::new("."));
        let candidates: Vec<PathBuf> = ["test.yaml", "test.yml"]
            .iter()
            .flat_map(|ext| {
                [
                    dir.join(format!("{stem}.{ext}")),
                    dir.join(format!("{stem}_{ext}")),
                ]
            })
            .collect();
        let found: Vec<PathBuf> = candidates.iter().filter(|p| p.is_file()).cloned().collect();
        if found.is_empty() {
            return Err(format!(
                "no test file given, and none beside the configuration ({})",
                candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        return Ok(found);
    }
    let mut out = Vec::new();
    for path in paths {
        if path.is_dir() {
            let entries = std::fs::read_dir(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let mut found: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| is_test(p))
                .collect();
            found.sort();
            if found.is_empty() {
                return Err(format!(
                    "{}: no *.test.yaml or *_test.yaml in it",
                    path.display()
                ));
            }
            out.extend(found);
        } else {
            out.push(path.clone());
        }
    }
    Ok(out)
}

/// Runs every case of every file against `cfg`. An error for a file that cannot be read or is
/// not a test file (with its line and column).
pub(crate) fn run(cfg: &Config, files: &[PathBuf]) -> Result<Report, String> {
    let mut report = Report {
        text: String::new(),
        passed: 0,
        failed: 0,
    };
    for path in files {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        let file: TestFile =
            serde_saphyr::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        for case in &file.tests {
            let mismatches = check(cfg, case);
            if mismatches.is_empty() {
                report.passed += 1;
                let _ = writeln!(report.text, "PASS  {}: {}", path.display(), case.name);
                continue;
            }
            report.failed += 1;
            let _ = writeln!(report.text, "FAIL  {}: {}", path.display(), case.name);
            for m in mismatches {
                let _ = writeln!(report.text, "  {}:", m.what);
                report.text.push_str(&diff(&m.expected, &m.actual));
            }
        }
    }
    let _ = writeln!(
        report.text,
        "{} passed, {} failed",
        report.passed, report.failed
    );
    Ok(report)
}

/// The lines of `expected` and `actual` that differ, `-` expected and `+` actual, indented.
fn diff(expected: &str, actual: &str) -> String {
    let mut out = String::new();
    let diff = similar::TextDiff::from_lines(expected, actual);
    for change in diff.iter_all_changes() {
        let sign = match change.tag() {
            similar::ChangeTag::Delete => "-",
            similar::ChangeTag::Insert => "+",
            similar::ChangeTag::Equal => " ",
        };
        let line = change.value().trim_end_matches('\n');
        let _ = writeln!(out, "    {sign} {line}");
    }
    out
}

/// Every failed expectation of one case.
fn check(cfg: &Config, case: &Case) -> Vec<Mismatch> {
    let msg = &case.message;
    let headers: Vec<(String, String)> = msg
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let data = match &msg.data {
        None => Vec::new(),
        Some(Value::String(s)) => s.clone().into_bytes(),
        Some(other) => other.to_string().into_bytes(),
    };
    let arrival = Arrival {
        connector: &msg.connector,
        sample: Sample {
            topic: &msg.topic,
            headers: &headers,
            key: msg.key.as_deref(),
            data: &data,
        },
    };
    let explained = match explain::explain(cfg, &arrival) {
        Ok(e) => e,
        Err(error) => {
            return vec![Mismatch {
                what: "the message".into(),
                expected: "a message the connector receives\n".into(),
                actual: format!("{error}\n"),
            }];
        }
    };
    let several = explained.len() > 1;
    let mut out = Vec::new();
    for (i, e) in explained.iter().enumerate() {
        let at = |what: &str| {
            if several {
                format!("event {} of the batch: {what}", i + 1)
            } else {
                what.to_string()
            }
        };
        check_event(&case.expect, e, &at, &mut out);
    }
    out
}

fn check_event(
    expect: &Expect,
    e: &Explained,
    at: &dyn Fn(&str) -> String,
    out: &mut Vec<Mismatch>,
) {
    if let Some(mode) = expect.mode {
        let actual = match &e.origin {
            Origin::CloudEvent => Mode::Cloudevent,
            Origin::Plain => Mode::Plain,
            Origin::Invalid(_) => Mode::Invalid,
        };
        if actual != mode {
            let reason = match &e.origin {
                Origin::Invalid(reason) => format!(" ({reason})"),
                _ => String::new(),
            };
            out.push(Mismatch {
                what: at("mode"),
                expected: format!("{}\n", mode_name(mode)),
                actual: format!("{}{reason}\n", mode_name(actual)),
            });
        }
    }
    if let Some(attributes) = &expect.event {
        compare_event(&at("event"), attributes, &e.event, out);
    }
    if let Some(triggers) = &expect.triggers {
        let mut expected: Vec<&str> = triggers.iter().map(String::as_str).collect();
        let mut actual: Vec<&str> = e
            .triggers
            .iter()
            .filter(|t| t.passes)
            .map(|t| t.trigger.as_str())
            .collect();
        expected.sort_unstable();
        actual.sort_unstable();
        if expected != actual {
            let lines = |names: &[&str]| names.iter().map(|n| format!("{n}\n")).collect::<String>();
            let mut actual_text = lines(&actual);
            // Why each trigger took the event or not: what a failed case needs to be fixed.
            for t in &e.triggers {
                let _ = writeln!(
                    actual_text,
                    "# {} {}: {}",
                    t.trigger,
                    if t.passes { "takes it" } else { "does not" },
                    t.why
                );
            }
            out.push(Mismatch {
                what: at("triggers"),
                expected: lines(&expected),
                actual: actual_text,
            });
        }
    }
    if let Some(functions) = &expect.functions {
        for (function, attributes) in functions {
            let received: Vec<&Event> = e
                .triggers
                .iter()
                .filter(|t| t.passes && &t.function == function)
                .map(|t| &t.delivered)
                .collect();
            if received.is_empty() {
                out.push(Mismatch {
                    what: at(&format!("function `{function}`")),
                    expected: "receives the event\n".into(),
                    actual: "receives nothing: no trigger to it takes the event\n".into(),
                });
            }
            for event in received {
                compare_event(
                    &at(&format!("`{function}` receives")),
                    attributes,
                    event,
                    out,
                );
            }
        }
    }
}

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Cloudevent => "cloudevent",
        Mode::Plain => "plain",
        Mode::Invalid => "invalid",
    }
}

/// Compares the listed attributes (and `data`) of `event` with `expected`.
fn compare_event(
    what: &str,
    expected: &BTreeMap<String, Value>,
    event: &Event,
    out: &mut Vec<Mismatch>,
) {
    for (name, want) in expected {
        let (expected, actual) = if name == "data" {
            compare_data(want, event)
        } else {
            let actual = event::attribute(event, name).map(|v| v.into_owned());
            let wanted = match want {
                Value::Null => None,
                Value::String(s) => Some(s.clone()),
                other => Some(other.to_string()),
            };
            if wanted == actual {
                continue;
            }
            let show = |v: Option<String>| v.unwrap_or_else(|| "(absent)".into()) + "\n";
            (show(wanted), show(actual))
        };
        if expected != actual {
            out.push(Mismatch {
                what: format!("{what}: {name}"),
                expected,
                actual,
            });
        }
    }
}

/// The expected and actual data as text to compare: JSON pretty-printed on both sides when the
/// expectation is JSON (or text that parses as JSON), else the text.
fn compare_data(want: &Value, event: &Event) -> (String, String) {
    let bytes = event::data_bytes(event);
    let actual_json = serde_json::from_slice::<Value>(&bytes).ok();
    let pretty = |v: &Value| serde_json::to_string_pretty(v).unwrap_or_default() + "\n";
    let want_json = match want {
        Value::String(s) => serde_json::from_str::<Value>(s)
            .ok()
            .filter(|_| actual_json.is_some()),
        other => Some(other.clone()),
    };
    match (want_json, actual_json) {
        (Some(w), Some(a)) => (pretty(&w), pretty(&a)),
        (Some(w), None) => (pretty(&w), explain::data_text(event) + "\n"),
        (None, _) => {
            let w = match want {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let a = String::from_utf8_lossy(&bytes).into_owned();
            (w + "\n", a + "\n")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
connectors:
  devices: { mqtt: { url: mqtt://127.0.0.1:1883 } }
functions:
  thermostat: { http: { url: http://127.0.0.1:9/t } }
  archive: { http: { url: http://127.0.0.1:9/a } }
triggers:
  - name: hot-rooms
    from: { connector: devices, topic: "sensors/+/temperature" }
    event: { type: com.example.temperature }
    filter: { cel: "event.data.celsius > 30" }
    to: thermostat
  - name: everything
    from: { connector: devices, topic: "sensors/#" }
    to: archive
"#;

    fn run_cases(cases: &str) -> Report {
        let cfg = crate::connectors::test_config(CONFIG);
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("x.test.yaml");
        std::fs::write(&path, cases).unwrap_or_else(|e| panic!("{e}"));
        run(&cfg, &[path]).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_passing_case() {
        let report = run_cases(
            r#"
tests:
  - name: hot
    message: { connector: devices, topic: sensors/kitchen/temperature, data: { celsius: 31 } }
    expect:
      mode: plain
      event: { type: fnbroker.mqtt.message, subject: sensors/kitchen/temperature, dataschema: null }
      triggers: [everything, hot-rooms]
      functions:
        thermostat: { type: com.example.temperature, data: { celsius: 31 } }
        archive: { type: fnbroker.mqtt.message, data: '{"celsius":31}' }
"#,
        );
        assert_eq!((report.passed, report.failed), (1, 0), "{}", report.text);
    }

    #[test]
    fn a_failing_case_shows_a_diff() {
        let report = run_cases(
            r#"
tests:
  - name: cold
    message: { connector: devices, topic: sensors/kitchen/temperature, data: { celsius: 12, room: hall } }
    expect:
      triggers: [hot-rooms]
      functions:
        archive: { data: { celsius: 12, room: kitchen } }
        thermostat: {}
"#,
        );
        assert_eq!((report.passed, report.failed), (0, 1), "{}", report.text);
        let text = &report.text;
        for line in [
            "FAIL  ",
            "  triggers:",
            "    - hot-rooms",
            "    + everything",
            "    + # hot-rooms does not: cel `event.data.celsius > 30` is false",
            "  `archive` receives: data:",
            "    -   \"room\": \"kitchen\"",
            "    +   \"room\": \"hall\"",
            "  function `thermostat`:",
            "0 passed, 1 failed",
        ] {
            assert!(text.contains(line), "{line:?} in:\n{text}");
        }
    }

    #[test]
    fn a_bad_test_file_says_where() {
        let cfg = crate::connectors::test_config(CONFIG);
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("x.test.yaml");
        std::fs::write(&path, "tests:\n  - name: x\n    mesage: {}\n")
            .unwrap_or_else(|e| panic!("{e}"));
        let err = run(&cfg, &[path]).err().unwrap_or_default();
        assert!(err.contains("mesage") && err.contains("line 3"), "{err}");
    }
}

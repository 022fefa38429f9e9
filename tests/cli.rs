//! End-to-end: the command line. `validate` on broken configurations (every error as
//! `FILE:LINE:COL: message`, exit 2), `schema` against the example configurations, `--version`,
//! and the README's quickstart answered as the README shows.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::{Fnbroker, free_port};
use serde_json::Value;

fn fnbroker(args: &[&str]) -> Output {
    Command::new(common::binary())
        .args(args)
        .env_remove("FNBROKER_CONFIG")
        .output()
        .expect("run fnbroker")
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

const GOOD: &str = "\
connectors:
  web: { http: { listen: 127.0.0.1:8080 } }
functions:
  f: { http: { url: http://127.0.0.1:9000/f }, timeout: 5s }
triggers:
  - name: t
    from: { connector: web, topic: /orders }
    to: f
";

/// Writes `text` to a file and runs `fnbroker validate` on it: (exit code, stderr, file path).
fn validate(text: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("broken.yaml");
    std::fs::write(&path, text).expect("write");
    let out = Command::new(common::binary())
        .args(["validate", "-c"])
        .arg(&path)
        .env_remove("FNBROKER_UNSET_FOR_TEST")
        .output()
        .expect("run");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        path.display().to_string(),
    )
}

/// The help names the connector kinds the build has (each is a cargo feature; the tests run the
/// default build, which has them all).
#[test]
fn help_names_the_connector_kinds_built_in() {
    let out = Command::new(common::binary())
        .arg("--help")
        .output()
        .expect("fnbroker --help");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("Connector kinds built in: http, kafka, nats, amqp, mqtt, redis, postgres."),
        "{help}"
    );
    assert!(
        help.contains(
            "Function kinds: http, exec, process, openfaas, openwhisk, fission, knative, fn, lambda."
        ),
        "{help}"
    );
}

#[test]
fn validate_accepts_a_good_config() {
    let (code, stderr, _) = validate(GOOD);
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn validate_reports_an_unknown_key_with_its_place() {
    let (code, stderr, file) =
        validate(&GOOD.replace("    to: f\n", "    to: f\n    retries: 3\n"));
    assert_eq!(code, 2);
    assert_eq!(
        stderr.trim(),
        format!("{file}:9:5: unknown key `retries` in `triggers.0`")
    );
}

#[test]
fn validate_reports_a_missing_function() {
    let (code, stderr, file) = validate(&GOOD.replace("    to: f\n", "    to: nope\n"));
    assert_eq!(code, 2);
    assert_eq!(
        stderr.trim(),
        format!("{file}:8:9: unknown function `nope` in trigger `t`")
    );
}

#[test]
fn validate_reports_a_bad_duration() {
    let (code, stderr, file) = validate(&GOOD.replace("timeout: 5s", "timeout: 5 parsecs"));
    assert_eq!(code, 2);
    assert!(
        stderr.trim().starts_with(&format!(
            "{file}:4:57: functions.f.timeout: `5 parsecs` is not a duration"
        )),
        "{stderr}"
    );
}

#[test]
fn validate_reports_an_unset_environment_variable() {
    let (code, stderr, file) = validate(&GOOD.replace("/orders", "/${FNBROKER_UNSET_FOR_TEST}"));
    assert_eq!(code, 2);
    assert_eq!(
        stderr.trim(),
        format!("{file}:7:37: environment variable `FNBROKER_UNSET_FOR_TEST` is not set")
    );
}

#[test]
fn validate_reports_invalid_yaml() {
    let (code, stderr, file) =
        validate("connectors:\n  web: { http: { listen: 127.0.0.1:8080 }\nfunctions: {}\n");
    assert_eq!(code, 2);
    let line = stderr.trim();
    assert!(line.starts_with(&format!("{file}:")), "{line}");
    let mut parts = line[file.len() + 1..].splitn(3, ':');
    let l: u32 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .expect("line number");
    let c: u32 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .expect("column number");
    assert!(l >= 2 && c >= 1, "{line}");
}

#[test]
fn validate_reports_every_error_at_once() {
    let text = GOOD
        .replace("    to: f\n", "    to: nope\n    colour: blue\n")
        .replace("timeout: 5s", "timeout: soon")
        .replace("connector: web", "connector: webb");
    let (code, stderr, file) = validate(&text);
    assert_eq!(code, 2);
    let lines: Vec<&str> = stderr.trim().lines().collect();
    assert_eq!(lines.len(), 4, "{stderr}");
    assert!(
        lines.iter().all(|l| l.starts_with(&format!("{file}:"))),
        "{stderr}"
    );
    assert!(
        lines[0].contains(":4:57:") && lines[0].contains("`soon`"),
        "{stderr}"
    );
    assert!(
        lines[1].contains(":7:24: unknown connector `webb`"),
        "{stderr}"
    );
    assert!(
        lines[2].contains(":8:9: unknown function `nope`"),
        "{stderr}"
    );
    assert!(lines[3].contains(":9:5: unknown key `colour`"), "{stderr}");
}

/// A `cel` filter is compiled at load; an error names its place in the file and in
/// the expression.
#[test]
fn validate_reports_a_malformed_cel_filter_with_its_position() {
    let (code, stderr, file) = validate(&GOOD.replace(
        "    to: f\n",
        "    to: f\n    filter: { cel: \"event.data.celsius >> 30\" }\n",
    ));
    assert_eq!(code, 2, "{stderr}");
    let line = stderr.trim();
    assert!(
        line.starts_with(&format!("{file}:9:20: trigger `t`: invalid cel filter: "))
            && line.contains("(at line 1, column "),
        "{stderr}"
    );
    let (code, stderr, _) = validate(&GOOD.replace(
        "    to: f\n",
        "    to: f\n    filter: { cel: \"event.data.celsius > 30 && event.type.startsWith('com.')\" }\n",
    ));
    assert_eq!(code, 0, "{stderr}");
}

/// A rate limit and a circuit breaker are checked at load, each error at its value.
#[test]
fn validate_checks_rate_limits_and_circuit_breakers() {
    let text = GOOD.replace(
        "timeout: 5s",
        "timeout: 5s, rate_limit: { per_second: 0 }, circuit_breaker: { failure_ratio: 1.5, min_calls: 0, open_for: soon }",
    );
    let (code, stderr, _) = validate(&text);
    assert_eq!(code, 2, "{stderr}");
    for wanted in [
        "`rate_limit.per_second` must be at least 1",
        "`circuit_breaker.failure_ratio` must be above 0 and at most 1, not 1.5",
        "`circuit_breaker.min_calls` must be at least 1",
        "circuit_breaker.open_for",
    ] {
        assert!(stderr.contains(wanted), "{wanted}: {stderr}");
    }
    let good = GOOD.replace(
        "timeout: 5s",
        "timeout: 5s, rate_limit: { per_second: 10, burst: 2 }, circuit_breaker: { min_calls: 5 }",
    );
    let (code, stderr, _) = validate(&good);
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn validate_reports_a_malformed_sql_filter_with_its_position() {
    let (code, stderr, file) = validate(&GOOD.replace(
        "    to: f\n",
        "    to: f\n    filter: { sql: \"type = 'x' AND (\" }\n",
    ));
    assert_eq!(code, 2);
    assert_eq!(
        stderr.trim(),
        format!(
            "{file}:9:20: trigger `t`: invalid sql filter: unexpected end of the expression (at position 17 of the expression)"
        )
    );
    let (code, stderr, _) = validate(&GOOD.replace(
        "    to: f\n",
        "    to: f\n    filter: { sql: \"type LIKE 'com.example.%' AND INT(priority) > 3\" }\n",
    ));
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn validate_refuses_a_sql_filter_nested_too_deep() {
    for sql in [
        format!("{}TRUE", "NOT ".repeat(10_000)),
        "(".repeat(10_000),
        vec!["id = 'x'"; 10_000].join(" OR "),
    ] {
        let (code, stderr, file) = validate(&GOOD.replace(
            "    to: f\n",
            &yaml!("    to: f\n    filter: { sql: \"<sql>\" }\n", sql = sql),
        ));
        assert_eq!(code, 2, "{stderr}");
        assert!(
            stderr.starts_with(&format!("{file}:9:20: trigger `t`: invalid sql filter:"))
                && stderr.contains("nests deeper than 100 levels"),
            "{stderr}"
        );
    }
}

#[test]
fn validate_never_prints_a_substituted_password() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("secret.yaml");
    let text = GOOD.replace(
        "  web: { http: { listen: 127.0.0.1:8080 } }\n",
        "  web: { http: { listen: 127.0.0.1:8080 } }\n  q: { amqp: { url: \"${FNB_TEST_AMQP_URL}\" } }\n",
    )
    .replace("http://127.0.0.1:9000/f", "\"${FNB_TEST_FN_URL}\"");
    std::fs::write(&path, text).expect("write");
    let out = Command::new(common::binary())
        .args(["validate", "-c"])
        .arg(&path)
        .env("FNB_TEST_AMQP_URL", "amqp://admin:SECRET@")
        .env(
            "FNB_TEST_FN_URL",
            "ftp://fnb:OTHERSECRET@host/f?token=TOKENSECRET",
        )
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("amqp://admin:***@"), "{stderr}");
    for secret in ["SECRET@", "OTHERSECRET", "TOKENSECRET"] {
        assert!(!stderr.contains(secret), "{secret} printed: {stderr}");
    }
}

#[test]
fn validate_reads_tls_files_and_reports_them_at_their_key() {
    let (code, stderr, file) = validate(&GOOD.replace(
        "listen: 127.0.0.1:8080 }",
        "listen: 127.0.0.1:8080, tls: { cert: /nonexistent/server.pem, key: /nonexistent/server.key } }",
    ));
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.starts_with(&format!("{file}:2:"))
            && stderr.contains("connector `web`")
            && stderr.contains("/nonexistent/server.pem"),
        "{stderr}"
    );
}

#[test]
fn kafka_security_settings_are_checked_at_their_key() {
    let (code, stderr, file) = validate(&GOOD.replace(
        "  web: { http: { listen: 127.0.0.1:8080 } }\n",
        "  web: { http: { listen: 127.0.0.1:8080 } }\n  k: { kafka: { brokers: [\"k:9093\"], sasl: { mechanism: OAUTHBEARER, username: u, password: p }, tls: { ca: /nonexistent/ca.pem } } }\n",
    ));
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains(&format!("{file}:3:"))
            && stderr.contains("connector `k`")
            && stderr.contains("OAUTHBEARER needs the `token_endpoint`")
            && stderr.contains("/nonexistent/ca.pem"),
        "{stderr}"
    );
    let (code, stderr, _) = validate(&GOOD.replace(
        "  web: { http: { listen: 127.0.0.1:8080 } }\n",
        "  web: { http: { listen: 127.0.0.1:8080 } }\n  k: { kafka: { brokers: [\"k:9093\"], sasl: { mechanism: GSSAPI, username: u, password: p } } }\n",
    ));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("GSSAPI"), "{stderr}");
}

#[test]
fn version_and_schema() {
    let out = fnbroker(&["--version"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("fnbroker "));

    let out = fnbroker(&["schema"]);
    assert!(out.status.success());
    let schema: Value = serde_json::from_slice(&out.stdout).expect("schema is JSON");
    assert_eq!(schema["title"], "fnbroker configuration");
}

/// Every example configuration validates, and matches the JSON Schema `fnbroker schema` prints.
#[test]
fn example_configs_match_the_schema() {
    let out = fnbroker(&["schema"]);
    let schema: Value = serde_json::from_slice(&out.stdout).expect("schema");
    let validator = jsonschema::validator_for(&schema).expect("a valid JSON Schema");
    let mut seen = 0;
    for entry in std::fs::read_dir(repo().join("config")).expect("config/") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if !name.ends_with(".yaml") || name.ends_with(".test.yaml") {
            continue;
        }
        seen += 1;
        let text = std::fs::read_to_string(&path).expect("read");
        let doc: Value = serde_saphyr::from_str(&text).expect("YAML");
        let errors: Vec<String> = validator
            .iter_errors(&doc)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{}: {errors:#?}", path.display());
        let out = fnbroker(&["validate", "-c", &path.display().to_string()]);
        assert!(
            out.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(seen >= 1, "no example configuration in config/");

    // And the schema rejects what validation rejects structurally.
    let bad: Value = serde_json::json!({ "triggers": [ { "name": "t", "from": { "connector": "web" }, "to": "f", "colour": "blue" } ] });
    assert!(!validator.is_valid(&bad));
}

/// The README stays complete: every key of the schema (the core's and every connector kind's)
/// is named in it.
#[test]
fn the_readme_names_every_key_of_the_schema() {
    fn keys(v: &Value, out: &mut std::collections::BTreeSet<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::Object(props)) = m.get("properties") {
                    out.extend(props.keys().cloned());
                }
                m.values().for_each(|v| keys(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| keys(v, out)),
            _ => {}
        }
    }
    let out = fnbroker(&["schema"]);
    let schema: Value = serde_json::from_slice(&out.stdout).expect("schema");
    let mut all = std::collections::BTreeSet::new();
    keys(&schema, &mut all);
    assert!(
        all.contains("queue") && all.contains("publish_qos"),
        "{all:?}"
    );
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README");
    let missing: Vec<_> = all
        .iter()
        .filter(|k| !readme.contains(&format!("`{k}`")) && !readme.contains(&format!("{k}:")))
        .collect();
    assert!(
        missing.is_empty(),
        "keys the README does not name: {missing:?}"
    );
}

/// The README's first command and its curl: the quickstart on a free port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickstart_answers_the_readme_curl() {
    quickstart_with(Path::new(common::binary())).await;
}

/// The static binary `scripts/release.sh` built (`scripts/test.sh` runs it first)
/// runs the quickstart too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_static_release_binary_runs_the_quickstart() {
    let binary = repo().join("dist/fnbroker");
    assert!(
        binary.exists(),
        "{} is missing: scripts/release.sh builds it (scripts/test.sh runs it first)",
        binary.display()
    );
    quickstart_with(&binary).await;
}

async fn quickstart_with(program: &Path) {
    let port = free_port();
    let admin = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let text = std::fs::read_to_string(repo().join("config/quickstart.yaml"))
        .expect("quickstart")
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{port}"));
    let config: &Path = &dir.path().join("quickstart.yaml");
    std::fs::write(
        config,
        yaml!(
            "<text>\nadmin: { listen: 127.0.0.1:<admin> }\n",
            text = text,
            admin = admin
        ),
    )
    .expect("write");
    let config = config.to_path_buf();
    let mut fb = Fnbroker::spawn_program(program, dir, &config, admin, &[]);
    fb.wait_ready().await;

    let res = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/hello"))
        .header("content-type", "application/json")
        .body(r#"{"name":"Ada"}"#)
        .send()
        .await
        .expect("curl");
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["ce-type"], "com.example.greeting.reply");
    assert_eq!(res.headers()["ce-source"], "fnbroker://functions/hello");
    assert_eq!(res.headers()["content-type"], "application/json");
    let body: Value =
        serde_json::from_slice(&res.bytes().await.expect("body")).expect("JSON reply");
    assert_eq!(
        body,
        serde_json::json!({"greeting": "hello from fnbroker", "event": "com.example.greeting", "data": {"name": "Ada"}})
    );
    fb.signal("INT");
    let status = fb.wait_exit(Duration::from_secs(20)).await;
    assert!(status.success(), "{}", fb.logs());
}

/// `fnbroker test` on the quickstart's own test file (found beside the configuration): every
/// case passes, exit 0. A failed expectation: exit 1, with a diff of what was expected and what
/// there is; a test file with an unknown key: exit 2, at its line.
#[test]
fn configuration_unit_tests_pass_fail_with_a_diff_and_refuse_bad_files() {
    let config = repo().join("config/quickstart.yaml");
    let out = fnbroker(&["test", "-c", &config.display().to_string()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("3 passed, 0 failed"), "{stdout}");

    let dir = tempfile::tempdir().expect("tempdir");
    let failing = dir.path().join("wrong.test.yaml");
    std::fs::write(
        &failing,
        "tests:\n  - name: hello is audited\n    message: { connector: web, topic: /hello, data: hi }\n    expect:\n      triggers: [audit-orders]\n      functions: { hello: { type: com.example.hello } }\n",
    )
    .expect("write");
    let out = fnbroker(&[
        "test",
        "-c",
        &config.display().to_string(),
        &dir.path().display().to_string(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    for line in [
        "FAIL  ",
        "  triggers:\n    - audit-orders\n    + greet\n",
        "  `hello` receives: type:\n    - com.example.hello\n    + com.example.greeting\n",
        "0 passed, 1 failed",
    ] {
        assert!(stdout.contains(line), "{line:?} in:\n{stdout}");
    }

    std::fs::write(&failing, "tests:\n  - name: x\n    mesage: {}\n").expect("write");
    let out = fnbroker(&[
        "test",
        "-c",
        &config.display().to_string(),
        &failing.display().to_string(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("mesage") && stderr.contains("line 3"),
        "{stderr}"
    );
}

/// `fnbroker explain`: each attribute with where it came from, and each trigger's verdict with
/// the part of its filter that decided.
#[test]
fn explain_shows_provenance_and_the_deciding_filter() {
    let config = repo().join("config/quickstart.yaml");
    let config = config.display().to_string();
    let out = fnbroker(&[
        "explain",
        "-c",
        &config,
        "--connector",
        "web",
        "--topic",
        "/events",
        "--header",
        "ce-specversion=1.0",
        "--header",
        "ce-id=7",
        "--header",
        "ce-source=/shop",
        "--header",
        "ce-type=com.example.user.created",
        "--header",
        "content-type=application/json",
        "--data",
        "{\"a\":1}",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "a CloudEvent",
        "<- header `ce-type`",
        "<- the message's content type",
        "{\"a\":1}",
        "audit-orders -> audit: filtered out (`type` is \"com.example.user.created\"; the filter wants the prefix \"com.example.order.\")",
    ] {
        assert!(stdout.contains(line), "{line:?} in:\n{stdout}");
    }
    let out = fnbroker(&[
        "explain",
        "-c",
        &config,
        "--connector",
        "web",
        "--topic",
        "/hello",
        "--data",
        "hi",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("a plain message"), "{stdout}");
    assert!(
        stdout.contains("greet -> hello: MATCHES (no filter)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("the function receives type `com.example.greeting`"),
        "{stdout}"
    );
    let out = fnbroker(&[
        "explain",
        "-c",
        &config,
        "--connector",
        "nope",
        "--topic",
        "x",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no connector `nope`"));
}

/// The warm-functions example is a valid configuration, and its `process` functions are
/// checked like any other (a `directory` that is not there is named).
#[test]
fn the_warm_functions_example_validates() {
    let example = repo().join("examples/warm-functions/fnbroker.yaml");
    let out = Command::new(common::binary())
        .args(["validate", "-c"])
        .arg(&example)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&example).expect("example");
    let (code, stderr, _) = validate(&text.replace(
        "      protocol: lambda\n",
        "      protocol: lambda\n      directory: /nonexistent/fn\n      path: /x\n      instances: { min: 5, max: 2 }\n",
    ).replace("      instances: { min: 1, max: 4 }\n", ""));
    assert_eq!(code, 2, "{stderr}");
    for expected in [
        "`/nonexistent/fn` is not a directory",
        "`path` applies to `protocol: http`",
        "`instances.min` (5) is more than `instances.max` (2)",
    ] {
        assert!(stderr.contains(expected), "{expected}: {stderr}");
    }
}

/// `fnbroker send --plain` publishes what a device or a service would: the bytes, and the content
/// type where the protocol has one. The triggers then normalize it (their `event.type`, the topic
/// as `subject`), which is the point of trying it by hand. MQTT 5 and AMQP here; a destination
/// that stores events by their attributes (PostgreSQL) says it cannot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_plain_publishes_a_message_with_no_attributes() {
    let id = format!("{}{}", std::process::id(), free_port());
    let queue = format!("plain-{id}");
    let (_conn, ch) = common::amqp::channel().await;
    common::amqp::queue(&ch, &queue).await;
    let server = common::FnServer::start().await;
    let cfg = yaml!(
        "connectors:
  iot: { mqtt: { url: \"mqtt://127.0.0.1:<mqtt>\", client_id: plain<id> } }
  rabbit: { amqp: { url: \"<amqp>\" } }
  db: { postgres: { url: \"postgres://postgres@127.0.0.1:5432/postgres\" } }
functions:
  f: { http: { url: \"<f>\" } }
triggers:
  - { name: readings, from: { connector: iot, topic: \"plain<id>/+/temp\", qos: 1 }, event: { type: com.example.reading }, to: f }
  - { name: jobs, from: { connector: rabbit, queue: <queue> }, event: { type: com.example.job }, to: f }
",
        mqtt = common::mqtt::SHARED_PORT,
        amqp = common::amqp::URL,
        id = id,
        queue = queue,
        f = server.url("/f")
    );
    let fb = Fnbroker::start(&cfg).await;
    let topic = format!("plain{id}/kitchen/temp");
    for (connector, topic, data) in [
        ("iot", topic.as_str(), "{\"c\":21.5}"),
        ("rabbit", queue.as_str(), "rebuild"),
    ] {
        let (code, stdout, stderr) = common::run_once(
            &cfg,
            &[
                "send",
                "--plain",
                "--connector",
                connector,
                "--topic",
                topic,
                "--data",
                data,
            ],
        );
        assert_eq!(code, 0, "{stderr}");
        assert_eq!(stdout, "", "a plain message has no id to print");
    }
    let got = server.wait_count("/f", 2, Duration::from_secs(30)).await;
    let reading = got
        .iter()
        .find(|r| r.header("ce-type") == Some("com.example.reading"))
        .expect("the reading");
    assert_eq!(reading.header("ce-subject"), Some(topic.as_str()));
    assert_eq!(
        reading.header("ce-source").map(String::from),
        Some(format!("mqtt://iot/{topic}"))
    );
    assert_eq!(reading.header("content-type"), Some("application/json"));
    assert_eq!(&reading.body[..], b"{\"c\":21.5}");
    let job = got
        .iter()
        .find(|r| r.header("ce-type") == Some("com.example.job"))
        .expect("the job");
    assert_eq!(job.header("ce-subject"), Some(queue.as_str()));
    assert_eq!(
        job.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(&job.body[..], b"rebuild");
    drop(fb);

    // Attributes and --plain contradict each other; a table of events cannot take a plain one.
    let (code, _, stderr) = common::run_once(
        &cfg,
        &[
            "send",
            "--plain",
            "--type",
            "x",
            "--connector",
            "iot",
            "--topic",
            "t",
        ],
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--type"), "{stderr}");
    let (code, _, stderr) = common::run_once(
        &cfg,
        &[
            "send",
            "--plain",
            "--connector",
            "db",
            "--topic",
            "events",
            "--data",
            "x",
        ],
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("connector `db` cannot publish a plain message"),
        "{stderr}"
    );
}

//! End-to-end: what an operator sees. `/metrics` parses as what its content type says
//! (OpenMetrics by the openmetrics-parser crate, the classic format by Prometheus' own
//! `promtool check metrics`), counts first receipts apart from redeliveries and filtered events
//! apart from matched ones; `/readyz` names the connectors that are not ready.

mod common;

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::nats::{self, SHARED_URL};
use common::{Answer, FnServer, Fnbroker, free_port};

const WAIT: Duration = Duration::from_secs(30);

fn uid() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// promtool, unpacked by scripts/deps.sh.
fn promtool() -> std::path::PathBuf {
    let path = std::path::PathBuf::from(std::env::var("HOME").expect("HOME"))
        .join(".cache/fnbroker/promtool/usr/bin/promtool");
    assert!(
        path.exists(),
        "promtool is not at {} (scripts/deps.sh unpacks it)",
        path.display()
    );
    path
}

/// `/metrics` with an `Accept` header: (content type, body).
async fn scrape(fb: &Fnbroker, accept: &str) -> (String, String) {
    let r = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{}/metrics", fb.admin))
        .header("accept", accept)
        .send()
        .await
        .expect("metrics");
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (ct, r.text().await.expect("body"))
}

/// The value of the sample that starts with `name{` and has every label of `labels`.
fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .find(|l| labels.iter().all(|want| l.contains(want)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// One JetStream event that fails once and is redelivered by the server (a broker-side retry),
/// one core NATS event that a trigger's filter does not match: the counters tell them apart,
/// and both exposition formats pass their strict parsers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_strictly_and_count_redeliveries_and_filtered_events_apart() {
    let root = format!("o{}", uid());
    let stream = format!("S{}", uid());
    let server = FnServer::with(|path, n| {
        if path == "/f" && n == 0 {
            Answer::status(503)
        } else {
            Answer::ok().body("text/plain", b"done")
        }
    })
    .await;
    let fb = Fnbroker::start(&format!(
        "connectors:\n  bus: {{ nats: {{ url: \"{SHARED_URL}\" }} }}\nfunctions:\n  f: {{ http: {{ url: \"{}\" }} }}\n  g: {{ http: {{ url: \"{}\" }} }}\ntriggers:\n  - {{ name: js, from: {{ connector: bus, stream: {stream}, topic: \"{root}.js\", group: g{}, create: true }}, to: f, delivery: {{ retries: 3, delay: 100ms }}, reply: {{ connector: bus, topic: \"{root}.reply\" }} }}\n  - {{ name: picky, from: {{ connector: bus, topic: \"{root}.core\" }}, filter: {{ exact: {{ type: com.example.wanted }} }}, to: g, event: {{ type: com.example.other }} }}\n",
        server.url("/f"),
        server.url("/g"),
        uid()
    ))
    .await;
    nats::js_publish(SHARED_URL, vec![(format!("{root}.js"), b"12345".to_vec())]).await;
    nats::publish(
        SHARED_URL,
        vec![(
            format!("{root}.core"),
            async_nats::HeaderMap::new(),
            b"x".to_vec(),
        )],
    )
    .await;
    server.wait_count("/f", 2, WAIT).await;
    fb.wait_log("event filtered out", WAIT).await;
    let logs = fb.logs();
    let filtered_line = logs
        .lines()
        .find(|l| l.contains("event filtered out"))
        .unwrap_or_default();
    assert!(
        filtered_line.contains("picky")
            && filtered_line.contains("the filter wants exactly \"com.example.wanted\""),
        "the debug line names the trigger and the reason: {filtered_line}"
    );

    // OpenMetrics by default, with its content type; every counter settles to what happened.
    let deadline = tokio::time::Instant::now() + WAIT;
    let text = loop {
        let (ct, body) = scrape(&fb, "*/*").await;
        assert!(
            ct.starts_with("application/openmetrics-text; version=1.0.0"),
            "{ct}"
        );
        let settled = [
            "fnbroker_events_delivered_total",
            "fnbroker_replies_published_total",
        ]
        .iter()
        .all(|name| sample(&body, name, &["trigger=\"js\""]) == Some(1.0));
        if settled {
            break body;
        }
        assert!(tokio::time::Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let parsed = openmetrics_parser::openmetrics::parse_openmetrics(&text)
        .unwrap_or_else(|e| panic!("not OpenMetrics: {e:?}\n{text}"));
    assert!(
        matches!(
            parsed.families["fnbroker_events_received"].family_type,
            openmetrics_parser::OpenMetricsType::Counter
        ),
        "typed as a counter"
    );
    let js = ["trigger=\"js\""];
    assert_eq!(
        sample(&text, "fnbroker_events_received_total", &js),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "fnbroker_events_redelivered_total", &js),
        Some(1.0),
        "the server's redelivery is counted apart"
    );
    assert_eq!(
        sample(&text, "fnbroker_received_bytes_total", &js),
        Some(10.0),
        "5 bytes, received twice"
    );
    let f = |class: &str| {
        sample(
            &text,
            "fnbroker_function_calls_total",
            &["function=\"f\"", &format!("status_class=\"{class}\"")],
        )
    };
    assert_eq!(
        (f("5xx"), f("2xx"), f("timeout")),
        (Some(1.0), Some(1.0), Some(0.0))
    );
    assert_eq!(
        sample(
            &text,
            "fnbroker_function_response_bytes_total",
            &["function=\"f\""]
        ),
        Some(4.0)
    );
    let picky = ["trigger=\"picky\""];
    assert_eq!(
        sample(&text, "fnbroker_events_filtered_total", &picky),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "fnbroker_events_received_total", &picky),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &text,
            "fnbroker_connector_up",
            &["connector=\"bus\"", "kind=\"nats\""]
        ),
        Some(1.0)
    );
    assert!(text.contains("fnbroker_build_info{version=\""), "{text}");
    assert!(
        sample(&text, "process_resident_memory_bytes", &[]).is_some_and(|v| v > 1e6),
        "{text}"
    );

    // The classic format on negotiation, checked by Prometheus' own parser and linter.
    let (ct, classic) = scrape(&fb, "text/plain;version=0.0.4").await;
    assert_eq!(ct, "text/plain; version=0.0.4; charset=utf-8");
    assert!(classic.contains("# TYPE fnbroker_events_received_total counter"));
    let mut check = Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    check
        .stdin
        .take()
        .expect("stdin")
        .write_all(classic.as_bytes())
        .expect("write");
    let out = check.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{classic}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // And the OpenMetrics body is not the classic format (what Prometheus' classic parser
    // would have taken as untyped): promtool refuses it.
    let mut wrong = Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("promtool");
    wrong
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    assert!(!wrong.wait().expect("promtool").success());
    drop(fb);
}

/// `/readyz` names the connectors that are not ready, in JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_names_the_connectors_that_are_not_ready() {
    let closed = free_port();
    let mut fb = Fnbroker::spawn(&format!(
        "connectors:\n  bus: {{ nats: {{ url: \"{SHARED_URL}\" }} }}\n  rabbit: {{ amqp: {{ url: \"amqp://guest:guest@127.0.0.1:{closed}/%2f\" }} }}\nfunctions:\n  f: {{ http: {{ url: \"http://127.0.0.1:9/\" }} }}\ntriggers:\n  - {{ name: a, from: {{ connector: bus, topic: \"r{}\" }}, to: f }}\n  - {{ name: b, from: {{ connector: rabbit, queue: q{} }}, to: f }}\n",
        uid(),
        uid()
    ));
    let url = format!("http://127.0.0.1:{}/readyz", fb.admin);
    let deadline = tokio::time::Instant::now() + WAIT;
    let answer = loop {
        if let Ok(r) = reqwest::get(&url).await {
            break r;
        }
        assert!(tokio::time::Instant::now() < deadline, "{}", fb.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(answer.status(), 503);
    let body: serde_json::Value =
        serde_json::from_str(&answer.text().await.expect("body")).expect("json");
    assert_eq!(
        body,
        serde_json::json!({ "ready": false, "not_ready": [{ "name": "rabbit", "kind": "amqp" }] })
    );
    let (_, text) = scrape(&fb, "*/*").await;
    assert_eq!(
        sample(&text, "fnbroker_connector_up", &["connector=\"rabbit\""]),
        Some(0.0)
    );
    fb.signal("TERM");
    fb.wait_exit(WAIT).await;
}

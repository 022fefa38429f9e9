//! End-to-end: what an operator sees. `/metrics` parses as what its content type says
//! (OpenMetrics by the openmetrics-parser crate, the classic format by Prometheus' own
//! `promtool check metrics`), counts first receipts apart from redeliveries and filtered events
//! apart from matched ones; `/readyz` names the connectors that are not ready.

use crate::common;

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

/// `promtool check metrics` on `text`: whether it passed, and what it said.
fn promtool_check(text: &str) -> (bool, String) {
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
        .write_all(text.as_bytes())
        .expect("write");
    let out = check.wait_with_output().expect("promtool");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
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
        .filter(|l| {
            l.starts_with(&yaml!("<name>{", name = name)) || l.starts_with(&format!("{name} "))
        })
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
    let fb = Fnbroker::start(&yaml!("connectors:\n  bus: { nats: { url: \"<SHARED_URL>\" } }\nfunctions:\n  f: { http: { url: \"<f_url>\" } }\n  g: { http: { url: \"<g_url>\" } }\ntriggers:\n  - { name: js, from: { connector: bus, stream: <stream>, topic: \"<root>.js\", group: g<uid>, create: true }, to: f, delivery: { retries: 3, delay: 100ms }, reply: { connector: bus, topic: \"<root>.reply\" } }\n  - { name: picky, from: { connector: bus, topic: \"<root>.core\" }, filter: { exact: { type: com.example.wanted } }, to: g, event: { type: com.example.other } }\n", SHARED_URL = SHARED_URL, f_url = server.url("/f"), g_url = server.url("/g"), stream = stream, root = root, uid = uid()))
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
            "fnbroker_reply_published_total",
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
    let (ok, said) = promtool_check(&classic);
    assert!(ok, "promtool check metrics: {said}\n{classic}");
    // And the OpenMetrics body is not the classic format (what Prometheus' classic parser
    // would have taken as untyped): promtool refuses it.
    assert!(!promtool_check(&text).0);
    drop(fb);
}

/// `/readyz` names the connectors that are not ready, in JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_names_the_connectors_that_are_not_ready() {
    let closed = free_port();
    let mut fb = Fnbroker::spawn(&yaml!(
        "connectors:\n  bus: { nats: { url: \"<SHARED_URL>\" } }\n  rabbit: { amqp: { url: \"amqp://guest:guest@127.0.0.1:<closed>/%2f\" } }\nfunctions:\n  f: { http: { url: \"http://127.0.0.1:9/\" } }\ntriggers:\n  - { name: a, from: { connector: bus, topic: \"r<uid>\" }, to: f }\n  - { name: b, from: { connector: rabbit, queue: q<uid> }, to: f }\n",
        SHARED_URL = SHARED_URL,
        closed = closed,
        uid = uid()
    ));
    let url = format!("http://127.0.0.1:{}/readyz", fb.admin);
    let deadline = tokio::time::Instant::now() + WAIT;
    // Until the first attempt failed, the reason is that it is connecting; then the cause.
    let body = loop {
        if let Ok(r) = reqwest::get(&url).await {
            assert_eq!(r.status(), 503);
            let body: serde_json::Value =
                serde_json::from_str(&r.text().await.expect("body")).expect("json");
            if body["not_ready"][0]["reason"]
                .as_str()
                .is_some_and(|r| r.contains("refused"))
            {
                break body;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "{}", fb.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(body["ready"], false, "{body}");
    let not_ready = body["not_ready"].as_array().expect("not_ready");
    assert_eq!(not_ready.len(), 1, "only rabbit: {body}");
    assert_eq!(not_ready[0]["name"], "rabbit");
    assert_eq!(not_ready[0]["kind"], "amqp");
    // The log said it once, with the address (the password masked) and the cause, though the
    // connector went on trying (a summary follows every 30 s).
    common::wait_for("more attempts", WAIT, || {
        fb.logs()
            .lines()
            .filter(|l| l.contains("connector=rabbit") && l.contains("cannot connect"))
            .count()
            > 3
    })
    .await;
    let warnings: Vec<String> = fb
        .logs()
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("connector=rabbit"))
        .map(str::to_string)
        .collect();
    assert!(
        warnings[0].contains(&format!("address=amqp://guest:***@127.0.0.1:{closed}/%2f"))
            && warnings[0].contains("refused"),
        "{warnings:?}"
    );
    assert_eq!(warnings.len(), 1, "one warning for the run: {warnings:?}");
    let (_, text) = scrape(&fb, "*/*").await;
    assert_eq!(
        sample(&text, "fnbroker_connector_up", &["connector=\"rabbit\""]),
        Some(0.0)
    );
    fb.signal("TERM");
    fb.wait_exit(WAIT).await;
}

mod otlp {
    //! A real OTLP receiver: `POST /v1/traces` (HTTP/protobuf) and the gRPC `TraceService`,
    //! decoding the requests with the opentelemetry-proto crate's generated types.

    use std::sync::{Arc, Mutex};

    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
        TraceService, TraceServiceServer,
    };
    use opentelemetry_proto::tonic::collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    };
    use opentelemetry_proto::tonic::trace::v1::Span;
    use prost::Message as _;

    /// The spans received so far.
    pub(crate) type Spans = Arc<Mutex<Vec<Span>>>;

    fn keep(spans: &Spans, request: ExportTraceServiceRequest) {
        let mut all = spans.lock().expect("lock");
        for rs in request.resource_spans {
            for ss in rs.scope_spans {
                all.extend(ss.spans);
            }
        }
    }

    /// An HTTP/protobuf receiver: its base URL and what it received.
    pub(crate) async fn http() -> (String, Spans) {
        let spans: Spans = Arc::default();
        let kept = Arc::clone(&spans);
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: axum::body::Bytes| {
                let kept = Arc::clone(&kept);
                async move {
                    match ExportTraceServiceRequest::decode(body) {
                        Ok(request) => {
                            keep(&kept, request);
                            (
                                axum::http::StatusCode::OK,
                                [("content-type", "application/x-protobuf")],
                                ExportTraceServiceResponse::default().encode_to_vec(),
                            )
                        }
                        Err(_) => (
                            axum::http::StatusCode::BAD_REQUEST,
                            [("content-type", "text/plain")],
                            b"not an ExportTraceServiceRequest".to_vec(),
                        ),
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (format!("http://{addr}"), spans)
    }

    struct Receiver(Spans);

    #[tonic::async_trait]
    impl TraceService for Receiver {
        async fn export(
            &self,
            request: tonic::Request<ExportTraceServiceRequest>,
        ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
            keep(&self.0, request.into_inner());
            Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
        }
    }

    /// A gRPC receiver: its URL and what it received.
    pub(crate) async fn grpc() -> (String, Spans) {
        let spans: Spans = Arc::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let service = TraceServiceServer::new(Receiver(Arc::clone(&spans)));
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await;
        });
        (format!("http://{addr}"), spans)
    }

    pub(crate) fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Waits until a span named `name` arrived, and returns it.
async fn span(spans: &otlp::Spans, name: &str) -> opentelemetry_proto::tonic::trace::v1::Span {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(s) = spans.lock().expect("lock").iter().find(|s| s.name == name) {
            return s.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no span `{name}`: {:?}",
            spans
                .lock()
                .expect("lock")
                .iter()
                .map(|s| s.name.clone())
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `(trace id, parent id)` of a W3C `traceparent`.
fn ids(traceparent: &str) -> (String, String) {
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    (parts[1].to_string(), parts[2].to_string())
}

/// One event followed by its trace id from the incoming Kafka record (a plain record with a
/// `traceparent` header, as an instrumented producer writes it) through the trigger's span, the
/// function request's W3C `traceparent` header (the attempt's span as parent), to the reply on
/// NATS; and one NATS event through two failed attempts to its dead letter. Spans exported by
/// OTLP over HTTP/protobuf to a real receiver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_follow_an_event_from_kafka_to_the_function_its_reply_and_a_dead_letter() {
    use common::kafka;
    let (collector, spans) = otlp::http().await;
    let topic = kafka::unique("tr");
    kafka::create_topic(&topic, 1).await;
    let root = format!("tr{}", uid());
    let server = FnServer::with(|path, _| match path {
        "/fails" => Answer::status(500),
        _ => Answer::ok().body("application/json", b"{\"ok\":true}"),
    })
    .await;
    let replies = nats::subscribe(SHARED_URL, &format!("{root}.reply")).await;
    let letters = nats::subscribe(SHARED_URL, &format!("{root}.dlq")).await;
    let fb = Fnbroker::start_env(
        &yaml!("connectors:\n<connectors>  bus: { nats: { url: \"<SHARED_URL>\" } }\nfunctions:\n  f: { http: { url: \"<f_url>\" } }\n  g: { http: { url: \"<fails_url>\" } }\ntriggers:\n  - { name: orders, from: { connector: k, topic: <topic>, group: <group> }, to: f, reply: { connector: bus, topic: \"<root>.reply\" } }\n  - { name: poison, from: { connector: bus, topic: \"<root>.in\" }, to: g, delivery: { retries: 1, delay: 10ms }, dead_letter: { connector: bus, topic: \"<root>.dlq\" } }\ntelemetry:\n  otlp: { endpoint: \"<collector>\", protocol: http/protobuf }\n  service_name: fnbroker-test\n", connectors = kafka::connector("k", ""), SHARED_URL = SHARED_URL, f_url = server.url("/f"), fails_url = server.url("/fails"), topic = topic, group = kafka::unique("g"), root = root, collector = collector),
        &[("OTEL_BSP_SCHEDULE_DELAY", "100")],
    )
    .await;
    let (trace, parent) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    kafka::produce(
        &kafka::producer(),
        &topic,
        kafka::Out {
            key: None,
            partition: None,
            headers: vec![("traceparent", &format!("00-{trace}-{parent}-01"))],
            payload: b"{\"order\":1}",
        },
    )
    .await;
    let call = server.wait_count("/f", 1, WAIT).await.remove(0);

    // The event's span: the message's context as parent.
    let process = span(&spans, "process orders").await;
    assert_eq!(otlp::hex(&process.trace_id), trace);
    assert_eq!(otlp::hex(&process.parent_span_id), parent);
    // The attempt: a child of the event's span, and the parent the function sees.
    let invoke = span(&spans, "invoke f").await;
    assert_eq!(otlp::hex(&invoke.trace_id), trace);
    assert_eq!(invoke.parent_span_id, process.span_id);
    let header = call
        .header("traceparent")
        .expect("a W3C traceparent header");
    assert_eq!(ids(header), (trace.to_string(), otlp::hex(&invoke.span_id)));
    // The reply: published under a child span, carrying the event span's context on.
    let publish = span(&spans, &format!("publish {root}.reply")).await;
    assert_eq!(publish.parent_span_id, process.span_id);
    common::wait_for("the reply", WAIT, || {
        !replies.lock().expect("lock").is_empty()
    })
    .await;
    let reply_tp = replies.lock().expect("lock")[0]
        .0
        .get("ce-traceparent")
        .map(|v| v.as_str().to_string())
        .expect("the reply carries the trace context");
    assert_eq!(
        ids(&reply_tp),
        (trace.to_string(), otlp::hex(&process.span_id))
    );

    // A dead letter: two attempts, the event span failed, the letter in the same trace.
    let (trace2, parent2) = ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331");
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("traceparent", format!("00-{trace2}-{parent2}-01").as_str());
    nats::publish(
        SHARED_URL,
        vec![(format!("{root}.in"), headers, b"bad".to_vec())],
    )
    .await;
    common::wait_for("the dead letter", WAIT, || {
        !letters.lock().expect("lock").is_empty()
    })
    .await;
    let letter_tp = letters.lock().expect("lock")[0]
        .0
        .get("ce-traceparent")
        .map(|v| v.as_str().to_string())
        .expect("the dead letter carries the trace context");
    let poison = span(&spans, "process poison").await;
    assert_eq!(otlp::hex(&poison.parent_span_id), parent2);
    assert_eq!(
        ids(&letter_tp),
        (trace2.to_string(), otlp::hex(&poison.span_id))
    );
    let status = poison.status.clone().expect("status");
    assert_eq!(status.code, 2, "the failed event's span is an error");
    common::wait_for("both attempts", WAIT, || {
        spans
            .lock()
            .expect("lock")
            .iter()
            .filter(|s| s.name == "invoke g" && s.parent_span_id == poison.span_id)
            .count()
            == 2
    })
    .await;
    let dlq = span(&spans, &format!("publish {root}.dlq")).await;
    assert_eq!(dlq.parent_span_id, poison.span_id);
    drop(fb);
}

/// gRPC export, and a trace that starts here (no context on the message): the function gets
/// a `traceparent` all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_are_exported_over_grpc_and_start_where_no_context_came() {
    let (collector, spans) = otlp::grpc().await;
    let root = format!("tg{}", uid());
    let server = FnServer::start().await;
    let fb = Fnbroker::start_env(
        &yaml!("connectors:\n  bus: { nats: { url: \"<SHARED_URL>\" } }\nfunctions:\n  f: { http: { url: \"<f_url>\" } }\ntriggers:\n  - { name: t, from: { connector: bus, topic: \"<root>\" }, to: f }\ntelemetry:\n  otlp: { endpoint: \"<collector>\", protocol: grpc }\n", SHARED_URL = SHARED_URL, f_url = server.url("/f"), root = root, collector = collector),
        &[("OTEL_BSP_SCHEDULE_DELAY", "100")],
    )
    .await;
    nats::publish(
        SHARED_URL,
        vec![(root.clone(), async_nats::HeaderMap::new(), b"1".to_vec())],
    )
    .await;
    let call = server.wait_count("/f", 1, WAIT).await.remove(0);
    let process = span(&spans, "process t").await;
    assert!(process.parent_span_id.is_empty(), "a root span");
    let invoke = span(&spans, "invoke f").await;
    let (trace, parent) = ids(call.header("traceparent").expect("traceparent"));
    assert_eq!(trace, otlp::hex(&process.trace_id));
    assert_eq!(parent, otlp::hex(&invoke.span_id));
    drop(fb);
}

/// JSON logs are one flat object per line (the fields beside `message`, not under `fields`),
/// with the trace id on the lines about a traced event; `/v1/triggers` shows a filter as it was
/// written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_flat_with_trace_ids_and_filters_are_shown_as_written() {
    let (collector, _spans) = otlp::http().await;
    let root = format!("jl{}", uid());
    let server = FnServer::with(|_, _| Answer::status(500)).await;
    let fb = Fnbroker::start_env(
        &yaml!("connectors:\n  bus: { nats: { url: \"<SHARED_URL>\" } }\nfunctions:\n  f: { http: { url: \"<f_url>\" } }\ntriggers:\n  - { name: t, from: { connector: bus, topic: \"<root>\" }, event: { type: com.example.x }, filter: { sql: \"type = 'com.example.x'\" }, to: f, delivery: { retries: 1, delay: 10ms } }\ntelemetry:\n  otlp: { endpoint: \"<collector>\" }\n", SHARED_URL = SHARED_URL, f_url = server.url("/f"), root = root, collector = collector),
        &[("FNBROKER_LOG_FORMAT", "json")],
    )
    .await;
    let views: serde_json::Value = serde_json::from_str(
        &reqwest::get(format!("http://127.0.0.1:{}/v1/triggers", fb.admin))
            .await
            .expect("triggers")
            .text()
            .await
            .expect("body"),
    )
    .expect("json");
    assert_eq!(
        views[0]["filter"],
        serde_json::json!({ "sql": "type = 'com.example.x'" })
    );
    nats::publish(
        SHARED_URL,
        vec![(root.clone(), async_nats::HeaderMap::new(), b"1".to_vec())],
    )
    .await;
    fb.wait_log("delivery failed", WAIT).await;
    let logs = fb.logs();
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let retrying = lines
        .iter()
        .find(|l| l["message"] == "retrying")
        .unwrap_or_else(|| panic!("no retrying line: {logs}"));
    assert!(retrying.get("fields").is_none(), "{retrying}");
    assert_eq!(retrying["trigger"], "t");
    let trace_id = retrying["trace_id"].as_str().unwrap_or_default();
    assert_eq!(trace_id.len(), 32, "{retrying}");
    let failed = lines
        .iter()
        .find(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("delivery failed"))
        })
        .expect("failed line");
    assert_eq!(failed["trace_id"], trace_id, "one trace id per event");
    let span_id = retrying["span_id"].as_str().unwrap_or_default();
    assert_eq!(span_id.len(), 16, "{retrying}");
    assert_eq!(failed["span_id"], span_id, "the event's span");
    drop(fb);
}

/// Headless Chromium (Debian's package, installed by scripts/deps.sh).
fn chromium() -> &'static str {
    let path = "/usr/bin/chromium";
    assert!(
        std::path::Path::new(path).exists(),
        "chromium is not installed (scripts/deps.sh installs Debian's chromium package)"
    );
    path
}

/// What Chromium shows of `url` once its scripts ran for `budget_ms` of virtual time: the DOM,
/// and a screenshot written to `shot` when given.
pub(crate) fn browse(url: &str, budget_ms: u64, shot: Option<&std::path::Path>) -> String {
    let profile = tempfile::tempdir().expect("profile");
    let mut cmd = Command::new(chromium());
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--hide-scrollbars",
        "--window-size=1400,1100",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .arg(format!("--virtual-time-budget={budget_ms}"));
    match shot {
        Some(path) => cmd.arg(format!("--screenshot={}", path.display())),
        None => cmd.arg("--dump-dom"),
    };
    let out = cmd
        .arg(url)
        .stderr(Stdio::null())
        .output()
        .expect("chromium");
    assert!(out.status.success(), "chromium failed on {url}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The number in the cell `class` of the row of trigger `name` in the page's DOM.
fn cell(dom: &str, name: &str, class: &str) -> Option<u64> {
    let row = dom.split(&format!("data-trigger=\"{name}\"")).nth(1)?;
    let row = &row[..row.find("</tr>")?];
    let at = row.find(&format!("class=\"n {class}\">"))?;
    let rest = &row[at..];
    let value = &rest[rest.find('>')? + 1..rest.find("</td>")?];
    value.trim().parse().ok()
}

/// The status page, as a person sees it in a real browser during a run with traffic: the
/// connectors, the triggers with counts that move, the functions, and the last errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_a_live_run_in_chromium() {
    let root = format!("sp{}", uid());
    let server = FnServer::with(|path, _| match path {
        "/broken" => Answer::status(500),
        _ => Answer::ok(),
    })
    .await;
    let fb = Fnbroker::start(&yaml!("connectors:\n  bus: { nats: { url: \"<SHARED_URL>\" } }\nfunctions:\n  thumbnail: { http: { url: \"<ok_url>\" } }\n  broken: { http: { url: \"<broken_url>\" } }\ntriggers:\n  - { name: resize-images, from: { connector: bus, topic: \"<root>.images\" }, to: thumbnail }\n  - { name: always-fails, from: { connector: bus, topic: \"<root>.bad\" }, to: broken, delivery: { retries: 0 } }\n", SHARED_URL = SHARED_URL, ok_url = server.url("/ok"), broken_url = server.url("/broken"), root = root))
    .await;
    // Traffic all along: 20 events every 100 ms, and now and then one that fails.
    let stop = tokio_util::sync::CancellationToken::new();
    let traffic = {
        let (stop, root) = (stop.clone(), root.clone());
        tokio::spawn(async move {
            let client = nats::connect(SHARED_URL).await;
            let mut i = 0u64;
            while !stop.is_cancelled() {
                for _ in 0..20 {
                    i += 1;
                    let _ = client
                        .publish(format!("{root}.images"), i.to_string().into())
                        .await;
                }
                if i.is_multiple_of(200) {
                    let _ = client.publish(format!("{root}.bad"), "x".into()).await;
                }
                let _ = client.flush().await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    server.wait_count("/ok", 100, WAIT).await;
    let page = format!("http://127.0.0.1:{}/", fb.admin);
    let first = tokio::task::spawn_blocking({
        let page = page.clone();
        move || browse(&page, 3000, None)
    })
    .await
    .expect("browse");
    for what in [
        "resize-images",
        "always-fails",
        "thumbnail",
        "broken",
        "data-connector=\"bus\"",
    ] {
        assert!(first.contains(what), "the page shows {what}:\n{first}");
    }
    assert!(
        first.contains("class=\"up\">up</td>"),
        "bus is shown up:\n{first}"
    );
    let delivered_first = cell(&first, "resize-images", "delivered").expect("a delivered count");
    assert!(delivered_first >= 100, "{delivered_first}");
    // More traffic reaches the function before the second look.
    server
        .wait_count("/ok", delivered_first as usize + 100, WAIT)
        .await;
    let second = tokio::task::spawn_blocking({
        let page = page.clone();
        move || browse(&page, 3000, None)
    })
    .await
    .expect("browse");
    let delivered_second = cell(&second, "resize-images", "delivered").expect("a delivered count");
    assert!(
        delivered_second > delivered_first,
        "the counts move: {delivered_first} then {delivered_second}"
    );
    assert!(
        second.contains("delivery failed"),
        "the last errors show the failed delivery:\n{second}"
    );
    // A screenshot of what a person sees, kept with the test's output.
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    tokio::task::spawn_blocking({
        let (page, shot) = (page.clone(), shot.clone());
        move || browse(&page, 3000, Some(&shot))
    })
    .await
    .expect("screenshot");
    let png = std::fs::read(&shot).expect("the screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{}",
        shot.display()
    );
    stop.cancel();
    let _ = traffic.await;
    drop(fb);
}

/// Consumer lag where the broker tells it (a Kafka partition's high watermark minus its
/// committed offset, a JetStream consumer's pending count, an AMQP queue's depth), and a
/// subscription that has messages waiting and takes none (its function hangs) reported stuck
/// in `/metrics` and `/readyz`, which stays ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_lag_is_measured_and_a_stuck_subscription_is_reported() {
    use common::{amqp, kafka};
    let topic = kafka::unique("lag");
    kafka::create_topic(&topic, 1).await;
    kafka::produce_range(&kafka::producer(), &topic, 0..50).await;
    let root = format!("lg{}", uid());
    let stream = format!("L{}", uid());
    nats::create_stream(SHARED_URL, &stream, &[&format!("{root}.>")]).await;
    nats::js_publish(
        SHARED_URL,
        (0..50)
            .map(|i| (format!("{root}.x"), i.to_string().into_bytes()))
            .collect(),
    )
    .await;
    let queue = format!("lag-{}", uid());
    let (_conn, ch) = amqp::channel().await;
    amqp::queue(&ch, &queue).await;
    amqp::publish_many(&ch, &queue, 50).await;
    // The function never answers in time: one message in flight per subscription, the rest wait.
    let server = FnServer::with(|_, _| Answer::ok().delay(Duration::from_secs(120))).await;
    let fb = Fnbroker::start(&yaml!("connectors:\n<connectors>  bus: { nats: { url: \"<SHARED_URL>\" } }\n  rabbit: { amqp: { url: \"<URL>\" } }\nfunctions:\n  hangs: { http: { url: \"<f_url>\" }, timeout: 300s }\ntriggers:\n  - { name: k, from: { connector: k, topic: <topic>, group: <group> }, to: hangs, delivery: { max_in_flight: 1 } }\n  - { name: js, from: { connector: bus, stream: <stream>, topic: \"<root>.>\", group: lag }, to: hangs, delivery: { max_in_flight: 1 } }\n  - { name: q, from: { connector: rabbit, queue: <queue> }, to: hangs, delivery: { max_in_flight: 1 } }\nadmin: { listen: \"127.0.0.1:ADMIN_PORT\", stuck_after: 1s }\n", connectors = kafka::connector("k", ""), SHARED_URL = SHARED_URL, URL = amqp::URL, f_url = server.url("/f"), topic = topic, group = kafka::unique("g"), stream = stream, root = root, queue = queue))
    .await;
    let lag = |text: &str, connector: &str, source: &str| {
        sample(
            text,
            "fnbroker_consumer_lag",
            &[
                &format!("connector=\"{connector}\""),
                &format!("source=\"{source}\""),
            ],
        )
    };
    let js_source = format!("{stream}/lag");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let text = loop {
        let (_, text) = scrape(&fb, "*/*").await;
        let all = [
            lag(&text, "k", &topic),
            lag(&text, "bus", &js_source),
            lag(&text, "rabbit", &queue),
        ];
        let stalled = ["k", "bus", "rabbit"].iter().all(|c| {
            sample(
                &text,
                "fnbroker_consumer_stalled_seconds",
                &[&format!("connector=\"{c}\"")],
            )
            .is_some_and(|s| s >= 1.0)
        });
        if all.iter().all(|l| l.is_some_and(|l| l > 0.0)) && stalled {
            break text;
        }
        assert!(tokio::time::Instant::now() < deadline, "{all:?}\n{text}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    // Most of the 50 wait at each broker (a few are prefetched or in flight).
    for (c, s) in [
        ("k", topic.as_str()),
        ("bus", &js_source),
        ("rabbit", &queue),
    ] {
        let waiting = lag(&text, c, s).unwrap_or_default();
        assert!((20.0..=50.0).contains(&waiting), "{c} {s}: {waiting}");
    }
    let r = reqwest::get(format!("http://127.0.0.1:{}/readyz", fb.admin))
        .await
        .expect("readyz");
    assert_eq!(
        r.status(),
        200,
        "a stuck subscription does not make fnbroker unready"
    );
    let body: serde_json::Value =
        serde_json::from_str(&r.text().await.expect("body")).expect("json");
    let stuck: Vec<String> = body["stuck"]
        .as_array()
        .expect("stuck")
        .iter()
        .map(|s| {
            format!(
                "{}:{}",
                s["connector"].as_str().unwrap_or("?"),
                s["source"].as_str().unwrap_or("?")
            )
        })
        .collect();
    for want in [
        format!("k:{topic}"),
        format!("bus:{js_source}"),
        format!("rabbit:{queue}"),
    ] {
        assert!(stuck.contains(&want), "{want} in {stuck:?}");
    }
    drop(fb);
    let _ = ch
        .queue_delete(queue.into(), lapin::options::QueueDeleteOptions::default())
        .await;
}

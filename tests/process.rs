//! End-to-end: the `process` function kind with the real `fnbroker` binary, real Lambda runtime
//! clients that no one here wrote (Python's `awslambdaric`, Node's `aws-lambda-ric`, Rust's
//! `lambda_runtime` crate), an HTTP function on `$PORT`, and a real Mosquitto and HTTP ingress.
//! `scripts/deps.sh` installs the runtime clients outside the clone.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::mqtt::{self, Msg, SHARED_PORT};
use common::{FnServer, Fnbroker, free_port, metric_sum, wait_for};

const WAIT: Duration = Duration::from_secs(60);

/// A Python handler, as deployed to Lambda: `handle` answers with the event, its process and
/// its context; `data` may ask it to sleep, to fail, to wait to be killed, or to crash once.
const HANDLER: &str = r#"
import json, os, time

STATE = os.environ["STATE"]

def handle(event, context):
    data = event.get("data") if isinstance(event, dict) else None
    print("handling", event.get("id") if isinstance(event, dict) else "a batch")
    mark = os.path.join(STATE, "seen-" + str(os.getpid()))
    with open(mark, "a") as f:
        f.write((event.get("id") if isinstance(event, dict) else "batch") + "\n")
    if isinstance(data, dict):
        if data.get("sleep"):
            time.sleep(data["sleep"])
        if data.get("fail"):
            raise ValueError("bad reading " + str(data["fail"]))
        if data.get("hold"):
            flag = os.path.join(STATE, "held-" + event["id"])
            if not os.path.exists(flag):
                with open(flag, "w") as f:
                    f.write(str(os.getpid()))
                time.sleep(60)
    return {"pid": os.getpid(), "id": event.get("id"), "data": data,
            "function": context.function_name, "request_id": context.aws_request_id,
            "version": os.environ.get("VERSION", "1")}

def handle2(event, context):
    reply = handle(event, context)
    reply["version"] = "2"
    return reply
"#;

/// The same handler's contract in Node.js, for `aws-lambda-ric`.
const NODE_HANDLER: &str = r#"
export const handler = async (event, context) => ({
  runtime: "aws-lambda-ric", pid: process.pid, id: event.id, data: event.data,
  function: context.functionName, request_id: context.awsRequestId,
});
"#;

/// An HTTP function on `$PORT`, as Knative and OpenFaaS's of-watchdog run them.
const HTTP_SERVER: &str = r#"
import json, os, http.server
class H(http.server.BaseHTTPRequestHandler):
    disable_nagle_algorithm = True
    def do_GET(self):
        self.send_response(200 if self.path == "/healthz" else 404); self.end_headers()
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        out = json.dumps({"pid": os.getpid(), "id": self.headers.get("ce-id"),
                          "type": self.headers.get("ce-type"), "body": body.decode()}).encode()
        self.send_response(200); self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out))); self.end_headers(); self.wfile.write(out)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"#;

fn uid() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn cache() -> PathBuf {
    PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cache/fnbroker")
}

/// The Python of the virtual environment `scripts/deps.sh` made, with `awslambdaric`.
fn python() -> String {
    let python = cache().join("venv/bin/python3");
    let ok = std::process::Command::new(&python)
        .args(["-c", "import awslambdaric"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{} cannot import awslambdaric: run scripts/deps.sh",
        python.display()
    );
    python.display().to_string()
}

/// A folder with the handlers, and one for what they record.
struct Code {
    dir: tempfile::TempDir,
}

impl Code {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("handler.py"), HANDLER).expect("handler");
        std::fs::write(dir.path().join("index.mjs"), NODE_HANDLER).expect("node handler");
        std::fs::write(dir.path().join("server.py"), HTTP_SERVER).expect("server");
        std::fs::create_dir(dir.path().join("state")).expect("state");
        Self { dir }
    }

    fn path(&self) -> String {
        self.dir.path().display().to_string()
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The processes that handled events, with the ids each saw.
    fn seen(&self) -> BTreeMap<u32, Vec<String>> {
        std::fs::read_dir(self.state())
            .expect("state")
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_str()?.to_string();
                let pid = name.strip_prefix("seen-")?.parse().ok()?;
                let ids = std::fs::read_to_string(e.path()).ok()?;
                Some((pid, ids.lines().map(str::to_string).collect()))
            })
            .collect()
    }

    /// A Python Lambda function run by `awslambdaric`, with `extra` settings.
    fn lambda_fn(&self, name: &str, handler: &str, extra: &str, timeout: &str) -> String {
        yaml!(
            "  <name>:\n    process: { command: [\"<python>\", -m, awslambdaric, <handler>], protocol: lambda, directory: \"<dir>\", env: { STATE: \"<state>\" }<extra> }\n    timeout: <timeout>\n",
            name = name,
            python = python(),
            handler = handler,
            dir = self.path(),
            state = self.state().display(),
            extra = extra,
            timeout = timeout
        )
    }
}

/// The replies and dead letters, posted to a recording function server.
fn sink(name: &str, server: &FnServer) -> String {
    yaml!(
        "  <name>: { http: { url: \"<url>\" } }\n",
        name = name,
        url = server.url(&format!("/{name}"))
    )
}

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body).expect("a JSON body")
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z'))
    })
}

/// The instances of `state` (`starting`, `running`, `idle`) in `/metrics`.
async fn instances(fb: &Fnbroker, state: &str) -> f64 {
    let label = format!("state=\"{state}\"");
    fb.metrics()
        .await
        .lines()
        .filter(|l| l.starts_with("fnbroker_function_instances{") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits until `n` instances are in `state`.
async fn wait_for_instances(fb: &Fnbroker, state: &str, n: f64) {
    let deadline = std::time::Instant::now() + WAIT;
    while instances(fb, state).await != n {
        assert!(
            std::time::Instant::now() < deadline,
            "never {n} instances {state}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An MQTT message with a JSON payload (its content type says so, so the handler gets the
/// data as JSON).
fn json_msg(topic: &str, payload: &[u8]) -> Msg {
    Msg {
        content_type: Some("application/json".into()),
        ..Msg::plain(topic, payload)
    }
}

/// A header's value with its percent-encoding undone (extension values travel encoded).
fn decoded(value: Option<&str>) -> String {
    let bytes = value.unwrap_or_default().as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn post(port: u16, path: &str, body: &str) -> reqwest::StatusCode {
    reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}{path}"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("post")
        .status()
}

/// A Python handler behind `awslambdaric` gets MQTT and HTTP events in one warm process and
/// replies; a failing handler's error type and message reach the dead letter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_lambda_handler_gets_mqtt_and_http_events_and_replies() {
    let code = Code::new();
    let root = format!("p{}", uid());
    let port = free_port();
    let server = FnServer::start().await;
    let fb = Fnbroker::start(&yaml!(
        "connectors:\n  iot: { mqtt: { url: \"mqtt://127.0.0.1:<mqtt>\", client_id: c<id> } }\n  web: { http: { listen: 127.0.0.1:<port> } }\nfunctions:\n<f><replies><dlq>triggers:\n  - { name: sensors, from: { connector: iot, topic: \"<root>/in\", qos: 1 }, to: resize, reply: { function: replies }, dead_letter: { function: dlq }, delivery: { retries: 1, delay: 10ms } }\n  - { name: hook, from: { connector: web, topic: /in }, to: resize, reply: { function: replies } }\n",
        mqtt = SHARED_PORT,
        id = uid(),
        port = port,
        f = code.lambda_fn("resize", "handler.handle", ", instances: { min: 1, max: 1 }", "20s"),
        replies = sink("replies", &server),
        dlq = sink("dlq", &server),
        root = root
    ))
    .await;
    mqtt::publish(
        SHARED_PORT,
        vec![json_msg(&format!("{root}/in"), br#"{"celsius": 21.5}"#)],
    )
    .await;
    assert!(post(port, "/in", r#"{"width": 640}"#).await.is_success());
    let replies = server.wait_count("/replies", 2, WAIT).await;
    let bodies: Vec<serde_json::Value> = replies.iter().map(|r| json(&r.body)).collect();
    let data: BTreeSet<String> = bodies.iter().map(|b| b["data"].to_string()).collect();
    assert_eq!(
        data,
        BTreeSet::from([
            r#"{"celsius":21.5}"#.to_string(),
            r#"{"width":640}"#.to_string()
        ])
    );
    assert!(bodies.iter().all(|b| b["function"] == "resize"));
    assert_eq!(bodies[0]["pid"], bodies[1]["pid"], "one warm process");
    // What the handler prints is in fnbroker's log, tagged with the function and instance.
    let logs = fb.logs();
    assert!(
        logs.lines().any(|l| l.contains("handling")
            && l.contains("function=resize")
            && l.contains("instance=0")),
        "{logs}"
    );
    assert!(
        replies
            .iter()
            .all(|r| r.header("ce-source") == Some("fnbroker://functions/resize")),
        "{:?}",
        replies[0].headers
    );

    mqtt::publish(
        SHARED_PORT,
        vec![json_msg(&format!("{root}/in"), br#"{"fail": 7}"#)],
    )
    .await;
    let dead = server.wait_count("/dlq", 1, WAIT).await;
    let reason = decoded(dead[0].header("ce-dlqreason"));
    assert!(
        reason.contains("ValueError") && reason.contains("bad reading 7"),
        "{reason}"
    );
    assert_eq!(dead[0].header("ce-dlqattempts"), Some("2"));
    drop(fb);
}

/// Four instances share a stream; one killed with SIGKILL in the middle of an event is replaced
/// and the event retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_instances_share_the_load_and_a_killed_one_is_replaced() {
    const N: usize = 40;
    let code = Code::new();
    let root = format!("p{}", uid());
    let server = FnServer::start().await;
    let fb = Fnbroker::start(&yaml!(
        "connectors:\n  iot: { mqtt: { url: \"mqtt://127.0.0.1:<mqtt>\", client_id: c<id> } }\nfunctions:\n<f><replies>triggers:\n  - { name: t, from: { connector: iot, topic: \"<root>/#\", qos: 1 }, to: resize, reply: { function: replies }, delivery: { max_in_flight: 16, retries: 3, delay: 10ms } }\n",
        mqtt = SHARED_PORT,
        id = uid(),
        f = code.lambda_fn("resize", "handler.handle", ", instances: { min: 4, max: 4 }", "30s"),
        replies = sink("replies", &server),
        root = root
    ))
    .await;
    wait_for_instances(&fb, "idle", 4.0).await;
    let messages = (0..N)
        .map(|i| {
            json_msg(
                &format!("{root}/load"),
                format!(r#"{{"sleep": 0.2, "n": {i}}}"#).as_bytes(),
            )
        })
        .collect();
    mqtt::publish(SHARED_PORT, messages).await;
    server.wait_count("/replies", N, WAIT).await;
    let seen = code.seen();
    assert_eq!(seen.len(), 4, "every instance took events: {seen:?}");

    // One event holds its instance until it is killed.
    mqtt::publish(
        SHARED_PORT,
        vec![json_msg(&format!("{root}/kill"), br#"{"hold": true}"#)],
    )
    .await;
    let held = code.state();
    let mut victim = None;
    wait_for("the held event", WAIT, || {
        victim = std::fs::read_dir(&held).ok().and_then(|d| {
            d.flatten().find_map(|e| {
                e.file_name()
                    .to_str()?
                    .starts_with("held-")
                    .then(|| std::fs::read_to_string(e.path()).ok()?.parse::<u32>().ok())?
            })
        });
        victim.is_some()
    })
    .await;
    let victim = victim.expect("a pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(victim).expect("pid")),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    let replies = server.wait_count("/replies", N + 1, WAIT).await;
    let last = json(&replies[N].body);
    assert_eq!(last["data"], serde_json::json!({"hold": true}));
    assert_ne!(last["pid"].as_u64(), Some(u64::from(victim)));
    assert!(metric_sum(&fb, "fnbroker_function_instance_restarts_total").await >= 1.0);
    wait_for_instances(&fb, "idle", 4.0).await;
    drop(fb);
}

/// A handler that sleeps past the timeout is killed each attempt; the event is dead-lettered
/// after its retries with the timeout as the reason, and the function keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_past_its_timeout_is_killed_and_its_event_dead_lettered() {
    let code = Code::new();
    let port = free_port();
    let server = FnServer::start().await;
    let fb = Fnbroker::start(&yaml!(
        "connectors:\n  web: { http: { listen: 127.0.0.1:<port> } }\nfunctions:\n<f><replies><dlq>triggers:\n  - { name: t, from: { connector: web, topic: /in }, to: resize, reply: { function: replies }, dead_letter: { function: dlq }, delivery: { retries: 1, delay: 10ms } }\n",
        port = port,
        f = code.lambda_fn("resize", "handler.handle", ", instances: { min: 1, max: 2 }", "1s"),
        replies = sink("replies", &server),
        dlq = sink("dlq", &server)
    ))
    .await;
    assert!(post(port, "/in", r#"{"sleep": 30}"#).await.is_success());
    let dead = server.wait_count("/dlq", 1, WAIT).await;
    let reason = decoded(dead[0].header("ce-dlqreason"));
    assert!(reason.contains("timed out"), "{reason}");
    assert_eq!(dead[0].header("ce-dlqattempts"), Some("2"));
    // Two attempts, two instances killed; none of them is left running.
    let seen = code.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    wait_for("the killed instances are gone", WAIT, || {
        seen.keys().all(|pid| !alive(*pid))
    })
    .await;
    assert!(post(port, "/in", r#"{"ok": true}"#).await.is_success());
    let replies = server.wait_count("/replies", 1, WAIT).await;
    assert_eq!(
        json(&replies[0].body)["data"],
        serde_json::json!({"ok": true})
    );
    drop(fb);
}

/// A handler that does not import: its init error is in `/readyz` and `/v1/functions`, and
/// deliveries are held as in an outage, not dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_init_error_is_reported_and_deliveries_are_held() {
    let code = Code::new();
    let port = free_port();
    let server = FnServer::start().await;
    let mut fb = Fnbroker::spawn(&yaml!(
        "connectors:\n  web: { http: { listen: 127.0.0.1:<port> } }\nfunctions:\n<f><dlq>triggers:\n  - { name: t, from: { connector: web, topic: /in }, to: broken, dead_letter: { function: dlq }, delivery: { retries: 5, delay: 10ms } }\n",
        port = port,
        f = code.lambda_fn("broken", "nothing_here.handle", ", init_failures: 2", "5s"),
        dlq = sink("dlq", &server)
    ));
    let admin = fb.admin;
    let mut body = serde_json::Value::Null;
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        if let Ok(r) = reqwest::get(format!("http://127.0.0.1:{admin}/readyz")).await
            && r.status() == 503
        {
            body = serde_json::from_slice(&r.bytes().await.unwrap_or_default()).unwrap_or_default();
            if body["not_ready"]
                .as_array()
                .is_some_and(|a| a.iter().any(|n| n["kind"] == "function"))
            {
                break;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "readyz never named the function: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let entry = body["not_ready"]
        .as_array()
        .and_then(|a| a.iter().find(|n| n["kind"] == "function").cloned())
        .expect("the function");
    assert_eq!(entry["name"], "broken");
    let reason = entry["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("Runtime.ImportModuleError"), "{reason}");
    let functions = json(
        &reqwest::get(format!("http://127.0.0.1:{admin}/v1/functions"))
            .await
            .expect("functions")
            .bytes()
            .await
            .expect("body"),
    );
    assert!(
        functions["broken"]["unavailable"]
            .as_str()
            .is_some_and(|u| u.contains("ImportModuleError")),
        "{functions}"
    );
    // The status page, as a browser shows it, says so too.
    let page = tokio::task::spawn_blocking(move || {
        crate::observability::browse(&format!("http://127.0.0.1:{admin}/"), 3000, None)
    })
    .await
    .expect("browse");
    assert!(
        page.contains("unavailable: Runtime.ImportModuleError"),
        "the status page names the init error:\n{page}"
    );
    // The event is taken, and held: not dead-lettered while the function cannot start.
    let status = post(port, "/in", r#"{"n": 1}"#).await;
    assert!(status.is_success() || status.as_u16() == 503, "{status}");
    let deadline = std::time::Instant::now() + WAIT;
    while metric_sum(&fb, "fnbroker_events_held_total").await < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the event was never held"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(server.count("/dlq"), 0);
    fb.signal("TERM");
    fb.wait_exit(WAIT).await;
}

/// `min: 0`: no instance until events come, up to `max` under load, back to none once idle;
/// each cold start is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_scales_from_zero_to_max_and_back_to_zero() {
    let code = Code::new();
    let root = format!("p{}", uid());
    let server = FnServer::start().await;
    let fb = Fnbroker::start(&yaml!(
        "connectors:\n  iot: { mqtt: { url: \"mqtt://127.0.0.1:<mqtt>\", client_id: c<id> } }\nfunctions:\n<f><replies>triggers:\n  - { name: t, from: { connector: iot, topic: \"<root>/#\", qos: 1 }, to: resize, reply: { function: replies }, delivery: { max_in_flight: 16 } }\n",
        mqtt = SHARED_PORT,
        id = uid(),
        f = code.lambda_fn("resize", "handler.handle", ", instances: { min: 0, max: 3 }, idle_timeout: 2s", "30s"),
        replies = sink("replies", &server),
        root = root
    ))
    .await;
    let instances = || async { metric_sum(&fb, "fnbroker_function_instances").await };
    assert_eq!(instances().await, 0.0);
    let messages = (0..12)
        .map(|i| {
            json_msg(
                &format!("{root}/x"),
                format!(r#"{{"sleep": 0.5, "n": {i}}}"#).as_bytes(),
            )
        })
        .collect();
    mqtt::publish(SHARED_PORT, messages).await;
    server.wait_count("/replies", 12, WAIT).await;
    let seen = code.seen();
    assert_eq!(seen.len(), 3, "scaled to max and no further: {seen:?}");
    let cold = metric_sum(&fb, "fnbroker_function_cold_starts_total").await;
    assert_eq!(cold, 3.0);
    assert!(metric_sum(&fb, "fnbroker_function_cold_start_seconds_count").await >= 3.0);
    let deadline = std::time::Instant::now() + WAIT;
    while instances().await > 0.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "idle instances never stopped"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for pid in seen.keys() {
        assert!(!alive(*pid), "{pid} outlived its idle timeout");
    }
    assert!(fb.logs().contains("cold start"));
    drop(fb);
}

/// A reload that changes the command drains the old pool and starts the new one, under load,
/// with every event delivered; the old instances are stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changing_the_command_replaces_the_pool_losing_nothing() {
    const N: usize = 150;
    let code = Code::new();
    let root = format!("p{}", uid());
    let server = FnServer::start().await;
    let id = uid();
    let config = |handler: &str| {
        yaml!(
            "connectors:\n  iot: { mqtt: { url: \"mqtt://127.0.0.1:<mqtt>\", client_id: c<id> } }\nfunctions:\n<f><replies>triggers:\n  - { name: t, from: { connector: iot, topic: \"<root>/#\", qos: 1 }, to: resize, reply: { function: replies }, delivery: { max_in_flight: 8 } }\n",
            mqtt = SHARED_PORT,
            id = id,
            f = code.lambda_fn("resize", handler, ", instances: { min: 2, max: 2 }", "30s"),
            replies = sink("replies", &server),
            root = root
        )
    };
    let fb = Fnbroker::start(&config("handler.handle")).await;
    let topic = format!("{root}/x");
    let publisher = tokio::spawn(async move {
        for chunk in (0..N).collect::<Vec<_>>().chunks(10) {
            let messages = chunk
                .iter()
                .map(|i| json_msg(&topic, format!(r#"{{"n": {i}, "sleep": 0.02}}"#).as_bytes()))
                .collect();
            mqtt::publish(SHARED_PORT, messages).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    server.wait_count("/replies", 30, WAIT).await;
    let before: BTreeSet<u32> = code.seen().keys().copied().collect();
    fb.rewrite(&config("handler.handle2"));
    fb.signal("HUP");
    let view = fb.wait_reloads(1, 0).await;
    assert_eq!(
        view["last_reload"]["changes"]["replaced"],
        serde_json::json!(["function resize"]),
        "{view}"
    );
    publisher.await.expect("published");
    let replies = server.wait_count("/replies", N, WAIT).await;
    let mut numbers = BTreeSet::new();
    let mut versions = BTreeSet::new();
    for r in &replies {
        let body = json(&r.body);
        numbers.insert(body["data"]["n"].as_u64().expect("n"));
        versions.insert(body["version"].as_str().unwrap_or_default().to_string());
    }
    assert_eq!(numbers.len(), N, "every event delivered");
    assert_eq!(versions, BTreeSet::from(["1".to_string(), "2".to_string()]));
    wait_for("the old instances stop", WAIT, || {
        before.iter().all(|pid| !alive(*pid))
    })
    .await;
    drop(fb);
}

/// The same contract through Node's `aws-lambda-ric` and a Rust `lambda_runtime` function.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_and_rust_runtime_clients_answer_too() {
    let code = Code::new();
    let port = free_port();
    let server = FnServer::start().await;
    let node_ric = cache().join("node-ric/node_modules/aws-lambda-ric/bin/index.mjs");
    assert!(
        node_ric.exists(),
        "{} is missing: run scripts/deps.sh",
        node_ric.display()
    );
    let rust = rust_fixture();
    let fb = Fnbroker::start(&yaml!(
        "connectors:\n  web: { http: { listen: 127.0.0.1:<port> } }\nfunctions:\n  node:\n    process: { command: [node, \"<ric>\", index.handler], protocol: lambda, directory: \"<dir>\" }\n  rust:\n    process: { command: [\"<rust>\"], protocol: lambda, handler: bootstrap }\n<replies>triggers:\n  - { name: n, from: { connector: web, topic: /node }, to: node, reply: { function: replies } }\n  - { name: r, from: { connector: web, topic: /rust }, to: rust, reply: { function: replies } }\n",
        port = port,
        ric = node_ric.display(),
        dir = code.path(),
        rust = rust.display(),
        replies = sink("replies", &server)
    ))
    .await;
    assert!(
        post(port, "/node", r#"{"from": "node"}"#)
            .await
            .is_success()
    );
    assert!(
        post(port, "/rust", r#"{"from": "rust"}"#)
            .await
            .is_success()
    );
    let replies = server.wait_count("/replies", 2, WAIT).await;
    let by_runtime: BTreeMap<String, serde_json::Value> = replies
        .iter()
        .map(|r| {
            let body = json(&r.body);
            (
                body["runtime"].as_str().unwrap_or_default().to_string(),
                body,
            )
        })
        .collect();
    let node = &by_runtime["aws-lambda-ric"];
    assert_eq!(node["data"], serde_json::json!({"from": "node"}));
    assert_eq!(node["function"], "node");
    let rust = &by_runtime["lambda_runtime"];
    assert_eq!(rust["event"]["data"], serde_json::json!({"from": "rust"}));
    assert_eq!(rust["function"], "rust");
    assert!(rust["request_id"].as_str().is_some_and(|id| !id.is_empty()));
    drop(fb);
}

/// The Rust Lambda function the workspace builds (`testkit`'s `lambda-echo`), beside the test
/// executable.
fn rust_fixture() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable");
    let path = exe
        .parent()
        .and_then(Path::parent)
        .expect("a test executable under <target>/<profile>/deps")
        .join("lambda-echo");
    assert!(
        path.exists(),
        "no lambda-echo at {}: `cargo nextest run --workspace` builds it (or `cargo build -p fnbroker-testkit`)",
        path.display()
    );
    path
}

/// `protocol: http`: the process listens on `$PORT`, is called as an `http` function, in
/// binary mode, once its `ready` path answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_function_on_its_port_is_called_as_the_http_kind_does() {
    let code = Code::new();
    let port = free_port();
    let server = FnServer::start().await;
    let fb = Fnbroker::start(&yaml!(
        "connectors:\n  web: { http: { listen: 127.0.0.1:<port> } }\nfunctions:\n  thumb:\n    process: { command: [python3, server.py], protocol: http, directory: \"<dir>\", ready: /healthz, path: /invoke, instances: { min: 1, max: 2 } }\n<replies>triggers:\n  - { name: t, from: { connector: web, topic: /in }, event: { type: com.example.upload }, to: thumb, reply: { function: replies } }\n",
        port = port,
        dir = code.path(),
        replies = sink("replies", &server)
    ))
    .await;
    for _ in 0..3 {
        assert!(
            post(port, "/in", r#"{"image": "cat.png"}"#)
                .await
                .is_success()
        );
    }
    let replies = server.wait_count("/replies", 3, WAIT).await;
    let first = json(&replies[0].body);
    assert_eq!(first["type"], "com.example.upload");
    assert_eq!(first["body"], r#"{"image": "cat.png"}"#);
    let pids: BTreeSet<String> = replies
        .iter()
        .map(|r| json(&r.body)["pid"].to_string())
        .collect();
    assert!(pids.len() <= 2, "{pids:?}");
    drop(fb);
}

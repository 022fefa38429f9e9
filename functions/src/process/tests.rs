//! The pool with real processes: a small Runtime API client and a small HTTP server, both in
//! Python's standard library (the end-to-end tests run the real runtime clients).

use std::collections::BTreeMap;
use std::path::Path;

use fnbroker_core::event::{PlainMessage, normalize};
use fnbroker_core::values::{ConfDuration, Loc};

use super::*;
use crate::kinds::process::InstanceRange;
use crate::{Reply, item_failures};

/// A Lambda runtime client: `MODE` says what it does with each call (`echo`: answers with the
/// event, its headers and its environment; `fail`: posts an error; `sleep`: sleeps 30 s on
/// the data `"slow"`;
/// `crash`: kills itself; `init-error`: reports an init error and exits).
const RUNTIME: &str = r#"
import json, os, sys, time, urllib.request
base = "http://" + os.environ["AWS_LAMBDA_RUNTIME_API"] + "/2018-06-01/runtime"
mode = os.environ.get("MODE", "echo")
def post(path, body, headers={}):
    req = urllib.request.Request(base + path, data=json.dumps(body).encode(), method="POST", headers=headers)
    urllib.request.urlopen(req).read()
if mode == "init-error":
    post("/init/error", {"errorType": "Runtime.ImportModuleError", "errorMessage": "No module named 'nothing'"})
    sys.exit(1)
with open(os.path.join(os.environ["PIDS"], str(os.getpid())), "w") as f:
    f.write("started")
while True:
    with urllib.request.urlopen(base + "/invocation/next") as r:
        rid = r.headers["Lambda-Runtime-Aws-Request-Id"]
        headers = {k.lower(): v for k, v in r.headers.items()}
        event = json.loads(r.read())
    if mode == "fail":
        post("/invocation/" + rid + "/error", {"errorType": "ValueError", "errorMessage": "bad input"},
             {"Lambda-Runtime-Function-Error-Type": "Unhandled"})
        continue
    if mode == "sleep" and event.get("data") == "slow":
        time.sleep(30)
    if mode == "crash":
        os.kill(os.getpid(), 9)
    names = ["AWS_LAMBDA_FUNCTION_NAME", "_HANDLER", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "SECRET", "EXTRA"]
    post("/invocation/" + rid + "/response", {"pid": os.getpid(), "event": event, "headers": headers,
         "env": {n: os.environ.get(n) for n in names}})
"#;

/// An HTTP function on `$PORT`: answers a POST with its body and pid, `/ready` with 200.
const SERVER: &str = r#"
import os, http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/ready" else 404); self.end_headers()
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        out = b'{"pid": %d, "path": "%s", "body": ' % (os.getpid(), self.path.encode()) + (body or b'null') + b'}'
        self.send_response(200); self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out))); self.end_headers(); self.wfile.write(out)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"#;

fn event(data: &str) -> Event {
    normalize(
        PlainMessage {
            kind: "http",
            connector: "web",
            topic: "/t",
            id: Some("id-1".into()),
            content_type: Some("application/json"),
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            ..Default::default()
        },
        data.as_bytes().to_vec(),
    )
}

struct Fixture {
    dir: tempfile::TempDir,
    tasks: TaskTracker,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("runtime.py"), RUNTIME).expect("runtime");
        std::fs::write(dir.path().join("server.py"), SERVER).expect("server");
        std::fs::create_dir(dir.path().join("pids")).expect("pids");
        Self {
            dir,
            tasks: TaskTracker::new(),
        }
    }

    fn settings(&self, protocol: Protocol, mode: &str, min: usize, max: usize) -> ProcessFunction {
        let script = match protocol {
            Protocol::Lambda => "runtime.py",
            Protocol::Http => "server.py",
        };
        let env = BTreeMap::from([
            ("MODE".to_string(), mode.to_string()),
            ("EXTRA".to_string(), "x".to_string()),
            (
                "PIDS".to_string(),
                self.dir.path().join("pids").display().to_string(),
            ),
        ]);
        ProcessFunction {
            command: Loc::new(vec!["python3".into(), script.into(), "app.handler".into()]),
            protocol,
            instances: InstanceRange { min, max },
            idle_timeout: ConfDuration::from_millis(300),
            concurrency: 1,
            env,
            inherit_env: vec![],
            directory: Some(Loc::new(self.dir.path().display().to_string())),
            init_timeout: ConfDuration::from_secs(10),
            init_failures: 2,
            grace_period: ConfDuration::from_secs(5),
            handler: None,
            memory_size: 256,
            path: None,
            ready: None,
            mode: None,
        }
    }

    fn start(&self, f: &ProcessFunction) -> ProcessInvoker {
        let mut extensions = http::Extensions::new();
        extensions.insert(self.tasks.clone());
        let context = InvokeContext {
            function: "resize".into(),
            concurrency: 8,
            admin_url: None,
            extensions,
        };
        ProcessInvoker::start(f, &context).expect("pool")
    }

    /// The pids of the instances started so far.
    fn pids(&self) -> Vec<i32> {
        pids_in(&self.dir.path().join("pids"))
    }
}

fn pids_in(dir: &Path) -> Vec<i32> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z'))
    })
}

fn json_reply(success: &Success) -> serde_json::Value {
    match &success.reply {
        Some(Reply::Raw { body, .. }) => serde_json::from_slice(body).expect("a JSON reply"),
        other => panic!("unexpected reply {other:?}"),
    }
}

/// Waits up to 10 s for `check` to hold.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(std::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_lambda_runtime_gets_the_event_with_the_runtime_api_headers_and_environment() {
    let fx = Fixture::new();
    let invoker = fx.start(&fx.settings(Protocol::Lambda, "echo", 1, 1));
    let before = SystemTime::now();
    let ok = invoker
        .invoke(&event(r#"{"n": 1}"#), Duration::from_secs(20))
        .await
        .expect("a reply");
    let reply = json_reply(&ok);
    assert_eq!(reply["event"]["data"], serde_json::json!({"n": 1}));
    assert_eq!(reply["event"]["id"], "id-1");
    let headers = &reply["headers"];
    assert_eq!(
        headers["lambda-runtime-trace-id"],
        "Root=1-4bf92f35-77b34da6a3ce929d0e0e4736;Parent=00f067aa0ba902b7;Sampled=1"
    );
    assert_eq!(
        headers["lambda-runtime-invoked-function-arn"],
        "arn:aws:lambda:local:000000000000:function:resize"
    );
    let deadline: u128 = headers["lambda-runtime-deadline-ms"]
        .as_str()
        .and_then(|d| d.parse().ok())
        .expect("a deadline");
    let since = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
    };
    assert!(deadline > since(before) + 15_000 && deadline <= since(SystemTime::now()) + 20_000);
    assert_eq!(
        reply["env"],
        serde_json::json!({
            "AWS_LAMBDA_FUNCTION_NAME": "resize", "_HANDLER": "app.handler",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "256", "SECRET": null, "EXTRA": "x"
        })
    );
    // The same warm process answers the next call.
    let again = json_reply(
        &invoker
            .invoke(&event("2"), Duration::from_secs(20))
            .await
            .expect("a reply"),
    );
    assert_eq!(again["pid"], reply["pid"]);
    assert_eq!(fx.pids().len(), 1);
}

#[tokio::test]
async fn a_batch_is_the_json_array_and_the_answer_may_name_failures() {
    let fx = Fixture::new();
    let invoker = fx.start(&fx.settings(Protocol::Lambda, "echo", 1, 1));
    let ok = invoker
        .invoke_batch(&[event("1"), event("2")], Duration::from_secs(20))
        .await
        .expect("a reply");
    let reply = json_reply(&ok);
    assert_eq!(reply["event"].as_array().map(Vec::len), Some(2));
    assert!(item_failures(ok.reply.as_ref()).is_ok_and(|f| f.is_none()));
}

#[tokio::test]
async fn an_error_response_fails_the_attempt_with_its_type_and_message() {
    let fx = Fixture::new();
    let invoker = fx.start(&fx.settings(Protocol::Lambda, "fail", 1, 1));
    let err = invoker
        .invoke(&event("1"), Duration::from_secs(20))
        .await
        .expect_err("the handler failed");
    assert!(
        matches!(&err, InvokeError::Function { message, retryable: true } if message == "ValueError: bad input"),
        "{err:?}"
    );
    assert!(!err.is_unavailable());
}

#[tokio::test]
async fn starts_that_fail_make_the_function_unavailable_with_the_init_error() {
    let fx = Fixture::new();
    let invoker = fx.start(&fx.settings(Protocol::Lambda, "init-error", 1, 2));
    eventually("two failed starts make the function unavailable", || {
        invoker.status().is_some_and(|s| s.unavailable.is_some())
    })
    .await;
    let status = invoker.status().expect("a status");
    assert_eq!(
        status.unavailable.as_deref(),
        Some("Runtime.ImportModuleError: No module named 'nothing'")
    );
    let err = invoker
        .invoke(&event("1"), Duration::from_secs(20))
        .await
        .expect_err("unavailable");
    assert!(err.is_unavailable(), "{err:?}");
    assert!(err.to_string().contains("No module named"), "{err}");
}

/// Before: the next call went to the instance being killed and failed with it.
#[tokio::test]
async fn a_call_past_its_timeout_kills_its_instance_and_the_next_call_gets_a_new_one() {
    let fx = Fixture::new();
    let invoker = fx.start(&fx.settings(Protocol::Lambda, "sleep", 1, 1));
    let err = invoker
        .invoke(&event(r#""slow""#), Duration::from_millis(1500))
        .await
        .expect_err("timeout");
    assert!(err.is_timeout(), "{err:?}");
    let first = fx.pids();
    assert_eq!(first.len(), 1);
    let ok = invoker
        .invoke(&event(r#""fast""#), Duration::from_secs(20))
        .await
        .expect("the next call is answered by a new instance");
    assert_ne!(json_reply(&ok)["pid"].as_i64(), Some(i64::from(first[0])));
    eventually("the instance is killed", || !alive(first[0])).await;
    assert_eq!(fx.pids().len(), 2);
}

#[tokio::test]
async fn an_instance_that_dies_mid_call_fails_the_attempt_and_is_replaced() {
    let fx = Fixture::new();
    let invoker = fx.start(&fx.settings(Protocol::Lambda, "crash", 1, 1));
    let err = invoker
        .invoke(&event("1"), Duration::from_secs(20))
        .await
        .expect_err("the instance died");
    assert!(err.is_retryable() && !err.is_unavailable(), "{err:?}");
    assert!(
        err.to_string()
            .contains("instance 0 ended during the call: killed by SIGKILL"),
        "{err}"
    );
    eventually("another instance starts", || fx.pids().len() == 2).await;
}

#[tokio::test]
async fn the_pool_scales_from_zero_to_max_and_back() {
    let fx = Fixture::new();
    let mut settings = fx.settings(Protocol::Http, "", 0, 3);
    settings.ready = Some("/ready".into());
    settings.path = Some("/fn".into());
    let invoker = Arc::new(fx.start(&settings));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        invoker.status().map(|s| s.instances),
        Some(Instances::default())
    );
    let calls: Vec<_> = (0..6)
        .map(|i| {
            let invoker = Arc::clone(&invoker);
            tokio::spawn(async move {
                invoker
                    .invoke(&event(&i.to_string()), Duration::from_secs(20))
                    .await
            })
        })
        .collect();
    let mut pids = std::collections::BTreeSet::new();
    for call in calls {
        let ok = call.await.expect("joined").expect("a reply");
        let reply = json_reply(&ok);
        assert_eq!(reply["path"], "/fn");
        pids.insert(reply["pid"].as_i64());
    }
    assert!(pids.len() <= 3, "{pids:?}");
    assert!(invoker.status().is_some_and(|s| s.instances.idle >= 1));
    eventually("idle instances stop", || {
        invoker.status().map(|s| s.instances) == Some(Instances::default())
    })
    .await;
}

#[tokio::test]
async fn dropping_the_invoker_stops_every_instance() {
    let fx = Fixture::new();
    let invoker = fx.start(&fx.settings(Protocol::Lambda, "echo", 2, 2));
    eventually("two instances start", || {
        invoker.status().is_some_and(|s| s.instances.idle == 2)
    })
    .await;
    let pids = fx.pids();
    drop(invoker);
    fx.tasks.close();
    tokio::time::timeout(Duration::from_secs(10), fx.tasks.wait())
        .await
        .expect("the instances stop within their grace period");
    for pid in pids {
        assert!(!alive(pid), "{pid} outlived its pool");
    }
}

#[test]
fn starts_back_off_up_to_thirty_seconds() {
    assert_eq!(backoff(1), Duration::from_millis(100));
    assert_eq!(backoff(2), Duration::from_millis(200));
    assert_eq!(backoff(5), Duration::from_millis(1600));
    assert_eq!(backoff(40), Duration::from_secs(30));
}

use std::time::SystemTime;

/// Before: a ready instance that exited by itself was replaced at once, every time; one that
/// exits soon after each start would be restarted in a tight loop.
#[tokio::test(start_paused = true)]
async fn crashes_in_a_row_back_off_the_replacement() {
    let fx = Fixture::new();
    let invoker = fx.start(&fx.settings(Protocol::Lambda, "echo", 0, 1));
    let pool = &invoker.pool;
    let delay = |pool: &Pool| {
        pool.state()
            .not_before
            .map(|t| t.saturating_duration_since(Instant::now()))
    };
    let soon = Some(Duration::from_millis(50));
    pool.ended(7, 0, soon, Ended::Failed, "exit code 3");
    assert_eq!(delay(pool), Some(Duration::from_millis(100)));
    pool.ended(8, 0, soon, Ended::Failed, "exit code 3");
    assert_eq!(delay(pool), Some(Duration::from_millis(200)));
    // One that ran a while starts the count again.
    pool.ended(9, 0, Some(STABLE * 2), Ended::Failed, "exit code 3");
    assert_eq!(delay(pool), Some(Duration::from_millis(100)));
    // Crashes never make the function unavailable; failed starts do.
    assert!(invoker.status().is_some_and(|s| s.unavailable.is_none()));
}

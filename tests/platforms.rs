//! End-to-end: the function platforms' kinds, each against a local server that implements the
//! platform's documented API (none of the platforms can run here: they need containers or
//! Kubernetes), with events from the machine's NATS server. The sources of each fake are named
//! at its test.

use crate::common;

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::nats::{self, SHARED_URL};
use common::{Answer, FnServer, Fnbroker, free_port, wait_for};

const WAIT: Duration = Duration::from_secs(30);

fn uid() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// A configuration with the shared NATS server as `bus`, the given functions, and one trigger
/// per `(subject, function)` with replies to `<subject>.reply` and dead letters to
/// `<subject>.dlq` (after `retries` retries).
fn config(functions: &str, routes: &[(&str, &str)], retries: u32) -> String {
    let mut triggers = String::new();
    for (i, (subject, function)) in routes.iter().enumerate() {
        triggers.push_str(&yaml!("  - { name: t<i>, from: { connector: bus, topic: \"<subject>\" }, to: <function>, delivery: { retries: <retries>, delay: 10ms }, reply: { connector: bus, topic: \"<subject>.reply\" }, dead_letter: { connector: bus, topic: \"<subject>.dlq\" } }\n", i = i, subject = subject, function = function, retries = retries));
    }
    yaml!(
        "connectors:\n  bus: { nats: { url: \"<SHARED_URL>\" } }\nfunctions:\n<functions>triggers:\n<triggers>",
        SHARED_URL = SHARED_URL,
        functions = functions,
        triggers = triggers
    )
}

/// Publishes a plain message; a JSON object is sent with `Content-Type: application/json`.
async fn publish(subject: &str, body: &[u8]) {
    let mut headers = async_nats::HeaderMap::new();
    if body.starts_with(b"{") {
        headers.insert("Content-Type", "application/json");
    }
    nats::publish(
        SHARED_URL,
        vec![(subject.to_string(), headers, body.to_vec())],
    )
    .await;
}

/// Knative (binary mode to the service's URL; a binary-mode CloudEvent answer is the reply, as
/// Knative Serving's event contract has it), Fission (the router's `UrlForFunction` paths), Fn
/// (`POST /invoke/{fnID}`, fnproject/fn's `api/server/server.go` routes) and OpenFaaS's
/// synchronous path (`/function/{name}.{namespace}`, basic authentication, `X-Topic` as the
/// connector-sdk's `controller.go` sends it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn knative_fission_fn_and_openfaas_are_called_at_their_platforms_paths() {
    let root = format!("pl{}", uid());
    let server = FnServer::with(|path, _| match path {
        "/greeter" => Answer::ok()
            .header("ce-specversion", "1.0")
            .header("ce-id", "r-1")
            .header("ce-source", "/greeter")
            .header("ce-type", "com.example.greeting")
            .body("text/plain", b"hello back"),
        _ => Answer::ok().body("text/plain", b"done"),
    })
    .await;
    let base = server.url("");
    let functions = yaml!(
        "  kn: { knative: { url: \"<base>/greeter\" } }\n  fi: { fission: { router: \"<base>\", name: hello, namespace: fission-fn } }\n  fi0: { fission: { router: \"<base>\", name: hello0, namespace: default } }\n  fnp: { fn: { endpoint: \"<base>\", id: 01JEXAMPLE } }\n  of: { openfaas: { gateway: \"<base>\", name: resize, namespace: openfaas-fn, username: admin, password: s3cret } }\n",
        base = base
    );
    let subjects: Vec<String> = ["kn", "fi", "fi0", "fnp", "of"]
        .iter()
        .map(|f| format!("{root}.{f}"))
        .collect();
    let routes: Vec<(&str, &str)> = subjects
        .iter()
        .zip(["kn", "fi", "fi0", "fnp", "of"])
        .map(|(s, f)| (s.as_str(), f))
        .collect();
    let replies = nats::subscribe(SHARED_URL, &format!("{root}.*.reply")).await;
    let fb = Fnbroker::start(&config(&functions, &routes, 0)).await;
    for s in &subjects {
        publish(s, b"{\"n\":1}").await;
    }

    let kn = server.wait_count("/greeter", 1, WAIT).await;
    assert_eq!(kn[0].header("ce-specversion"), Some("1.0"));
    assert_eq!(kn[0].header("ce-subject"), Some(subjects[0].as_str()));
    assert_eq!(&kn[0].body[..], b"{\"n\":1}");

    let fi = server
        .wait_count("/fission-function/fission-fn/hello", 1, WAIT)
        .await;
    assert_eq!(fi[0].header("ce-type"), Some("fnbroker.nats.message"));
    server.wait_count("/fission-function/hello0", 1, WAIT).await;

    let fnp = server.wait_count("/invoke/01JEXAMPLE", 1, WAIT).await;
    assert_eq!(fnp[0].header("fn-invoke-type"), Some("sync"));
    assert!(fnp[0].header("ce-id").is_some());

    let of = server
        .wait_count("/function/resize.openfaas-fn", 1, WAIT)
        .await;
    // admin:s3cret
    assert_eq!(
        of[0].header("authorization"),
        Some("Basic YWRtaW46czNjcmV0")
    );
    assert_eq!(of[0].header("x-topic"), Some(subjects[4].as_str()));
    assert_eq!(of[0].header("content-type"), Some("application/json"));
    assert_eq!(&of[0].body[..], b"{\"n\":1}");

    // Every function's answer came back as a reply; Knative's as the CloudEvent it was.
    wait_for("five replies", WAIT, || {
        replies.lock().expect("lock").len() >= 5
    })
    .await;
    let got = replies.lock().expect("lock").clone();
    let greeting = got
        .iter()
        .find(|(h, _)| h.get("ce-type").map(|v| v.as_str()) == Some("com.example.greeting"))
        .expect("the Knative service's CloudEvent is the reply");
    assert_eq!(greeting.1, b"hello back");
    drop(fb);
}

/// OpenWhisk, after apache/openwhisk's `docs/rest_api.md` and the controller's
/// `apiv1swagger.json`: a blocking invocation with `result=true` answers the result (200), or 202
/// with an `activationId` when the blocking wait ran out (then `GET .../activations/{id}` answers
/// 404 until the record exists), or 502 with `{"error": ...}` for an application error, which is
/// final: dead-lettered without a retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openwhisk_results_polled_activations_and_application_errors() {
    let root = format!("ow{}", uid());
    let ns = "/api/v1/namespaces/guest";
    let server = FnServer::with(move |path, n| {
        match path {
            p if p == format!("{ns}/actions/tools/fast") => {
                Answer::ok().body("application/json", b"{\"greeting\":\"hi\"}")
            }
            p if p == format!("{ns}/actions/slow") => {
                Answer::status(202).body("application/json", b"{\"activationId\":\"a1b2\"}")
            }
            p if p == format!("{ns}/activations/a1b2") && n < 2 => Answer::status(404)
                .body("application/json", b"{\"error\":\"The requested resource does not exist.\"}"),
            p if p == format!("{ns}/activations/a1b2") => Answer::ok().body(
                "application/json",
                b"{\"activationId\":\"a1b2\",\"response\":{\"status\":\"success\",\"statusCode\":0,\"success\":true,\"result\":{\"late\":true}}}",
            ),
            p if p == format!("{ns}/actions/broken") => Answer::status(502)
                .body("application/json", b"{\"error\":\"the action threw: bad input\"}"),
            _ => Answer::status(404),
        }
    })
    .await;
    let base = server.url("");
    let auth = "23bc46b1-71f6-4ed5-8c54-816aa4f8c502:123zO3xZCLrMN6v2BKK1dXYFpXlPkccOFqm12CdAsMgRU4VrNZ9lyGVCGuMDGIwP";
    let functions = yaml!(
        "  fast: { openwhisk: { api: \"<base>\", namespace: guest, action: tools/fast, auth: \"<auth>\" } }\n  slow: { openwhisk: { api: \"<base>\", namespace: guest, action: slow, auth: \"<auth>\" } }\n  broken: { openwhisk: { api: \"<base>\", namespace: guest, action: broken, auth: \"<auth>\" } }\n",
        base = base,
        auth = auth
    );
    let (fast, slow, broken) = (
        format!("{root}.fast"),
        format!("{root}.slow"),
        format!("{root}.broken"),
    );
    let replies = nats::subscribe(SHARED_URL, &format!("{root}.*.reply")).await;
    let dlq = nats::subscribe(SHARED_URL, &format!("{broken}.dlq")).await;
    let fb = Fnbroker::start(&config(
        &functions,
        &[(&fast, "fast"), (&slow, "slow"), (&broken, "broken")],
        3,
    ))
    .await;
    publish(&fast, b"{\"name\":\"ada\"}").await;
    publish(&slow, b"plain text").await;
    publish(&broken, b"{}").await;

    let call = server
        .wait_count(&format!("{ns}/actions/tools/fast"), 1, WAIT)
        .await;
    assert_eq!(
        call[0].header("authorization"),
        Some(format!("Basic {}", b64(auth)).as_str())
    );
    let params: serde_json::Value = serde_json::from_slice(&call[0].body).expect("JSON");
    assert_eq!(
        params["name"], "ada",
        "the data's members are the parameters"
    );
    assert_eq!(params["__ce"]["subject"], fast.as_str());
    assert_eq!(params["__ce"]["specversion"], "1.0");

    let slow_call = server
        .wait_count(&format!("{ns}/actions/slow"), 1, WAIT)
        .await;
    let params: serde_json::Value = serde_json::from_slice(&slow_call[0].body).expect("JSON");
    assert_eq!(params["data"], "plain text");
    server
        .wait_count(&format!("{ns}/activations/a1b2"), 3, WAIT)
        .await;

    wait_for("two replies", WAIT, || {
        replies.lock().expect("lock").len() >= 2
    })
    .await;
    let bodies: Vec<Vec<u8>> = replies
        .lock()
        .expect("lock")
        .iter()
        .map(|(_, b)| b.clone())
        .collect();
    assert!(
        bodies.contains(&b"{\"greeting\":\"hi\"}".to_vec()),
        "{bodies:?}"
    );
    assert!(bodies.contains(&b"{\"late\":true}".to_vec()), "{bodies:?}");

    wait_for("the dead letter", WAIT, || {
        !dlq.lock().expect("lock").is_empty()
    })
    .await;
    assert_eq!(
        server.count(&format!("{ns}/actions/broken")),
        1,
        "an application error is not retried"
    );
    let (h, _) = dlq.lock().expect("lock")[0].clone();
    let reason = h.get("ce-dlqreason").map(|v| v.as_str().to_string());
    assert!(
        reason.as_deref().is_some_and(|r| r.contains("bad input")),
        "the reason names the action's error: {reason:?}"
    );
    drop(fb);
}

fn b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// The Lambda Invoke API stand-in (tests/platforms/lambda_invoke.py), which verifies SigV4 with
/// botocore; killed on drop. Its stdout lines are the requests it accepted.
struct LambdaApi {
    port: u16,
    child: Child,
    accepted: Arc<Mutex<Vec<serde_json::Value>>>,
}

const KEY_ID: &str = "AKIDEXAMPLE";
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

impl LambdaApi {
    async fn start() -> Self {
        let python = std::env::var("HOME")
            .map(|h| format!("{h}/.cache/fnbroker/venv/bin/python3"))
            .expect("HOME");
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/platforms/lambda_invoke.py"
        );
        let port = free_port();
        let mut child = Command::new(&python)
            .args([script, &port.to_string(), KEY_ID, SECRET])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run {python} (scripts/deps.sh installs botocore there): {e}")
            });
        let stdout = child.stdout.take().expect("stdout");
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&accepted);
        std::thread::spawn(move || {
            use std::io::BufRead as _;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if let Ok(v) = serde_json::from_str(&line) {
                    sink.lock().expect("lock").push(v);
                }
            }
        });
        wait_for("the Lambda API stand-in to listen", WAIT, || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        })
        .await;
        Self {
            port,
            child,
            accepted,
        }
    }

    fn accepted(&self) -> Vec<serde_json::Value> {
        self.accepted.lock().expect("lock").clone()
    }
}

impl Drop for LambdaApi {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Lambda: a synchronous invocation whose result is the reply, an asynchronous one (`Event`),
/// a function error (`X-Amz-Function-Error`: retried, then dead-lettered), and a wrong secret,
/// which the signature check refuses (403: dead-lettered without a retry). Credentials come from
/// the standard environment variables and, for the wrong one, from a profile of a shared
/// credentials file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lambda_invocations_are_signed_with_sigv4_and_a_wrong_secret_is_refused() {
    let api = LambdaApi::start().await;
    let root = format!("la{}", uid());
    let endpoint = format!("http://127.0.0.1:{}", api.port);
    let dir = tempfile::tempdir().expect("tempdir");
    let credentials = dir.path().join("credentials");
    std::fs::write(
        &credentials,
        format!("[default]\naws_access_key_id = {KEY_ID}\naws_secret_access_key = {SECRET}\n\n[stale]\naws_access_key_id = {KEY_ID}\naws_secret_access_key = not-the-secret\n"),
    )
    .expect("write");
    let functions = yaml!(
        "  sync: { lambda: { function: my-func, region: eu-west-1, qualifier: live, endpoint: \"<endpoint>\" } }\n  later: { lambda: { function: \"arn:aws:lambda:eu-west-1:123456789012:function:later\", region: eu-west-1, invocation: async, endpoint: \"<endpoint>\" } }\n  fails: { lambda: { function: fails, region: eu-west-1, endpoint: \"<endpoint>\" } }\n  stale: { lambda: { function: my-func, region: eu-west-1, endpoint: \"<endpoint>\", profile: stale } }\n",
        endpoint = endpoint
    );
    let subjects: Vec<String> = ["sync", "later", "fails", "stale"]
        .iter()
        .map(|s| format!("{root}.{s}"))
        .collect();
    let routes: Vec<(&str, &str)> = subjects
        .iter()
        .zip(["sync", "later", "fails", "stale"])
        .map(|(s, f)| (s.as_str(), f))
        .collect();
    let replies = nats::subscribe(SHARED_URL, &format!("{root}.sync.reply")).await;
    let dlq = nats::subscribe(SHARED_URL, &format!("{root}.*.dlq")).await;
    let credentials = credentials.display().to_string();
    let fb = Fnbroker::start_env(
        &config(&functions, &routes, 1),
        &[("AWS_SHARED_CREDENTIALS_FILE", credentials.as_str())],
    )
    .await;
    for s in &subjects {
        publish(s, b"{\"celsius\":31}").await;
    }

    wait_for("the synchronous reply", WAIT, || {
        !replies.lock().expect("lock").is_empty()
    })
    .await;
    let (_, body) = replies.lock().expect("lock")[0].clone();
    let reply: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(
        reply["data"]["celsius"], 31,
        "the payload was the structured event: {reply}"
    );

    wait_for("two dead letters", WAIT, || {
        dlq.lock().expect("lock").len() >= 2
    })
    .await;
    // The stand-in prints a request before it answers; its stdout is read by a thread.
    let deadline = tokio::time::Instant::now() + WAIT;
    while api.accepted().len() < 4 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stand-in accepted {:?}",
            api.accepted()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let accepted = api.accepted();
    let sync = accepted
        .iter()
        .find(|r| r["function"] == "my-func")
        .expect("the synchronous call");
    assert_eq!(sync["query"], "Qualifier=live");
    assert_eq!(sync["type"], "RequestResponse");
    assert_eq!(sync["region"], "eu-west-1");
    assert_eq!(sync["content_type"], "application/cloudevents+json");
    assert_eq!(sync["event"]["subject"], subjects[0].as_str());
    let later = accepted
        .iter()
        .find(|r| r["function"] == "arn:aws:lambda:eu-west-1:123456789012:function:later")
        .expect("the asynchronous call, to the ARN");
    assert_eq!(later["type"], "Event");
    assert_eq!(
        accepted.iter().filter(|r| r["function"] == "fails").count(),
        2,
        "a function error is retried (retries: 1)"
    );
    assert_eq!(
        accepted
            .iter()
            .filter(|r| r["function"] == "my-func")
            .count(),
        1,
        "the wrong secret's requests were refused, not accepted"
    );
    let reasons: Vec<(String, String)> = dlq
        .lock()
        .expect("lock")
        .iter()
        .map(|(h, _)| {
            let get = |k: &str| h.get(k).map(|v| v.as_str().to_string()).unwrap_or_default();
            (get("ce-subject"), get("ce-dlqreason"))
        })
        .collect();
    let reason_of = |subject: &str| {
        reasons
            .iter()
            .find(|(s, _)| s == subject)
            .map(|(_, r)| r.clone())
            .unwrap_or_else(|| panic!("no dead letter of {subject}: {reasons:?}"))
    };
    assert!(reason_of(&subjects[2]).contains("Unhandled"), "{reasons:?}");
    assert!(
        reason_of(&subjects[3]).contains("403") && reason_of(&subjects[3]).contains("signature"),
        "{reasons:?}"
    );
    drop(fb);
}

/// Serves a fake platform on a free port; its base URL.
async fn serve(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    url
}

/// One request the fake OpenFaaS gateway received on `/async-function/`.
#[derive(Debug, Clone)]
struct Queued {
    function: String,
    call_id: String,
    callback_url: String,
    topic: Option<String>,
    body: Vec<u8>,
}

/// A fake OpenFaaS gateway's asynchronous path, after openfaas/faas `gateway/README.md`
/// ("Asynchronous functions") and the queue worker's `postResult`: `POST /async-function/{name}`
/// answers 202 with the call's `X-Call-Id` (the one it was given; for `renamer` a new one, as a
/// gateway that assigns its own would), then posts the function's answer to `X-Callback-Url` with
/// `X-Call-Id`, `X-Function-Status`, `X-Function-Name` and the function's headers. `flaky` fails
/// (500) on its first call.
async fn fake_async_gateway() -> (String, Arc<Mutex<Vec<Queued>>>) {
    use axum::extract::{Path, State};
    use axum::http::{HeaderMap, StatusCode};
    let queued: Arc<Mutex<Vec<Queued>>> = Arc::default();
    let app = axum::Router::new()
        .route(
            "/async-function/{name}",
            axum::routing::post(
                |State(queued): State<Arc<Mutex<Vec<Queued>>>>,
                 Path(name): Path<String>,
                 headers: HeaderMap,
                 body: axum::body::Bytes| async move {
                    let get = |k: &str| {
                        headers
                            .get(k)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_string)
                    };
                    let mut call_id = get("x-call-id").unwrap_or_default();
                    if name.starts_with("renamer") {
                        call_id = uuid::Uuid::new_v4().to_string();
                    }
                    let callback_url = get("x-callback-url").unwrap_or_default();
                    let attempt = {
                        let mut q = queued.lock().expect("lock");
                        q.push(Queued {
                            function: name.clone(),
                            call_id: call_id.clone(),
                            callback_url: callback_url.clone(),
                            topic: get("x-topic"),
                            body: body.to_vec(),
                        });
                        q.iter().filter(|c| c.function == name).count()
                    };
                    let status = if name.starts_with("flaky") && attempt == 1 {
                        "500"
                    } else {
                        "200"
                    };
                    let id = call_id.clone();
                    tokio::spawn(async move {
                        let _ = reqwest::Client::new()
                            .post(&callback_url)
                            .header("X-Call-Id", id)
                            .header("X-Function-Status", status)
                            .header("X-Function-Name", name)
                            .header("X-Duration-Seconds", "0.010000")
                            .header("Content-Type", "text/plain")
                            .body(format!("done: {}", String::from_utf8_lossy(&body)))
                            .send()
                            .await;
                    });
                    (StatusCode::ACCEPTED, [("X-Call-Id", call_id)])
                },
            ),
        )
        .with_state(Arc::clone(&queued));
    (serve(app).await, queued)
}

/// OpenFaaS asynchronous invocation: the gateway queues the call, the queue worker posts the
/// answer to fnbroker's callback (on the admin listener, by default), which becomes the reply; a
/// failed answer is retried; a gateway that names the call anew is followed; a callback with a
/// wrong secret is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openfaas_async_results_arrive_through_the_callback() {
    let (gateway, queued) = fake_async_gateway().await;
    let root = format!("oa{}", uid());
    let functions = ["echo", "flaky", "renamer"]
        .iter()
        .map(|f| {
            yaml!("  <f>: { openfaas: { gateway: \"<gateway>\", name: <f>, namespace: openfaas-fn, async: true }, timeout: 10s }\n", f = f, gateway = gateway)
        })
        .collect::<String>();
    let subjects: Vec<String> = ["echo", "flaky", "renamer"]
        .iter()
        .map(|f| format!("{root}.{f}"))
        .collect();
    let routes: Vec<(&str, &str)> = subjects
        .iter()
        .zip(["echo", "flaky", "renamer"])
        .map(|(s, f)| (s.as_str(), f))
        .collect();
    let replies = nats::subscribe(SHARED_URL, &format!("{root}.*.reply")).await;
    let fb = Fnbroker::start(&config(&functions, &routes, 2)).await;
    for (s, f) in &routes {
        publish(s, f.as_bytes()).await;
    }
    wait_for("three replies", WAIT, || {
        replies.lock().expect("lock").len() >= 3
    })
    .await;
    let mut bodies: Vec<String> = replies
        .lock()
        .expect("lock")
        .iter()
        .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
        .collect();
    bodies.sort();
    assert_eq!(bodies, ["done: echo", "done: flaky", "done: renamer"]);

    let calls = queued.lock().expect("lock").clone();
    let of = |f: &str| {
        calls
            .iter()
            .filter(|c| c.function == format!("{f}.openfaas-fn"))
            .count()
    };
    assert_eq!(
        (of("echo"), of("flaky"), of("renamer")),
        (1, 2, 1),
        "{calls:?}"
    );
    let echo = calls
        .iter()
        .find(|c| c.function.starts_with("echo"))
        .expect("echo");
    assert_eq!(echo.topic.as_deref(), Some(subjects[0].as_str()));
    assert_eq!(echo.body, b"echo");
    let admin = format!("http://127.0.0.1:{}/v1/callbacks/openfaas/", fb.admin);
    assert!(echo.callback_url.starts_with(&admin), "{echo:?}");

    // A late duplicate is taken and goes nowhere; a guessed secret is refused.
    let client = reqwest::Client::new();
    let post = |url: String, call_id: &str| {
        client
            .post(url)
            .header("X-Call-Id", call_id)
            .header("X-Function-Status", "200")
            .body("forged")
    };
    let late = post(echo.callback_url.clone(), &echo.call_id)
        .send()
        .await
        .expect("post");
    assert_eq!(late.status(), 202);
    let forged = post(format!("{admin}guess"), &echo.call_id)
        .send()
        .await
        .expect("post");
    assert_eq!(forged.status(), 404);
    let anonymous = client
        .post(echo.callback_url.clone())
        .send()
        .await
        .expect("post");
    assert_eq!(anonymous.status(), 400, "a callback without X-Call-Id");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        replies.lock().expect("lock").len(),
        3,
        "no reply from a callback without a call"
    );
    drop(fb);
}

/// A fake OpenFaaS gateway for discovery, after the gateway's API (`GET /system/functions`:
/// the `FunctionStatus` list with `name`, `image`, `namespace`, `replicas`, `annotations`,
/// `labels`; basic authentication as the gateway's `basic_auth` plugin requires) with
/// `/function/{name}` served by `server`'s behaviour: the list can be changed while it runs.
async fn fake_gateway(list: Arc<Mutex<serde_json::Value>>, functions: String) -> String {
    use axum::http::{HeaderMap, StatusCode};
    let app = axum::Router::new()
        .route(
            "/system/namespaces",
            axum::routing::get(|| async { "[\"openfaas-fn\"]" }),
        )
        .route(
            "/system/functions",
            axum::routing::get(move |headers: HeaderMap| {
                let list = Arc::clone(&list);
                async move {
                    // admin:s3cret
                    if headers.get("authorization").and_then(|v| v.to_str().ok())
                        != Some("Basic YWRtaW46czNjcmV0")
                    {
                        return (StatusCode::UNAUTHORIZED, String::new());
                    }
                    (StatusCode::OK, list.lock().expect("lock").to_string())
                }
            }),
        )
        .fallback(move |request: axum::extract::Request| {
            // Invocations go to the function server, as the gateway proxies them.
            let target = format!("{functions}{}", request.uri().path());
            async move {
                let headers = request.headers().clone();
                let body = axum::body::to_bytes(request.into_body(), 1 << 20)
                    .await
                    .unwrap_or_default();
                let answer = reqwest::Client::new()
                    .post(target)
                    .headers(headers)
                    .body(body)
                    .send()
                    .await;
                match answer {
                    Ok(a) => (
                        StatusCode::from_u16(a.status().as_u16())
                            .unwrap_or(StatusCode::BAD_GATEWAY),
                        a.bytes().await.unwrap_or_default(),
                    ),
                    Err(_) => (StatusCode::BAD_GATEWAY, axum::body::Bytes::new()),
                }
            }
        });
    serve(app).await
}

fn function_status(name: &str, topics: Option<&str>) -> serde_json::Value {
    let mut annotations = serde_json::json!({ "prometheus.io.scrape": "false" });
    if let Some(t) = topics {
        annotations["topic"] = t.into();
    }
    serde_json::json!({
        "name": name, "image": format!("ghcr.io/example/{name}:0.1"), "namespace": "openfaas-fn",
        "replicas": 1, "availableReplicas": 1, "invocationCount": 0,
        "annotations": annotations, "labels": { "faas_function": name },
    })
}

/// Discovery, the drop-in for the OpenFaaS connectors: functions annotated with NATS subjects get
/// their messages; a function removed (with deliveries in flight) and one added while messages
/// flow: each message reaches exactly the functions annotated at the time, none is lost, the
/// removed function's in-flight deliveries finish, and `/v1/triggers` follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_follows_the_gateways_annotations_without_losing_a_message() {
    let root = format!("dc{}", uid());
    let (t1, t2) = (format!("{root}.one"), format!("{root}.two"));
    // `a` is slow, so that it has deliveries in flight when it is removed.
    let server = FnServer::with(|path, _| {
        let answer = Answer::ok();
        if path.starts_with("/function/a.") {
            answer.delay(Duration::from_secs(2))
        } else {
            answer
        }
    })
    .await;
    let list = Arc::new(Mutex::new(serde_json::json!([
        function_status("a", Some(&t1)),
        function_status("b", Some(&format!("{t1}, {t2}"))),
        function_status("unannotated", None),
    ])));
    let gateway = fake_gateway(Arc::clone(&list), server.url("")).await;
    let fb = Fnbroker::start(&yaml!("connectors:\n  bus: { nats: { url: \"<SHARED_URL>\" } }\ndiscover:\n  - openfaas: { gateway: \"<gateway>\", username: admin, password: s3cret, namespaces: [openfaas-fn], connector: bus, refresh: 1s, delivery: { retries: 2, delay: 10ms } }\n", SHARED_URL = SHARED_URL, gateway = gateway))
    .await;
    let triggers = |fb: &Fnbroker| {
        let url = format!("http://127.0.0.1:{}/v1/triggers", fb.admin);
        async move {
            let text = reqwest::get(url)
                .await
                .expect("get")
                .text()
                .await
                .expect("body");
            let v: serde_json::Value = serde_json::from_str(&text).expect("json");
            let mut names: Vec<String> = v
                .as_array()
                .expect("array")
                .iter()
                .map(|t| t["name"].as_str().unwrap_or_default().to_string())
                .collect();
            names.sort();
            names
        }
    };
    let first = vec![
        format!("openfaas:a.openfaas-fn:{t1}"),
        format!("openfaas:b.openfaas-fn:{t1}"),
        format!("openfaas:b.openfaas-fn:{t2}"),
    ];
    let deadline = tokio::time::Instant::now() + WAIT;
    let listed = |want: Vec<String>| {
        let triggers = &triggers;
        let fb = &fb;
        async move {
            while triggers(fb).await != want {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "discovered: {:?}",
                    triggers(fb).await
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    listed(first).await;

    // Phase 1: 20 messages on each subject.
    let publish_n = |subject: String, from: usize, n: usize| async move {
        for i in from..from + n {
            publish(&subject, format!("{i}").as_bytes()).await;
        }
    };
    publish_n(t1.clone(), 0, 20).await;
    publish_n(t2.clone(), 0, 20).await;
    server.wait_count("/function/a.openfaas-fn", 20, WAIT).await;
    server.wait_count("/function/b.openfaas-fn", 40, WAIT).await;

    // `a` goes (its last answers still on their way), `c` comes on t2; messages keep flowing on
    // t2 meanwhile, for `b`.
    *list.lock().expect("lock") = serde_json::json!([
        function_status("b", Some(&format!("{t1},{t2}"))),
        function_status("c", Some(&t2)),
    ]);
    let flowing = tokio::spawn(publish_n(t2.clone(), 20, 30));
    let second = vec![
        format!("openfaas:b.openfaas-fn:{t1}"),
        format!("openfaas:b.openfaas-fn:{t2}"),
        format!("openfaas:c.openfaas-fn:{t2}"),
    ];
    listed(second).await;
    flowing.await.expect("publisher");

    // Phase 2: with `c` running.
    publish_n(t1.clone(), 100, 10).await;
    publish_n(t2.clone(), 100, 10).await;
    server
        .wait_count("/function/b.openfaas-fn", 40 + 30 + 20, WAIT)
        .await;
    server.wait_count("/function/c.openfaas-fn", 10, WAIT).await;

    let bodies = |path: &str| -> Vec<String> {
        let mut v: Vec<String> = server
            .on(path)
            .iter()
            .map(|r| {
                format!(
                    "{}:{}",
                    r.header("x-topic").unwrap_or("?"),
                    String::from_utf8_lossy(&r.body)
                )
            })
            .collect();
        v.sort();
        v
    };
    let expect = |subject: &str, range: std::ops::Range<usize>| {
        range.map(|i| format!("{subject}:{i}")).collect::<Vec<_>>()
    };
    // `a`: exactly phase 1, each once, and every one of them finished (delivered) though `a`
    // was removed while they were in flight.
    let mut a_want = expect(&t1, 0..20);
    a_want.sort();
    assert_eq!(bodies("/function/a.openfaas-fn"), a_want);
    // The last of them (2 s each) may still be finishing in the background: `a`'s drain goes
    // on beside the other triggers.
    let delivered_a = || async {
        fb.metrics()
            .await
            .lines()
            .find(|l| {
                l.starts_with("fnbroker_events_delivered_total")
                    && l.contains("trigger=\"openfaas:a.openfaas-fn")
            })
            .unwrap_or_default()
            .to_string()
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    while !delivered_a().await.ends_with(" 20") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}",
            delivered_a().await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let logs = fb.logs();
    assert!(
        logs.contains("discovered trigger stopping")
            && logs.contains("waiting for in-flight deliveries"),
        "`a` was removed with deliveries in flight, which finished"
    );
    // `b`: everything, each once (none lost while the others changed).
    let mut b_want: Vec<String> = expect(&t1, 0..20)
        .into_iter()
        .chain(expect(&t2, 0..50))
        .chain(expect(&t1, 100..110))
        .chain(expect(&t2, 100..110))
        .collect();
    b_want.sort();
    assert_eq!(bodies("/function/b.openfaas-fn"), b_want);
    // `c`: none of phase 1; every message of phase 2. (Of the 30 sent while it was being
    // discovered, it gets those published after its subscription opened: core NATS keeps
    // nothing for a subscriber that is not there yet.)
    let c = bodies("/function/c.openfaas-fn");
    let phase2: Vec<String> = expect(&t2, 100..110);
    assert!(phase2.iter().all(|m| c.contains(m)), "{c:?}");
    assert!(c.iter().all(|m| !expect(&t2, 0..20).contains(m)), "{c:?}");
    drop(fb);
}

/// Discovery needs a connector that opens subscriptions while it runs (the HTTP ingress does
/// not), and on AMQP an exchange to bind each function's queue to: otherwise fnbroker refuses
/// to start and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_on_a_connector_that_cannot_serve_it_is_refused_at_start() {
    for (connector, says) in [
        (
            yaml!(
                "web: { http: { listen: \"127.0.0.1:<free_port>\" } }",
                free_port = free_port()
            ),
            "cannot open subscriptions while it runs",
        ),
        (
            yaml!("web: { amqp: { url: \"<URL>\" } }", URL = common::amqp::URL),
            "discovery on amqp needs the connector's `exchange`",
        ),
    ] {
        let mut fb = Fnbroker::spawn(&yaml!(
            "connectors:\n  <connector>\ndiscover:\n  - openfaas: { gateway: \"http://127.0.0.1:9\", connector: web }\n",
            connector = connector
        ));
        let status = fb.wait_exit(WAIT).await;
        assert!(!status.success());
        let logs = fb.logs();
        assert!(
            logs.contains("discover[0]") && logs.contains(says),
            "{logs}"
        );
    }
}

/// The bodies `function` received, as numbers, sorted.
fn numbers(server: &FnServer, function: &str) -> Vec<usize> {
    let mut got: Vec<usize> = server
        .on(&format!("/function/{function}.openfaas-fn"))
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).parse().expect("number"))
        .collect();
    got.sort_unstable();
    got
}

/// Waits until fnbroker logged `started` discovered triggers in all and, when `stopped`, one
/// stopping.
async fn discovered(fb: &Fnbroker, started: usize, stopped: bool) {
    wait_for("the discovered triggers", WAIT, || {
        let logs = fb.logs();
        logs.matches("discovered trigger started").count() >= started
            && (!stopped || logs.contains("discovered trigger stopping"))
    })
    .await;
}

/// Discovery on Kafka: each discovered function consumes in a consumer group of its own
/// (`<group>.<function>.<topic>`), so two functions on one topic each get every record (the
/// OpenFaaS kafka-connector invokes every function for each record); a function added later
/// starts its group at the connector's `auto.offset.reset` (earliest) and a removed one stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_on_kafka_gives_each_function_a_consumer_group() {
    use common::kafka;
    let topic = kafka::unique("dk");
    kafka::create_topic(&topic, 2).await;
    let producer = kafka::producer();
    let server = FnServer::start().await;
    let list = Arc::new(Mutex::new(serde_json::json!([
        function_status("x", Some(&topic)),
        function_status("y", Some(&topic)),
    ])));
    let gateway = fake_gateway(Arc::clone(&list), server.url("")).await;
    let group = kafka::unique("of");
    let fb = Fnbroker::start(&yaml!("connectors:\n<connectors>discover:\n  - openfaas: { gateway: \"<gateway>\", username: admin, password: s3cret, namespaces: [openfaas-fn], connector: k, group: <group>, refresh: 1s }\n", connectors = kafka::connector("k", ""), gateway = gateway, group = group))
    .await;
    discovered(&fb, 2, false).await;
    kafka::produce_range(&producer, &topic, 0..20).await;
    server.wait_count("/function/x.openfaas-fn", 20, WAIT).await;
    server.wait_count("/function/y.openfaas-fn", 20, WAIT).await;

    *list.lock().expect("lock") = serde_json::json!([
        function_status("y", Some(&topic)),
        function_status("z", Some(&topic)),
    ]);
    discovered(&fb, 3, true).await;
    kafka::produce_range(&producer, &topic, 20..30).await;
    server.wait_count("/function/y.openfaas-fn", 30, WAIT).await;
    server.wait_count("/function/z.openfaas-fn", 30, WAIT).await;
    assert_eq!(numbers(&server, "y"), (0..30).collect::<Vec<_>>());
    assert_eq!(
        numbers(&server, "z"),
        (0..30).collect::<Vec<_>>(),
        "z's new group starts at the earliest offset"
    );
    assert_eq!(numbers(&server, "x"), (0..20).collect::<Vec<_>>());
    let logs = fb.logs();
    for f in ["x", "y", "z"] {
        assert!(
            logs.contains(&format!("{group}.{f}.openfaas-fn.{topic}")),
            "{f}'s group is named after it: {logs}"
        );
    }
    drop(fb);
}

/// Discovery on AMQP: each discovered function gets a durable queue of its own, bound to the
/// connector's exchange with the annotation's topic as routing key (as the OpenFaaS
/// rabbitmq-connector maps topics to routing keys), so each function gets every message; a
/// removed function's queue is unbound (it stops filling, and keeps what it holds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_on_amqp_gives_each_function_a_queue_bound_to_the_exchange() {
    use common::amqp;
    use lapin::options::{
        BasicPublishOptions, ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions,
    };
    let id = uid();
    let (exchange, group, key) = (format!("dx-{id}"), format!("dq-{id}"), "orders.created");
    let server = FnServer::start().await;
    let list = Arc::new(Mutex::new(serde_json::json!([
        function_status("p", Some(key)),
        function_status("q", Some(key)),
    ])));
    let gateway = fake_gateway(Arc::clone(&list), server.url("")).await;
    let fb = Fnbroker::start(&yaml!("connectors:\n  mq: { amqp: { url: \"<URL>\", exchange: <exchange> } }\ndiscover:\n  - openfaas: { gateway: \"<gateway>\", username: admin, password: s3cret, namespaces: [openfaas-fn], connector: mq, group: <group>, refresh: 1s }\n", URL = amqp::URL, exchange = exchange, gateway = gateway, group = group))
    .await;
    let (_conn, ch) = amqp::channel().await;
    let send = |range: std::ops::Range<usize>| {
        let ch = ch.clone();
        let exchange = exchange.clone();
        async move {
            for i in range {
                ch.basic_publish(
                    exchange.clone().into(),
                    key.into(),
                    BasicPublishOptions::default(),
                    i.to_string().as_bytes(),
                    lapin::BasicProperties::default().with_delivery_mode(2),
                )
                .await
                .expect("publish")
                .await
                .expect("confirm");
            }
        }
    };
    // A discovered trigger starts once its queue is declared and bound.
    discovered(&fb, 2, false).await;
    send(0..10).await;
    server.wait_count("/function/p.openfaas-fn", 10, WAIT).await;
    server.wait_count("/function/q.openfaas-fn", 10, WAIT).await;

    *list.lock().expect("lock") = serde_json::json!([
        function_status("q", Some(key)),
        function_status("r", Some(key)),
    ]);
    discovered(&fb, 3, true).await;
    let p_queue = format!("{group}.p.openfaas-fn.{key}");
    wait_for("p's queue unbound", WAIT, || {
        fb.logs().contains("queue unbound")
    })
    .await;
    send(10..20).await;
    server.wait_count("/function/q.openfaas-fn", 20, WAIT).await;
    server.wait_count("/function/r.openfaas-fn", 10, WAIT).await;
    assert_eq!(numbers(&server, "q"), (0..20).collect::<Vec<_>>());
    assert_eq!(numbers(&server, "r"), (10..20).collect::<Vec<_>>());
    assert_eq!(numbers(&server, "p"), (0..10).collect::<Vec<_>>());
    let p_holds = ch
        .queue_declare(
            p_queue.clone().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .expect("p's queue is kept")
        .message_count();
    assert_eq!(p_holds, 0, "p's queue no longer receives the routing key");
    drop(fb);
    for f in ["p", "q", "r"] {
        let _ = ch
            .queue_delete(
                format!("{group}.{f}.openfaas-fn.{key}").into(),
                QueueDeleteOptions::default(),
            )
            .await;
    }
    let _ = ch
        .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
        .await;
}

/// Discovery on MQTT: subscriptions opened and closed on the running connection. Two functions
/// on one topic share the broker's subscription: removing one keeps the other's messages coming
/// (MQTT 5 names one subscription identifier per filter).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_on_mqtt_subscribes_and_unsubscribes_while_running() {
    use common::mqtt::{self, Msg};
    let root = format!("dm{}", uid());
    let (one, two) = (format!("{root}/one"), format!("{root}/two"));
    let server = FnServer::start().await;
    let list = Arc::new(Mutex::new(serde_json::json!([
        function_status("x", Some(&one)),
        function_status("y", Some(&one)),
    ])));
    let gateway = fake_gateway(Arc::clone(&list), server.url("")).await;
    let fb = Fnbroker::start(&yaml!("connectors:\n  iot: { mqtt: { url: \"mqtt://127.0.0.1:<SHARED_PORT>\", client_id: fnb-<root> } }\ndiscover:\n  - openfaas: { gateway: \"<gateway>\", username: admin, password: s3cret, namespaces: [\"*\"], connector: iot, refresh: 1s }\n", SHARED_PORT = mqtt::SHARED_PORT, root = root, gateway = gateway))
    .await;
    let send = |topic: String, range: std::ops::Range<usize>| async move {
        mqtt::publish(
            mqtt::SHARED_PORT,
            range
                .map(|i| Msg::plain(&topic, format!("{i}").as_bytes()))
                .collect(),
        )
        .await;
    };
    // The first subscriptions are opened by discovery on a connector that had none at start.
    wait_for("x and y subscribed", WAIT, || {
        fb.logs().matches("discovered trigger started").count() >= 2
    })
    .await;
    let ready = |fb: &Fnbroker| {
        let url = format!("http://127.0.0.1:{}/readyz", fb.admin);
        async move { reqwest::get(url).await.is_ok_and(|r| r.status() == 200) }
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    while !ready(&fb).await {
        assert!(tokio::time::Instant::now() < deadline, "not ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    send(one.clone(), 0..10).await;
    server.wait_count("/function/x.openfaas-fn", 10, WAIT).await;
    server.wait_count("/function/y.openfaas-fn", 10, WAIT).await;

    *list.lock().expect("lock") = serde_json::json!([
        function_status("y", Some(&one)),
        function_status("z", Some(&two)),
    ]);
    wait_for("x stopped and z started", WAIT, || {
        let logs = fb.logs();
        logs.contains("discovered trigger stopping")
            && logs.matches("discovered trigger started").count() >= 3
    })
    .await;
    // The broker has the SUBACK of z's SUBSCRIBE once fnbroker is ready again.
    while !ready(&fb).await {
        assert!(tokio::time::Instant::now() < deadline, "not ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    send(one.clone(), 10..20).await;
    send(two.clone(), 0..10).await;
    let y = server.wait_count("/function/y.openfaas-fn", 20, WAIT).await;
    server.wait_count("/function/z.openfaas-fn", 10, WAIT).await;
    assert_eq!(
        server.count("/function/x.openfaas-fn"),
        10,
        "x got nothing after its removal"
    );
    let mut got: Vec<usize> = y
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).parse().expect("number"))
        .collect();
    got.sort_unstable();
    assert_eq!(got, (0..20).collect::<Vec<_>>(), "y got each message once");
    drop(fb);
}

/// Batching to Lambda: five events in one invocation whose payload is the JSON array
/// of the structured events; the result's `batchItemFailures` names one, which is invoked again
/// alone (a single event's payload).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lambda_takes_a_batch_as_its_payload_and_names_failed_items() {
    let api = LambdaApi::start().await;
    let subject = format!("lb{}", uid());
    let dir = tempfile::tempdir().expect("tempdir");
    let credentials = dir.path().join("credentials");
    std::fs::write(
        &credentials,
        format!("[default]\naws_access_key_id = {KEY_ID}\naws_secret_access_key = {SECRET}\n"),
    )
    .expect("write");
    let yaml = yaml!(
        "connectors:\n  bus: { nats: { url: \"<SHARED_URL>\" } }\nfunctions:\n  batch: { lambda: { function: batch, region: eu-west-1, endpoint: \"http://127.0.0.1:<port>\" } }\ntriggers:\n  - { name: t, from: { connector: bus, topic: \"<subject>\" }, to: batch, delivery: { delay: 10ms, batch: { max_events: 5, max_wait: 2s } } }\n",
        SHARED_URL = SHARED_URL,
        port = api.port,
        subject = subject
    );
    let credentials = credentials.display().to_string();
    let _fb = Fnbroker::start_env(
        &yaml,
        &[("AWS_SHARED_CREDENTIALS_FILE", credentials.as_str())],
    )
    .await;
    for i in 0..5 {
        publish(
            &subject,
            serde_json::json!({ "n": i, "fail": i == 2 })
                .to_string()
                .as_bytes(),
        )
        .await;
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    while api.accepted().len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stand-in accepted {:?}",
            api.accepted()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let accepted = api.accepted();
    let batch = accepted[0]["event"].as_array().expect("a batch payload");
    let ns: Vec<i64> = batch
        .iter()
        .map(|e| e["data"]["n"].as_i64().expect("n"))
        .collect();
    assert_eq!(ns, [0, 1, 2, 3, 4]);
    assert_eq!(
        accepted[0]["content_type"],
        "application/cloudevents-batch+json"
    );
    let alone = &accepted[1]["event"];
    assert_eq!(alone["data"]["n"], 2, "the named event, alone: {alone}");
    assert_eq!(alone["id"], batch[2]["id"]);
}

//! End-to-end: webhooks as their senders shape them. Request headers and path segments become
//! attributes (GitHub's `X-GitHub-Event` routes `push` apart from `pull_request`), the
//! CloudEvents webhook handshake (`OPTIONS`, the specification's exchange) and the rate it
//! grants, and `ce-` headers as the Python CloudEvents SDK 1.x sends them, through its real
//! HTTP clients.

use crate::common;

use std::time::Duration;

use common::{FnServer, Fnbroker, free_port};
use reqwest::StatusCode;

const WAIT: Duration = Duration::from_secs(20);

/// GitHub's published example of a signed delivery: this secret signs "Hello, World!" so.
const GITHUB_SECRET: &str = "It's a Secret to Everybody";
const GITHUB_SIGNATURE: &str =
    "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

/// Both triggers' `from`: a path per repository, attributes from GitHub's headers.
const GITHUB_FROM: &str = "{ connector: web, topic: \"/github/{repo}\", attributes: { type: \"com.github.{header:X-GitHub-Event}\", id: \"{header:X-GitHub-Delivery}\", subject: \"{path:repo}\", hookid: \"{header:X-GitHub-Hook-ID}\" } }";

fn github_config(port: u16, server: &FnServer) -> String {
    yaml!(
        "connectors:
  web: { http: { listen: 127.0.0.1:<port>, auth: { hmac: { header: X-Hub-Signature-256, secret: \"<secret>\", prefix: \"sha256=\" } } } }
functions:
  pushes: { http: { url: \"<pushes>\" } }
  pulls: { http: { url: \"<pulls>\" } }
triggers:
  - { name: push, from: <from>, filter: { exact: { type: com.github.push } }, to: pushes }
  - { name: pull, from: <from>, filter: { exact: { type: com.github.pull_request } }, to: pulls }
",
        from = GITHUB_FROM,
        port = port,
        secret = GITHUB_SECRET,
        pushes = server.url("/pushes"),
        pulls = server.url("/pulls")
    )
}

/// A GitHub delivery of `event` with delivery id `delivery` to the repository `repo`.
async fn deliver(port: u16, repo: &str, event: Option<&str>, delivery: &str) -> reqwest::Response {
    let mut req = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/github/{repo}"))
        .header("x-hub-signature-256", GITHUB_SIGNATURE)
        .header("x-github-delivery", delivery)
        .header("x-github-hook-id", "292430182")
        .header("content-type", "application/json")
        .body("Hello, World!");
    if let Some(event) = event {
        req = req.header("x-github-event", event);
    }
    req.send().await.expect("post")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_deliveries_are_routed_by_their_event_header() {
    let server = FnServer::start().await;
    let port = free_port();
    let fb = Fnbroker::start(&github_config(port, &server)).await;

    let push = deliver(
        port,
        "fnbroker",
        Some("push"),
        "72d3162e-cc78-11e3-81ab-4c9367dc0958",
    )
    .await;
    assert_eq!(push.status(), StatusCode::ACCEPTED);
    let pull = deliver(port, "caf%C3%A9", Some("pull_request"), "d-2").await;
    assert_eq!(pull.status(), StatusCode::ACCEPTED);
    // A delivery without the header its type is made of is refused, and says why.
    let lacking = deliver(port, "fnbroker", None, "d-3").await;
    assert_eq!(lacking.status(), StatusCode::BAD_REQUEST);
    let reason = lacking.text().await.expect("body");
    assert!(
        reason.contains("no `x-github-event` header") && reason.contains("`type`"),
        "{reason}"
    );

    let pushes = server.wait_count("/pushes", 1, WAIT).await;
    let p = &pushes[0];
    assert_eq!(p.header("ce-type"), Some("com.github.push"));
    assert_eq!(
        p.header("ce-id"),
        Some("72d3162e-cc78-11e3-81ab-4c9367dc0958")
    );
    assert_eq!(p.header("ce-subject"), Some("fnbroker"));
    assert_eq!(p.header("ce-hookid"), Some("292430182"));
    assert_eq!(p.header("ce-source"), Some("http://web/github/fnbroker"));
    assert_eq!(&p.body[..], b"Hello, World!");
    let pulls = server.wait_count("/pulls", 1, WAIT).await;
    assert_eq!(pulls[0].header("ce-type"), Some("com.github.pull_request"));
    assert_eq!(
        pulls[0].header("ce-subject"),
        Some("caf%C3%A9"),
        "percent-decoded, sent encoded"
    );
    // Each event was filtered out by the other trigger: once both are counted, nothing more
    // can arrive.
    wait_metric(&fb, "fnbroker_events_filtered_total", 2.0).await;
    assert_eq!((server.count("/pushes"), server.count("/pulls")), (1, 1));
    drop(fb);

    // `explain` makes the same event of it, and says where each attribute came from.
    let (code, stdout, stderr) = common::run_once(
        &github_config(port, &server),
        &[
            "explain",
            "--connector",
            "web",
            "--topic",
            "/github/fnbroker",
            "--header",
            "X-GitHub-Event=pull_request",
            "--header",
            "X-GitHub-Delivery=abc",
            "--header",
            "X-GitHub-Hook-ID=1",
            "--data",
            "{}",
        ],
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    for line in [
        "com.github.pull_request",
        "<- the trigger's `attributes`: header `x-github-event`",
        "<- the trigger's `attributes`: header `x-github-delivery`",
        "<- the trigger's `attributes`: path segment `{repo}`",
        "pull -> pulls: MATCHES",
        "push -> pushes: filtered out",
    ] {
        assert!(stdout.contains(line), "{line:?} in:\n{stdout}");
    }
    // A template naming a header wrongly, or a segment the topic lacks, is refused at load.
    let bad = github_config(port, &server).replace("{path:repo}", "{path:owner}");
    let (code, _, stderr) = common::run_once(&bad, &["validate"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("trigger `push`: `{path:owner}`: the topic has no `{owner}` segment"),
        "{stderr}"
    );
}

fn handshake_config(port: u16, plain: u16, server: &FnServer) -> String {
    yaml!(
        "connectors:
  web: { http: { listen: 127.0.0.1:<port>, webhook: { allowed_origins: [eventemitter.example.com], rate: 2 } } }
  bare: { http: { listen: 127.0.0.1:<plain> } }
functions:
  f: { http: { url: \"<f>\" } }
triggers:
  - { name: t, from: { connector: web, topic: /endpoint }, to: f }
  - { name: u, from: { connector: bare, topic: /endpoint }, to: f }
",
        port = port,
        plain = plain,
        f = server.url("/f")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_handshake_answers_as_the_specification_shows() {
    let server = FnServer::start().await;
    let (port, plain) = (free_port(), free_port());
    let fb = Fnbroker::start(&handshake_config(port, plain, &server)).await;
    let client = reqwest::Client::new();
    let options = |port: u16, path: &str| {
        client.request(
            reqwest::Method::OPTIONS,
            format!("http://127.0.0.1:{port}{path}"),
        )
    };
    let header = |r: &reqwest::Response, name: &str| {
        r.headers()
            .get(name)
            .map(|v| v.to_str().expect("text").to_string())
    };

    // The specification's validation request (section 4.1) and the answer it describes (4.2).
    let res = options(port, "/endpoint")
        .header("WebHook-Request-Origin", "eventemitter.example.com")
        .header(
            "WebHook-Request-Callback",
            "https://example.com/confirm?id=12345&key=c2VjcmV0",
        )
        .header("WebHook-Request-Rate", "120")
        .send()
        .await
        .expect("options");
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(header(&res, "allow").as_deref(), Some("POST, OPTIONS"));
    assert_eq!(
        header(&res, "webhook-allowed-origin").as_deref(),
        Some("eventemitter.example.com")
    );
    assert_eq!(header(&res, "webhook-allowed-rate").as_deref(), Some("2"));

    // Another origin gets no grant; a path no trigger listens on, 404; a listener without
    // `webhook` does not handle OPTIONS (405, as the specification asks).
    let res = options(port, "/endpoint")
        .header("WebHook-Request-Origin", "attacker.example.net")
        .send()
        .await
        .expect("options");
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(header(&res, "webhook-allowed-origin"), None);
    let res = options(port, "/elsewhere")
        .header("WebHook-Request-Origin", "eventemitter.example.com")
        .send()
        .await
        .expect("options");
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let res = options(plain, "/endpoint")
        .header("WebHook-Request-Origin", "eventemitter.example.com")
        .send()
        .await
        .expect("options");
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);

    // Deliveries: the granted origin within its rate, then 429 with Retry-After; a stranger
    // 403; a sender that names no origin (curl, GitHub) as before.
    let post = |origin: Option<&str>| {
        let mut req = client
            .post(format!("http://127.0.0.1:{port}/endpoint"))
            .body("x");
        if let Some(o) = origin {
            req = req.header("WebHook-Request-Origin", o);
        }
        req.send()
    };
    for _ in 0..2 {
        let res = post(Some("eventemitter.example.com")).await.expect("post");
        assert_eq!(res.status(), StatusCode::ACCEPTED);
    }
    let res = post(Some("eventemitter.example.com")).await.expect("post");
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = header(&res, "retry-after")
        .expect("retry-after")
        .parse()
        .expect("seconds");
    assert!((1..=30).contains(&wait), "{wait}");
    let res = post(Some("attacker.example.net")).await.expect("post");
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let res = post(None).await.expect("post");
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    server.wait_count("/f", 3, WAIT).await;
    let metrics = fb.metrics().await;
    // 403: the stranger's handshake and its delivery.
    for (status, n) in [("403", 2), ("429", 1)] {
        assert!(
            metrics.contains(&format!(
                "fnbroker_http_requests_total{{connector=\"web\",status=\"{status}\"}} {n}"
            )),
            "{status} in:\n{metrics}"
        );
    }
    drop(fb);
}

/// The Python CloudEvents SDK 1.x writes attribute values into `ce-` headers as they are, not
/// percent-encoded; aiohttp sends them as UTF-8, requests as ISO-8859-1. Both arrive whole, and
/// fnbroker sends them on percent-encoded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_s_raw_header_values_are_taken() {
    let python = std::env::var("HOME")
        .map(|h| format!("{h}/.cache/fnbroker/venv/bin/python3"))
        .expect("HOME");
    assert!(
        std::path::Path::new(&python).exists(),
        "{python} is missing: scripts/deps.sh installs the CloudEvents SDK there"
    );
    let server = FnServer::start().await;
    let port = free_port();
    let fb = Fnbroker::start(&yaml!(
        "connectors:\n  web: { http: { listen: 127.0.0.1:<port> } }\nfunctions:\n  f: { http: { url: \"<f>\" } }\ntriggers:\n  - { name: t, from: { connector: web, topic: /in }, to: f }\n",
        port = port,
        f = server.url("/f")
    ))
    .await;
    let script = r#"
import asyncio, sys
import aiohttp, requests
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent
url = sys.argv[1]
def event(subject):
    return to_binary(CloudEvent({"type": "com.example.grüße", "source": "/sdk", "subject": subject}, {"n": 1}))
headers, body = event("Grüße")
print("requests", requests.post(url, headers=headers, data=body).status_code)
async def main():
    headers, body = event("Grüße € 100%")
    async with aiohttp.ClientSession() as s:
        async with s.post(url, headers=headers, data=body) as r:
            print("aiohttp", r.status)
asyncio.run(main())
"#;
    let out = tokio::process::Command::new(&python)
        .args(["-c", script, &format!("http://127.0.0.1:{port}/in")])
        .output()
        .await
        .expect("python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("requests 202") && stdout.contains("aiohttp 202"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = server.wait_count("/f", 2, WAIT).await;
    let mut subjects: Vec<_> = got.iter().map(|r| r.header("ce-subject")).collect();
    subjects.sort();
    assert_eq!(
        subjects,
        [
            Some("Gr%C3%BC%C3%9Fe"),
            Some("Gr%C3%BC%C3%9Fe%20%E2%82%AC%20100%25")
        ]
    );
    assert!(
        got.iter()
            .all(|r| r.header("ce-type") == Some("com.example.gr%C3%BC%C3%9Fe")),
        "{:?}",
        got.iter().map(|r| r.header("ce-type")).collect::<Vec<_>>()
    );
    drop(fb);
}

/// A webhook sender retries with the same delivery id (GitHub's "Redeliver"): with
/// `delivery.dedup` the function is called once, the second delivery acknowledged and counted.
/// In memory for one replica; in Redis, two replicas agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_github_delivery_sent_twice_calls_the_function_once() {
    let server = FnServer::start().await;
    let prefix = format!("{}{}", std::process::id(), free_port());
    let config = |port: u16, store: &str| {
        yaml!(
            "connectors:
  web: { http: { listen: 127.0.0.1:<port>, auth: { hmac: { header: X-Hub-Signature-256, secret: \"<secret>\", prefix: \"sha256=\" } } } }
  cache: { redis: { url: \"redis://127.0.0.1:6379\" } }
  db: { postgres: { url: \"postgres://postgres@127.0.0.1:5432/postgres\" } }
functions:
  pushes: { http: { url: \"<pushes>\" } }
triggers:
  - name: push<prefix>
    from: { connector: web, topic: \"/github/{repo}\", attributes: { type: \"com.github.{header:X-GitHub-Event}\", id: \"{header:X-GitHub-Delivery}\" } }
    to: pushes
    delivery: { dedup: { window: 10m, store: <store> } }
",
            port = port,
            secret = GITHUB_SECRET,
            pushes = server.url("/pushes"),
            prefix = prefix,
            store = store
        )
    };

    // One replica, marks in memory.
    let port = free_port();
    let fb = Fnbroker::start(&config(port, "memory")).await;
    let res = deliver(port, "fnbroker", Some("push"), "mem-1").await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    // The mark is written once the function's answer is in: wait for the delivery to finish.
    wait_metric(&fb, "fnbroker_events_delivered_total", 1.0).await;
    let res = deliver(port, "fnbroker", Some("push"), "mem-1").await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    wait_metric(&fb, "fnbroker_events_deduplicated_total", 1.0).await;
    let res = deliver(port, "fnbroker", Some("push"), "mem-2").await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    server.wait_count("/pushes", 2, WAIT).await;
    let ids: Vec<_> = server
        .on("/pushes")
        .iter()
        .map(|r| r.header("ce-id").unwrap_or_default().to_string())
        .collect();
    assert_eq!(ids, ["mem-1", "mem-2"]);
    drop(fb);

    // Two replicas, marks in Redis, then in PostgreSQL: the second copy goes to the other
    // replica, which finds the first one's mark.
    let mut calls = 2;
    for store in ["{ connector: cache }", "{ connector: db }"] {
        let (a, b) = (free_port(), free_port());
        let first = Fnbroker::start(&config(a, store)).await;
        let second = Fnbroker::start(&config(b, store)).await;
        let delivery = format!("{store}-{prefix}");
        let res = deliver(a, "fnbroker", Some("push"), &delivery).await;
        assert_eq!(res.status(), StatusCode::ACCEPTED);
        wait_metric(&first, "fnbroker_events_delivered_total", 1.0).await;
        calls += 1;
        let res = deliver(b, "fnbroker", Some("push"), &delivery).await;
        assert_eq!(res.status(), StatusCode::ACCEPTED);
        wait_metric(&second, "fnbroker_events_deduplicated_total", 1.0).await;
        assert_eq!(server.count("/pushes"), calls, "{store}");
        drop((first, second));
    }
    let store = "{ connector: cache }";

    // explain says what dedup does with it.
    let (code, stdout, stderr) = common::run_once(
        &config(free_port(), store),
        &[
            "explain",
            "--connector",
            "web",
            "--topic",
            "/github/fnbroker",
            "--header",
            "X-GitHub-Event=push",
            "--header",
            "X-GitHub-Delivery=abc",
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    // A store that keeps no keys, or none at all, is refused at load.
    for (store, error) in [
        (
            "{ connector: web }",
            "`delivery.dedup.store`: a http connector keeps no keys",
        ),
        (
            "{ connector: nope }",
            "unknown connector `nope` in `delivery.dedup.store`",
        ),
    ] {
        let (code, _, stderr) = common::run_once(&config(free_port(), store), &["validate"]);
        assert_eq!(code, 2, "{stderr}");
        assert!(stderr.contains(error), "{error:?} in {stderr}");
    }
    assert!(
        stdout.contains("delivery.dedup: acknowledged without a call when source `http://web/github/fnbroker` with id `abc` was delivered in the last 10m (marks in connector `cache`)"),
        "{stdout}"
    );
}

/// Waits until the sum of a metric's samples reaches `at_least`.
async fn wait_metric(fb: &Fnbroker, name: &str, at_least: f64) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let value = common::metric_sum(fb, name).await;
        if value >= at_least {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name} stayed at {value}:\n{}",
            fb.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

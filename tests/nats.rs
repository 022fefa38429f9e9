//! End-to-end: the real `fnbroker` binary with a real nats-server (the machine's on 4222 with
//! JetStream, or a test's own when it restarts it) and a real HTTP function server. Subjects,
//! streams and consumers are unique to each test.

use crate::common;

use std::collections::HashSet;
use std::time::Duration;

use async_nats::HeaderMap;
use common::nats::{self, NatsServer, SHARED_URL};
use common::{Answer, FnServer, Fnbroker, wait_for};

const WAIT: Duration = Duration::from_secs(60);

fn uid() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn config(url: &str, extra: &str, functions: &str, triggers: &str) -> String {
    yaml!(
        "connectors:\n  bus: { nats: { url: \"<url>\"<extra> } }\nfunctions:\n<functions>triggers:\n<triggers>",
        url = url,
        extra = extra,
        functions = functions,
        triggers = triggers
    )
}

/// A replica in the queue group `workers` on `<root>.>`, calling `path` of `server`.
fn queue_group(server: &FnServer, root: &str, path: &str) -> String {
    config(
        SHARED_URL,
        "",
        &http_fn("f", &server.url(path)),
        &yaml!(
            "  - { name: t, from: { connector: bus, topic: \"<root>.>\", group: workers }, to: f }\n",
            root = root
        ),
    )
}

fn http_fn(name: &str, url: &str) -> String {
    yaml!(
        "  <name>: { http: { url: \"<url>\" }, timeout: 5s }\n",
        name = name,
        url = url
    )
}

/// A new stream holding the plain messages `0..n`, and the configuration of a trigger (with
/// `extra` after `to: f`) that consumes it into `/f` of `server` with its own durable consumer.
async fn stream_of_numbers(n: usize, server: &FnServer, extra: &str) -> String {
    let root = format!("k{}", uid());
    let stream = format!("S{}", uid());
    nats::create_stream(SHARED_URL, &stream, &[&format!("{root}.>")]).await;
    nats::js_publish(
        SHARED_URL,
        (0..n)
            .map(|i| (format!("{root}.x"), format!("{i}").into_bytes()))
            .collect(),
    )
    .await;
    config(
        SHARED_URL,
        "",
        &http_fn("f", &server.url("/f")),
        &yaml!(
            "  - { name: t, from: { connector: bus, stream: <stream>, topic: \"<root>.>\", group: g<uid> }, to: f<extra> }\n",
            stream = stream,
            root = root,
            uid = uid(),
            extra = extra
        ),
    )
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.insert(*k, *v);
    }
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_plain_binary_and_structured_reach_the_function() {
    let root = format!("c{}", uid());
    let server = FnServer::start().await;
    let fb = Fnbroker::start(&config(
        SHARED_URL,
        "",
        &http_fn("f", &server.url("/f")),
        &yaml!("  - { name: t, from: { connector: bus, topic: \"<root>.>\" }, event: { type: com.example.order }, to: f }\n", root = root),
    ))
    .await;
    nats::publish(SHARED_URL, vec![
        (format!("{root}.orders.eu"), headers(&[("Content-Type", "application/json")]), br#"{"mode":"plain"}"#.to_vec()),
        (
            format!("{root}.orders.us"),
            headers(&[("CE-SpecVersion", "1.0"), ("ce-id", "b-1"), ("ce-source", "/shop"), ("ce-type", "com.example.binary"), ("Content-Type", "application/json")]),
            br#"{"mode":"binary"}"#.to_vec(),
        ),
        (
            format!("{root}.orders.asia"),
            headers(&[("Content-Type", "application/cloudevents+json")]),
            br#"{"specversion":"1.0","id":"s-1","source":"/shop","type":"com.example.structured","data":{"mode":"structured"}}"#.to_vec(),
        ),
    ])
    .await;
    let got = server.wait_count("/f", 3, WAIT).await;
    let find = |mode: &str| {
        got.iter()
            .find(|r| {
                serde_json::from_slice::<serde_json::Value>(&r.body)
                    .is_ok_and(|v| v["mode"] == mode)
            })
            .unwrap_or_else(|| panic!("{mode} missing"))
    };
    let p = find("plain");
    assert_eq!(p.header("ce-type"), Some("com.example.order"));
    assert_eq!(
        p.header("ce-subject"),
        Some(format!("{root}.orders.eu").as_str())
    );
    assert_eq!(
        p.header("ce-source"),
        Some(format!("nats://bus/{root}.orders.eu").as_str())
    );
    assert_eq!(p.header("content-type"), Some("application/json"));
    let b = find("binary");
    assert_eq!(b.header("ce-id"), Some("b-1"));
    assert_eq!(b.header("ce-type"), Some("com.example.binary"));
    let s = find("structured");
    assert_eq!(s.header("ce-id"), Some("s-1"));
    drop(fb);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_in_one_queue_group_split_a_stream() {
    const N: usize = 300;
    let root = format!("q{}", uid());
    let server = FnServer::start().await;
    let cfg = |path: &str| queue_group(&server, &root, path);
    let a = Fnbroker::start(&cfg("/a")).await;
    let b = Fnbroker::start(&cfg("/b")).await;
    let msgs = (0..N)
        .map(|i| {
            (
                format!("{root}.m"),
                HeaderMap::new(),
                format!("{i}").into_bytes(),
            )
        })
        .collect();
    nats::publish(SHARED_URL, msgs).await;
    wait_for("every message", WAIT, || {
        server.count("/a") + server.count("/b") >= N
    })
    .await;
    let (na, nb) = (server.count("/a"), server.count("/b"));
    println!("nats queue group split: {na} + {nb}");
    assert!(na > 0 && nb > 0, "both got some ({na} + {nb})");
    assert_eq!(na + nb, N, "a queue group delivers each message once");
    drop((a, b));
}

/// JetStream: 10,000 messages, kill -9 in the middle, start again: every message reached the
/// function at least once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_kill_9_in_the_middle_loses_nothing() {
    const N: usize = 10_000;
    let server = FnServer::start().await;
    let cfg = stream_of_numbers(N, &server, ", delivery: { max_in_flight: 128 }").await;
    common::kill_9_midway_loses_nothing("nats jetstream", &server, &cfg, N, 1000).await;
    // Plain JetStream messages carry the stream sequence as their id.
    let ids: HashSet<String> = server
        .on("/f")
        .iter()
        .filter_map(|r| r.header("ce-id").map(str::to_string))
        .collect();
    assert!(ids.contains("1") && ids.contains(&N.to_string()));
}

/// A message the function keeps failing is redelivered by the server after the backoff delay
/// (nak), then dead-lettered and terminated: never delivered again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_naks_with_the_backoff_then_dead_letters_and_terminates() {
    let root = format!("n{}", uid());
    let stream = format!("S{}", uid());
    let durable = format!("g{}", uid());
    let server = FnServer::with(|path, _| match path {
        "/f" => Answer::status(500),
        _ => Answer::ok(),
    })
    .await;
    let fb = Fnbroker::start(&config(
        SHARED_URL,
        "",
        &(http_fn("f", &server.url("/f")) + &http_fn("dlq", &server.url("/dlq"))),
        &yaml!("  - { name: t, from: { connector: bus, stream: <stream>, topic: \"<root>.>\", group: <durable>, create: true }, to: f, delivery: { retries: 2, backoff: constant, delay: 700ms }, dead_letter: { function: dlq } }\n", stream = stream, root = root, durable = durable),
    ))
    .await;
    nats::js_publish(
        SHARED_URL,
        vec![(format!("{root}.poison"), b"bad".to_vec())],
    )
    .await;
    let letters = server.wait_count("/dlq", 1, WAIT).await;
    assert_eq!(letters[0].header("ce-dlqattempts"), Some("3"));
    assert_eq!(letters[0].header("ce-dlqstatus"), Some("500"));
    let calls = server.on("/f");
    assert_eq!(
        calls.len(),
        3,
        "one delivery and two redeliveries by the server"
    );
    for pair in calls.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(
            gap >= Duration::from_millis(650),
            "redelivered after {gap:?}, not the backoff delay"
        );
    }
    // Terminated: the server has nothing pending or unacknowledged for the consumer.
    nats::wait_settled(SHARED_URL, &stream, &durable, Duration::from_secs(5)).await;
    assert_eq!(server.count("/f"), 3);
    drop(fb);
}

/// The server restarts in the middle of a JetStream stream: nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_survives_a_server_restart() {
    let mut nats_server = NatsServer::start().await;
    let url = nats_server.url();
    let root = format!("r{}", uid());
    let server = FnServer::start().await;
    let fb = Fnbroker::start(&config(
        &url,
        "",
        &http_fn("f", &server.url("/f")),
        &yaml!("  - { name: t, from: { connector: bus, stream: RESTART, topic: \"<root>.>\", create: true }, to: f }\n", root = root),
    ))
    .await;
    let batch = |a: usize, b: usize| {
        (a..b)
            .map(|i| (format!("{root}.x"), format!("{i}").into_bytes()))
            .collect()
    };
    nats::js_publish(&url, batch(0, 500)).await;
    server.wait_count("/f", 100, WAIT).await;
    nats_server.restart().await;
    nats::js_publish(&url, batch(500, 1000)).await;
    let seen = || -> HashSet<Vec<u8>> { server.on("/f").iter().map(|r| r.body.to_vec()).collect() };
    wait_for("all 1000 messages", Duration::from_secs(120), || {
        seen().len() >= 1000
    })
    .await;
    drop(fb);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_is_published_to_a_subject() {
    let root = format!("p{}", uid());
    let server = FnServer::with(|_, _| Answer::ok().body("text/plain", b"pong")).await;
    let got = nats::subscribe(SHARED_URL, &format!("{root}.replies")).await;
    let fb = Fnbroker::start(&config(
        SHARED_URL,
        "",
        &http_fn("f", &server.url("/f")),
        &yaml!("  - { name: t, from: { connector: bus, topic: \"<root>.in\" }, to: f, reply: { connector: bus, topic: \"<root>.replies\" } }\n", root = root),
    ))
    .await;
    nats::publish(
        SHARED_URL,
        vec![(
            format!("{root}.in"),
            headers(&[
                ("ce-specversion", "1.0"),
                ("ce-id", "ping-1"),
                ("ce-source", "/x"),
                ("ce-type", "com.example.ping"),
            ]),
            b"ping".to_vec(),
        )],
    )
    .await;
    wait_for("the reply", WAIT, || !got.lock().expect("lock").is_empty()).await;
    let (h, payload) = got.lock().expect("lock")[0].clone();
    let get = |k: &str| h.get(k).map(|v| v.as_str().to_string());
    assert_eq!(get("ce-type").as_deref(), Some("com.example.ping.reply"));
    assert_eq!(get("ce-source").as_deref(), Some("fnbroker://functions/f"));
    assert_eq!(get("Content-Type").as_deref(), Some("text/plain"));
    assert_eq!(payload, b"pong");
    drop(fb);
}

/// `fnbroker send` publishes one CloudEvent through a configured connector.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_publishes_one_event_through_a_connector() {
    let subject = format!("send{}", uid());
    let got = nats::subscribe(SHARED_URL, &subject).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("send.yaml");
    std::fs::write(
        &cfg,
        yaml!(
            "connectors:\n  bus: { nats: { url: \"<SHARED_URL>\" } }\n",
            SHARED_URL = SHARED_URL
        ),
    )
    .expect("write");
    let out = std::process::Command::new(common::binary())
        .args([
            "send",
            "--connector",
            "bus",
            "--topic",
            &subject,
            "--type",
            "com.example.manual",
            "--source",
            "/me",
            "--data",
            r#"{"hello":"world"}"#,
            "-c",
        ])
        .arg(&cfg)
        .output()
        .expect("run send");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    wait_for("the sent event", WAIT, || {
        !got.lock().expect("lock").is_empty()
    })
    .await;
    let (h, payload) = got.lock().expect("lock")[0].clone();
    let get = |k: &str| h.get(k).map(|v| v.as_str().to_string());
    assert_eq!(get("ce-id"), Some(id));
    assert_eq!(get("ce-type").as_deref(), Some("com.example.manual"));
    assert_eq!(get("ce-source").as_deref(), Some("/me"));
    assert_eq!(get("Content-Type").as_deref(), Some("application/json"));
    assert!(get("ce-time").is_some());
    assert_eq!(payload, br#"{"hello":"world"}"#);
}

/// A NATS URL to a closed port, SIGTERM. The JetStream trigger waits for a
/// server while starting, the core one while flushing at stop: either way the process exits
/// within `shutdown_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_within_shutdown_timeout_when_nats_cannot_connect() {
    let closed = format!("nats://127.0.0.1:{}", common::free_port());
    let server = FnServer::start().await;
    for from in ["stream: s, topic: a.>", "topic: a.>"] {
        let mut fb = Fnbroker::spawn(&format!(
            "{}shutdown_timeout: 2s\n",
            config(
                &closed,
                "",
                &http_fn("f", &server.url("/f")),
                &yaml!(
                    "  - { name: t, from: { connector: bus, <from> }, to: f }\n",
                    from = from
                ),
            )
        ));
        fb.wait_log("fnbroker starting", WAIT).await;
        // Long enough for the connector to be in the middle of connecting.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let asked = std::time::Instant::now();
        fb.signal("TERM");
        let status = fb.wait_exit(Duration::from_secs(10)).await;
        let took = asked.elapsed();
        assert!(status.success(), "{from}: exit {status}:\n{}", fb.logs());
        assert!(
            took < Duration::from_millis(2900),
            "{from}: took {took:?} to exit with shutdown_timeout 2s:\n{}",
            fb.logs()
        );
    }
}

/// In-memory retries (an ordered trigger) that take longer than the
/// consumer's `ack_wait` (12 s: twice the 1 s timeout plus 10 s). fnbroker sends progress while
/// it holds the message, so the server never redelivers it meanwhile: the function sees exactly
/// the three attempts the policy allows, one after the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_never_redelivers_a_message_that_is_still_retrying() {
    let root = format!("w{}", uid());
    let stream = format!("S{}", uid());
    let server = FnServer::with(|_, _| Answer::status(500)).await;
    nats::create_stream(SHARED_URL, &stream, &[&format!("{root}.>")]).await;
    let fb = Fnbroker::start(&config(
        SHARED_URL,
        "",
        &yaml!("  f: { http: { url: \"<f_url>\" }, timeout: 1s }\n", f_url = server.url("/f")),
        &yaml!("  - { name: t, from: { connector: bus, stream: <stream>, topic: \"<root>.>\", group: g<uid> }, to: f, delivery: { ordered: true, retries: 2, backoff: constant, delay: 7s } }\n", stream = stream, root = root, uid = uid()),
    ))
    .await;
    nats::js_publish(SHARED_URL, vec![(format!("{root}.x"), b"once".to_vec())]).await;
    let first = server.wait_count("/f", 1, WAIT).await[0].at;
    // The last attempt is at 14 s; a redelivery at ack_wait (12 s) would add more after it.
    wait_for("the retry schedule to end", Duration::from_secs(30), || {
        first.elapsed() > Duration::from_secs(18)
    })
    .await;
    let calls = server.on("/f");
    let gaps: Vec<Duration> = calls.windows(2).map(|w| w[1].at - w[0].at).collect();
    assert_eq!(
        calls.len(),
        3,
        "attempts at gaps {gaps:?}: the server redelivered a message fnbroker held:\n{}",
        fb.logs()
    );
    assert!(
        gaps.iter().all(|g| *g > Duration::from_secs(6)),
        "two attempts at once: {gaps:?}"
    );
}

async fn jetstream_outage(outage: Duration) {
    const N: usize = 1_000;
    let root = format!("o{}", uid());
    let stream = format!("S{}", uid());
    let (server, down) = common::switchable_function().await;
    nats::create_stream(SHARED_URL, &stream, &[&format!("{root}.>")]).await;
    let cfg = config(
        SHARED_URL,
        "",
        &http_fn("f", &server.url("/f")),
        &yaml!(
            "  - { name: t, from: { connector: bus, stream: <stream>, topic: \"<root>.>\", group: g<uid> }, to: f }\n",
            stream = stream,
            root = root,
            uid = uid()
        ),
    );
    let subject = format!("{root}.x");
    common::outage_loses_nothing("jetstream", &cfg, &server, &down, N, outage, move |range| {
        let subject = subject.clone();
        async move {
            let msgs = range
                .map(|i| (subject.clone(), i.to_string().into_bytes()))
                .collect();
            nats::js_publish(SHARED_URL, msgs).await;
        }
    })
    .await;
}

/// With default delivery settings and no dead letter, a function down
/// for 5 s loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_a_five_second_function_outage_loses_nothing() {
    jetstream_outage(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_in_the_url_work_and_never_reach_the_log() {
    let password = format!("S3CRET{}", uid());
    let nats = NatsServer::start_with(&["--user", "fnb", "--pass", &password]).await;
    let url = nats
        .url()
        .replace("nats://", &format!("nats://fnb:{password}@"));
    let subject = format!("auth{}", uid());
    let server = FnServer::start().await;
    let fb = Fnbroker::start_env(
        &config(
            &url,
            "",
            &http_fn("f", &server.url("/f")),
            &yaml!(
                "  - { name: t, from: { connector: bus, topic: \"<subject>\" }, to: f }\n",
                subject = subject
            ),
        ),
        &[("RUST_LOG", "debug")],
    )
    .await;
    // async-nats 0.51 does not take credentials from the URL it is given (a plain
    // `async_nats::connect("nats://fnb:PASS@...")` fails with "authorization violation"), which
    // is why fnbroker moves them into the options: the publisher here does the same.
    let publisher =
        async_nats::ConnectOptions::with_user_and_password("fnb".into(), password.clone())
            .connect(nats.url())
            .await
            .expect("connect with the password");
    publisher
        .publish(subject.clone(), "hello".into())
        .await
        .expect("publish");
    publisher.flush().await.expect("flush");
    let got = server.wait_count("/f", 1, WAIT).await;
    assert_eq!(&got[0].body[..], b"hello");
    let logs = fb.logs();
    assert!(
        logs.contains("async_nats"),
        "debug logs of the client are on"
    );
    assert!(
        !logs.contains(&password),
        "the password is in the log:\n{logs}"
    );
    drop(fb);
}

/// Authentication end to end: a fnbroker on `url` with the connection keys `good` delivers what
/// `publisher` publishes (`body`, to a new subject) to its function; one with `bad` warns, naming
/// the connector, and is not ready. Returns the good run's log and the bad fnbroker.
async fn authenticates_and_refuses(
    url: &str,
    good: &str,
    publisher: async_nats::Client,
    body: &'static str,
    bad: &str,
) -> (String, Fnbroker) {
    let subject = format!("auth{}", uid());
    let server = FnServer::start().await;
    let trigger = yaml!(
        "  - { name: t, from: { connector: bus, topic: \"<subject>\" }, to: f }\n",
        subject = subject
    );
    let conf = |keys: &str| config(url, keys, &http_fn("f", &server.url("/f")), &trigger);
    let fb = Fnbroker::start(&conf(good)).await;
    publisher
        .publish(subject.clone(), body.into())
        .await
        .expect("publish");
    publisher.flush().await.expect("flush");
    let got = server.wait_count("/f", 1, WAIT).await;
    assert_eq!(&got[0].body[..], body.as_bytes());
    let logs = fb.logs();
    drop(fb);
    let wrong = Fnbroker::spawn(&conf(bad));
    common::not_ready_with_a_warning(&wrong, "bus").await;
    (logs, wrong)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_client_certificates_and_a_wrong_ca_is_not_ready() {
    use common::pki::{Pki, pki};
    let pki = pki();
    let nats = NatsServer::start_with(&[
        "--tls",
        "--tlscert",
        &Pki::s(&pki.server_cert),
        "--tlskey",
        &Pki::s(&pki.server_key),
        "--tlsverify",
        "--tlscacert",
        &Pki::s(&pki.ca),
    ])
    .await;
    let url = format!("tls://localhost:{}", nats.port);
    let tls = |ca: &std::path::Path| {
        yaml!(
            ", tls: { ca: <ca>, cert: <cert>, key: <key> }",
            ca = Pki::s(ca),
            cert = Pki::s(&pki.client_cert),
            key = Pki::s(&pki.client_key)
        )
    };
    let publisher = async_nats::ConnectOptions::new()
        .add_root_certificates(pki.ca.clone())
        .add_client_certificate(pki.client_cert.clone(), pki.client_key.clone())
        .require_tls(true)
        .connect(&url)
        .await
        .expect("connect over mTLS");
    // A CA that did not sign the server's certificate: never ready, and the log says why.
    let (_, wrong) = authenticates_and_refuses(
        &url,
        &tls(&pki.ca),
        publisher,
        "over tls",
        &tls(&pki.other_ca),
    )
    .await;
    let logs = wrong.logs();
    // async-nats 0.51 reports the failed attempt as "IO error" without its cause; the warning
    // names the connector, the servers and what to check.
    let warning = logs
        .lines()
        .find(|l| l.contains("WARN") && l.contains("connector=bus"))
        .unwrap_or_else(|| panic!("no warning naming the connector:\n{logs}"));
    assert!(
        warning.contains("tls.ca") && warning.contains(&url),
        "{warning}"
    );
    assert!(
        logs.lines()
            .filter(|l| l.contains("WARN") && l.contains("connector=bus"))
            .count()
            <= 2,
        "warnings are rate-limited:\n{logs}"
    );
    drop(wrong);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_nkey_user_connects_and_a_wrong_seed_does_not() {
    let user = nkeys::KeyPair::new_user();
    let seed = user.seed().expect("seed");
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = dir.path().join("nats.conf");
    std::fs::write(
        &conf,
        yaml!(
            "authorization { users = [ { nkey: <public_key> } ] }\n",
            public_key = user.public_key()
        ),
    )
    .expect("write");
    let nats = NatsServer::start_with(&["-c", &conf.display().to_string()]).await;
    let publisher = async_nats::ConnectOptions::with_nkey(seed.clone())
        .connect(nats.url())
        .await
        .expect("connect with the nkey");
    let other = nkeys::KeyPair::new_user().seed().expect("seed");
    let (logs, _) = authenticates_and_refuses(
        &nats.url(),
        &format!(", nkey: {seed}"),
        publisher,
        "signed",
        &format!(", nkey: {other}"),
    )
    .await;
    assert!(!logs.contains(&seed), "the seed is never logged");
}

/// A NATS JWT (the format `nsc` writes), signed by `issuer`.
fn nats_jwt(issuer: &nkeys::KeyPair, subject: &str, nats: serde_json::Value) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(r#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let iat = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let claims = serde_json::json!({
        "jti": uid().to_uppercase(),
        "iat": iat,
        "iss": issuer.public_key(),
        "name": "fnbroker-test",
        "sub": subject,
        "nats": nats,
    });
    let signed = format!("{header}.{}", b64.encode(claims.to_string()));
    let signature = issuer.sign(signed.as_bytes()).expect("sign");
    format!("{signed}.{}", b64.encode(signature))
}

/// A .creds file (user JWT and seed) of a new user signed by `account`.
fn creds(dir: &std::path::Path, name: &str, account: &nkeys::KeyPair) -> String {
    let user = nkeys::KeyPair::new_user();
    let jwt = nats_jwt(
        account,
        &user.public_key(),
        serde_json::json!({ "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1, "type": "user", "version": 2 }),
    );
    let seed = user.seed().expect("seed");
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n************************* IMPORTANT *************************\nNKEY Seed printed below can be used to sign and prove identity.\n\n-----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
        ),
    )
    .expect("write creds");
    path.display().to_string()
}

/// Synadia Cloud and `nsc`-managed servers authenticate users by a .creds file: a nats-server
/// in operator mode (operator and account JWTs made here) takes fnbroker's user, and refuses a
/// user signed by an account it does not know.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_creds_file_user_connects_and_an_unknown_account_does_not() {
    let operator = nkeys::KeyPair::new_operator();
    let account = nkeys::KeyPair::new_account();
    let operator_jwt = nats_jwt(
        &operator,
        &operator.public_key(),
        serde_json::json!({ "type": "operator", "version": 2 }),
    );
    let account_jwt = nats_jwt(
        &operator,
        &account.public_key(),
        serde_json::json!({
            "limits": { "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "wildcards": true, "conn": -1, "leaf": -1 },
            "default_permissions": { "pub": {}, "sub": {} },
            "type": "account",
            "version": 2
        }),
    );
    // JetStream (the test servers run with -js) needs a system account in operator mode.
    let system = nkeys::KeyPair::new_account();
    let system_jwt = nats_jwt(
        &operator,
        &system.public_key(),
        serde_json::json!({ "type": "account", "version": 2 }),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = dir.path().join("nats.conf");
    std::fs::write(
        &conf,
        yaml!("operator: <operator_jwt>\nsystem_account: <sys>\nresolver: MEMORY\nresolver_preload: {\n  <acc>: <account_jwt>\n  <sys>: <system_jwt>\n}\n", operator_jwt = operator_jwt, sys = system.public_key(), acc = account.public_key(), account_jwt = account_jwt, system_jwt = system_jwt),
    )
    .expect("write");
    let nats = NatsServer::start_with(&["-c", &conf.display().to_string()]).await;
    let fnbroker_creds = creds(dir.path(), "fnbroker.creds", &account);
    let publisher_creds = creds(dir.path(), "publisher.creds", &account);
    let stranger = creds(dir.path(), "stranger.creds", &nkeys::KeyPair::new_account());
    let publisher = async_nats::ConnectOptions::with_credentials_file(&publisher_creds)
        .await
        .expect("read the creds")
        .connect(nats.url())
        .await
        .expect("connect with the creds");
    authenticates_and_refuses(
        &nats.url(),
        &format!(", credentials: {fnbroker_creds}"),
        publisher,
        "signed by the account",
        &format!(", credentials: {stranger}"),
    )
    .await;
}

/// Replicas: two processes on one JetStream durable consumer share it; one is killed
/// with SIGKILL mid-stream, the other takes every later message and, after `ack_wait` (14 s
/// with a 2 s timeout), what the killed one held unacknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_a_replica_killed_hands_its_messages_to_the_other() {
    const N: usize = 1_000;
    let root = format!("rk{}", uid());
    let stream = format!("S{}", uid());
    nats::create_stream(SHARED_URL, &stream, &[&format!("{root}.>")]).await;
    let group = format!("g{}", uid());
    let server = FnServer::with(|_, _| Answer::ok().delay(Duration::from_millis(2))).await;
    let cfg = |path: &str| {
        config(
            SHARED_URL,
            "",
            &yaml!(
                "  f: { http: { url: \"<url>\" }, timeout: 2s }\n",
                url = server.url(path)
            ),
            &yaml!(
                "  - { name: t, from: { connector: bus, stream: <stream>, topic: \"<root>.>\", group: <group> }, to: f, delivery: { max_in_flight: 16 } }\n",
                stream = stream,
                root = root,
                group = group
            ),
        )
    };
    let subject = format!("{root}.m");
    let b = common::replica_killed(
        "jetstream",
        &server,
        cfg,
        N,
        common::AfterKill::Survivor,
        |range| {
            nats::js_publish(
                SHARED_URL,
                range
                    .map(|i| (subject.clone(), i.to_string().into_bytes()))
                    .collect(),
            )
        },
    )
    .await;
    wait_for("every message", WAIT, || {
        common::delivered_numbers(&server, &["/a", "/b"]).0.len() >= N
    })
    .await;
    drop(b);
}

/// Replicas: two processes in one core NATS queue group; one is killed with SIGKILL,
/// the other gets every message published from then on (core NATS keeps nothing: what the
/// killed one held is gone, at most once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_a_replica_killed_leaves_the_queue_group_to_the_other() {
    const N: usize = 1_000;
    let root = format!("qk{}", uid());
    let server = FnServer::start().await;
    let cfg = |path: &str| queue_group(&server, &root, path);
    let subject = format!("{root}.m");
    let b = common::replica_killed(
        "nats core",
        &server,
        cfg,
        N,
        common::AfterKill::Survivor,
        |range| {
            nats::publish(
                SHARED_URL,
                range
                    .map(|i| {
                        (
                            subject.clone(),
                            HeaderMap::new(),
                            i.to_string().into_bytes(),
                        )
                    })
                    .collect(),
            )
        },
    )
    .await;
    drop(b);
}

/// A stream holding the plain messages `0..n` under a new root subject: (stream, root).
async fn numbers(n: usize) -> (String, String) {
    let root = format!("g{}", uid());
    let stream = format!("S{}", uid());
    nats::create_stream(SHARED_URL, &stream, &[&format!("{root}.>")]).await;
    nats::js_publish(
        SHARED_URL,
        (0..n)
            .map(|i| (format!("{root}.x"), i.to_string().into_bytes()))
            .collect(),
    )
    .await;
    (stream, root)
}

async fn functions_view(fb: &Fnbroker) -> serde_json::Value {
    let text = reqwest::get(format!("http://127.0.0.1:{}/v1/functions", fb.admin))
        .await
        .expect("/v1/functions")
        .text()
        .await
        .expect("body");
    serde_json::from_str(&text).expect("JSON")
}

/// The sum of the samples of `name` (over its label sets; a prefix such as
/// `name{trigger="t"` narrows them).
fn sample(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next())
        .filter_map(|v| v.parse::<f64>().ok())
        .sum()
}

/// A function that fails every call (500) behind a circuit breaker. Once `min_calls`
/// calls failed the breaker opens: deliveries wait instead of spending their attempts (the
/// function sees a probe per `open_for`, not a storm of retries, and the events are not
/// dropped); when the function recovers, a probe closes the breaker and everything else is
/// delivered. `/v1/functions` and the metrics show the state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_a_circuit_breaker_holds_deliveries_instead_of_spending_retries() {
    const N: usize = 100;
    let failing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flag = std::sync::Arc::clone(&failing);
    let server = FnServer::with(move |_, _| {
        if flag.load(std::sync::atomic::Ordering::SeqCst) {
            Answer::status(500)
        } else {
            Answer::ok()
        }
    })
    .await;
    let (stream, root) = numbers(N).await;
    let cfg = config(
        SHARED_URL,
        "",
        &yaml!(
            "  f:\n    http: { url: \"<f_url>\" }\n    timeout: 2s\n    circuit_breaker: { failure_ratio: 0.5, min_calls: 5, window: 30s, open_for: 1s }\n",
            f_url = server.url("/f")
        ),
        &yaml!(
            "  - { name: t, from: { connector: bus, stream: <stream>, topic: \"<root>.>\", group: g<uid> }, to: f, delivery: { retries: 2, delay: 100ms, max_delay: 200ms, max_in_flight: 4 } }\n",
            stream = stream,
            root = root,
            uid = uid()
        ),
    );
    let fb = Fnbroker::start(&cfg).await;
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let view = functions_view(&fb).await;
        if view["f"]["circuit_state"] != "closed" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the breaker never opened: {view}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let opened_after = server.count("/f");
    let metrics = fb.metrics().await;
    // Open for 1 s at a time: the next calls are the probes, one per second at the most, not
    // the retries of 100 events.
    let opened_at = std::time::Instant::now();
    wait_for("two probes", WAIT, || {
        server.count("/f") >= opened_after + 2
    })
    .await;
    let took = opened_at.elapsed();
    let during = server.count("/f") - opened_after;
    println!(
        "circuit breaker: open after {opened_after} calls; {during} calls in the next {took:?}"
    );
    assert!(during <= 3, "{during} calls while the breaker was open");
    assert!(took >= Duration::from_millis(900), "two probes in {took:?}");
    assert!(
        metrics.contains("fnbroker_function_circuit_state{function=\"f\"} 1")
            || metrics.contains("fnbroker_function_circuit_state{function=\"f\"} 2"),
        "{metrics}"
    );
    failing.store(false, std::sync::atomic::Ordering::SeqCst);
    let delivered = || {
        server
            .on("/f")
            .iter()
            .filter(|r| r.status == 200)
            .map(|r| r.body.clone())
            .collect::<HashSet<_>>()
            .len()
    };
    let dropped = || async { sample(&fb.metrics().await, "fnbroker_events_dropped_total") };
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let d = dropped().await as usize;
        if delivered() + d >= N {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "delivered {} + dropped {d} of {N}",
            delivered()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let d = dropped().await as usize;
    println!(
        "circuit breaker: {} delivered, {d} dropped (failed before it opened)",
        delivered()
    );
    assert!(
        d <= 2,
        "{d} events spent their attempts: the breaker should hold them"
    );
    assert_eq!(functions_view(&fb).await["f"]["circuit_state"], "closed");
    assert!(sample(&fb.metrics().await, "fnbroker_function_held_total") > 0.0);
}

/// A rate limit of 20 calls per second with a burst of 5: over the whole stream, no
/// second holds more than 25 calls (slower machines only spread them more), and every event
/// arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_a_rate_limit_spaces_the_calls() {
    const N: usize = 60;
    let server = FnServer::start().await;
    let (stream, root) = numbers(N).await;
    let cfg = config(
        SHARED_URL,
        "",
        &yaml!(
            "  f:\n    http: { url: \"<f_url>\" }\n    rate_limit: { per_second: 20, burst: 5 }\n",
            f_url = server.url("/f")
        ),
        &yaml!(
            "  - { name: t, from: { connector: bus, stream: <stream>, topic: \"<root>.>\", group: g<uid> }, to: f }\n",
            stream = stream,
            root = root,
            uid = uid()
        ),
    );
    let fb = Fnbroker::start(&cfg).await;
    server.wait_count("/f", N, WAIT).await;
    let mut at: Vec<std::time::Instant> = server.on("/f").iter().map(|r| r.at).collect();
    at.sort();
    let busiest = at
        .iter()
        .map(|start| {
            at.iter()
                .filter(|t| **t >= *start && t.duration_since(*start) < Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap_or(0);
    println!("rate limit 20/s, burst 5: at most {busiest} calls in one second");
    assert!(busiest <= 25, "{busiest} calls in one second");
    assert!(sample(&fb.metrics().await, "fnbroker_function_held_total") > 0.0);
    assert_eq!(
        functions_view(&fb).await["f"]["rate_limit"]["per_second"],
        20
    );
}

/// `fnbroker redrive` of JetStream dead letters (a durable consumer of its own on the
/// stream that captures the subject), back to a trigger on a wildcard subject: each goes to the
/// concrete subject it first came on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_moves_dead_letters_back_exactly_once() {
    let root = format!("r{}", uid());
    let stream = format!("S{}", uid());
    let dlq = format!("dlq{}", uid());
    nats::create_stream(SHARED_URL, &format!("D{}", uid()), &[&format!("{dlq}.>")]).await;
    let cfg = |url: &str| {
        config(
            SHARED_URL,
            ", publish: jetstream",
            &http_fn("f", url),
            &yaml!(
                "  - { name: t, from: { connector: bus, stream: <stream>, topic: \"<root>.>\", group: g<uid>, create: true }, to: f, dead_letter: { connector: bus, topic: <dlq>.orders } }\n",
                stream = stream,
                root = root,
                uid = uid(),
                dlq = dlq
            ),
        )
    };
    let from = format!("bus:{dlq}.orders");
    let publish_root = root.clone();
    common::redrive_round_trip(
        cfg,
        &from,
        6,
        common::Kept::Released,
        false,
        |n| async move {
            let messages = (0..n)
                .map(|i| {
                    (
                        format!("{publish_root}.dev{}", i % 3),
                        format!("{i}").into_bytes(),
                    )
                })
                .collect();
            nats::js_publish(SHARED_URL, messages).await;
        },
    )
    .await;
}

/// Durable retry state on JetStream: fnbroker creates the retry stream and its
/// durable consumer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_in_a_stream_reach_the_function_once_it_is_back() {
    let root = format!("rt{}", uid());
    let stream = format!("S{}", uid());
    let trigger = format!("t{}", uid());
    let cfg = |url: &str| {
        config(
            SHARED_URL,
            ", publish: jetstream",
            &http_fn("f", url),
            &yaml!(
                "  - { name: <trigger>, from: { connector: bus, stream: <stream>, topic: \"<root>.in\", group: g, create: true }, to: f, delivery: { retries: 20, backoff: constant, delay: 500ms, retry_topic: { connector: bus, topic: <root>.retry } } }\n",
                trigger = trigger,
                stream = stream,
                root = root
            ),
        )
    };
    let subject = format!("{root}.in");
    common::retry_topic_outlives_an_outage(cfg, |n| async move {
        let messages = (0..n)
            .map(|i| (subject.clone(), i.to_string().into_bytes()))
            .collect();
        nats::js_publish(SHARED_URL, messages).await;
    })
    .await;
}

/// Publishes `n` messages (`body(i)`) on core NATS at full speed, then flushes.
async fn burst(subject: &str, n: usize, body: impl Fn(usize) -> String) {
    let client = nats::connect(SHARED_URL).await;
    for i in 0..n {
        client
            .publish(subject.to_string(), body(i).into())
            .await
            .expect("publish");
    }
    client.flush().await.expect("flush");
}

/// A burst of 100,000 events of 256 B published at full speed to a core NATS subject: with the
/// default `buffer` nothing is dropped. (With the old 4,096-message subscription buffer of the
/// client, fnbroker received 10-16k of them, and its trigger summary said `dropped=0`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_a_burst_within_the_default_buffer_loses_nothing() {
    const N: usize = 100_000;
    let server = FnServer::start().await;
    let subject = format!("burst{}", uid());
    let fb = Fnbroker::start(&config(
        SHARED_URL,
        "",
        &http_fn("f", &server.url("/f")),
        &yaml!(
            "  - { name: t, from: { connector: bus, topic: <subject> }, to: f }\n",
            subject = subject
        ),
    ))
    .await;
    let pad = "x".repeat(250);
    burst(&subject, N, |i| format!("{i:06}{pad}")).await;
    wait_for("every event of the burst", Duration::from_secs(120), || {
        server.count("/f") >= N
    })
    .await;
    let metrics = fb.metrics().await;
    assert_eq!(
        sample(&metrics, "fnbroker_events_dropped_total{"),
        0.0,
        "{metrics}"
    );
}

/// A burst past a small `buffer` (100 messages, one delivery at a time): what does not fit is
/// dropped, and every drop is counted: delivered + dropped = published, exactly. The drops are
/// said once at WARN, and `/readyz` names the subscription (without making the process unready).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_a_burst_past_the_buffer_is_counted_exactly() {
    const N: usize = 20_000;
    let server = FnServer::start().await;
    let subject = format!("over{}", uid());
    let fb = Fnbroker::start(&config(
        SHARED_URL,
        "",
        &http_fn("f", &server.url("/f")),
        &yaml!("  - { name: t, from: { connector: bus, topic: <subject>, buffer: 100 }, to: f, delivery: { max_in_flight: 1 } }\n", subject = subject),
    ))
    .await;
    burst(&subject, N, |i| i.to_string()).await;
    let dropped = |metrics: &str| {
        sample(
            metrics,
            "fnbroker_events_dropped_total{trigger=\"t\",function=\"f\",reason=\"slow_consumer\"}",
        ) as usize
    };
    let deadline = std::time::Instant::now() + WAIT;
    let (delivered, lost) = loop {
        let metrics = fb.metrics().await;
        let (delivered, lost) = (server.count("/f"), dropped(&metrics));
        if delivered + lost >= N {
            break (delivered, lost);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "delivered {delivered} + dropped {lost} of {N}\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Settled: nothing more arrives or is counted.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(server.count("/f"), delivered);
    assert_eq!(delivered + lost, N, "delivered {delivered}, dropped {lost}");
    assert!(lost > 0, "the burst fit in 100 messages");
    let ready = reqwest::get(format!("http://127.0.0.1:{}/readyz", fb.admin))
        .await
        .expect("/readyz")
        .text()
        .await
        .expect("body");
    let ready: serde_json::Value = serde_json::from_str(&ready).expect("JSON");
    assert_eq!(ready["ready"], true, "{ready}");
    assert_eq!(ready["dropping"][0]["dropped"], lost, "{ready}");
    let said = fb
        .logs()
        .matches("messages dropped before a trigger saw them")
        .count();
    assert_eq!(said, 1, "one warning per episode:\n{}", fb.logs());
}

/// A reload that narrows a JetStream trigger's topic (`orders.*` to `orders.eu`) and its
/// `max_in_flight` brings the durable consumer on the server along: its filter, `ack_wait` and
/// `max_ack_pending` are the trigger's afterwards (and after a restart), and the function no
/// longer gets what the old filter let through. (The consumer used to keep its first settings
/// for good, while the log said the new ones.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_a_reload_updates_the_durable_consumer() {
    let server = FnServer::start().await;
    let root = format!("u{}", uid());
    let stream = format!("U{}", uid());
    nats::create_stream(SHARED_URL, &stream, &[&format!("{root}.>")]).await;
    let group = format!("g{}", uid());
    let cfg = |topic: &str, max: usize, timeout: &str| {
        config(
            SHARED_URL,
            "",
            &http_fn("f", &server.url("/f")),
            &yaml!(
                "  - { name: t, from: { connector: bus, stream: <stream>, topic: \"<root>.<topic>\", group: <group> }, to: f, delivery: { max_in_flight: <max>, timeout: <timeout> } }\n",
                stream = stream,
                root = root,
                topic = topic,
                group = group,
                max = max,
                timeout = timeout
            ),
        )
    };
    let fb = Fnbroker::start(&cfg("orders.*", 256, "5s")).await;
    let info = || async {
        let js = async_nats::jetstream::new(nats::connect(SHARED_URL).await);
        let s = js.get_stream(&stream).await.expect("stream");
        s.consumer_info(&group)
            .await
            .expect("consumer info")
            .config
            .clone()
    };
    let before = info().await;
    assert_eq!(before.filter_subject, format!("{root}.orders.*"));
    assert_eq!(before.max_ack_pending, 256);
    fb.rewrite(&cfg("orders.eu", 16, "2s"));
    fb.signal("HUP");
    let view = fb.wait_reloads(1, 0).await;
    assert_eq!(view["pending"], serde_json::json!([]), "{view}");
    let after = info().await;
    assert_eq!(after.filter_subject, format!("{root}.orders.eu"));
    assert_eq!(after.max_ack_pending, 16);
    assert_eq!(after.ack_wait, Duration::from_secs(14), "2 x 2 s + 10 s");
    fb.wait_log("jetstream consumer updated", WAIT).await;
    nats::js_publish(
        SHARED_URL,
        vec![
            (format!("{root}.orders.us"), b"us".to_vec()),
            (format!("{root}.orders.eu"), b"eu".to_vec()),
            (format!("{root}.orders.eu"), b"eu2".to_vec()),
        ],
    )
    .await;
    // The stream delivers in order: had the old filter taken `us`, it would come before `eu2`.
    server.wait_count("/f", 2, WAIT).await;
    let mut bodies: Vec<_> = server.on("/f").iter().map(|r| r.body.clone()).collect();
    bodies.sort();
    assert_eq!(
        bodies,
        vec![
            bytes::Bytes::from_static(b"eu"),
            bytes::Bytes::from_static(b"eu2")
        ]
    );
}

//! End-to-end: the real `fnbroker` binary with the machine's Redis (127.0.0.1:6379) and a real
//! HTTP function server. Streams and groups are unique to each test, which deletes its streams.

use crate::common;

use std::time::Duration;

use common::redis::{self as r, URL};
use common::{Answer, FnServer, Fnbroker, wait_for};

const WAIT: Duration = Duration::from_secs(60);

/// A configuration with the connector `cache` (with `extra` settings), `functions` and
/// `triggers` (YAML lines).
fn config(extra: &str, functions: &str, triggers: &str) -> String {
    yaml!(
        "connectors:\n  cache: { redis: { url: \"<URL>\"<extra> } }\nfunctions:\n<functions>triggers:\n<triggers>",
        URL = URL,
        extra = extra,
        functions = functions,
        triggers = triggers
    )
}

fn http_fn(name: &str, url: &str) -> String {
    yaml!(
        "  <name>: { http: { url: \"<url>\" }, timeout: 5s }\n",
        name = name,
        url = url
    )
}

/// One trigger `t` from `stream` (group `g`, made when missing) to `/f` of `server`, with
/// `extra` after `to: f`.
fn stream_to_f(server: &FnServer, path: &str, stream: &str, extra: &str) -> String {
    config(
        "",
        &http_fn("f", &server.url(path)),
        &yaml!(
            "  - { name: t, from: { connector: cache, topic: \"<stream>\", group: g, create: true }, to: f<extra> }\n",
            stream = stream,
            extra = extra
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_binary_and_structured_entries_reach_the_function() {
    let mut conn = r::connect().await;
    let stream = r::unique("orders");
    let server = FnServer::start().await;
    let fb = Fnbroker::start(&stream_to_f(&server, "/f", &stream, "")).await;
    r::add(
        &mut conn,
        &stream,
        &[
            ("content-type", b"application/json"),
            ("data", br#"{"mode":"plain"}"#),
        ],
    )
    .await;
    r::add(
        &mut conn,
        &stream,
        &[("device", b"d-7"), ("mode", b"fields")],
    )
    .await;
    r::add(
        &mut conn,
        &stream,
        &[
            ("ce_specversion", b"1.0"),
            ("ce_id", b"b-1"),
            ("ce_source", b"/shop"),
            ("ce_type", b"com.example.binary"),
            ("content-type", b"application/json"),
            ("data", br#"{"mode":"binary"}"#),
        ],
    )
    .await;
    r::add(
        &mut conn,
        &stream,
        &[
            ("content-type", b"application/cloudevents+json"),
            ("data", br#"{"specversion":"1.0","id":"s-1","source":"/shop","type":"com.example.structured","data":{"mode":"structured"}}"#),
        ],
    )
    .await;
    let got = server.wait_count("/f", 4, WAIT).await;
    let find = |mode: &str| {
        got.iter()
            .find(|r| {
                serde_json::from_slice::<serde_json::Value>(&r.body)
                    .is_ok_and(|v| v["mode"] == mode)
            })
            .unwrap_or_else(|| panic!("{mode} missing"))
    };
    let p = find("plain");
    assert_eq!(p.header("ce-type"), Some("fnbroker.redis.message"));
    assert_eq!(
        p.header("ce-source"),
        Some(format!("redis://cache/{stream}").as_str())
    );
    assert_eq!(p.header("ce-subject"), Some(stream.as_str()));
    assert!(
        p.header("ce-id").is_some_and(|id| id.contains('-')),
        "the entry id"
    );
    assert!(p.header("ce-time").is_some(), "the time of the entry id");
    let f = find("fields");
    assert_eq!(f.header("content-type"), Some("application/json"));
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&f.body).expect("json")["device"],
        "d-7"
    );
    let b = find("binary");
    assert_eq!(b.header("ce-id"), Some("b-1"));
    assert_eq!(b.header("ce-type"), Some("com.example.binary"));
    let s = find("structured");
    assert_eq!(s.header("ce-id"), Some("s-1"));
    // Every entry was acknowledged.
    r::wait_settled(&mut conn, &stream, "g", &fb.logs()).await;
    drop(fb);
    r::delete(&mut conn, &[&stream]).await;
}

/// `ordered: true`: one stream is one ordering key, delivered one entry at a time in order, even
/// when the function answers each call after a different delay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ordered_trigger_delivers_the_stream_in_order() {
    const N: usize = 300;
    let mut conn = r::connect().await;
    let stream = r::unique("ordered");
    let server =
        FnServer::with(|_, i| Answer::ok().delay(Duration::from_millis((i % 4) as u64))).await;
    r::add_numbers(&mut conn, &stream, 0..N).await;
    let fb = Fnbroker::start(&stream_to_f(
        &server,
        "/f",
        &stream,
        ", delivery: { ordered: true }",
    ))
    .await;
    let got = server.wait_count("/f", N, WAIT).await;
    let order: Vec<usize> = got
        .iter()
        .filter_map(|r| std::str::from_utf8(&r.body).ok()?.parse().ok())
        .collect();
    assert_eq!(order, (0..N).collect::<Vec<_>>());
    drop(fb);
    r::delete(&mut conn, &[&stream]).await;
}

/// 5,000 entries, kill -9 in the middle, start again: every entry reaches the function (the
/// restarted replica reads the entries it held first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_in_the_middle_loses_nothing() {
    const N: usize = 5_000;
    let mut conn = r::connect().await;
    let stream = r::unique("kill");
    let server = FnServer::start().await;
    r::add_numbers(&mut conn, &stream, 0..N).await;
    let cfg = stream_to_f(&server, "/f", &stream, ", delivery: { max_in_flight: 128 }");
    common::kill_9_midway_loses_nothing("redis", &server, &cfg, N, 500).await;
    r::delete(&mut conn, &[&stream]).await;
}

/// Two replicas in one group (on one host here, so each is given its own `consumer` name); one
/// is killed with SIGKILL mid-stream. The survivor takes every later
/// entry and, once they were idle for `claim_after` (2 s), the ones the killed replica held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_hands_its_entries_to_the_other() {
    const N: usize = 1_000;
    let stream = r::unique("replicas");
    // `a` answers slowly, so that it holds entries when it is killed.
    let server = FnServer::with(|path, _| {
        Answer::ok().delay(Duration::from_millis(if path == "/a" { 300 } else { 2 }))
    })
    .await;
    let cfg = |path: &str| {
        config(
            &format!(
                ", claim_after: 2s, consumer: replica{}",
                path.replace('/', "-")
            ),
            &http_fn("f", &server.url(path)),
            &yaml!(
                "  - { name: t, from: { connector: cache, topic: \"<stream>\", group: g, create: true }, to: f, delivery: { max_in_flight: 16 } }\n",
                stream = stream
            ),
        )
    };
    let publisher = std::sync::Arc::new(tokio::sync::Mutex::new(r::connect().await));
    let b = common::replica_killed(
        "redis",
        &server,
        cfg,
        N,
        common::AfterKill::Survivor,
        |range| {
            let publisher = std::sync::Arc::clone(&publisher);
            let stream = stream.clone();
            async move {
                let mut conn = publisher.lock().await;
                r::add_numbers(&mut conn, &stream, range).await;
            }
        },
    )
    .await;
    wait_for("every entry, the killed replica's too", WAIT, || {
        common::delivered_numbers(&server, &["/a", "/b"]).0.len() >= N
    })
    .await;
    // What `a` held when it died was claimed by `b` and acknowledged.
    let mut conn = publisher.lock().await;
    r::wait_settled(&mut conn, &stream, "g", &b[0].logs()).await;
    assert!(
        b[0].logs().contains("claimed entries idle for claim_after"),
        "{}",
        b[0].logs()
    );
    drop(b);
    r::delete(&mut conn, &[&stream]).await;
}

/// Replies and dead letters go into streams: a reply is an entry in binary mode with the
/// function's answer as `data`; an entry the function refuses ends as a dead letter with the
/// `dlq*` attributes, and is acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_and_dead_letters_are_added_to_streams() {
    let mut conn = r::connect().await;
    let (stream, replies, letters) = (r::unique("in"), r::unique("replies"), r::unique("dlq"));
    let server = FnServer::with_body(|_, body, _| {
        if body == b"bad" {
            Answer::status(400)
        } else {
            Answer::ok().body("text/plain", b"pong")
        }
    })
    .await;
    let fb = Fnbroker::start(&config(
        ", maxlen: 1000",
        &http_fn("f", &server.url("/f")),
        &yaml!("  - { name: t, from: { connector: cache, topic: \"<stream>\", group: g, create: true }, to: f, reply: { connector: cache, topic: \"<replies>\" }, dead_letter: { connector: cache, topic: \"<letters>\" } }\n", stream = stream, replies = replies, letters = letters),
    ))
    .await;
    r::add(&mut conn, &stream, &[("data", b"ping")]).await;
    r::add(&mut conn, &stream, &[("data", b"bad")]).await;
    let mut got = (Vec::new(), Vec::new());
    for _ in 0..400 {
        got = (
            r::entries(&mut conn, &replies).await,
            r::entries(&mut conn, &letters).await,
        );
        if !got.0.is_empty() && !got.1.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let field = |entry: &[(String, String)], name: &str| {
        entry
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let reply = got
        .0
        .first()
        .unwrap_or_else(|| panic!("no reply:\n{}", fb.logs()));
    assert_eq!(
        field(reply, "ce_type").as_deref(),
        Some("fnbroker.redis.message.reply")
    );
    assert_eq!(
        field(reply, "ce_source").as_deref(),
        Some("fnbroker://functions/f")
    );
    assert_eq!(field(reply, "content-type").as_deref(), Some("text/plain"));
    assert_eq!(field(reply, "data").as_deref(), Some("pong"));
    let letter = got
        .1
        .first()
        .unwrap_or_else(|| panic!("no dead letter:\n{}", fb.logs()));
    assert_eq!(field(letter, "ce_dlqstatus").as_deref(), Some("400"));
    assert_eq!(field(letter, "ce_dlqtrigger").as_deref(), Some("t"));
    assert_eq!(field(letter, "data").as_deref(), Some("bad"));
    r::wait_settled(&mut conn, &stream, "g", &fb.logs()).await;
    drop(fb);
    r::delete(&mut conn, &[&stream, &replies, &letters]).await;
}

/// A group that is not there, without `create: true`, is an error at start that says what to
/// do; `fnbroker send` adds one event to a stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_group_is_an_error_at_start_and_send_adds_an_entry() {
    let mut conn = r::connect().await;
    let stream = r::unique("nogroup");
    let server = FnServer::start().await;
    let mut fb = Fnbroker::spawn(&config(
        "",
        &http_fn("f", &server.url("/f")),
        &yaml!(
            "  - { name: t, from: { connector: cache, topic: \"<stream>\", group: nobody }, to: f }\n",
            stream = stream
        ),
    ));
    let status = fb.wait_exit(WAIT).await;
    assert!(!status.success());
    assert!(
        fb.logs().contains("has no consumer group `nobody`") && fb.logs().contains("create: true"),
        "{}",
        fb.logs()
    );

    let (code, out, err) = common::run_once(
        &yaml!(
            "connectors:\n  cache: { redis: { url: \"<URL>\" } }\n",
            URL = URL
        ),
        &[
            "send",
            "--connector",
            "cache",
            "--topic",
            &stream,
            "--type",
            "com.example.manual",
            "--source",
            "/me",
            "--data",
            r#"{"hello":"world"}"#,
        ],
    );
    assert_eq!(code, 0, "{err}");
    let entries = r::entries(&mut conn, &stream).await;
    assert_eq!(entries.len(), 1);
    let fields: std::collections::HashMap<_, _> = entries[0].iter().cloned().collect();
    assert_eq!(fields.get("ce_id").map(String::as_str), Some(out.trim()));
    assert_eq!(
        fields.get("ce_type").map(String::as_str),
        Some("com.example.manual")
    );
    assert_eq!(
        fields.get("data").map(String::as_str),
        Some(r#"{"hello":"world"}"#)
    );
    r::delete(&mut conn, &[&stream]).await;
}

/// A failed attempt leaves the entry pending; this consumer claims it again after the backoff
/// delay, the group counting the deliveries: the function sees the attempts the policy allows,
/// spaced by the delay, and the dead letter says how many there were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_come_back_through_the_group_after_the_delay_then_dead_letter() {
    let mut conn = r::connect().await;
    let stream = r::unique("retry");
    let server = FnServer::with(|path, _| match path {
        "/f" => Answer::status(500),
        _ => Answer::ok(),
    })
    .await;
    let fb = Fnbroker::start(&config(
        "",
        &(http_fn("f", &server.url("/f")) + &http_fn("dlq", &server.url("/dlq"))),
        &yaml!("  - { name: t, from: { connector: cache, topic: \"<stream>\", group: g, create: true }, to: f, delivery: { retries: 2, backoff: constant, delay: 700ms }, dead_letter: { function: dlq } }\n", stream = stream),
    ))
    .await;
    r::add(&mut conn, &stream, &[("data", b"bad")]).await;
    let letters = server.wait_count("/dlq", 1, WAIT).await;
    assert_eq!(
        letters[0].header("ce-dlqattempts"),
        Some("3"),
        "{}",
        fb.logs()
    );
    let calls = server.on("/f");
    assert_eq!(calls.len(), 3, "one delivery and two redeliveries");
    for pair in calls.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(
            gap >= Duration::from_millis(650),
            "delivered again after {gap:?}, not the backoff delay"
        );
    }
    r::wait_settled(&mut conn, &stream, "g", &fb.logs()).await;
    drop(fb);
    r::delete(&mut conn, &[&stream]).await;
}

/// TLS with a client certificate, through a TLS front (client certificates required) before
/// the machine's Redis: entries arrive; with another CA the connector is not ready and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_client_certificates_and_a_wrong_ca_is_not_ready() {
    use common::pki::Pki;
    let pki = common::pki::pki();
    let front = common::free_port();
    let proxy = common::tls_front(
        front,
        6379,
        fnbroker_core::tls::ServerTls {
            cert: Pki::s(&pki.server_cert),
            key: Pki::s(&pki.server_key),
            client_ca: Some(Pki::s(&pki.ca)),
        },
    )
    .await;
    let mut conn = r::connect().await;
    let stream = r::unique("tls");
    let server = FnServer::start().await;
    let cfg = |ca: &std::path::Path| {
        yaml!(
            "connectors:\n  cache: { redis: { url: \"rediss://127.0.0.1:<front>\", tls: { ca: \"<ca>\", cert: \"<cert>\", key: \"<key>\" } } }\nfunctions:\n<nfunctions>triggers:\n  - { name: t, from: { connector: cache, topic: \"<stream>\", group: g, create: true }, to: f }\n",
            front = front,
            ca = Pki::s(ca),
            cert = Pki::s(&pki.client_cert),
            key = Pki::s(&pki.client_key),
            nfunctions = http_fn("f", &server.url("/f")),
            stream = stream
        )
    };
    let fb = Fnbroker::start(&cfg(&pki.ca)).await;
    r::add(&mut conn, &stream, &[("data", b"over tls")]).await;
    let got = server.wait_count("/f", 1, WAIT).await;
    assert_eq!(got[0].body.as_ref(), b"over tls");
    drop(fb);

    let fb = Fnbroker::spawn(&cfg(&pki.other_ca));
    let warning = common::not_ready_with_a_warning(&fb, "cache").await;
    assert!(
        warning.to_lowercase().contains("certificate") || warning.contains("tls"),
        "{warning}"
    );
    drop(fb);
    proxy.abort();
    r::delete(&mut conn, &[&stream]).await;
}

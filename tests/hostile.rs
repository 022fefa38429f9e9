//! End-to-end: the real `fnbroker` binary under hostile input, as an attacker or a careless
//! operator would send it; where a bound is promised, the test measures it (RSS from /proc,
//! status codes, times).

use crate::common;

use std::time::{Duration, Instant};

use common::{Answer, FnServer, Fnbroker, free_port};
use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(20);
const MIB: usize = 1024 * 1024;

/// A configuration of one HTTP connector `web` on `port` (`settings` added after `listen`), one
/// function `f` (`function`: its definition) and one trigger `t` from `/in` (`from` added to
/// its `from`, `trigger` to the trigger).
fn one_trigger(port: u16, settings: &str, function: &str, from: &str, trigger: &str) -> String {
    yaml!(
        "connectors:\n  web: { http: { listen: 127.0.0.1:<port><settings> } }\nfunctions:\n  f: <function>\ntriggers:\n  - { name: t, from: { connector: web, topic: /in<from> }, to: f<trigger> }\n",
        port = port,
        settings = settings,
        function = function,
        from = from,
        trigger = trigger
    )
}

/// The definition of an HTTP function at `url`, with `extra` keys.
fn http_fn(url: &str, extra: &str) -> String {
    yaml!(
        "{ http: { url: \"<url>\" }<extra> }",
        url = url,
        extra = extra
    )
}

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

/// Sends a request head on a new connection; when no answer comes within half a second, sends
/// `body` too. Returns the answer's head (status line and headers, lowercase), `None` when none
/// came within `limit`.
async fn raw_status(addr: &str, head: &str, body: &[u8], limit: Duration) -> Option<String> {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(head.as_bytes()).await.expect("write head");
    let mut line = status_line(&mut s, Duration::from_millis(500)).await;
    if line.is_none() && !body.is_empty() {
        s.write_all(body).await.expect("write body");
        line = status_line(&mut s, limit).await;
    }
    line
}

/// The head of the answer on `s` (lowercase), `None` when none came within `limit`.
async fn status_line(s: &mut TcpStream, limit: Duration) -> Option<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    let until = tokio::time::Instant::now() + limit;
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout_at(until, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
    let head = text.split("\r\n\r\n").next().unwrap_or_default();
    (!head.is_empty()).then(|| head.to_string())
}

/// An async trigger whose function takes a minute, `max_in_flight: 4`, 200 concurrent 1 MiB
/// POSTs: the ingress holds its budget (4 MiB for the path) and refuses the rest with 503 and
/// `Retry-After` at once, before their bodies, instead of holding every one of them until the
/// function has room (before: 196 without an answer after 20 s, RSS 22 -> 519 MB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingress_that_cannot_deliver_refuses_at_once_within_its_budget() {
    let server = FnServer::with(|_, _| Answer::ok().delay(Duration::from_secs(60))).await;
    let port = free_port();
    let fb = Fnbroker::start(&one_trigger(
        port,
        ", max_body: 1MiB",
        &http_fn(&server.url("/f"), ", timeout: 90s"),
        "",
        ", delivery: { max_in_flight: 4 }",
    ))
    .await;
    let addr = format!("127.0.0.1:{port}");
    let before = common::rss_kib(fb.pid());
    let started = Instant::now();
    // Each request declares 1 MiB and sends it; a refused one is answered without it being read.
    let head = format!(
        "POST /in HTTP/1.1\r\nhost: x\r\ncontent-type: application/octet-stream\r\ncontent-length: {MIB}\r\n\r\n"
    );
    let body = vec![b'x'; MIB];
    let posts = (0..200).map(|_| {
        let (addr, head, body) = (addr.clone(), head.clone(), body.clone());
        tokio::spawn(async move {
            let status = raw_status(&addr, &head, &body, Duration::from_secs(20)).await;
            (status, Instant::now())
        })
    });
    let answers: Vec<_> = futures::future::join_all(posts)
        .await
        .into_iter()
        .map(|r| r.expect("task"))
        .collect();
    let after = common::rss_kib(fb.pid());
    let refused: Vec<_> = answers
        .iter()
        .filter(|(s, _)| s.as_deref().is_some_and(|s| s.contains(" 503 ")))
        .collect();
    let accepted = answers
        .iter()
        .filter(|(s, _)| s.as_deref().is_some_and(|s| s.contains(" 202 ")))
        .count();
    let unanswered = answers.iter().filter(|(s, _)| s.is_none()).count();
    let slowest_refusal = refused
        .iter()
        .map(|(_, at)| at.duration_since(started))
        .max()
        .unwrap_or_default();
    eprintln!(
        "200 x 1 MiB: {accepted} accepted, {} refused (the last after {slowest_refusal:?}), {unanswered} unanswered; RSS {} -> {} MiB",
        refused.len(),
        before / 1024,
        after / 1024
    );
    assert!(accepted >= 4, "the function's 4 slots were filled");
    assert!(
        refused.len() >= 180,
        "{} of 200 refused with 503",
        refused.len()
    );
    assert!(
        slowest_refusal < Duration::from_secs(10),
        "refusals come at once, not after a wait ({slowest_refusal:?})"
    );
    // 4 delivering + 4 MiB of the path's budget + what the sockets buffer: far from 200 MiB.
    assert!(
        after.saturating_sub(before) < 64 * 1024,
        "RSS grew from {before} to {after} KiB"
    );
    // Each refusal says when to come back.
    assert!(
        refused.iter().all(|(head, _)| head
            .as_deref()
            .is_some_and(|h| h.contains("\r\nretry-after: 1"))),
        "{:?}",
        refused.first()
    );
    let metrics = fb.metrics().await;
    assert!(
        metrics.contains("fnbroker_http_requests_total{connector=\"web\",status=\"503\"}"),
        "{metrics}"
    );
    drop(fb);
}

/// An `hmac` ingress and 150 stalled 1 MiB bodies carrying a signature header that is not
/// checked yet (it needs the whole body): what unverified bodies may hold is half the
/// listener's budget; the rest are refused with 503 at once, and the stalled ones get 408 after
/// the body timeout (before: 183 MB held for 20 s). Unsigned ones get 401 before any body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_unverified_bodies_hold_a_bounded_amount_and_time_out() {
    let server = FnServer::start().await;
    let port = free_port();
    let fb = Fnbroker::start(&one_trigger(
        port,
        ", max_body: 1MiB, header_timeout: 3s, auth: { hmac: { header: X-Sig, secret: s3cret } }",
        &http_fn(&server.url("/f"), ""),
        "",
        "",
    ))
    .await;
    let addr = format!("127.0.0.1:{port}");
    let before = common::rss_kib(fb.pid());
    // Unsigned: refused before the body (401), whatever it declares.
    let unsigned = raw_status(
        &addr,
        &format!("POST /in HTTP/1.1\r\nhost: x\r\ncontent-length: {MIB}\r\n\r\n"),
        b"",
        Duration::from_secs(2),
    )
    .await;
    assert!(
        unsigned.as_deref().is_some_and(|s| s.contains(" 401 ")),
        "{unsigned:?}"
    );
    // Signed (wrongly), sending all but the last byte of a chunked 1 MiB body, then stalling.
    let mut stalled = Vec::new();
    for _ in 0..150 {
        let mut s = TcpStream::connect(&addr).await.expect("connect");
        let head =
            "POST /in HTTP/1.1\r\nhost: x\r\nx-sig: 00\r\ntransfer-encoding: chunked\r\n\r\n";
        s.write_all(head.as_bytes()).await.expect("head");
        let chunk = vec![b'z'; MIB - 1];
        let _ = s
            .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .await;
        let _ = tokio::time::timeout(Duration::from_millis(200), s.write_all(&chunk)).await;
        stalled.push(s);
    }
    // Those past the unverified share are refused at once: wait until most are, so the rest
    // are what the listener holds.
    let deadline = Instant::now() + WAIT;
    while common::metric_sum(&fb, "fnbroker_http_requests_total").await < 100.0 {
        assert!(Instant::now() < deadline, "{}", fb.metrics().await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let held = common::rss_kib(fb.pid());
    eprintln!(
        "150 stalled unverified 1 MiB bodies: RSS {} -> {} MiB",
        before / 1024,
        held / 1024
    );
    // Unverified bodies may hold half of the derived 64 MiB, and connections buffer some.
    assert!(
        held.saturating_sub(before) < 80 * 1024,
        "RSS grew from {before} to {held} KiB"
    );
    // Every stalled request is answered (503 at once, or 408 after the 3 s body timeout).
    let mut answers = std::collections::BTreeMap::<String, usize>::new();
    for s in &mut stalled {
        let line = status_line(s, Duration::from_secs(10))
            .await
            .and_then(|head| head.lines().next().map(str::to_string))
            .unwrap_or_else(|| "none".into());
        *answers.entry(line).or_default() += 1;
    }
    eprintln!("answers: {answers:?}");
    assert!(
        answers
            .keys()
            .all(|l| l.contains(" 503 ") || l.contains(" 408 ")),
        "{answers:?}"
    );
    assert!(answers.keys().any(|l| l.contains(" 408 ")), "{answers:?}");
    assert_eq!(server.count("/f"), 0);
    drop(fb);
}

/// With a signature scheme, nothing but 401 is answered to an unsigned request: not 404 for a
/// path no trigger listens on, not 405 for a GET (before: both, so paths could be listed).
/// Signed, the path's answers come back. Every answer is counted by status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_ingress_answers_nothing_but_401_before_the_signature() {
    use hmac::Mac as _;
    let server = FnServer::start().await;
    let port = free_port();
    let fb = Fnbroker::start(&one_trigger(
        port,
        ", auth: { hmac: { header: X-Hub-Signature-256, secret: s3cret, prefix: \"sha256=\" } }",
        &http_fn(&server.url("/f"), ""),
        "",
        "",
    ))
    .await;
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
    let sign = |body: &[u8]| {
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"s3cret").expect("key");
        mac.update(body);
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    };
    let c = client();
    for res in [
        c.post(url("/nowhere")).body("x").send().await,
        c.get(url("/in")).send().await,
        c.get(url("/nowhere")).send().await,
        c.post(url("/in")).body("x").send().await,
        c.post(url("/in"))
            .header("x-hub-signature-256", sign(b"y"))
            .body("x")
            .send()
            .await,
    ] {
        assert_eq!(res.expect("request").status(), StatusCode::UNAUTHORIZED);
    }
    let signed = |path: &str| {
        c.post(url(path))
            .header("x-hub-signature-256", sign(b"x"))
            .body("x")
            .send()
    };
    assert_eq!(
        signed("/nowhere").await.expect("post").status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        signed("/in").await.expect("post").status(),
        StatusCode::ACCEPTED
    );
    server.wait_count("/f", 1, WAIT).await;
    let metrics = fb.metrics().await;
    for (status, n) in [("401", 5), ("404", 1), ("202", 1)] {
        let line = yaml!(
            "fnbroker_http_requests_total{connector=\"web\",status=\"<status>\"} <n>",
            status = status,
            n = n
        );
        assert!(metrics.contains(&line), "{line}\n{metrics}");
    }
    fb.wait_log("requests refused", WAIT).await;
    drop(fb);
}

/// A Stripe-signed webhook is taken within the tolerance and refused as a replay outside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stripe_signed_webhooks_are_refused_outside_the_tolerance() {
    use hmac::Mac as _;
    let server = FnServer::start().await;
    let port = free_port();
    let fb = Fnbroker::start(&one_trigger(
        port,
        ", auth: { stripe: { secret: whsec_abc, tolerance: 1m } }",
        &http_fn(&server.url("/f"), ""),
        "",
        "",
    ))
    .await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let header = |t: u64, body: &str| {
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"whsec_abc").expect("key");
        mac.update(format!("{t}.{body}").as_bytes());
        format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
    };
    let post = |t: u64| {
        client()
            .post(format!("http://127.0.0.1:{port}/in"))
            .header("stripe-signature", header(t, "{}"))
            .header("content-type", "application/json")
            .body("{}")
            .send()
    };
    assert_eq!(
        post(now).await.expect("post").status(),
        StatusCode::ACCEPTED
    );
    let replay = post(now - 120).await.expect("post");
    assert_eq!(replay.status(), StatusCode::UNAUTHORIZED);
    assert!(
        replay
            .text()
            .await
            .expect("text")
            .contains("outside the tolerance")
    );
    server.wait_count("/f", 1, WAIT).await;
    drop(fb);
}

/// Plain messages: a TAB in `traceparent` or `content-type` never reaches the event, two
/// `ce-id` headers are refused, and a compressed body is delivered decompressed, bounded by
/// `max_body` (a compression bomb gets 413), an unknown encoding 415.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_and_encodings_from_outside_are_checked() {
    use std::io::Write as _;
    let server = FnServer::start().await;
    let port = free_port();
    let fb = Fnbroker::start(&one_trigger(
        port,
        ", max_body: 64KiB",
        &http_fn(&server.url("/f"), ""),
        "",
        "",
    ))
    .await;
    let url = format!("http://127.0.0.1:{port}/in");
    let c = client();
    let res = c
        .post(&url)
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\tinjected",
        )
        .header("content-type", "text/plain;\tx=1")
        .body("tabs")
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let got = server.wait_count("/f", 1, WAIT).await;
    assert_eq!(got[0].header("ce-traceparent"), None);
    assert!(
        got[0]
            .header("content-type")
            .is_none_or(|ct| !ct.contains('\t')),
        "{:?}",
        got[0].header("content-type")
    );

    let mut twice = reqwest::header::HeaderMap::new();
    for (k, v) in [
        ("ce-specversion", "1.0"),
        ("ce-source", "/s"),
        ("ce-type", "t"),
    ] {
        twice.insert(k, v.parse().expect("value"));
    }
    twice.append("ce-id", "1".parse().expect("value"));
    twice.append("ce-id", "2".parse().expect("value"));
    let res = c
        .post(&url)
        .headers(twice)
        .body("x")
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert!(res.text().await.expect("text").contains("given twice"));

    let gzip = |data: &[u8]| {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).expect("write");
        e.finish().expect("finish")
    };
    let res = c
        .post(&url)
        .header("content-encoding", "gzip")
        .body(gzip(b"squeezed"))
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let got = server.wait_count("/f", 2, WAIT).await;
    assert_eq!(&got[1].body[..], b"squeezed");
    let bomb = gzip(&vec![0u8; 8 * MIB]);
    assert!(bomb.len() < 64 * 1024);
    let before = common::peak_rss_kib(fb.pid());
    let res = c
        .post(&url)
        .header("content-encoding", "gzip")
        .body(bomb)
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let after = common::peak_rss_kib(fb.pid());
    assert!(
        after.saturating_sub(before) < 4 * 1024,
        "{before} -> {after} KiB"
    );
    let res = c
        .post(&url)
        .header("content-encoding", "zstd")
        .body("x")
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // Refused requests are answered before their events reach the engine: none comes later.
    assert_eq!(server.count("/f"), 2);
    drop(fb);
}

/// The admin listener without an asynchronous OpenFaaS function has no callback route; 260
/// requests to it declaring a body they never send are answered 404 at once (before: the route
/// existed for anyone, read bodies with no timeout, and kept `/healthz` at 503 for 36 s); and
/// with every connection held by stalled clients, the probes still answer from connections of
/// their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_answers_its_probes_whatever_else_holds_it() {
    let server = FnServer::start().await;
    let port = free_port();
    let fb = Fnbroker::start(&one_trigger(
        port,
        "",
        &http_fn(&server.url("/f"), ""),
        "",
        "",
    ))
    .await;
    let admin = format!("127.0.0.1:{}", fb.admin);
    let healthz = || async {
        client()
            .get(format!("http://127.0.0.1:{}/healthz", fb.admin))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .map(|r| r.status())
    };
    let started = Instant::now();
    let mut open = Vec::new();
    for i in 0..260 {
        let mut s = TcpStream::connect(&admin).await.expect("connect");
        let head = format!(
            "POST /v1/callbacks/openfaas/guess{i} HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n"
        );
        s.write_all(head.as_bytes()).await.expect("head");
        open.push(s);
    }
    for s in &mut open {
        let head = status_line(s, Duration::from_secs(5)).await;
        assert!(
            head.as_deref()
                .is_some_and(|h| h.starts_with("http/1.1 404")),
            "{head:?}"
        );
    }
    eprintln!(
        "260 bodiless callbacks answered 404 in {:?}",
        started.elapsed()
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(healthz().await.ok(), Some(StatusCode::OK));
    drop(open);

    // 256 connections trickling a request head hold every general connection.
    let mut stalled = Vec::new();
    for _ in 0..256 {
        let mut s = TcpStream::connect(&admin).await.expect("connect");
        s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n")
            .await
            .expect("head");
        stalled.push(s);
    }
    let mut probes = 0;
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        assert_eq!(
            healthz().await.ok(),
            Some(StatusCode::OK),
            "a probe failed while the admin listener was full"
        );
        probes += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The connections kept for probes answer nothing else.
    let metrics = raw_status(
        &admin,
        "GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n",
        b"",
        Duration::from_secs(2),
    )
    .await;
    assert!(
        metrics
            .as_deref()
            .is_some_and(|h| h.starts_with("http/1.1 503")),
        "{metrics:?}"
    );
    eprintln!("{probes} probes answered 200 while 256 connections stalled");
    drop(stalled);
    drop(fb);
}

/// A function's reply is read within `max_reply` (default 16 MiB): a 2xx answer of 300 MB fails
/// the attempt with that reason, not retried, and never lands in memory whole (before: RSS to
/// 944 MB); an error's body is cut at the bound and its start still reaches the dead letter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_larger_than_max_reply_fails_its_attempt() {
    let huge = std::sync::Arc::new(vec![b'r'; 300 * 1000 * 1000]);
    let body = std::sync::Arc::clone(&huge);
    let server = FnServer::with(move |path, _| match path {
        "/big" => Answer::ok().body("application/octet-stream", &body),
        "/bad" => Answer::status(500).body("text/plain", &vec![b'e'; 4 * MIB]),
        _ => Answer::ok(),
    })
    .await;
    drop(huge);
    let port = free_port();
    let fb = Fnbroker::start(&yaml!("connectors:\n  web: { http: { listen: 127.0.0.1:<port> } }\nfunctions:\n  big: { http: { url: \"<big_url>\" } }\n  bad: { http: { url: \"<bad_url>\", max_reply: 1MiB } }\n  dlq: { http: { url: \"<dlq_url>\" } }\ntriggers:\n  - { name: big, from: { connector: web, topic: /big, sync: true }, to: big, delivery: { retries: 3, delay: 10ms }, dead_letter: { function: dlq } }\n  - { name: bad, from: { connector: web, topic: /bad, sync: true }, to: bad, delivery: { retries: 0 }, dead_letter: { function: dlq } }\n", port = port, big_url = server.url("/big"), bad_url = server.url("/bad"), dlq_url = server.url("/dlq")))
    .await;
    let before = common::peak_rss_kib(fb.pid());
    let res = client()
        .post(format!("http://127.0.0.1:{port}/big"))
        .body("x")
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
    let reason = res.text().await.expect("text");
    assert!(
        reason.contains("the reply is larger than max_reply (16 MiB)"),
        "{reason}"
    );
    let after = common::peak_rss_kib(fb.pid());
    eprintln!(
        "a 300 MB reply: peak RSS {} -> {} MiB",
        before / 1024,
        after / 1024
    );
    assert!(
        after.saturating_sub(before) < 64 * 1024,
        "peak RSS {before} -> {after} KiB"
    );
    assert_eq!(server.count("/big"), 1, "a reply too large is not retried");
    let res = client()
        .post(format!("http://127.0.0.1:{port}/bad"))
        .body("y")
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
    let dead = server.wait_count("/dlq", 2, WAIT).await;
    assert!(
        dead[0]
            .header("ce-dlqreason")
            .is_some_and(|r| r.contains("max_reply")),
        "{:?}",
        dead[0].header("ce-dlqreason")
    );
    assert_eq!(dead[1].header("ce-dlqstatus"), Some("500"));
    assert!(
        dead[1]
            .header("ce-dlqreason")
            .is_some_and(|r| r.contains("eee"))
    );
    drop(fb);
}

/// A URL whose password holds an unencoded `/`, `#` or `?` does not parse; before, `validate`,
/// the reload's ERROR line, `/v1/config` and `/v1/status` showed the password whole. Each such
/// password, in each of those places, now shows as `***`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_in_a_url_that_does_not_parse_is_never_shown() {
    let server = FnServer::start().await;
    let port = free_port();
    let good = one_trigger(port, "", &http_fn(&server.url("/f"), ""), "", "");
    let fb = Fnbroker::start(&good).await;
    for (i, secret) in ["Se/cr3t", "Se#cr3t", "Se?cr3t"].iter().enumerate() {
        let bad = yaml!("<good>  - { name: q, from: { connector: rabbit, topic: q }, to: f }\n", good = good)
            .replace(
            "connectors:\n",
            &yaml!("connectors:\n  rabbit: { amqp: { url: \"amqp://admin:<secret>@127.0.0.1:5672/%2f\" } }\n", secret = secret),
        );
        let (code, stdout, stderr) = common::run_once(&bad, &["validate"]);
        assert_ne!(code, 0, "{stdout}{stderr}");
        let shown = format!("{stdout}{stderr}");
        assert!(
            !shown.contains(secret),
            "validate showed the password: {shown}"
        );
        assert!(shown.contains("admin:***@"), "{shown}");

        fb.rewrite(&bad);
        fb.signal("HUP");
        fb.wait_reloads(0, i as u64 + 1).await;
        let config = fb.config_view().await.to_string();
        let status = client()
            .get(format!("http://127.0.0.1:{}/v1/status", fb.admin))
            .send()
            .await
            .expect("status")
            .text()
            .await
            .expect("text");
        for (place, text) in [
            ("/v1/config", &config),
            ("/v1/status", &status),
            ("the log", &fb.logs()),
        ] {
            assert!(
                !text.contains(secret),
                "{place} showed the password: {text}"
            );
        }
        assert!(config.contains("admin:***@"), "{config}");
    }
    drop(fb);
}

/// A newline in an exec function's stderr forged a line in the human log format (before: a
/// line of its own, starting with a timestamp and `ERROR`); every control character of a
/// logged field is escaped now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stderr_cannot_forge_a_log_line() {
    let port = free_port();
    let forged = "2026-12-07T00:00:00.000000Z ERROR fnbroker: forged";
    let fb = Fnbroker::start(&one_trigger(
        port,
        "",
        &yaml!(
            "{ exec: { command: [sh, -c, 'printf \"oops\\n<forged>\\033[2J\" >&2; exit 3'] } }",
            forged = forged
        ),
        ", sync: true",
        ", delivery: { retries: 0 }",
    ))
    .await;
    let res = client()
        .post(format!("http://127.0.0.1:{port}/in"))
        .body("x")
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
    fb.wait_log("forged", WAIT).await;
    let logs = fb.logs();
    assert!(
        logs.lines().all(|l| !l.starts_with(forged)),
        "a forged line: {logs}"
    );
    assert!(logs.contains("oops\\n2026-12-07"), "{logs}");
    assert!(!logs.contains('\u{1b}'), "{logs}");
    drop(fb);
}

/// An exec function's child that calls `setsid` and outlives the command: before, it survived
/// the call (reparented to init). fnbroker, the child subreaper of its functions, kills it
/// when the call ends and reaps it: nothing is left, not even a zombie.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_an_exec_function_starts_outlives_its_call() {
    let port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let pidfile = dir.path().join("pid");
    let fb = Fnbroker::start(&one_trigger(
        port,
        "",
        &yaml!(
            "{ exec: { command: [sh, -c, 'setsid sleep 1000 & echo $! > <pidfile>; echo done'] } }",
            pidfile = pidfile.display()
        ),
        ", sync: true",
        "",
    ))
    .await;
    let res = client()
        .post(format!("http://127.0.0.1:{port}/in"))
        .body("x")
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), StatusCode::OK);
    let pid = std::fs::read_to_string(&pidfile).expect("the command wrote its child's pid");
    let stat = format!("/proc/{}/stat", pid.trim());
    common::wait_for("the setsid child to be killed and reaped", WAIT, || {
        std::fs::read_to_string(&stat).is_err()
    })
    .await;
    drop(fb);
}

/// A structured event whose `data` is a 1 MiB JSON array of small numbers: a tree of it costs
/// 70 to 110 times its text (before: each event held cost ~37 MB). Kept as the text it came in,
/// eight events held by a slow function cost about twice their size each, and the function
/// gets the data as it was sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_data_is_kept_as_its_text_until_something_reads_it() {
    let server = FnServer::with(|_, _| Answer::ok().delay(Duration::from_secs(30))).await;
    let port = free_port();
    let fb = Fnbroker::start(&one_trigger(
        port,
        ", max_body: 2MiB",
        &http_fn(&server.url("/f"), ", timeout: 60s"),
        "",
        ", delivery: { max_in_flight: 8 }",
    ))
    .await;
    let mut array = String::from("[");
    let mut n = 0u32;
    while array.len() < MIB {
        if n > 0 {
            array.push(',');
        }
        array.push_str(&(n % 1000).to_string());
        n += 1;
    }
    array.push(']');
    let event = yaml!(
        r#"{"specversion":"1.0","id":"big","source":"/s","type":"t","data":<array>}"#,
        array = array
    );
    let before = common::rss_kib(fb.pid());
    for _ in 0..8 {
        let res = client()
            .post(format!("http://127.0.0.1:{port}/in"))
            .header("content-type", "application/cloudevents+json")
            .body(event.clone())
            .send()
            .await
            .expect("post");
        assert_eq!(res.status(), StatusCode::ACCEPTED);
    }
    let got = server.wait_count("/f", 8, WAIT).await;
    let held = common::rss_kib(fb.pid());
    eprintln!(
        "8 events of 1 MiB JSON data held: RSS {} -> {} MiB",
        before / 1024,
        held / 1024
    );
    assert!(
        held.saturating_sub(before) < 48 * 1024,
        "RSS grew from {before} to {held} KiB"
    );
    assert_eq!(got[0].body.len(), array.len());
    assert_eq!(&got[0].body[..], array.as_bytes());
    assert_eq!(got[0].header("content-type"), Some("application/json"));
    drop(fb);
}

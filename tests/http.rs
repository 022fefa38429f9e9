//! End-to-end: the real `fnbroker` binary, the HTTP ingress, and a real HTTP function server.
//! Each test has its own ports, configuration and function server.

use crate::common;

use std::time::{Duration, Instant};

use common::{Answer, FnServer, Fnbroker, free_port};
use reqwest::StatusCode;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);

/// A config with one HTTP connector on `port`, and the given functions and triggers.
fn config(port: u16, functions: &str, triggers: &str) -> String {
    yaml!(
        "connectors:\n  web: { http: { listen: 127.0.0.1:<port>, max_body: 1KiB } }\nfunctions:\n<functions>\ntriggers:\n<triggers>\n",
        port = port,
        functions = functions,
        triggers = triggers
    )
}

fn http_fn(name: &str, url: &str, extra: &str) -> String {
    yaml!(
        "  <name>: { http: { url: \"<url>\" }, timeout: 2s<extra> }\n",
        name = name,
        url = url,
        extra = extra
    )
}

/// POSTs the body `x` to the ingress' `/in` on `port`.
async fn post_x(port: u16) -> reqwest::Response {
    client()
        .post(format!("http://127.0.0.1:{port}/in"))
        .body("x")
        .send()
        .await
        .expect("post")
}

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_event_reaches_the_function_with_every_attribute() {
    let server = FnServer::start().await;
    let port = free_port();
    let fb = Fnbroker::start(&config(
        port,
        &http_fn("f", &server.url("/f"), ""),
        "  - { name: t, from: { connector: web, topic: /orders }, to: f }",
    ))
    .await;

    let res = client()
        .post(format!("http://127.0.0.1:{port}/orders"))
        .header("ce-specversion", "1.0")
        .header("ce-id", "order-1")
        .header("ce-source", "/shop/eu")
        .header("ce-type", "com.example.order.created")
        .header("ce-subject", "orders/1")
        .header("ce-time", "2018-04-05T03:56:24Z")
        .header("ce-region", "caf%C3%A9%20eu")
        .header("content-type", "application/json; charset=utf-8")
        .body(r#"{"total": 42}"#)
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), StatusCode::ACCEPTED);

    let got = server.wait_count("/f", 1, WAIT).await;
    let r = &got[0];
    assert_eq!(r.header("ce-specversion"), Some("1.0"));
    assert_eq!(r.header("ce-id"), Some("order-1"));
    assert_eq!(r.header("ce-source"), Some("/shop/eu"));
    assert_eq!(r.header("ce-type"), Some("com.example.order.created"));
    assert_eq!(r.header("ce-subject"), Some("orders/1"));
    assert_eq!(r.header("ce-time"), Some("2018-04-05T03:56:24Z"));
    assert_eq!(r.header("ce-region"), Some("caf%C3%A9%20eu"));
    assert_eq!(
        r.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    assert_eq!(&r.body[..], br#"{"total": 42}"#);
    drop(fb);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn structured_in_structured_out() {
    let server = FnServer::start().await;
    let port = free_port();
    let fb = Fnbroker::start(&config(
        port,
        &yaml!(
            "  f: { http: { url: \"<f_url>\", mode: structured } }\n",
            f_url = server.url("/f")
        ),
        "  - { name: t, from: { connector: web, topic: /in }, to: f }",
    ))
    .await;
    let event = json!({
        "specversion": "1.0", "id": "s-1", "source": "/src", "type": "t.structured",
        "datacontenttype": "application/json", "data": {"b": 1, "a": [1, 2]}, "myext": 7
    });
    let res = client()
        .post(format!("http://127.0.0.1:{port}/in"))
        .header(
            "content-type",
            "application/cloudevents+json; charset=utf-8",
        )
        .body(event.to_string())
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let got = server.wait_count("/f", 1, WAIT).await;
    assert_eq!(
        got[0].header("content-type"),
        Some("application/cloudevents+json")
    );
    let received: Value = serde_json::from_slice(&got[0].body).expect("json");
    assert_eq!(received, event);
    drop(fb);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_post_is_normalized_with_the_trigger_type() {
    let server = FnServer::start().await;
    let port = free_port();
    let fb = Fnbroker::start(&config(
        port,
        &http_fn("f", &server.url("/f"), ""),
        "  - { name: t, from: { connector: web, topic: /hooks/github }, event: { type: com.github.push }, to: f }",
    ))
    .await;
    let res = client()
        .post(format!("http://127.0.0.1:{port}/hooks/github"))
        .header("content-type", "application/json")
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .body(r#"{"ref":"main"}"#)
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let got = server.wait_count("/f", 1, WAIT).await;
    let r = &got[0];
    assert_eq!(r.header("ce-source"), Some("http://web/hooks/github"));
    assert_eq!(r.header("ce-type"), Some("com.github.push"));
    assert_eq!(r.header("ce-subject"), Some("/hooks/github"));
    assert_eq!(
        r.header("ce-traceparent"),
        Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(
        r.header("ce-id").is_some_and(|id| id.len() == 36),
        "a UUID id"
    );
    assert!(r.header("ce-time").is_none());
    assert_eq!(&r.body[..], br#"{"ref":"main"}"#);
    drop(fb);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_delivers_each_event_and_invalid_input_is_refused() {
    let server = FnServer::start().await;
    let port = free_port();
    let fb = Fnbroker::start(&config(
        port,
        &http_fn("f", &server.url("/f"), ""),
        "  - { name: t, from: { connector: web, topic: /in }, to: f }",
    ))
    .await;
    let url = format!("http://127.0.0.1:{port}/in");
    let batch = json!([
        {"specversion": "1.0", "id": "b-1", "source": "/s", "type": "t"},
        {"specversion": "1.0", "id": "b-2", "source": "/s", "type": "t", "data_base64": "AAEC"}
    ]);
    let res = client()
        .post(&url)
        .header("content-type", "application/cloudevents-batch+json")
        .body(batch.to_string())
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let got = server.wait_count("/f", 2, WAIT).await;
    let mut ids: Vec<_> = got.iter().filter_map(|r| r.header("ce-id")).collect();
    ids.sort_unstable();
    assert_eq!(ids, vec!["b-1", "b-2"]);
    let b2 = got
        .iter()
        .find(|r| r.header("ce-id") == Some("b-2"))
        .expect("b-2");
    assert_eq!(&b2.body[..], &[0u8, 1, 2]);

    // A batch with one invalid member is refused whole.
    let bad_batch = json!([
        {"specversion": "1.0", "id": "c-1", "source": "/s", "type": "t"},
        {"specversion": "1.0", "source": "/s", "type": "t"}
    ]);
    let res = client()
        .post(&url)
        .header("content-type", "application/cloudevents-batch+json")
        .body(bad_batch.to_string())
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let reason = res.text().await.expect("text");
    assert!(reason.contains("`id`"), "{reason}");
    assert_eq!(reason.trim().lines().count(), 1);

    // Binary mode with a bad time: 400 naming the attribute.
    let res = client()
        .post(&url)
        .header("ce-specversion", "1.0")
        .header("ce-id", "x")
        .header("ce-source", "/s")
        .header("ce-type", "t")
        .header("ce-time", "lunchtime")
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert!(res.text().await.expect("text").contains("`time`"));

    // Over max_body (1 KiB here): 413.
    let res = client()
        .post(&url)
        .body(vec![b'x'; 2048])
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // Unknown path: 404; wrong method: 405.
    let res = client()
        .post(format!("http://127.0.0.1:{port}/nowhere"))
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let res = client().get(&url).send().await.expect("get");
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);

    // None of the refused requests reached the function.
    assert_eq!(server.count("/f"), 2);
    drop(fb);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_mode_answers_with_the_reply_or_no_content() {
    let server = FnServer::with(|path, _| match path {
        "/echo" => Answer::ok().body("application/json", br#"{"answer":42}"#),
        _ => Answer::status(202),
    })
    .await;
    let port = free_port();
    let fb = Fnbroker::start(&config(
        port,
        &(http_fn("echo", &server.url("/echo"), "") + &http_fn("quiet", &server.url("/quiet"), "")),
        "  - { name: a, from: { connector: web, topic: /ask, sync: true }, to: echo }\n  - { name: b, from: { connector: web, topic: /tell, sync: true }, to: quiet }",
    ))
    .await;
    let res = client()
        .post(format!("http://127.0.0.1:{port}/ask"))
        .header("ce-specversion", "1.0")
        .header("ce-id", "q-1")
        .header("ce-source", "/client")
        .header("ce-type", "com.example.question")
        .body("?")
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), StatusCode::OK);
    let h = res.headers().clone();
    assert_eq!(h["ce-type"], "com.example.question.reply");
    assert_eq!(h["ce-source"], "fnbroker://functions/echo");
    assert_eq!(h["content-type"], "application/json");
    assert_ne!(h["ce-id"], "q-1");
    assert_eq!(res.text().await.expect("body"), r#"{"answer":42}"#);

    let res = client()
        .post(format!("http://127.0.0.1:{port}/tell"))
        .body("fyi")
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    drop(fb);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_failing_n_times_is_called_n_plus_one_times() {
    let server = FnServer::with(|_, n| {
        if n < 2 {
            Answer::status(503)
        } else {
            Answer::ok()
        }
    })
    .await;
    let port = free_port();
    let fb = Fnbroker::start(&config(
        port,
        &http_fn("f", &server.url("/f"), ""),
        "  - { name: t, from: { connector: web, topic: /in, sync: true }, to: f, delivery: { retries: 3, delay: 50ms, max_delay: 200ms } }",
    ))
    .await;
    let res = post_x(port).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let got = server.on("/f");
    assert_eq!(got.len(), 3, "two failures and one success");
    // The same event every time: one event arrived, three attempts.
    assert!(
        got.iter()
            .all(|r| r.header("ce-id") == got[0].header("ce-id"))
    );
    let metrics = fb.metrics().await;
    assert!(
        metrics.contains("fnbroker_events_retried_total{trigger=\"t\",function=\"f\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("fnbroker_events_delivered_total{trigger=\"t\",function=\"f\"} 1"),
        "{metrics}"
    );
    drop(fb);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_error_is_not_retried_and_is_dead_lettered_with_its_status() {
    let server = FnServer::with(|path, _| match path {
        "/f" => Answer::status(400).body("text/plain", b"no such order"),
        _ => Answer::ok(),
    })
    .await;
    let port = free_port();
    let fb = Fnbroker::start(&config(
        port,
        &(http_fn("f", &server.url("/f"), "") + &http_fn("dlq", &server.url("/dlq"), "")),
        "  - { name: t, from: { connector: web, topic: /in, sync: true }, to: f, delivery: { retries: 5, delay: 10ms }, dead_letter: { function: dlq } }",
    ))
    .await;
    let res = client()
        .post(format!("http://127.0.0.1:{port}/in"))
        .header("ce-specversion", "1.0")
        .header("ce-id", "bad-1")
        .header("ce-source", "/client")
        .header("ce-type", "com.example.order")
        .header("content-type", "text/plain")
        .body("payload")
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
    assert!(res.text().await.expect("text").contains("400"));
    assert_eq!(server.count("/f"), 1, "a 400 is not retried");
    let dl = &server.on("/dlq")[0];
    assert_eq!(dl.header("ce-id"), Some("bad-1"));
    assert_eq!(dl.header("ce-source"), Some("/client"));
    assert_eq!(dl.header("ce-type"), Some("com.example.order"));
    assert_eq!(dl.header("ce-dlqstatus"), Some("400"));
    assert_eq!(dl.header("ce-dlqattempts"), Some("1"));
    assert_eq!(dl.header("ce-dlqtrigger"), Some("t"));
    assert_eq!(dl.header("ce-dlqfunction"), Some("f"));
    assert!(dl.header("ce-dlqreason").is_some_and(|r| r.contains("400")));
    assert_eq!(&dl.body[..], b"payload");
    drop(fb);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_that_never_answers_is_cut_at_the_timeout_and_dead_lettered() {
    let server = FnServer::with(|path, _| match path {
        "/slow" => Answer::ok().delay(Duration::from_secs(60)),
        _ => Answer::ok(),
    })
    .await;
    let port = free_port();
    let fb = Fnbroker::start(&config(
        port,
        &(http_fn("slow", &server.url("/slow"), "") + &http_fn("dlq", &server.url("/dlq"), "")),
        // Two timeouts in a row: a slow event, not yet an outage (three in a row would hold it).
        "  - { name: t, from: { connector: web, topic: /in, sync: true }, to: slow, delivery: { retries: 1, delay: 10ms, timeout: 300ms }, dead_letter: { function: dlq } }",
    ))
    .await;
    let started = Instant::now();
    let res = post_x(port).await;
    assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "two attempts of 300ms"
    );
    assert_eq!(server.count("/slow"), 2);
    let dl = &server.on("/dlq")[0];
    assert_eq!(dl.header("ce-dlqattempts"), Some("2"));
    assert!(
        dl.header("ce-dlqstatus").is_none(),
        "no HTTP status on a timeout"
    );
    assert!(
        dl.header("ce-dlqreason")
            .is_some_and(|r| r.contains("timed%20out"))
    );
    drop(fb);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_delays_the_next_attempt() {
    let server = FnServer::with(|_, n| {
        if n == 0 {
            Answer::status(503).header("retry-after", "1")
        } else {
            Answer::ok()
        }
    })
    .await;
    let port = free_port();
    let fb = Fnbroker::start(&config(
        port,
        &http_fn("f", &server.url("/f"), ""),
        "  - { name: t, from: { connector: web, topic: /in, sync: true }, to: f, delivery: { retries: 1, delay: 10ms, max_delay: 5s } }",
    ))
    .await;
    let res = post_x(port).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let got = server.on("/f");
    assert_eq!(got.len(), 2);
    let gap = got[1].at - got[0].at;
    assert!(gap >= Duration::from_secs(1), "waited only {gap:?}");
    drop(fb);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_is_published_to_the_reply_destination() {
    let server = FnServer::with(|path, _| match path {
        "/f" => Answer::ok().body("text/plain", b"thanks"),
        _ => Answer::ok(),
    })
    .await;
    let port = free_port();
    let fb = Fnbroker::start(&config(
        port,
        &(http_fn("f", &server.url("/f"), "") + &http_fn("sink", &server.url("/replies"), "")),
        "  - { name: t, from: { connector: web, topic: /in }, to: f, reply: { function: sink } }",
    ))
    .await;
    let res = client()
        .post(format!("http://127.0.0.1:{port}/in"))
        .header("ce-specversion", "1.0")
        .header("ce-id", "r-1")
        .header("ce-source", "/client")
        .header("ce-type", "com.example.ping")
        .body("ping")
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let got = server.wait_count("/replies", 1, WAIT).await;
    let r = &got[0];
    assert_eq!(r.header("ce-type"), Some("com.example.ping.reply"));
    assert_eq!(r.header("ce-source"), Some("fnbroker://functions/f"));
    assert_eq!(r.header("content-type"), Some("text/plain"));
    assert_eq!(&r.body[..], b"thanks");
    drop(fb);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_to_every_matching_trigger_and_filters_keep_the_rest_out() {
    let server = FnServer::start().await;
    let port = free_port();
    let fb = Fnbroker::start(&config(
        port,
        &(http_fn("all", &server.url("/all"), "") + &http_fn("eu", &server.url("/eu"), "")),
        "  - { name: every, from: { connector: web, topic: /in }, to: all }\n  - { name: eu-only, from: { connector: web, topic: /in }, filter: { all: [ { prefix: { source: /shop/ } }, { suffix: { source: /eu } }, { not: { exact: { type: test } } } ] }, to: eu }",
    ))
    .await;
    let send = |id: &'static str, source: &'static str| {
        client()
            .post(format!("http://127.0.0.1:{port}/in"))
            .header("ce-specversion", "1.0")
            .header("ce-id", id)
            .header("ce-source", source)
            .header("ce-type", "order")
            .send()
    };
    assert_eq!(
        send("1", "/shop/us").await.expect("post").status(),
        StatusCode::ACCEPTED
    );
    assert_eq!(
        send("2", "/shop/eu").await.expect("post").status(),
        StatusCode::ACCEPTED
    );
    server.wait_count("/all", 2, WAIT).await;
    let eu = server.wait_count("/eu", 1, WAIT).await;
    assert_eq!(eu.len(), 1);
    assert_eq!(eu[0].header("ce-id"), Some("2"));
    drop(fb);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_in_flight_bounds_the_calls_in_flight() {
    let server = FnServer::with(|_, _| Answer::ok().delay(Duration::from_millis(200))).await;
    let port = free_port();
    let fb = Fnbroker::start(&config(
        port,
        &http_fn("f", &server.url("/f"), ""),
        "  - { name: t, from: { connector: web, topic: /in }, to: f, delivery: { max_in_flight: 4 } }",
    ))
    .await;
    let url = format!("http://127.0.0.1:{port}/in");
    let c = client();
    let posts = (0..40).map(|i| {
        let c = c.clone();
        let url = url.clone();
        async move {
            c.post(url)
                .body(format!("{i}"))
                .send()
                .await
                .map(|r| r.status())
        }
    });
    for status in futures::future::join_all(posts).await {
        assert_eq!(status.expect("post"), StatusCode::ACCEPTED);
    }
    server.wait_count("/f", 40, Duration::from_secs(30)).await;
    let peak = server.peak.load(std::sync::atomic::Ordering::SeqCst);
    assert!(peak <= 4, "peak of {peak} calls in flight");
    assert!(peak >= 2, "deliveries ran in parallel (peak {peak})");
    drop(fb);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_deliveries_finish_then_exits_zero() {
    let server = FnServer::with(|_, _| {
        Answer::ok()
            .body("text/plain", b"done")
            .delay(Duration::from_millis(800))
    })
    .await;
    let port = free_port();
    let mut fb = Fnbroker::start(&config(
        port,
        &http_fn("f", &server.url("/f"), ""),
        "  - { name: t, from: { connector: web, topic: /in, sync: true }, to: f }",
    ))
    .await;
    let url = format!("http://127.0.0.1:{port}/in");
    let request = tokio::spawn(async move { client().post(url).body("x").send().await });
    server.wait_count("/f", 1, WAIT).await;
    fb.signal("TERM");
    let res = request.await.expect("join").expect("response");
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.text().await.expect("body"), "done");
    let status = fb.wait_exit(WAIT).await;
    assert!(status.success(), "exit status {status}\n{}", fb.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn function_concurrency_caps_calls_across_triggers() {
    let server = FnServer::with(|_, _| Answer::ok().delay(Duration::from_millis(100))).await;
    let port = free_port();
    let fb = Fnbroker::start(&config(
        port,
        &yaml!("  f: { http: { url: \"<f_url>\" }, concurrency: 2 }\n", f_url = server.url("/f")),
        "  - { name: a, from: { connector: web, topic: /a }, to: f, delivery: { max_in_flight: 16 } }\n  - { name: b, from: { connector: web, topic: /b }, to: f, delivery: { max_in_flight: 16 } }",
    ))
    .await;
    let c = client();
    let posts = (0..30).map(|i| {
        let c = c.clone();
        let url = format!(
            "http://127.0.0.1:{port}/{}",
            if i % 2 == 0 { "a" } else { "b" }
        );
        async move { c.post(url).body("x").send().await.map(|r| r.status()) }
    });
    for status in futures::future::join_all(posts).await {
        assert_eq!(status.expect("post"), StatusCode::ACCEPTED);
    }
    server.wait_count("/f", 30, Duration::from_secs(30)).await;
    let peak = server.peak.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        peak, 2,
        "the function's concurrency (2) holds across both triggers"
    );
    drop(fb);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_filters_route_events() {
    let server = FnServer::start().await;
    let port = free_port();
    let fb = Fnbroker::start(&config(
        port,
        &http_fn("f", &server.url("/f"), ""),
        "  - { name: hot-kitchen, from: { connector: web, topic: /in }, filter: { sql: \"subject LIKE '%/kitchen/%' AND INT(celsius) > 30 AND source != '/test-rig'\" }, to: f }",
    ))
    .await;
    let send =
        |id: &'static str, subject: &'static str, celsius: &'static str, source: &'static str| {
            client()
                .post(format!("http://127.0.0.1:{port}/in"))
                .header("ce-specversion", "1.0")
                .header("ce-id", id)
                .header("ce-source", source)
                .header("ce-type", "com.example.temperature")
                .header("ce-subject", subject)
                .header("ce-celsius", celsius)
                .send()
        };
    for (id, subject, celsius, source) in [
        ("cold", "sensors/kitchen/1", "21", "/sensors"),
        ("rig", "sensors/kitchen/2", "35", "/test-rig"),
        ("hall", "sensors/hall/3", "35", "/sensors"),
        ("garbage", "sensors/kitchen/4", "warm", "/sensors"),
        ("hot", "sensors/kitchen/5", "35", "/sensors"),
    ] {
        assert_eq!(
            send(id, subject, celsius, source)
                .await
                .expect("post")
                .status(),
            StatusCode::ACCEPTED
        );
    }
    let got = server.wait_count("/f", 1, WAIT).await;
    assert_eq!(got[0].header("ce-id"), Some("hot"));
    // The ones before it were filtered out in order; give nothing else a chance to sneak in.
    assert_eq!(server.count("/f"), 1);
    drop(fb);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_in_attributes_are_refused() {
    let server = FnServer::start().await;
    let port = free_port();
    let fb = Fnbroker::start(&config(
        port,
        &http_fn("f", &server.url("/f"), ""),
        "  - { name: t, from: { connector: web, topic: /in }, to: f }",
    ))
    .await;
    let url = format!("http://127.0.0.1:{port}/in");
    // Binary mode: a percent-encoded NUL in an extension.
    let res = client()
        .post(&url)
        .header("ce-specversion", "1.0")
        .header("ce-id", "x")
        .header("ce-source", "/s")
        .header("ce-type", "t")
        .header("ce-foo", "a%00b")
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let reason = res.text().await.expect("text");
    assert!(
        reason.contains("`foo`") && reason.contains("control character"),
        "{reason}"
    );
    // Structured mode: an escaped NUL in the id, a newline in the subject.
    for (name, value) in [("id", "a\u{0}b"), ("subject", "line\nbreak")] {
        let mut event = json!({"specversion": "1.0", "id": "y", "source": "/s", "type": "t"});
        event[name] = json!(value);
        let res = client()
            .post(&url)
            .header("content-type", "application/cloudevents+json")
            .body(event.to_string())
            .send()
            .await
            .expect("post");
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{name}");
        let reason = res.text().await.expect("text");
        assert!(reason.contains(&format!("`{name}`")), "{reason}");
    }
    // A clean event still goes through, and nothing refused reached the function.
    let res = client()
        .post(&url)
        .header("ce-specversion", "1.0")
        .header("ce-id", "ok")
        .header("ce-source", "/s")
        .header("ce-type", "t")
        .header("ce-foo", "a%20b")
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let got = server.wait_count("/f", 1, WAIT).await;
    assert_eq!(got[0].header("ce-id"), Some("ok"));
    // The refused requests were answered before routing: no event of theirs can come later.
    assert_eq!(server.count("/f"), 1);
    drop(fb);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_are_capped_in_events_and_memory() {
    let server = FnServer::start().await;
    let port = free_port();
    let fb = Fnbroker::start(&yaml!("connectors:\n  web: { http: { listen: 127.0.0.1:<port>, max_body: 16MiB } }\nfunctions:\n<nfunctions>\ntriggers:\n  - { name: t, from: { connector: web, topic: /in }, to: f }\n", port = port, nfunctions = http_fn("f", &server.url("/f"), "")))
    .await;
    let url = format!("http://127.0.0.1:{port}/in");
    let batch = |n: usize| {
        let one = r#"{"specversion":"1.0","id":"x","source":"/s","type":"t"}"#;
        format!("[{}]", vec![one; n].join(","))
    };
    let post = |body: String| {
        client()
            .post(&url)
            .header("content-type", "application/cloudevents-batch+json")
            .body(body)
            .send()
    };
    // The default cap is 1000 events.
    let res = post(batch(1001)).await.expect("post");
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let reason = res.text().await.expect("text");
    assert!(reason.contains("more than 1000 events"), "{reason}");
    let res = post(batch(1000)).await.expect("post");
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    server.wait_count("/f", 1000, WAIT).await;

    // 200,000 tiny events (12 MB): refused without building them all, alone and eight at once.
    let big = batch(200_000);
    let before = common::peak_rss_kib(fb.pid());
    let res = post(big.clone()).await.expect("post");
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let one = common::peak_rss_kib(fb.pid());
    // Eight at once are more than the listener's default budget (64 MiB): those past it are
    // refused with 503 before they are read.
    let posts: Vec<_> = (0..8).map(|_| post(big.clone())).collect();
    for res in futures::future::join_all(posts).await {
        let status = res.expect("post").status();
        assert!(
            [
                StatusCode::PAYLOAD_TOO_LARGE,
                StatusCode::SERVICE_UNAVAILABLE
            ]
            .contains(&status),
            "{status}"
        );
    }
    let eight = common::peak_rss_kib(fb.pid());
    let mib = |kib: u64| kib / 1024;
    eprintln!(
        "peak RSS: {} MiB before, {} MiB after one 12 MB batch, {} MiB after eight",
        mib(before),
        mib(one),
        mib(eight)
    );
    assert!(
        one.saturating_sub(before) < 48 * 1024,
        "one 12 MB batch took the peak from {before} to {one} KiB"
    );
    assert!(
        eight.saturating_sub(before) < 8 * 48 * 1024,
        "eight 12 MB batches took the peak from {before} to {eight} KiB"
    );
    assert_eq!(server.count("/f"), 1000);
    drop(fb);
}

/// Reads a connection until the server closes it (EOF or reset), giving up after `limit`.
async fn read_until_closed(stream: &mut tokio::net::TcpStream, limit: Duration) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let until = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(until, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_idle_and_excess_connections_are_cut_and_the_admin_stays_up() {
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;

    let server = FnServer::start().await;
    let port = free_port();
    let fb = Fnbroker::start(&yaml!("connectors:\n  web: { http: { listen: 127.0.0.1:<port>, max_connections: 40, header_timeout: 2s } }\nfunctions:\n<nfunctions>\ntriggers:\n  - { name: t, from: { connector: web, topic: /in }, to: f }\n", port = port, nfunctions = http_fn("f", &server.url("/f"), "")))
    .await;
    let addr = format!("127.0.0.1:{port}");
    // Slowloris: 40 connections with a request head that never ends fill the listener.
    let mut slow = Vec::new();
    for _ in 0..40 {
        let mut s = TcpStream::connect(&addr).await.expect("connect");
        s.write_all(b"POST /in HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n")
            .await
            .expect("write");
        slow.push(s);
    }
    let opened = Instant::now();
    let deadline = Instant::now() + WAIT;
    while !fb
        .metrics()
        .await
        .contains("fnbroker_connections_open{listener=\"web\"} 40")
    {
        assert!(Instant::now() < deadline, "{}", fb.metrics().await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The 41st is refused at once with a 503 and closed.
    let mut extra = TcpStream::connect(&addr).await.expect("connect");
    let answer = read_until_closed(&mut extra, Duration::from_secs(2))
        .await
        .expect("an excess connection is closed at once");
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 503"),
        "{answer}"
    );
    // The admin endpoint answers meanwhile.
    let health = reqwest::get(format!("http://127.0.0.1:{}/healthz", fb.admin))
        .await
        .expect("admin reachable while the ingress is full");
    assert!(health.status().is_success());
    // Every slow connection is closed by the header timeout (2 s), none lasts 10 s.
    for s in &mut slow {
        let left = Duration::from_secs(10).saturating_sub(opened.elapsed());
        assert!(
            read_until_closed(s, left).await.is_some(),
            "a connection with an unfinished request head was still open after 10 s"
        );
    }
    let metrics = fb.metrics().await;
    assert!(
        metrics.contains("fnbroker_connections_refused_total{listener=\"web\"} 1"),
        "{metrics}"
    );
    fb.wait_log("connections refused", WAIT).await;

    // An idle keep-alive connection is closed after the same timeout; a fresh request works.
    let mut idle = TcpStream::connect(&addr).await.expect("connect");
    idle.write_all(b"POST /in HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\nhi")
        .await
        .expect("write");
    let started = Instant::now();
    let answer = read_until_closed(&mut idle, Duration::from_secs(10))
        .await
        .expect("the idle keep-alive connection is closed");
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 202"));
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "closed too early"
    );
    server.wait_count("/f", 1, WAIT).await;
    drop(fb);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_views_show_no_secrets() {
    let server = FnServer::start().await;
    let port = free_port();
    let secret_url = server
        .url("/f?token=TOPSECRET")
        .replace("http://", "http://fnb:PASSWORD@");
    let functions = yaml!(
        "<head>  script: { exec: { command: [sh, -c, \"echo ARGSECRET\"], env: { KEY: ENVSECRET } } }\n",
        head = http_fn("f", &secret_url, "")
    );
    let fb = Fnbroker::start(&config(
        port,
        &functions,
        "  - { name: t, from: { connector: web, topic: /in }, to: f }",
    ))
    .await;
    let view = reqwest::get(format!("http://127.0.0.1:{}/v1/functions", fb.admin))
        .await
        .expect("functions view")
        .text()
        .await
        .expect("text");
    for secret in ["PASSWORD", "TOPSECRET", "ARGSECRET", "ENVSECRET"] {
        assert!(!view.contains(secret), "{secret} shown: {view}");
    }
    assert!(view.contains("http://fnb:***@127.0.0.1"), "{view}");
    assert!(view.contains("token=***"), "{view}");
    // The credentials still work: the function gets them.
    let res = post_x(port).await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let got = server.wait_count("/f", 1, WAIT).await;
    assert!(
        got[0]
            .header("authorization")
            .is_some_and(|a| a.starts_with("Basic "))
    );
    drop(fb);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ingress_authenticates_bearer_basic_and_signed_webhooks() {
    let server = FnServer::start().await;
    let [bearer, basic, signed] = [free_port(), free_port(), free_port()];
    let fb = Fnbroker::start(&yaml!("connectors:
  a: { http: { listen: 127.0.0.1:<bearer>, auth: { bearer: [old-token, new-token] } } }
  b: { http: { listen: 127.0.0.1:<basic>, auth: { basic: { username: hook, password: pa55 } } } }
  c: { http: { listen: 127.0.0.1:<signed>, auth: { hmac: { header: X-Hub-Signature-256, secret: \"It's a Secret to Everybody\", prefix: \"sha256=\" } } } }
functions:
<functions>triggers:
  - { name: a, from: { connector: a, topic: /in }, to: f }
  - { name: b, from: { connector: b, topic: /in }, to: f }
  - { name: c, from: { connector: c, topic: /in }, to: f }
", bearer = bearer, basic = basic, signed = signed, functions = http_fn("f", &server.url("/f"), "")))
    .await;
    let post = |port: u16, path: &str| client().post(format!("http://127.0.0.1:{port}{path}"));
    let challenge = |r: &reqwest::Response| {
        r.headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };

    // Bearer: none, a wrong one, and an unknown path all get 401 (paths are not revealed).
    for req in [
        post(bearer, "/in"),
        post(bearer, "/in").bearer_auth("nope"),
        post(bearer, "/elsewhere"),
    ] {
        let res = req.body("x").send().await.expect("post");
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        assert!(challenge(&res).starts_with("Bearer"), "{}", challenge(&res));
    }
    for token in ["old-token", "new-token"] {
        let res = post(bearer, "/in")
            .bearer_auth(token)
            .body("x")
            .send()
            .await
            .expect("post");
        assert_eq!(res.status(), StatusCode::ACCEPTED);
    }

    // Basic.
    let res = post(basic, "/in")
        .basic_auth("hook", Some("wrong"))
        .body("x")
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(challenge(&res), r#"Basic realm="fnbroker""#);
    let res = post(basic, "/in")
        .basic_auth("hook", Some("pa55"))
        .body("x")
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), StatusCode::ACCEPTED);

    // GitHub's published example: this secret, this payload, this signature.
    let github = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
    let res = post(signed, "/in")
        .header("x-hub-signature-256", github)
        .body("Hello, World!")
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    for (signature, body) in [(Some(github), "Hello, World?"), (None, "Hello, World!")] {
        let mut req = post(signed, "/in").body(body);
        if let Some(s) = signature {
            req = req.header("x-hub-signature-256", s);
        }
        let res = req.send().await.expect("post");
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(challenge(&res), r#"Signature header="X-Hub-Signature-256""#);
    }

    let got = server.wait_count("/f", 4, WAIT).await;
    assert!(got.iter().any(|r| &r.body[..] == b"Hello, World!"));
    // A refused request is answered before routing: no event of it can come later.
    assert_eq!(
        server.count("/f"),
        4,
        "only authenticated requests were delivered"
    );
    drop(fb);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_token_guards_everything_but_the_probes() {
    let server = FnServer::start().await;
    let port = free_port();
    let admin = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("fnbroker.yaml");
    std::fs::write(
        &config,
        yaml!(
            "<head>admin: { listen: 127.0.0.1:<admin>, token: adm1n }\n",
            head = self::config(
                port,
                &http_fn("f", &server.url("/f"), ""),
                "  - { name: t, from: { connector: web, topic: /in }, to: f }"
            ),
            admin = admin
        ),
    )
    .expect("write");
    let mut fb = Fnbroker::spawn_with(dir, &config, admin);
    fb.wait_ready().await;
    let get = |path: &str| client().get(format!("http://127.0.0.1:{admin}{path}"));
    for path in ["/healthz", "/readyz"] {
        assert_eq!(
            get(path).send().await.expect("get").status(),
            StatusCode::OK,
            "{path}"
        );
    }
    for path in ["/metrics", "/v1/triggers", "/v1/functions"] {
        let res = get(path).send().await.expect("get");
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{path}");
        assert!(res.headers().contains_key("www-authenticate"));
        let res = get(path).bearer_auth("wrong").send().await.expect("get");
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{path}");
        let res = get(path).bearer_auth("adm1n").send().await.expect("get");
        assert_eq!(res.status(), StatusCode::OK, "{path}");
    }
    drop(fb);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_beyond_loopback_without_a_token_is_warned_about() {
    let server = FnServer::start().await;
    for (host, token, warned) in [
        ("0.0.0.0", "", true),
        ("0.0.0.0", ", token: adm1n", false),
        ("127.0.0.1", "", false),
    ] {
        let admin = free_port();
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("fnbroker.yaml");
        std::fs::write(
            &config,
            yaml!(
                "<head>admin: { listen: \"<host>:<admin>\"<token> }\n",
                head = self::config(
                    free_port(),
                    &http_fn("f", &server.url("/f"), ""),
                    "  - { name: t, from: { connector: web, topic: /in }, to: f }"
                ),
                host = host,
                admin = admin,
                token = token
            ),
        )
        .expect("write");
        let mut fb = Fnbroker::spawn_with(dir, &config, admin);
        fb.wait_ready().await;
        let logs = fb.logs();
        assert_eq!(
            logs.lines()
                .any(|l| l.contains("WARN") && l.contains("beyond loopback without a token")),
            warned,
            "{host}{token}:\n{logs}"
        );
    }
}

/// A client that trusts `ca`, with a client certificate when given.
fn tls_client(
    ca: &std::path::Path,
    identity: Option<(&std::path::Path, &std::path::Path)>,
) -> reqwest::Client {
    use common::pki::Pki;
    let mut builder = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&Pki::read(ca)).expect("ca")]);
    if let Some((cert, key)) = identity {
        let mut pem = Pki::read(cert);
        pem.extend(Pki::read(key));
        builder = builder.identity(reqwest::Identity::from_pem(&pem).expect("identity"));
    }
    builder.build().expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ingress_and_the_admin_serve_tls_with_client_certificates() {
    use common::pki::{Pki, pki};
    let pki = pki();
    let server = FnServer::start().await;
    let port = free_port();
    let admin = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("fnbroker.yaml");
    let tls = yaml!(
        "{ cert: <cert>, key: <key>, client_ca: <client_ca> }",
        cert = Pki::s(&pki.server_cert),
        key = Pki::s(&pki.server_key),
        client_ca = Pki::s(&pki.ca)
    );
    std::fs::write(
        &config,
        yaml!("connectors:\n  web: { http: { listen: 127.0.0.1:<port>, tls: <tls> } }\nfunctions:\n<nfunctions>triggers:\n  - { name: t, from: { connector: web, topic: /in }, to: f }\nadmin: { listen: 127.0.0.1:<admin>, tls: { cert: <cert>, key: <key> } }\n", port = port, tls = tls, nfunctions = http_fn("f", &server.url("/f"), ""), admin = admin, cert = Pki::s(&pki.server_cert), key = Pki::s(&pki.server_key)),
    )
    .expect("write");
    let fb = Fnbroker::spawn_with(dir, &config, admin);

    // The admin endpoint answers over HTTPS (server certificate only).
    let trusting = tls_client(&pki.ca, None);
    let deadline = Instant::now() + WAIT;
    loop {
        match trusting
            .get(format!("https://localhost:{admin}/readyz"))
            .send()
            .await
        {
            Ok(r) if r.status() == StatusCode::OK => break,
            _ => {
                assert!(
                    Instant::now() < deadline,
                    "admin over TLS not ready:\n{}",
                    fb.logs()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    // Plain HTTP to a TLS listener gets nothing useful.
    assert!(
        client()
            .get(format!("http://127.0.0.1:{admin}/healthz"))
            .send()
            .await
            .map(|r| !r.status().is_success())
            .unwrap_or(true)
    );

    // The ingress requires a client certificate signed by client_ca.
    let url = format!("https://localhost:{port}/in");
    let with_cert = tls_client(&pki.ca, Some((&pki.client_cert, &pki.client_key)));
    let res = with_cert
        .post(&url)
        .body("over mTLS")
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    assert!(
        trusting.post(&url).body("no cert").send().await.is_err(),
        "a client without a certificate is refused by the handshake"
    );
    let wrong_ca = tls_client(&pki.other_ca, Some((&pki.client_cert, &pki.client_key)));
    assert!(
        wrong_ca.post(&url).body("x").send().await.is_err(),
        "a client that does not trust the server's CA cannot connect"
    );
    let got = server.wait_count("/f", 1, WAIT).await;
    assert_eq!(&got[0].body[..], b"over mTLS");
    // Refused clients never got past the handshake: nothing of theirs can come later.
    assert_eq!(server.count("/f"), 1);
    drop(fb);
}

/// An HTTPS function that requires a client certificate signed by the test CA: counts the bodies
/// it gets on `/f`.
async fn https_function(
    pki: &common::pki::Pki,
) -> (
    u16,
    std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    tokio_util::sync::CancellationToken,
) {
    use common::pki::Pki;
    use std::sync::{Arc, Mutex};
    let got: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let seen = Arc::clone(&got);
    let app = axum::Router::new().route(
        "/f",
        axum::routing::post(move |body: axum::body::Bytes| {
            let seen = Arc::clone(&seen);
            async move {
                if let Ok(mut s) = seen.lock() {
                    s.push(body.to_vec());
                }
                StatusCode::OK
            }
        }),
    );
    let tls = fnbroker_core::tls::ServerTls {
        cert: Pki::s(&pki.server_cert),
        key: Pki::s(&pki.server_key),
        client_ca: Some(Pki::s(&pki.ca)),
    }
    .server_config()
    .expect("server tls");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let stop = tokio_util::sync::CancellationToken::new();
    fnbroker_http::server::spawn(
        "https-function".into(),
        listener,
        app,
        fnbroker_http::server::Limits {
            max_connections: 100,
            header_timeout: Duration::from_secs(10),
            tls: Some(Arc::new(tls)),
            reserve: None,
        },
        Arc::default(),
        stop.clone(),
    );
    (port, got, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_functions_with_a_private_ca_and_client_certificates() {
    use common::pki::{Pki, pki};
    let pki = pki();
    let (fn_port, got, stop) = https_function(&pki).await;
    let audit = FnServer::start().await;
    let port = free_port();
    let tls = |ca: &std::path::Path, extra: &str| {
        yaml!(
            "tls: { ca: <ca>, cert: <cert>, key: <key><extra> }",
            ca = Pki::s(ca),
            cert = Pki::s(&pki.client_cert),
            key = Pki::s(&pki.client_key),
            extra = extra
        )
    };
    let functions = yaml!("  good: { http: { url: \"https://localhost:<fn_port>/f\", <good> }, timeout: 2s }
  named: { http: { url: \"https://127.0.0.1:<fn_port>/f\", <named> }, timeout: 2s }
  untrusted: { http: { url: \"https://localhost:<fn_port>/f\", <untrusted> }, timeout: 2s }
  nocert: { http: { url: \"https://localhost:<fn_port>/f\", tls: { ca: <ca> } }, timeout: 2s }
  insecure: { http: { url: \"https://localhost:<fn_port>/f\", tls: { insecure_skip_verify: true, cert: <cert>, key: <key> } }, timeout: 2s }
<audit>", fn_port = fn_port, good = tls(&pki.ca, ""), named = tls(&pki.ca, ", server_name: localhost"), untrusted = tls(&pki.other_ca, ""), ca = Pki::s(&pki.ca), cert = Pki::s(&pki.client_cert), key = Pki::s(&pki.client_key), audit = http_fn("audit", &audit.url("/dlq"), ""));
    let fb = Fnbroker::start(&config(
        port,
        &functions,
        "  - { name: good, from: { connector: web, topic: /good }, to: good }
  - { name: named, from: { connector: web, topic: /named }, to: named }
  - { name: untrusted, from: { connector: web, topic: /untrusted }, to: untrusted, delivery: { retries: 0 }, dead_letter: { function: audit } }
  - { name: nocert, from: { connector: web, topic: /nocert }, to: nocert, delivery: { retries: 0 }, dead_letter: { function: audit } }
  - { name: insecure, from: { connector: web, topic: /insecure }, to: insecure }",
    ))
    .await;
    let logs = fb.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("WARN")
                && l.contains("function `insecure`: tls.insecure_skip_verify")),
        "insecure_skip_verify is warned about at start:\n{logs}"
    );
    for path in ["good", "named", "untrusted", "nocert", "insecure"] {
        let res = client()
            .post(format!("http://127.0.0.1:{port}/{path}"))
            .body(path)
            .send()
            .await
            .expect("post");
        assert_eq!(res.status(), StatusCode::ACCEPTED);
    }
    let dead = audit.wait_count("/dlq", 2, WAIT).await;
    let mut reasons: Vec<(String, String)> = dead
        .iter()
        .map(|r| {
            (
                r.header("ce-dlqtrigger").unwrap_or("").to_string(),
                r.header("ce-dlqreason").unwrap_or("").to_string(),
            )
        })
        .collect();
    reasons.sort();
    assert_eq!(reasons[0].0, "nocert");
    assert_eq!(reasons[1].0, "untrusted");
    assert!(
        reasons[1].1.to_lowercase().contains("certificate")
            || reasons[1].1.contains("UnknownIssuer"),
        "the reason says why: {reasons:?}"
    );
    let deadline = Instant::now() + WAIT;
    loop {
        let mut bodies = got.lock().map(|g| g.clone()).unwrap_or_default();
        bodies.sort();
        if bodies == vec![b"good".to_vec(), b"insecure".to_vec(), b"named".to_vec()] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the HTTPS function got {bodies:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    drop(fb);
}

/// A function behind a token: its static `headers` (here `authorization`) go with every call,
/// from `${ENV}`, and the admin view names the header without its value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_behind_a_bearer_token_gets_it_and_the_admin_hides_it() {
    let server = FnServer::start().await;
    let port = free_port();
    let fb = Fnbroker::start_env(
        &config(
            port,
            &yaml!("  f: { http: { url: \"<f_url>\", headers: { authorization: \"Bearer ${FN_TOKEN}\" } }, timeout: 2s }\n", f_url = server.url("/f")),
            "  - { name: t, from: { connector: web, topic: /in }, to: f }",
        ),
        &[("FN_TOKEN", "fn-s3cret")],
    )
    .await;
    let res = post_x(port).await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let got = server.wait_count("/f", 1, WAIT).await;
    assert_eq!(got[0].header("authorization"), Some("Bearer fn-s3cret"));
    let view = client()
        .get(format!("http://127.0.0.1:{}/v1/functions", fb.admin))
        .send()
        .await
        .expect("get")
        .text()
        .await
        .expect("text");
    assert!(
        view.contains("authorization") && !view.contains("fn-s3cret"),
        "{view}"
    );
    assert!(!fb.logs().contains("fn-s3cret"));
}

/// A webhook answered `202` whose function replies to a RabbitMQ routing key no queue takes:
/// HTTP cannot redeliver, so the event is not handed back to nothing. With a dead letter it goes
/// there, saying why; without one it is counted as dropped. Either way `/readyz` and
/// `/v1/status` name the broken destination. (The event used to be lost with `dropped=0` and
/// a log line about handing it back to a broker HTTP does not have.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_event_whose_reply_cannot_be_published_is_dead_lettered_or_counted() {
    let server = FnServer::with(|_, _| Answer::ok().body("text/plain", b"pong")).await;
    let nowhere = format!("nowhere{}", uuid::Uuid::new_v4().simple());
    let dlq = format!("dlq{}", uuid::Uuid::new_v4().simple());
    let (_conn, ch) = common::amqp::channel().await;
    common::amqp::queue(&ch, &dlq).await;
    let port = free_port();
    let yaml = yaml!(
        "connectors:\n  web: { http: { listen: 127.0.0.1:<port> } }\n  rabbit: { amqp: { url: \"<URL>\" } }\nfunctions:\n<nfunctions>triggers:\n  - { name: dl, from: { connector: web, topic: /dl }, to: f, delivery: { retries: 0, max_delay: 100ms }, reply: { connector: rabbit, topic: <nowhere> }, dead_letter: { connector: rabbit, topic: <dlq> } }\n  - { name: nodl, from: { connector: web, topic: /nodl }, to: f, delivery: { retries: 0, max_delay: 100ms }, reply: { connector: rabbit, topic: <nowhere> } }\n",
        port = port,
        URL = common::amqp::URL,
        nfunctions = http_fn("f", &server.url("/f"), ""),
        nowhere = nowhere,
        dlq = dlq
    );
    let fb = Fnbroker::start(&yaml).await;
    for path in ["/dl", "/nodl"] {
        let answer = client()
            .post(format!("http://127.0.0.1:{port}{path}"))
            .body("x")
            .send()
            .await
            .expect("post");
        assert_eq!(answer.status(), StatusCode::ACCEPTED);
    }
    let letters = common::amqp::read(&ch, &dlq, 1, WAIT).await;
    let reason = letters[0].header("ce-dlqreason").unwrap_or_default();
    assert!(
        reason.contains("reply could not be published") && reason.contains(&nowhere),
        "{reason}"
    );
    common::wait_for("the dropped event counted", WAIT, || {
        fb.logs().contains("the event is dropped")
    })
    .await;
    let metrics = fb.metrics().await;
    assert!(
        metrics.contains(
            "fnbroker_events_dropped_total{trigger=\"nodl\",function=\"f\",reason=\"failed\"} 1"
        ),
        "{metrics}"
    );
    let ready: Value = serde_json::from_str(
        &client()
            .get(format!("http://127.0.0.1:{}/readyz", fb.admin))
            .send()
            .await
            .expect("/readyz")
            .text()
            .await
            .expect("body"),
    )
    .expect("JSON");
    assert_eq!(ready["ready"], true, "{ready}");
    assert_eq!(
        ready["failing_destinations"][0]["destination"], nowhere,
        "{ready}"
    );
    assert_eq!(server.count("/f"), 2, "the function ran once per event");
}

/// The HTTP ingress listens and publishes nothing (its kind's capabilities say so): a dead
/// letter naming it is refused at load, with what to do instead, before anything is taken.
#[test]
fn a_destination_on_the_ingress_is_refused_at_load() {
    let port = free_port();
    let cfg = config(
        port,
        &http_fn("f", "http://127.0.0.1:9/f", ""),
        "  - { name: t, from: { connector: web, topic: /in }, to: f, dead_letter: { connector: web, topic: dlq } }",
    );
    let (code, _, stderr) = common::run_once(&cfg, &["run"]);
    assert_ne!(code, 0, "{stderr}");
    assert!(
        stderr.contains(
            "dead_letter of trigger `t`: connector `web` (http) cannot publish; name a function instead"
        ),
        "{stderr}"
    );
}

/// `redrive` from a connector that keeps nothing to read says which connector it is.
#[test]
fn redrive_from_the_ingress_names_the_connector() {
    let cfg = config(
        free_port(),
        &http_fn("f", "http://127.0.0.1:9/f", ""),
        "  - { name: t, from: { connector: web, topic: /in }, to: f }",
    );
    let (code, _, stderr) = common::run_once(&cfg, &["redrive", "--from", "web:/in"]);
    assert_ne!(code, 0, "{stderr}");
    assert!(
        stderr.contains("connector `web` (http) cannot read back what a topic holds"),
        "{stderr}"
    );
}

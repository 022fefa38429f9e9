//! End-to-end: the real `fnbroker` binary with the machine's RabbitMQ (127.0.0.1:5672,
//! guest/guest) and a real HTTP function server. Queues, exchanges and connection names are
//! unique to each test.

use crate::common;

use std::collections::HashSet;
use std::time::Duration;

use common::amqp;
use common::{Answer, FnServer, Fnbroker, wait_for};

const WAIT: Duration = Duration::from_secs(60);

fn uid() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn config(connection: &str, extra: &str, functions: &str, triggers: &str) -> String {
    yaml!(
        "connectors:\n  rabbit: { amqp: { url: \"<URL>\", connection_name: <connection><extra> } }\nfunctions:\n<functions>triggers:\n<triggers>",
        URL = amqp::URL,
        connection = connection,
        extra = extra,
        functions = functions,
        triggers = triggers
    )
}

/// A competing consumer of `queue` (a connection of its own), calling `path` of `server`.
fn competing(server: &FnServer, queue: &str, path: &str, max_in_flight: usize) -> String {
    config(
        &format!("fb-{}", uid()),
        "",
        &http_fn("f", &server.url(path)),
        &yaml!(
            "  - { name: t, from: { connector: rabbit, queue: <queue> }, to: f, delivery: { max_in_flight: <max_in_flight> } }\n",
            queue = queue,
            max_in_flight = max_in_flight
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_binary_with_every_prefix_and_structured_reach_the_function() {
    let q = format!("q-{}", uid());
    let (_conn, ch) = amqp::channel().await;
    amqp::queue(&ch, &q).await;
    let server = FnServer::start().await;
    let fb = Fnbroker::start(&config(
        &format!("fb-{}", uid()),
        "",
        &http_fn("f", &server.url("/f")),
        &yaml!("  - { name: t, from: { connector: rabbit, queue: <q> }, event: { type: com.example.job }, to: f }\n", q = q),
    ))
    .await;
    amqp::publish(&ch, &q, &[], Some("application/json"), br#"{"n":"plain"}"#).await;
    for (i, prefix) in ["ce-", "ce_", "cloudEvents_", "cloudEvents:"]
        .iter()
        .enumerate()
    {
        let id = format!("bin-{i}");
        let headers = [
            (format!("{prefix}specversion"), "1.0".to_string()),
            (format!("{prefix}id"), id.clone()),
            (format!("{prefix}source"), "/legacy".to_string()),
            (format!("{prefix}type"), "com.example.binary".to_string()),
        ];
        let h: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        amqp::publish(&ch, &q, &h, Some("text/plain"), prefix.as_bytes()).await;
    }
    amqp::publish(
        &ch,
        &q,
        &[],
        Some("application/cloudevents+json"),
        br#"{"specversion":"1.0","id":"st-1","source":"/legacy","type":"com.example.structured","data":{"n":"structured"}}"#,
    )
    .await;
    let got = server.wait_count("/f", 6, WAIT).await;
    let plain = got
        .iter()
        .find(|r| &r.body[..] == br#"{"n":"plain"}"#)
        .expect("plain");
    assert_eq!(plain.header("ce-type"), Some("com.example.job"));
    assert_eq!(
        plain.header("ce-source"),
        Some(format!("amqp://rabbit/{q}").as_str())
    );
    assert_eq!(plain.header("content-type"), Some("application/json"));
    for i in 0..4 {
        let id = format!("bin-{i}");
        let r = got
            .iter()
            .find(|r| r.header("ce-id") == Some(id.as_str()))
            .unwrap_or_else(|| panic!("{id}"));
        assert_eq!(r.header("ce-type"), Some("com.example.binary"));
        assert_eq!(r.header("ce-source"), Some("/legacy"));
        assert_eq!(r.header("content-type"), Some("text/plain"));
    }
    assert!(got.iter().any(|r| r.header("ce-id") == Some("st-1")));
    drop(fb);
}

/// kill -9 in the middle of 10,000 persistent messages, start again: every message reached the
/// function at least once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_in_the_middle_loses_nothing() {
    const N: usize = 10_000;
    let q = format!("q-{}", uid());
    let (_conn, ch) = amqp::channel().await;
    amqp::queue(&ch, &q).await;
    amqp::publish_many(&ch, &q, N).await;
    let server = FnServer::start().await;
    let cfg = config(
        &format!("fb-{}", uid()),
        "",
        &http_fn("f", &server.url("/f")),
        &yaml!(
            "  - { name: t, from: { connector: rabbit, queue: <q> }, to: f, delivery: { max_in_flight: 128 } }\n",
            q = q
        ),
    );
    common::kill_9_midway_loses_nothing("amqp", &server, &cfg, N, 1000).await;
}

/// The server closes fnbroker's connection in the middle of a stream: it reconnects and nothing
/// is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_closed_by_the_server_is_recovered() {
    const N: usize = 2_000;
    let q = format!("q-{}", uid());
    let connection = format!("fb-{}", uid());
    let (_conn, ch) = amqp::channel().await;
    amqp::queue(&ch, &q).await;
    amqp::publish_many(&ch, &q, N).await;
    let server = FnServer::with(|_, _| Answer::ok().delay(Duration::from_millis(2))).await;
    let fb = Fnbroker::start(&config(
        &connection,
        "",
        &http_fn("f", &server.url("/f")),
        &yaml!("  - { name: t, from: { connector: rabbit, queue: <q> }, to: f, delivery: { max_in_flight: 32 } }\n", q = q),
    ))
    .await;
    server.wait_count("/f", 200, WAIT).await;
    let closed = amqp::close_connections(&connection);
    assert!(closed >= 1, "found fnbroker's connection by its name");
    let seen = || -> HashSet<Vec<u8>> { server.on("/f").iter().map(|r| r.body.to_vec()).collect() };
    wait_for(
        "every message after the close",
        Duration::from_secs(120),
        || seen().len() >= N,
    )
    .await;
    // The close was noticed, said once, and the connection came back.
    fb.wait_log("connected to the AMQP server again", WAIT)
        .await;
    assert!(fb.logs().contains("cannot connect to the AMQP server"));
    drop(fb);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_and_replies_go_to_an_exchange_with_confirms() {
    let q = format!("q-{}", uid());
    let exchange = format!("x-{}", uid());
    let dlq = format!("dlq-{}", uid());
    let replies = format!("r-{}", uid());
    let (_conn, ch) = amqp::channel().await;
    amqp::queue(&ch, &q).await;
    amqp::exchange_with_queue(&ch, &exchange, &dlq).await;
    amqp::queue(&ch, &replies).await;
    let server = FnServer::with(|_, n| {
        if n == 0 {
            Answer::status(422).body("text/plain", b"cannot process")
        } else {
            Answer::ok().body("application/json", br#"{"done":true}"#)
        }
    })
    .await;
    let fb = Fnbroker::start(&config(
        &format!("fb-{}", uid()),
        "",
        &http_fn("f", &server.url("/f")),
        &yaml!("  - { name: t, from: { connector: rabbit, queue: <q> }, to: f, delivery: { ordered: true }, dead_letter: { connector: rabbit, exchange: <exchange>, topic: failed.jobs }, reply: { connector: rabbit, topic: <replies> } }\n", q = q, exchange = exchange, replies = replies),
    ))
    .await;
    amqp::publish(
        &ch,
        &q,
        &[
            ("ce-specversion", "1.0"),
            ("ce-id", "job-1"),
            ("ce-source", "/jobs"),
            ("ce-type", "com.example.job"),
        ],
        Some("text/plain"),
        b"first",
    )
    .await;
    amqp::publish(
        &ch,
        &q,
        &[
            ("ce-specversion", "1.0"),
            ("ce-id", "job-2"),
            ("ce-source", "/jobs"),
            ("ce-type", "com.example.job"),
        ],
        Some("text/plain"),
        b"second",
    )
    .await;
    let letters = amqp::read(&ch, &dlq, 1, WAIT).await;
    let l = &letters[0];
    assert_eq!(l.header("ce-id").as_deref(), Some("job-1"));
    assert_eq!(l.header("ce-dlqstatus").as_deref(), Some("422"));
    assert_eq!(l.header("ce-dlqattempts").as_deref(), Some("1"));
    assert_eq!(l.body, b"first");
    assert_eq!(l.properties.delivery_mode(), &Some(2), "persistent");
    let r = &amqp::read(&ch, &replies, 1, WAIT).await[0];
    assert_eq!(
        r.header("ce-type").as_deref(),
        Some("com.example.job.reply")
    );
    assert_eq!(
        r.header("ce-source").as_deref(),
        Some("fnbroker://functions/f")
    );
    assert_eq!(r.body, br#"{"done":true}"#);
    drop(fb);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_on_one_queue_share_it() {
    const N: usize = 400;
    let q = format!("q-{}", uid());
    let (_conn, ch) = amqp::channel().await;
    amqp::queue(&ch, &q).await;
    let server = FnServer::with(|_, _| Answer::ok().delay(Duration::from_millis(5))).await;
    let cfg = |path: &str| competing(&server, &q, path, 8);
    let a = Fnbroker::start(&cfg("/a")).await;
    let b = Fnbroker::start(&cfg("/b")).await;
    amqp::publish_many(&ch, &q, N).await;
    wait_for("every message", WAIT, || {
        server.count("/a") + server.count("/b") >= N
    })
    .await;
    let (na, nb) = (server.count("/a"), server.count("/b"));
    println!("amqp competing consumers: {na} + {nb}");
    assert!(na > 0 && nb > 0, "both consumed ({na} + {nb})");
    drop((a, b));
}

/// A reply to a routing key no queue is bound to. Reported: the
/// function was called 4 times, then the event was dropped. Now the start names the missing
/// queue, the function is called once per delivery (the publish is what fails, and it is
/// permanent, so it is not retried at once), and the message goes back to RabbitMQ after
/// `max_delay`: never dropped, never in a tight loop, counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unroutable_reply_hands_the_message_back_without_calling_again() {
    let q = format!("q-{}", uid());
    let missing = format!("nobody-{}", uid());
    let (_conn, ch) = amqp::channel().await;
    amqp::queue(&ch, &q).await;
    let server =
        FnServer::with(|_, _| Answer::ok().body("application/json", br#"{"done":true}"#)).await;
    let fb = Fnbroker::start(&config(
        &format!("fb-{}", uid()),
        "",
        &http_fn("f", &server.url("/f")),
        &yaml!("  - { name: t, from: { connector: rabbit, queue: <q> }, to: f, delivery: { max_delay: 2s }, reply: { connector: rabbit, topic: <missing> } }\n", q = q, missing = missing),
    ))
    .await;
    assert!(
        fb.logs().contains(&format!("no queue `{missing}`")),
        "the start does not name the missing destination:\n{}",
        fb.logs()
    );
    amqp::publish(&ch, &q, &[], Some("text/plain"), b"ping").await;
    // Handed back after max_delay (2 s) and delivered again: one call per pause, no more.
    let calls = server.wait_count("/f", 2, WAIT).await;
    let gap = calls[1].at - calls[0].at;
    assert!(
        gap >= Duration::from_millis(1900),
        "called again after {gap:?}, not after the 2 s pause:\n{}",
        fb.logs()
    );
    let metrics = fb.metrics().await;
    assert!(
        metrics.contains("fnbroker_events_handed_back_total{trigger=\"t\",function=\"f\"}"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("fnbroker_events_dropped_total{trigger=\"t\",function=\"f\"} 1"),
        "{metrics}"
    );
    // Once the queue exists, the reply lands and the message is acknowledged.
    amqp::queue(&ch, &missing).await;
    let got = amqp::read(&ch, &missing, 1, WAIT).await;
    assert_eq!(got[0].body, br#"{"done":true}"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_with_a_client_certificate_authenticates_with_external() {
    use common::pki::{Pki, pki};
    let pki = pki();
    let node = amqp::RabbitNode::start_tls(&pki.ca, &pki.server_cert, &pki.server_key).await;
    let (_conn, ch) = amqp::channel_at(&node.url()).await;
    let q = format!("q-{}", uid());
    amqp::queue(&ch, &q).await;
    let server = FnServer::start().await;
    let conf = |url: &str, tls: &str| {
        yaml!(
            "connectors:\n  rabbit: { amqp: { url: \"<url>\"<tls> } }\nfunctions:\n<nfunctions>triggers:\n  - { name: t, from: { connector: rabbit, queue: <q> }, to: f }\n",
            url = url,
            tls = tls,
            nfunctions = http_fn("f", &server.url("/f")),
            q = q
        )
    };
    let url = format!("amqps://localhost:{}/%2f", node.tls_port);
    let client_cert = format!(
        "cert: {}, key: {}",
        Pki::s(&pki.client_cert),
        Pki::s(&pki.client_key)
    );
    let fb = Fnbroker::start(&conf(
        &url,
        &yaml!(
            ", tls: { ca: <ca>, <client_cert> }",
            ca = Pki::s(&pki.ca),
            client_cert = client_cert
        ),
    ))
    .await;
    amqp::publish(&ch, &q, &[], Some("text/plain"), b"over tls").await;
    let got = server.wait_count("/f", 1, WAIT).await;
    assert_eq!(&got[0].body[..], b"over tls");
    let connections = node.ctl(&[
        "list_connections",
        "user",
        "ssl",
        "auth_mechanism",
        "--no-table-headers",
    ]);
    assert!(
        connections
            .lines()
            .any(|l| l.split('\t').collect::<Vec<_>>() == ["fnbroker test", "true", "EXTERNAL"]),
        "fnbroker's connection is TLS, authenticated by its certificate:\n{connections}"
    );
    drop(fb);

    let cases = [
        (
            "a CA that did not sign the server's certificate",
            url.clone(),
            yaml!(
                ", tls: { ca: <ca>, <client_cert> }",
                ca = Pki::s(&pki.other_ca),
                client_cert = client_cert
            ),
            "UnknownIssuer",
        ),
        (
            "no client certificate",
            format!("amqps://guest:guest@localhost:{}/%2f", node.tls_port),
            yaml!(", tls: { ca: <ca> }", ca = Pki::s(&pki.ca)),
            "cannot connect to the AMQP server",
        ),
        (
            "a wrong password",
            format!("amqp://guest:wrong@127.0.0.1:{}/%2f", node.port),
            String::new(),
            "ACCESS_REFUSED",
        ),
    ];
    for (what, url, tls, says) in cases {
        let wrong = Fnbroker::spawn(&conf(&url, &tls));
        let warning = common::not_ready_with_a_warning(&wrong, "rabbit").await;
        assert!(warning.contains(says), "{what}: {warning}");
        assert!(
            !wrong.logs().contains("wrong@"),
            "the password is not logged"
        );
    }
}

/// Replicas: two processes on one queue are competing consumers; one is killed with
/// SIGKILL mid-stream, the other takes every later message, and RabbitMQ gives it what the
/// killed one had unacknowledged: every message arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_hands_its_messages_to_the_other() {
    const N: usize = 1_000;
    let q = format!("q-{}", uid());
    let (_conn, ch) = amqp::channel().await;
    amqp::queue(&ch, &q).await;
    let server = FnServer::with(|_, _| Answer::ok().delay(Duration::from_millis(5))).await;
    let cfg = |path: &str| competing(&server, &q, path, 16);
    let b = common::replica_killed(
        "amqp",
        &server,
        cfg,
        N,
        common::AfterKill::Survivor,
        |range| amqp::publish_range(&ch, &q, range),
    )
    .await;
    wait_for("every message", WAIT, || {
        common::delivered_numbers(&server, &["/a", "/b"]).0.len() >= N
    })
    .await;
    drop(b);
}

/// `fnbroker redrive` of a RabbitMQ dead-letter queue, back into the trigger's queue
/// (through the default exchange); what it passes over stays in the dead-letter queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_moves_dead_letters_back_exactly_once() {
    let q = format!("q-{}", uid());
    let dlq = format!("dlq-{}", uid());
    let (_conn, ch) = amqp::channel().await;
    amqp::queue(&ch, &q).await;
    amqp::queue(&ch, &dlq).await;
    let cfg = |url: &str| {
        config(
            &format!("c{}", uid()),
            "",
            &http_fn("f", url),
            &yaml!(
                "  - { name: t, from: { connector: rabbit, queue: <q> }, to: f, dead_letter: { connector: rabbit, topic: <dlq> } }\n",
                q = q,
                dlq = dlq
            ),
        )
    };
    let from = format!("rabbit:{dlq}");
    let publish_q = q.clone();
    common::redrive_round_trip(
        cfg,
        &from,
        6,
        common::Kept::Released,
        false,
        |n| async move {
            amqp::publish_many(&ch, &publish_q, n).await;
        },
    )
    .await;
}

/// Durable retry state on RabbitMQ: the retry topic is a queue (declared by
/// fnbroker) fed through the default exchange.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_in_a_queue_reach_the_function_once_it_is_back() {
    let q = format!("q-{}", uid());
    let retry = format!("retry-{}", uid());
    let (_conn, ch) = amqp::channel().await;
    amqp::queue(&ch, &q).await;
    let cfg = |url: &str| {
        config(
            &format!("c{}", uid()),
            "",
            &http_fn("f", url),
            &yaml!(
                "  - { name: t, from: { connector: rabbit, queue: <q> }, to: f, delivery: { retries: 20, backoff: constant, delay: 500ms, retry_topic: { connector: rabbit, topic: <retry> } } }\n",
                q = q,
                retry = retry
            ),
        )
    };
    let publish_q = q.clone();
    common::retry_topic_outlives_an_outage(cfg, |n| async move {
        amqp::publish_many(&ch, &publish_q, n).await;
    })
    .await;
}

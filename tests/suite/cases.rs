//! The scenarios every connector must pass. Each takes a fresh adapter, makes its own topic,
//! starts the real binary with a configuration whose connector is the adapter's `c`, and
//! removes its topic at the end.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::adapters::{Adapter, Topic};
use crate::common::{Answer, FnServer, Fnbroker, wait_for};

const WAIT: Duration = Duration::from_secs(60);

/// A configuration with the adapter's connector `c`, `functions` and `triggers` (YAML lines).
fn config<A: Adapter>(a: &A, functions: &str, triggers: &str) -> String {
    format!(
        "connectors:\n  c: {}\nfunctions:\n{functions}triggers:\n{triggers}",
        a.connector()
    )
}

/// A function entry `name` calling `path` of `server`.
fn function(name: &str, server: &FnServer, path: &str) -> String {
    format!(
        "  {name}: {{ http: {{ url: \"{}\" }}, timeout: 5s }}\n",
        server.url(path)
    )
}

/// The trigger `t` from `topic` to `f`, with `extra` after `to: f`.
fn trigger(topic: &Topic, extra: &str) -> String {
    format!(
        "  - {{ name: t, from: {{ {} }}, to: f{extra} }}\n",
        topic.from
    )
}

/// The numbers of the messages `path` received with `status`, in arrival order.
fn numbers<A: Adapter>(server: &FnServer, path: &str, status: Option<u16>) -> Vec<usize> {
    server
        .on(path)
        .iter()
        .filter(|r| status.is_none_or(|s| r.status == s))
        .map(|r| {
            A::number(&r.body).unwrap_or_else(|| {
                panic!(
                    "{}: a body with no number on {path}: {:?}",
                    A::NAME,
                    String::from_utf8_lossy(&r.body)
                )
            })
        })
        .collect()
}

/// How many times each number arrived.
fn tally(numbers: &[usize]) -> BTreeMap<usize, usize> {
    let mut counts = BTreeMap::new();
    for n in numbers {
        *counts.entry(*n).or_default() += 1;
    }
    counts
}

/// Waits until `server` received nothing for a second: late duplicates would come by then.
async fn quiet(server: &FnServer) {
    let total = || {
        ["/f", "/dlq", "/replies"]
            .iter()
            .map(|p| server.count(p))
            .sum::<usize>()
    };
    let mut last = total();
    let mut since = Instant::now();
    while since.elapsed() < Duration::from_secs(1) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = total();
        if now != last {
            last = now;
            since = Instant::now();
        }
    }
}

/// Ack: 200 messages published while fnbroker runs reach the function exactly once each, as
/// binary-mode CloudEvents with the required attributes, and nothing comes again after a
/// restart (every message was acknowledged).
pub(crate) async fn every_message_once<A: Adapter>(a: A) {
    const N: usize = 200;
    let topic = a.prepare().await;
    let server = FnServer::start().await;
    let cfg = config(&a, &function("f", &server, "/f"), &trigger(&topic, ""));
    let fb = Fnbroker::start(&cfg).await;
    a.publish(&topic, 0..N).await;
    wait_for(&format!("{}: {N} messages", A::NAME), WAIT, || {
        tally(&numbers::<A>(&server, "/f", None)).len() >= N
    })
    .await;
    quiet(&server).await;
    let got = server.on("/f");
    for r in &got {
        for attr in ["ce-specversion", "ce-id", "ce-source", "ce-type"] {
            assert!(r.header(attr).is_some(), "{}: no {attr}: {r:?}", A::NAME);
        }
    }
    assert_eq!(got.len(), N, "{}: duplicates without a fault", A::NAME);
    drop(fb);

    // Acknowledged means gone: a new process on the same subscription gets nothing.
    let fb = Fnbroker::start(&cfg).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        server.count("/f"),
        N,
        "{}: acknowledged messages came again after a restart\n{}",
        A::NAME,
        fb.logs()
    );
    drop(fb);
    a.cleanup(&topic).await;
}

/// Retry, dead letter, reply: odd messages fail (500) on every attempt, even ones succeed with a
/// reply (the function echoes the body). `retries: 2`: each odd message is tried 3 times and
/// then dead-lettered once with `dlqattempts` 3; each even one is called once and replied to
/// once.
pub(crate) async fn retries_dead_letter_and_replies<A: Adapter>(a: A) {
    const N: usize = 10;
    let topic = a.prepare().await;
    let server = FnServer::with_body(|path, body, _| {
        if path != "/f" {
            return Answer::ok();
        }
        match A::number(body) {
            Some(n) if n % 2 == 1 => Answer::status(500),
            _ => Answer::ok().body("application/octet-stream", body),
        }
    })
    .await;
    let functions = function("f", &server, "/f")
        + &function("dlq", &server, "/dlq")
        + &function("replies", &server, "/replies");
    let fb = Fnbroker::start(&config(
        &a,
        &functions,
        &trigger(
            &topic,
            ", delivery: { retries: 2, backoff: constant, delay: 20ms }, dead_letter: { function: dlq }, reply: { function: replies }",
        ),
    ))
    .await;
    a.publish(&topic, 0..N).await;
    wait_for(
        &format!("{}: dead letters and replies", A::NAME),
        WAIT,
        || server.count("/dlq") >= N / 2 && server.count("/replies") >= N / 2,
    )
    .await;
    quiet(&server).await;
    let calls = tally(&numbers::<A>(&server, "/f", None));
    let expected: BTreeMap<usize, usize> = (0..N).map(|n| (n, 1 + 2 * (n % 2))).collect();
    assert_eq!(calls, expected, "{}: calls per message", A::NAME);
    let dead = tally(&numbers::<A>(&server, "/dlq", None));
    let odd: BTreeMap<usize, usize> = (0..N).filter(|n| n % 2 == 1).map(|n| (n, 1)).collect();
    assert_eq!(dead, odd, "{}: dead letters", A::NAME);
    for r in server.on("/dlq") {
        assert_eq!(r.header("ce-dlqattempts"), Some("3"), "{}", A::NAME);
        assert_eq!(r.header("ce-dlqstatus"), Some("500"), "{}", A::NAME);
        assert_eq!(r.header("ce-dlqtrigger"), Some("t"), "{}", A::NAME);
    }
    let replies = tally(&numbers::<A>(&server, "/replies", None));
    let even: BTreeMap<usize, usize> = (0..N).filter(|n| n % 2 == 0).map(|n| (n, 1)).collect();
    assert_eq!(replies, even, "{}: replies\n{}", A::NAME, fb.logs());
    drop(fb);
    a.cleanup(&topic).await;
}

/// Ordered keys through a hand-back: with `ordered: true`, the reply of the first message
/// cannot be published at first (its destination answers 404 once). Whatever the source does
/// with a message whose destination failed, no later message of its key may reach the function
/// before it is done: the calls come in publishing order (a message may be called again, never
/// after a later one), and every reply is published in the end.
pub(crate) async fn ordered_through_a_hand_back<A: Adapter>(a: A) {
    const N: usize = 12;
    let topic = a.prepare().await;
    let server = FnServer::with_body(|path, body, nth| match path {
        "/f" => Answer::ok().body("application/octet-stream", body),
        "/replies" if nth == 0 => Answer::status(404),
        _ => Answer::ok(),
    })
    .await;
    let functions = function("f", &server, "/f") + &function("replies", &server, "/replies");
    let fb = Fnbroker::start(&config(
        &a,
        &functions,
        &trigger(
            &topic,
            ", delivery: { ordered: true, max_delay: 300ms }, reply: { function: replies }",
        ),
    ))
    .await;
    a.publish(&topic, 0..N).await;
    wait_for(&format!("{}: every reply", A::NAME), WAIT, || {
        numbers::<A>(&server, "/replies", Some(200))
            .into_iter()
            .collect::<BTreeSet<_>>()
            .len()
            >= N
    })
    .await;
    quiet(&server).await;
    let calls = numbers::<A>(&server, "/f", None);
    let overtaken: Vec<(usize, usize)> = calls
        .windows(2)
        .filter(|w| w[1] < w[0])
        .map(|w| (w[0], w[1]))
        .collect();
    assert!(
        overtaken.is_empty(),
        "{}: calls out of order {overtaken:?} in {calls:?}\n{}",
        A::NAME,
        fb.logs()
    );
    assert_eq!(
        calls.iter().copied().collect::<BTreeSet<_>>(),
        (0..N).collect(),
        "{}: every message",
        A::NAME
    );
    drop(fb);
    a.cleanup(&topic).await;
}

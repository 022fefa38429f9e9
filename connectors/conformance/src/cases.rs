//! The scenarios every connector must pass. Each takes a fresh adapter, makes its own topic,
//! starts the real binary with a configuration whose connector is the adapter's `c`, and
//! removes its topic at the end.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::adapter::{Adapter, Mode, Modes, Redelivers, Replicas, Restartable, Topic};
use crate::{Answer, FnServer, Fnbroker, wait_for};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

/// A configuration with `connector` as `c`, the `functions` (a mapping of names to entries)
/// and `trigger`, built from typed values: a YAML mapping with one section a line, each
/// section's value in JSON (YAML's flow style), so that the harness can add its own sections.
fn config(connector: Value, functions: Value, trigger: Value) -> String {
    [
        ("connectors", json!({ "c": connector })),
        ("functions", functions),
        ("triggers", json!([trigger])),
    ]
    .iter()
    .map(|(key, value)| format!("{key}: {value}\n"))
    .collect()
}

/// A function entry calling `path` of `server`.
fn function(server: &FnServer, path: &str) -> Value {
    json!({ "http": { "url": server.url(path) }, "timeout": "5s" })
}

/// The functions `f` (on `/f`) and `others` of `server`, each on the path of its name.
fn functions(server: &FnServer, others: &[&str]) -> Value {
    let mut all = serde_json::Map::new();
    for name in std::iter::once(&"f").chain(others) {
        all.insert(name.to_string(), function(server, &format!("/{name}")));
    }
    Value::Object(all)
}

/// The trigger `t` from `topic` to `f`, with the keys of `extra` besides (`delivery`,
/// `reply`...).
fn trigger(topic: &Topic, extra: Value) -> Value {
    let mut trigger = json!({ "name": "t", "from": topic.from, "to": "f" });
    if let (Some(all), Value::Object(extra)) = (trigger.as_object_mut(), extra) {
        all.extend(extra);
    }
    trigger
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
pub async fn every_message_once<A: Adapter>(a: A) {
    const N: usize = 200;
    let topic = a.prepare().await;
    let server = FnServer::start().await;
    let cfg = config(
        a.connector(),
        functions(&server, &[]),
        trigger(&topic, json!({})),
    );
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

    // Acknowledged means gone: a new process on the same subscription gets only what is
    // published after it (a source redelivers what it kept when the subscription opens, before
    // the new message).
    let fb = Fnbroker::start(&cfg).await;
    a.publish(&topic, N..N + 1).await;
    server.wait_count("/f", N + 1, WAIT).await;
    quiet(&server).await;
    assert_eq!(
        server.count("/f"),
        N + 1,
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
pub async fn retries_dead_letter_and_replies<A: Adapter>(a: A) {
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
    let fb = Fnbroker::start(&config(
        a.connector(),
        functions(&server, &["dlq", "replies"]),
        trigger(
            &topic,
            json!({
                "delivery": { "retries": 2, "backoff": "constant", "delay": "20ms" },
                "dead_letter": { "function": "dlq" },
                "reply": { "function": "replies" },
            }),
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
pub async fn ordered_through_a_hand_back<A: Adapter>(a: A) {
    const N: usize = 12;
    let topic = a.prepare().await;
    let server = FnServer::with_body(|path, body, nth| match path {
        "/f" => Answer::ok().body("application/octet-stream", body),
        "/replies" if nth == 0 => Answer::status(404),
        _ => Answer::ok(),
    })
    .await;
    let fb = Fnbroker::start(&config(
        a.connector(),
        functions(&server, &["replies"]),
        trigger(
            &topic,
            json!({
                "delivery": { "ordered": true, "max_delay": "300ms" },
                "reply": { "function": "replies" },
            }),
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

/// What a stream of numbered messages came to at the function.
#[derive(Debug)]
struct Tally {
    published: usize,
    distinct: usize,
    deliveries: usize,
}

impl Tally {
    fn lost(&self) -> usize {
        self.published - self.distinct
    }

    fn duplicates(&self) -> usize {
        self.deliveries - self.distinct
    }
}

/// Waits until every one of `0..n` reached `/f` with 200 (a source that redelivers), or until
/// the function was idle for two seconds (one that does not), then counts.
async fn settle<A: Adapter>(server: &FnServer, n: usize) -> Tally {
    let delivered = || numbers::<A>(server, "/f", Some(200));
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last = (0, Instant::now());
    loop {
        let got = delivered();
        let distinct = tally(&got).len();
        if distinct >= n || Instant::now() > deadline {
            break;
        }
        if got.len() != last.0 {
            last = (got.len(), Instant::now());
        } else if A::REDELIVERS == Redelivers::No && last.1.elapsed() > Duration::from_secs(2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    quiet(server).await;
    let got = delivered();
    Tally {
        published: n,
        distinct: tally(&got).len(),
        deliveries: got.len(),
    }
}

/// Publishes `0..n` in steps of 50 every 20 ms (2,500/s at most), in a task.
fn publishing<A: Adapter>(a: &Arc<A>, topic: &Arc<Topic>, n: usize) -> tokio::task::JoinHandle<()> {
    let (a, topic) = (Arc::clone(a), Arc::clone(topic));
    tokio::spawn(async move {
        for start in (0..n).step_by(50) {
            a.publish(&topic, start..(start + 50).min(n)).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}

/// The trigger keys the fault cases use: `max_in_flight: 64`.
fn under_load() -> Value {
    json!({ "delivery": { "max_in_flight": 64 } })
}

/// How many messages the fault cases stream.
const STREAM: usize = 2_000;

/// kill -9 once a quarter of 2,000 messages (published while fnbroker consumes) arrived, start
/// again: a source that redelivers loses nothing; for one that does not, the loss is measured.
pub async fn kill_9_midway<A: Adapter>(a: A) {
    let a = Arc::new(a);
    let topic = Arc::new(a.prepare().await);
    let server = FnServer::start().await;
    let cfg = config(
        a.connector(),
        functions(&server, &[]),
        trigger(&topic, under_load()),
    );
    let fb = Fnbroker::start(&cfg).await;
    let publisher = publishing(&a, &topic, STREAM);
    server.wait_count("/f", STREAM / 4, WAIT).await;
    fb.signal("KILL");
    drop(fb);
    let killed_after = server.count("/f");
    let fb = Fnbroker::start(&cfg).await;
    publisher.await.expect("publisher");
    let t = settle::<A>(&server, STREAM).await;
    println!(
        "suite {}: kill -9 after {killed_after} deliveries: {} published, {} lost, {} duplicates",
        A::NAME,
        t.published,
        t.lost(),
        t.duplicates()
    );
    if A::REDELIVERS == Redelivers::Yes {
        assert_eq!(t.lost(), 0, "{}: lost in a kill -9\n{}", A::NAME, fb.logs());
    }
    drop(fb);
    a.cleanup(&topic).await;
}

/// SIGTERM once a quarter of 2,000 messages (published while fnbroker consumes) arrived, start
/// again: nothing is delivered twice on any source (in-flight deliveries finish and are
/// acknowledged, what was fetched but not handed out goes back unseen), and a source that
/// redelivers loses nothing.
pub async fn sigterm_midway<A: Adapter>(a: A) {
    let a = Arc::new(a);
    let topic = Arc::new(a.prepare().await);
    let server = FnServer::start().await;
    let cfg = config(
        a.connector(),
        functions(&server, &[]),
        trigger(&topic, under_load()),
    );
    let mut fb = Fnbroker::start(&cfg).await;
    let publisher = publishing(&a, &topic, STREAM);
    server.wait_count("/f", STREAM / 4, WAIT).await;
    fb.signal("TERM");
    let status = fb.wait_exit(Duration::from_secs(40)).await;
    assert!(
        status.success(),
        "{}: exit {status}\n{}",
        A::NAME,
        fb.logs()
    );
    let stopped_after = server.count("/f");
    let first = fb.logs();
    drop(fb);
    let fb = Fnbroker::start(&cfg).await;
    publisher.await.expect("publisher");
    let t = settle::<A>(&server, STREAM).await;
    println!(
        "suite {}: SIGTERM after {stopped_after} deliveries: {} published, {} lost, {} duplicates",
        A::NAME,
        t.published,
        t.lost(),
        t.duplicates()
    );
    assert_eq!(
        t.duplicates(),
        0,
        "{}: duplicates after a clean stop\n---- first run ----\n{first}\n---- second run ----\n{}",
        A::NAME,
        fb.logs()
    );
    if A::REDELIVERS == Redelivers::Yes {
        assert_eq!(
            t.lost(),
            0,
            "{}: lost in a clean stop\n{}",
            A::NAME,
            fb.logs()
        );
    }
    drop(fb);
    a.cleanup(&topic).await;
}

/// Reloads that change only the triggers (a retry policy, then the event type), while 2,000
/// messages stream: the subscription stays open, so nothing is lost or delivered twice on any
/// source.
pub async fn reload_swapping_triggers<A: Adapter>(a: A) {
    let a = Arc::new(a);
    let topic = Arc::new(a.prepare().await);
    let server = FnServer::start().await;
    let f = functions(&server, &[]);
    let fb = Fnbroker::start(&config(
        a.connector(),
        f.clone(),
        trigger(&topic, under_load()),
    ))
    .await;
    let publisher = publishing(&a, &topic, STREAM);
    server.wait_count("/f", STREAM / 4, WAIT).await;
    fb.rewrite(&config(
        a.connector(),
        f.clone(),
        trigger(
            &topic,
            json!({ "delivery": { "max_in_flight": 64, "retries": 5 } }),
        ),
    ));
    fb.signal("HUP");
    let view = fb.wait_reloads(1, 0).await;
    assert_eq!(
        view["last_reload"]["changes"]["updated"],
        serde_json::json!(["trigger t"]),
        "{}: not a swap: {view}",
        A::NAME
    );
    server.wait_count("/f", STREAM / 2, WAIT).await;
    fb.rewrite(&config(
        a.connector(),
        f.clone(),
        trigger(
            &topic,
            json!({
                "delivery": { "max_in_flight": 64, "retries": 6, "delay": "50ms" },
                "event": { "type": "com.example.swapped" },
            }),
        ),
    ));
    fb.signal("HUP");
    let view = fb.wait_reloads(2, 0).await;
    assert_eq!(
        view["last_reload"]["changes"]["updated"],
        serde_json::json!(["trigger t"]),
        "{}: not a swap: {view}",
        A::NAME
    );
    publisher.await.expect("publisher");
    let t = settle::<A>(&server, STREAM).await;
    println!(
        "suite {}: two reloads swapping triggers: {} published, {} lost, {} duplicates",
        A::NAME,
        t.published,
        t.lost(),
        t.duplicates()
    );
    assert_eq!(
        (t.lost(), t.duplicates()),
        (0, 0),
        "{}: lost and duplicated\n{}",
        A::NAME,
        fb.logs()
    );
    drop(fb);
    a.cleanup(&topic).await;
}

/// A reload that reopens the subscription (`max_in_flight` 64 -> 16) while 2,000 messages
/// stream: a source that redelivers loses nothing; for one that does not, the gap is measured.
pub async fn reload_reopening_the_subscription<A: Adapter>(a: A) {
    let a = Arc::new(a);
    let topic = Arc::new(a.prepare().await);
    let server = FnServer::start().await;
    let f = functions(&server, &[]);
    let fb = Fnbroker::start(&config(
        a.connector(),
        f.clone(),
        trigger(&topic, under_load()),
    ))
    .await;
    let publisher = publishing(&a, &topic, STREAM);
    server.wait_count("/f", STREAM / 4, WAIT).await;
    fb.rewrite(&config(
        a.connector(),
        f.clone(),
        trigger(&topic, json!({ "delivery": { "max_in_flight": 16 } })),
    ));
    fb.signal("HUP");
    fb.wait_reloads(1, 0).await;
    publisher.await.expect("publisher");
    let t = settle::<A>(&server, STREAM).await;
    println!(
        "suite {}: a reload reopening the subscription: {} published, {} lost, {} duplicates",
        A::NAME,
        t.published,
        t.lost(),
        t.duplicates()
    );
    if A::REDELIVERS == Redelivers::Yes {
        assert_eq!(t.lost(), 0, "{}: lost in a reload\n{}", A::NAME, fb.logs());
    }
    drop(fb);
    a.cleanup(&topic).await;
}

/// The function down (503) for 60 s from its 100th delivery, 2,000 messages published at
/// 200/s, default delivery settings and no dead letter: every message reaches the function
/// once it is back, on every source (the deliveries are held, so consumption stops and the
/// backlog waits before fnbroker).
pub async fn a_minute_of_function_outage<A: Adapter>(a: A) {
    let a = Arc::new(a);
    let topic = Arc::new(a.prepare().await);
    let (server, down) = crate::switchable_function().await;
    let cfg = config(
        a.connector(),
        functions(&server, &[]),
        trigger(&topic, json!({})),
    );
    let (publisher, on) = (Arc::clone(&a), Arc::clone(&topic));
    crate::outage_loses_nothing(
        A::NAME,
        &cfg,
        &server,
        &down,
        STREAM,
        Duration::from_secs(60),
        move |range| {
            let (a, topic) = (Arc::clone(&publisher), Arc::clone(&on));
            async move { a.publish(&topic, range).await }
        },
    )
    .await;
    a.cleanup(&topic).await;
}

/// Retire and come back: a reload moves the trigger to another topic, so its subscription is
/// given up (retired, not closed for a restart); 50 messages are published to the old topic
/// meanwhile, none reach the function; a reload moves the trigger back. What the broker kept
/// for the retired subscription then arrives, or nothing does, as the adapter says
/// ([`Adapter::KEEPS_RETIRED`]); what is published after the return always arrives.
pub async fn retired_and_back<A: Adapter>(a: A) {
    let topic = a.prepare().await;
    let other = a.prepare().await;
    let server = FnServer::start().await;
    let f = functions(&server, &[]);
    let fb = Fnbroker::start(&config(
        a.connector(),
        f.clone(),
        trigger(&topic, json!({})),
    ))
    .await;
    a.publish(&topic, 0..10).await;
    server.wait_count("/f", 10, WAIT).await;
    fb.rewrite(&config(
        a.connector(),
        f.clone(),
        trigger(&other, json!({})),
    ));
    fb.signal("HUP");
    let view = fb.wait_reloads(1, 0).await;
    // A connector that cannot subscribe while running (HTTP, PostgreSQL) is replaced with it.
    let replaced = view["last_reload"]["changes"]["replaced"].to_string();
    assert!(replaced.contains("trigger t"), "{}: {view}", A::NAME);
    a.publish(&topic, 10..60).await;
    // What the trigger reads now arrives; nothing of the old topic does.
    a.publish(&other, 1000..1001).await;
    server.wait_count("/f", 11, WAIT).await;
    quiet(&server).await;
    assert_eq!(
        server.count("/f"),
        11,
        "{}: a retired subscription delivered",
        A::NAME
    );
    fb.rewrite(&config(
        a.connector(),
        f.clone(),
        trigger(&topic, json!({})),
    ));
    fb.signal("HUP");
    fb.wait_reloads(2, 0).await;
    a.publish(&topic, 60..70).await;
    wait_for(
        &format!("{}: what was published after the return", A::NAME),
        WAIT,
        || {
            let got = tally(&numbers::<A>(&server, "/f", None));
            (60..70).all(|n| got.contains_key(&n))
        },
    )
    .await;
    if A::KEEPS_RETIRED {
        wait_for(&format!("{}: what the broker kept", A::NAME), WAIT, || {
            tally(&numbers::<A>(&server, "/f", None)).len() >= 71
        })
        .await;
    }
    quiet(&server).await;
    let got = tally(&numbers::<A>(&server, "/f", None));
    let kept = (10..60).filter(|n| got.contains_key(n)).count();
    println!(
        "suite {}: retired, 50 published, back: {kept} of the 50 kept",
        A::NAME
    );
    let expected = if A::KEEPS_RETIRED { 50 } else { 0 };
    assert_eq!(
        kept,
        expected,
        "{}: kept while retired\n{}",
        A::NAME,
        fb.logs()
    );
    drop(fb);
    a.cleanup(&topic).await;
    a.cleanup(&other).await;
}

/// The broker restarted (a clean stop, then a start on the same port and data) while a stream
/// flows: 1,000 messages, the restart once a quarter arrived, 1,000 more after it. fnbroker
/// reconnects and subscribes again; a source that redelivers loses nothing; for one that does
/// not, the loss is measured.
pub async fn broker_restarted<A: Restartable>(a: A) {
    let topic = a.prepare().await;
    let server = FnServer::start().await;
    let cfg = config(
        a.connector(),
        functions(&server, &[]),
        trigger(&topic, under_load()),
    );
    let fb = Fnbroker::start(&cfg).await;
    a.publish(&topic, 0..STREAM / 2).await;
    server.wait_count("/f", STREAM / 4, WAIT).await;
    a.restart().await;
    let restarted_after = server.count("/f");
    // The broker is back; fnbroker may not be yet: a source that redelivers keeps what comes
    // meanwhile.
    a.publish(&topic, STREAM / 2..STREAM).await;
    let t = settle::<A>(&server, STREAM).await;
    println!(
        "suite {}: broker restarted after {restarted_after} deliveries: {} published, {} lost, {} duplicates",
        A::NAME,
        t.published,
        t.lost(),
        t.duplicates()
    );
    if A::REDELIVERS == Redelivers::Yes {
        assert_eq!(
            t.lost(),
            0,
            "{}: lost in a broker restart\n{}",
            A::NAME,
            fb.logs()
        );
    }
    drop(fb);
    a.cleanup(&topic).await;
}

/// The three ways a message carries an event: a plain message (normalized: an `id`, `source` and
/// `type` of fnbroker's), binary mode (attributes in the protocol's headers) and structured mode
/// (the whole event as JSON). Each reaches the function as a binary-mode CloudEvent with the
/// attributes it came with, its data as the body.
pub async fn three_modes<A: Modes>(a: A) {
    let topic = a.prepare().await;
    let server = FnServer::start().await;
    let fb = Fnbroker::start(&config(
        a.connector(),
        functions(&server, &[]),
        trigger(&topic, json!({})),
    ))
    .await;
    a.publish(&topic, 0..1).await;
    a.publish_event(&topic, Mode::Binary, 1).await;
    a.publish_event(&topic, Mode::Structured, 2).await;
    let got = server.wait_count("/f", 3, WAIT).await;
    let by_number = |n: usize| {
        got.iter()
            .find(|r| A::number(&r.body) == Some(n))
            .unwrap_or_else(|| panic!("{}: message {n} missing: {got:?}", A::NAME))
    };
    let plain = by_number(0);
    assert!(
        plain.header("ce-id").is_some_and(|id| !id.is_empty()),
        "{}: {plain:?}",
        A::NAME
    );
    assert!(
        plain.header("ce-source").is_some(),
        "{}: {plain:?}",
        A::NAME
    );
    for (n, mode) in [(1, Mode::Binary), (2, Mode::Structured)] {
        let r = by_number(n);
        let id = mode.id(n);
        assert_eq!(
            r.header("ce-id"),
            Some(id.as_str()),
            "{}: {mode:?} {r:?}",
            A::NAME
        );
        assert_eq!(
            r.header("ce-type"),
            Some(mode.ty()),
            "{}: {mode:?}",
            A::NAME
        );
        assert_eq!(
            r.header("ce-source"),
            Some("/suite"),
            "{}: {mode:?}",
            A::NAME
        );
        assert_eq!(
            r.header("ce-specversion"),
            Some("1.0"),
            "{}: {mode:?}",
            A::NAME
        );
    }
    assert_eq!(
        by_number(2).header("content-type"),
        Some("application/json"),
        "{}: the structured event's datacontenttype",
        A::NAME
    );
    drop(fb);
    a.cleanup(&topic).await;
}

/// Two replicas with one configuration (only the function's path differs) share a stream of 400
/// messages; once both delivered some, one is killed with SIGKILL and the second half is
/// published: the survivor takes it (or, where the broker keeps the killed one's share for it,
/// the killed replica started again delivers it), and every message arrives.
pub async fn a_replica_killed<A: Replicas>(a: A) {
    const N: usize = 400;
    let a = Arc::new(a);
    let topic = Arc::new(a.prepare_shared().await);
    let server = FnServer::start().await;
    let cfg = |path: &str| {
        config(
            a.replica_connector(path),
            json!({ "f": function(&server, path) }),
            trigger(&topic, json!({ "delivery": { "max_in_flight": 16 } })),
        )
    };
    let (publisher, on) = (Arc::clone(&a), Arc::clone(&topic));
    let running = crate::replica_killed(A::NAME, &server, cfg, N, A::AFTER_KILL, |range| {
        let (a, topic) = (Arc::clone(&publisher), Arc::clone(&on));
        async move { a.publish(&topic, range).await }
    })
    .await;
    wait_for(&format!("{}: every message", A::NAME), WAIT, || {
        crate::delivered_numbers(&server, &["/a", "/b"]).0.len() >= N
    })
    .await;
    drop(running);
    a.cleanup(&topic).await;
}

//! End-to-end: the real `fnbroker` binary with a real Mosquitto (the machine's on 1883, or a
//! test's own when it must restart it or queue many messages) and a real HTTP function server.
//! Topics and client ids are unique to each test.

use crate::common;

use std::collections::HashSet;
use std::time::Duration;

use common::mqtt::{self, Mosquitto, Msg, SHARED_PORT};
use common::{FnServer, Fnbroker, wait_for};

const WAIT: Duration = Duration::from_secs(60);

fn uid() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn connector(name: &str, port: u16, client_id: &str, extra: &str) -> String {
    yaml!(
        "  <name>: { mqtt: { url: \"mqtt://127.0.0.1:<port>\", client_id: c<client_id>, session_expiry: 10m<extra> } }\n",
        name = name,
        port = port,
        client_id = client_id,
        extra = extra
    )
}

fn http_fn(name: &str, url: &str) -> String {
    yaml!(
        "  <name>: { http: { url: \"<url>\" }, timeout: 5s }\n",
        name = name,
        url = url
    )
}

fn config(connectors: &str, functions: &str, triggers: &str) -> String {
    format!("connectors:\n{connectors}functions:\n{functions}triggers:\n{triggers}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_and_cloud_events_reach_the_function() {
    let root = format!("t{}", uid());
    let server = FnServer::start().await;
    let fb = Fnbroker::start(&config(
        &(connector("iot", SHARED_PORT, &uid(), "") + &connector("old", SHARED_PORT, &uid(), ", version: 3")),
        &(http_fn("f", &server.url("/f")) + &http_fn("g", &server.url("/g"))),
        &yaml!("  - { name: rooms, from: { connector: iot, topic: \"<root>/sensors/+/temperature\", qos: 1 }, event: { type: com.example.temperature }, to: f }\n  - { name: legacy, from: { connector: old, topic: \"<root>/legacy/#\", qos: 1 }, to: g }\n", root = root),
    ))
    .await;

    let binary = Msg {
        topic: format!("{root}/sensors/hall/temperature"),
        payload: b"19.0".to_vec(),
        content_type: Some("text/plain".into()),
        user_properties: vec![
            ("specversion".into(), "1.0".into()),
            ("id".into(), "bin-7".into()),
            ("source".into(), "/devices/7".into()),
            ("type".into(), "com.example.binary".into()),
            ("Device-Name".into(), "hall sensor".into()),
        ],
    };
    let structured = Msg {
        topic: format!("{root}/sensors/attic/temperature"),
        payload: br#"{"specversion":"1.0","id":"st-1","source":"/devices/9","type":"com.example.structured","data":{"c":30}}"#.to_vec(),
        content_type: Some("application/cloudevents+json".into()),
        user_properties: vec![],
    };
    mqtt::publish(SHARED_PORT, vec![
        Msg::plain(&format!("{root}/sensors/kitchen/temperature"), br#"{"celsius":21.5}"#),
        binary,
        structured,
        Msg::plain(&format!("{root}/legacy/boiler"), br#"{"specversion":"1.0","id":"v3-1","source":"/boiler","type":"com.example.legacy"}"#),
    ])
    .await;

    let got = server.wait_count("/f", 3, WAIT).await;
    let plain = got
        .iter()
        .find(|r| r.header("ce-subject") == Some(&format!("{root}/sensors/kitchen/temperature")))
        .expect("plain");
    assert_eq!(plain.header("ce-type"), Some("com.example.temperature"));
    assert_eq!(
        plain.header("ce-source"),
        Some(format!("mqtt://iot/{root}/sensors/kitchen/temperature").as_str())
    );
    assert_eq!(&plain.body[..], br#"{"celsius":21.5}"#);
    let bin = got
        .iter()
        .find(|r| r.header("ce-id") == Some("bin-7"))
        .expect("binary");
    assert_eq!(bin.header("ce-type"), Some("com.example.binary"));
    assert_eq!(bin.header("ce-source"), Some("/devices/7"));
    assert_eq!(bin.header("content-type"), Some("text/plain"));
    assert_eq!(&bin.body[..], b"19.0");
    let st = got
        .iter()
        .find(|r| r.header("ce-id") == Some("st-1"))
        .expect("structured");
    assert_eq!(st.header("ce-type"), Some("com.example.structured"));

    let legacy = server.wait_count("/g", 1, WAIT).await;
    assert_eq!(legacy[0].header("ce-id"), Some("v3-1"));
    assert_eq!(legacy[0].header("ce-type"), Some("com.example.legacy"));
    drop(fb);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcards_route_to_the_right_triggers_and_overlaps_reach_both() {
    let root = format!("w{}", uid());
    let server = FnServer::start().await;
    let fb = Fnbroker::start(&config(
        &connector("iot", SHARED_PORT, &uid(), ""),
        &(http_fn("temps", &server.url("/temps")) + &http_fn("all", &server.url("/all"))),
        &yaml!("  - { name: temps, from: { connector: iot, topic: \"<root>/+/temperature\" }, to: temps }\n  - { name: all, from: { connector: iot, topic: \"<root>/#\" }, to: all }\n", root = root),
    ))
    .await;
    mqtt::publish(
        SHARED_PORT,
        vec![
            Msg::plain(&format!("{root}/kitchen/temperature"), b"1"),
            Msg::plain(&format!("{root}/kitchen/humidity"), b"2"),
        ],
    )
    .await;
    let all = server.wait_count("/all", 2, WAIT).await;
    let temps = server.wait_count("/temps", 1, WAIT).await;
    assert_eq!(&temps[0].body[..], b"1");
    let bodies: HashSet<Vec<u8>> = all.iter().map(|r| r.body.to_vec()).collect();
    assert_eq!(bodies, HashSet::from([b"1".to_vec(), b"2".to_vec()]));
    // No duplicates from the overlap, once the stragglers had a chance to arrive.
    let temp_reached_all = all.iter().filter(|r| &r.body[..] == b"1").count();
    assert_eq!(temp_reached_all, 1);
    assert_eq!(server.count("/temps"), 1);
    drop(fb);
}

/// kill -9 in the middle of 5,000 QoS 1 messages, start again with the same client id: every
/// message reaches the function at least once (the broker holds the session meanwhile).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_in_the_middle_loses_nothing() {
    const N: usize = 5_000;
    let broker = Mosquitto::start().await;
    let root = format!("k{}", uid());
    let server = FnServer::start().await;
    let cfg = config(
        &connector("iot", broker.port, &uid(), ""),
        &http_fn("f", &server.url("/f")),
        &yaml!(
            "  - { name: t, from: { connector: iot, topic: \"<root>/#\", qos: 1 }, to: f, delivery: { max_in_flight: 64 } }\n",
            root = root
        ),
    );
    let fb = Fnbroker::start(&cfg).await;
    let publishing = {
        let root = root.clone();
        let port = broker.port;
        tokio::spawn(async move {
            let msgs = (0..N)
                .map(|i| Msg::plain(&format!("{root}/d{}", i % 10), format!("{i}").as_bytes()))
                .collect();
            mqtt::publish(port, msgs).await;
        })
    };
    let kill_at = 500 + rand::random_range(0..2000);
    server.wait_count("/f", kill_at, WAIT).await;
    fb.signal("KILL");
    drop(fb);
    let before = server.count("/f");
    publishing.await.expect("publisher");
    let fb = Fnbroker::start(&cfg).await;
    let seen = || -> HashSet<Vec<u8>> { server.on("/f").iter().map(|r| r.body.to_vec()).collect() };
    wait_for(
        "every message after the restart",
        Duration::from_secs(120),
        || seen().len() >= N,
    )
    .await;
    let total = server.count("/f");
    println!(
        "mqtt kill test: killed after {before} deliveries; {N} messages, {total} deliveries, {} duplicates",
        total - N
    );
    drop(fb);
}

/// The broker restarts in the middle of a stream: fnbroker reconnects and resubscribes, and
/// nothing published after the restart, nor anything the session held, is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_in_the_middle_of_a_stream_loses_nothing() {
    let mut broker = Mosquitto::start().await;
    let root = format!("r{}", uid());
    let server = FnServer::start().await;
    let fb = Fnbroker::start(&config(
        &connector("iot", broker.port, &uid(), ", keep_alive: 5s"),
        &http_fn("f", &server.url("/f")),
        &yaml!(
            "  - { name: t, from: { connector: iot, topic: \"<root>/#\", qos: 1 }, to: f }\n",
            root = root
        ),
    ))
    .await;
    let batch = |from: usize, to: usize| -> Vec<Msg> {
        (from..to)
            .map(|i| Msg::plain(&format!("{root}/x"), format!("{i}").as_bytes()))
            .collect()
    };
    mqtt::publish(broker.port, batch(0, 200)).await;
    server.wait_count("/f", 50, WAIT).await;
    broker.restart().await;
    mqtt::publish(broker.port, batch(200, 400)).await;
    let seen = || -> HashSet<Vec<u8>> { server.on("/f").iter().map(|r| r.body.to_vec()).collect() };
    wait_for("all 400 messages", Duration::from_secs(90), || {
        seen().len() >= 400
    })
    .await;
    assert!(
        fb.logs().contains("connected to the MQTT broker again"),
        "the restart was noticed, and the connection came back"
    );
    drop(fb);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_in_one_group_split_a_stream() {
    const N: usize = 200;
    let root = format!("s{}", uid());
    let group = format!("g{}", uid());
    let server = FnServer::start().await;
    let cfg = |path: &str| {
        config(
            &connector("iot", SHARED_PORT, &uid(), ""),
            &http_fn("f", &server.url(path)),
            &yaml!(
                "  - { name: t, from: { connector: iot, topic: \"<root>/#\", qos: 1, group: <group> }, to: f }\n",
                root = root,
                group = group
            ),
        )
    };
    let a = Fnbroker::start(&cfg("/a")).await;
    let b = Fnbroker::start(&cfg("/b")).await;
    // Both are ready, so both are subscribed (readiness waits for the SUBACKs).
    let msgs = (0..N)
        .map(|i| Msg::plain(&format!("{root}/m"), format!("{i}").as_bytes()))
        .collect();
    mqtt::publish(SHARED_PORT, msgs).await;
    wait_for("every message", WAIT, || {
        server.count("/a") + server.count("/b") >= N
    })
    .await;
    let (na, nb) = (server.count("/a"), server.count("/b"));
    println!("mqtt shared subscription split: {na} + {nb}");
    assert!(na > 0 && nb > 0, "both got some ({na} + {nb})");
    let all: HashSet<Vec<u8>> = server
        .on("/a")
        .iter()
        .chain(server.on("/b").iter())
        .map(|r| r.body.to_vec())
        .collect();
    assert_eq!(all.len(), N);
    drop((a, b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_is_published_to_an_mqtt_topic() {
    let root = format!("p{}", uid());
    let server =
        FnServer::with(|_, _| common::Answer::ok().body("application/json", br#"{"setpoint":20}"#))
            .await;
    let (got, _sub) = mqtt::subscribe(SHARED_PORT, &format!("{root}/replies")).await;
    let fb = Fnbroker::start(&config(
        &connector("iot", SHARED_PORT, &uid(), ""),
        &http_fn("f", &server.url("/f")),
        &yaml!("  - { name: t, from: { connector: iot, topic: \"<root>/in\" }, event: { type: com.example.reading }, to: f, reply: { connector: iot, topic: \"<root>/replies\" } }\n", root = root),
    ))
    .await;
    mqtt::publish(SHARED_PORT, vec![Msg::plain(&format!("{root}/in"), b"21")]).await;
    wait_for("the reply", WAIT, || !got.lock().expect("lock").is_empty()).await;
    let r = got.lock().expect("lock")[0].clone();
    assert_eq!(r.prop("specversion"), Some("1.0"));
    assert_eq!(r.prop("type"), Some("com.example.reading.reply"));
    assert_eq!(r.prop("source"), Some("fnbroker://functions/f"));
    assert_eq!(r.content_type.as_deref(), Some("application/json"));
    assert_eq!(r.payload, br#"{"setpoint":20}"#);
    drop(fb);
}

/// SIGTERM in the middle of a QoS 1 stream, then start again: exactly
/// once (the persistent session keeps what fnbroker did not acknowledge).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_in_the_middle_delivers_every_message_exactly_once() {
    const N: usize = 2_000;
    let broker = Mosquitto::start().await;
    let root = format!("s{}", uid());
    let server = FnServer::with(|_, _| common::Answer::ok().delay(Duration::from_millis(20))).await;
    let cfg = config(
        &connector("iot", broker.port, &uid(), ""),
        &http_fn("f", &server.url("/f")),
        &yaml!(
            "  - { name: t, from: { connector: iot, topic: \"<root>/#\", qos: 1 }, to: f }\n",
            root = root
        ),
    );
    // Subscribe once (the session is created), then publish everything while nobody listens:
    // the broker queues it for the session.
    let mut fb = Fnbroker::start(&cfg).await;
    fb.signal("TERM");
    fb.wait_exit(WAIT).await;
    drop(fb);
    let msgs = (0..N)
        .map(|i| Msg::plain(&format!("{root}/d{}", i % 10), format!("{i}").as_bytes()))
        .collect();
    mqtt::publish(broker.port, msgs).await;
    common::sigterm_midway_exactly_once("mqtt", &server, &cfg, N).await;
}

/// Two replicas with the same configuration (no `client_id`) on one
/// `$share` group: the default client id `fnbroker-<connector>-<hostname>` differs per host, so
/// they split the work and neither knocks the other off the broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_with_the_default_client_id_share_a_group_without_reconnects() {
    const N: usize = 200;
    let root = format!("r{}", uid());
    let group = format!("g{}", uid());
    let server = FnServer::start().await;
    let cfg = |path: &str| {
        config(
            &yaml!(
                "  iot: { mqtt: { url: \"mqtt://127.0.0.1:<SHARED_PORT>\", session_expiry: 1m } }\n",
                SHARED_PORT = SHARED_PORT
            ),
            &http_fn("f", &server.url(path)),
            &yaml!(
                "  - { name: t, from: { connector: iot, topic: \"<root>/#\", qos: 1, group: <group> }, to: f }\n",
                root = root,
                group = group
            ),
        )
    };
    let a = Fnbroker::start_env(&cfg("/a"), &[("HOSTNAME", &format!("a{}", uid()))]).await;
    let b = Fnbroker::start_env(&cfg("/b"), &[("HOSTNAME", &format!("b{}", uid()))]).await;
    let msgs = (0..N)
        .map(|i| Msg::plain(&format!("{root}/m"), format!("{i}").as_bytes()))
        .collect();
    mqtt::publish(SHARED_PORT, msgs).await;
    wait_for("every message", WAIT, || {
        server.count("/a") + server.count("/b") >= N
    })
    .await;
    let (na, nb) = (server.count("/a"), server.count("/b"));
    assert!(na > 0 && nb > 0, "both got some ({na} + {nb})");
    for (name, fb) in [("a", &a), ("b", &b)] {
        let logs = fb.logs();
        assert!(
            !logs.contains("cannot connect to the MQTT broker"),
            "replica {name} was knocked off the broker:\n{logs}"
        );
        assert_eq!(
            logs.matches("mqtt connected").count(),
            1,
            "replica {name} reconnected:\n{logs}"
        );
    }
}

/// A slow function and a full trigger queue must not stop rumqttc's
/// event loop from being polled: keep-alive pings go on (MQTT 3.1.1, 1 s keep-alive, the
/// broker's 20 in-flight messages waiting behind one slow call), the connection stays up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_trigger_queue_does_not_stall_the_connection() {
    let root = format!("q{}", uid());
    let server = FnServer::with(|_, _| common::Answer::ok().delay(Duration::from_secs(2))).await;
    let fb = Fnbroker::start(&config(
        &connector("iot", SHARED_PORT, &uid(), ", version: 3, keep_alive: 1s"),
        &http_fn("f", &server.url("/f")),
        &yaml!("  - { name: t, from: { connector: iot, topic: \"<root>/#\", qos: 1 }, to: f, delivery: { max_in_flight: 1 } }\n", root = root),
    ))
    .await;
    let msgs = (0..30)
        .map(|i| Msg::plain(&format!("{root}/m"), format!("{i}").as_bytes()))
        .collect();
    mqtt::publish(SHARED_PORT, msgs).await;
    // Two calls of 4 s: the broker drops a client silent for 1.5 s long before.
    server.wait_count("/f", 3, WAIT).await;
    let logs = fb.logs();
    assert!(
        !logs.contains("cannot connect to the MQTT broker"),
        "the connection dropped while the trigger was full:\n{logs}"
    );
}

/// Mosquitto keeps at most `max_queued_messages` (1000 by default) for a client beyond its receive
/// maximum and drops the rest. PUBACKs leave in receive order, so while the first message's
/// delivery is slow, the ones after it are finished but unacknowledged: with a receive maximum
/// equal to `max_in_flight` (4), 1,006 published messages overflowed the 1,004 the broker holds
/// for the client, and two were lost. The receive maximum is twice `max_in_flight`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_first_message_does_not_use_up_the_brokers_queue() {
    let root = format!("s{}", uid());
    let server = FnServer::with(|_, n| {
        common::Answer::ok().delay(if n == 0 {
            Duration::from_secs(4)
        } else {
            Duration::ZERO
        })
    })
    .await;
    let _fb = Fnbroker::start(&config(
        &connector("iot", SHARED_PORT, &uid(), ""),
        &yaml!("  f: { http: { url: \"<f_url>\" }, timeout: 20s }\n", f_url = server.url("/f")),
        &yaml!("  - { name: t, from: { connector: iot, topic: \"<root>/#\", qos: 1 }, to: f, delivery: { max_in_flight: 4 } }\n", root = root),
    ))
    .await;
    mqtt::publish(SHARED_PORT, vec![Msg::plain(&format!("{root}/m"), b"0")]).await;
    server.wait_count("/f", 1, WAIT).await;
    let n = 1_006;
    let msgs = (1..n)
        .map(|i| Msg::plain(&format!("{root}/m"), format!("{i}").as_bytes()))
        .collect();
    mqtt::publish(SHARED_PORT, msgs).await;
    let got = server.wait_count("/f", n, WAIT).await;
    let unique: HashSet<Vec<u8>> = got.iter().map(|r| r.body.to_vec()).collect();
    assert_eq!(
        unique.len(),
        n,
        "every message arrives; none dropped by the broker"
    );
}

async fn mqtt_outage(outage: Duration) {
    const N: usize = 1_000;
    let broker = Mosquitto::start().await;
    let root = format!("o{}", uid());
    let (server, down) = common::switchable_function().await;
    let cfg = config(
        &connector("iot", broker.port, &uid(), ""),
        &http_fn("f", &server.url("/f")),
        &yaml!(
            "  - { name: t, from: { connector: iot, topic: \"<root>/#\", qos: 1 }, to: f }\n",
            root = root
        ),
    );
    let port = broker.port;
    common::outage_loses_nothing("mqtt", &cfg, &server, &down, N, outage, move |range| {
        let root = root.clone();
        async move {
            let msgs = range
                .map(|i| Msg::plain(&format!("{root}/d{}", i % 10), i.to_string().as_bytes()))
                .collect();
            mqtt::publish(port, msgs).await;
        }
    })
    .await;
    drop(broker);
}

/// With default delivery settings and no dead letter, a function down
/// for 5 s loses nothing of a QoS 1 stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_five_second_function_outage_loses_nothing() {
    mqtt_outage(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtts_with_a_client_certificate_delivers_and_bad_certificates_are_not_ready() {
    use common::pki::{Pki, pki};
    let pki = pki();
    let broker = Mosquitto::start_tls(&pki.ca, &pki.server_cert, &pki.server_key).await;
    let expired = Mosquitto::start_tls(&pki.ca, &pki.expired_cert, &pki.expired_key).await;
    let server = FnServer::start().await;
    let topic = format!("tls{}/reading", uid());
    let connector = |port: u16, tls: &str| {
        yaml!(
            "  dev: { mqtt: { url: \"mqtts://localhost:<port>\", client_id: c<uid>, tls: { <tls> } } }\n",
            port = port,
            uid = uid(),
            tls = tls
        )
    };
    let client_cert = format!(
        "cert: {}, key: {}",
        Pki::s(&pki.client_cert),
        Pki::s(&pki.client_key)
    );
    let good = format!("ca: {}, {client_cert}", Pki::s(&pki.ca));
    let trigger = yaml!(
        "  - { name: t, from: { connector: dev, topic: \"<topic>\" }, to: f }\n",
        topic = topic
    );
    let fb = Fnbroker::start(&config(
        &connector(broker.tls_port, &good),
        &http_fn("f", &server.url("/f")),
        &trigger,
    ))
    .await;
    mqtt::publish(broker.port, vec![Msg::plain(&topic, b"over tls")]).await;
    let got = server.wait_count("/f", 1, WAIT).await;
    assert_eq!(&got[0].body[..], b"over tls");
    drop(fb);

    let cases = [
        (
            "a CA that did not sign the server's certificate",
            broker.tls_port,
            format!("ca: {}, {client_cert}", Pki::s(&pki.other_ca)),
            "UnknownIssuer",
        ),
        (
            "no client certificate",
            broker.tls_port,
            format!("ca: {}", Pki::s(&pki.ca)),
            "CertificateRequired",
        ),
        (
            "an expired server certificate",
            expired.tls_port,
            good.clone(),
            "certificate expired",
        ),
    ];
    for (what, port, tls, says) in cases {
        let wrong = Fnbroker::spawn(&config(
            &connector(port, &tls),
            &http_fn("f", &server.url("/f")),
            &trigger,
        ));
        let warning = common::not_ready_with_a_warning(&wrong, "dev").await;
        assert!(warning.contains(says), "{what}: {warning}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_a_warning_and_not_ready() {
    let broker = Mosquitto::start_auth("fnb", "mqtt-secret").await;
    let server = FnServer::start().await;
    let conf = |password: &str| {
        config(
            &connector(
                "dev",
                broker.port,
                &uid(),
                &format!(", username: fnb, password: {password}"),
            ),
            &http_fn("f", &server.url("/f")),
            "  - { name: t, from: { connector: dev, topic: \"a/b\" }, to: f }\n",
        )
    };
    let fb = Fnbroker::start(&conf("mqtt-secret")).await;
    drop(fb);
    let wrong = Fnbroker::spawn(&conf("not-the-password"));
    let warning = common::not_ready_with_a_warning(&wrong, "dev").await;
    assert!(
        warning.contains("NotAuthorized") || warning.contains("BadUserNamePassword"),
        "{warning}"
    );
    assert!(!wrong.logs().contains("not-the-password"));
}

/// Replicas: two processes with their own client ids in one shared subscription
/// (`$share`); one is killed with SIGKILL mid-stream. Mosquitto goes on giving the killed
/// one's persistent session its share of the later messages (as the MQTT 5 specification
/// allows; shown with plain clients in `mosquitto_keeps_sending_a_dead_shared_member_its_share`),
/// so they wait for it: started again with the same client id, it gets them, and every message
/// arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_leaves_the_shared_subscription_to_the_other() {
    const N: usize = 400;
    let root = format!("rk{}", uid());
    let group = format!("g{}", uid());
    let (id_a, id_b) = (uid(), uid());
    let server = FnServer::start().await;
    let cfg = |path: &str| {
        let id = if path == "/a" { &id_a } else { &id_b };
        config(
            &connector("iot", SHARED_PORT, id, ""),
            &http_fn("f", &server.url(path)),
            &yaml!(
                "  - { name: t, from: { connector: iot, topic: \"<root>/#\", qos: 1, group: <group> }, to: f }\n",
                root = root,
                group = group
            ),
        )
    };
    let topic = format!("{root}/m");
    let b = common::replica_killed(
        "mqtt",
        &server,
        &cfg,
        N,
        common::AfterKill::Restart,
        |range| {
            mqtt::publish(
                SHARED_PORT,
                range
                    .map(|i| Msg::plain(&topic, i.to_string().as_bytes()))
                    .collect(),
            )
        },
    )
    .await;
    let a = Fnbroker::start(&cfg("/a")).await;
    wait_for(
        "every message, once the killed replica is back",
        WAIT,
        || common::delivered_numbers(&server, &["/a", "/b"]).0.len() >= N,
    )
    .await;
    drop((a, b));
}

/// What the MQTT replica test works around, shown with plain clients (no fnbroker): two
/// persistent sessions in one shared subscription; one connection drops without a DISCONNECT
/// (a killed process). Mosquitto goes on giving the dropped session its share of what is
/// published (queued for it: the MQTT 5 specification lets a server do so while the session
/// lives), so the survivor gets only part of it; the rest comes when the dropped client is back
/// with the same client id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_keeps_sending_a_dead_shared_member_its_share() {
    const N: usize = 40;
    let root = format!("dead{}", uid());
    let filter = format!("$share/g{}/{root}/#", uid());
    let (id_a, id_b) = (format!("a{}", uid()), format!("b{}", uid()));
    let (_, a) = mqtt::session_subscriber(SHARED_PORT, &id_a, &filter).await;
    let (got_b, b) = mqtt::session_subscriber(SHARED_PORT, &id_b, &filter).await;
    // Dropped without a DISCONNECT; whether Mosquitto has noticed yet or not, what it routes to
    // the dropped session waits in it.
    a.abort();
    let _ = a.await;
    let topic = format!("{root}/m");
    mqtt::publish(
        SHARED_PORT,
        (0..N)
            .map(|i| Msg::plain(&topic, i.to_string().as_bytes()))
            .collect(),
    )
    .await;
    // Every message is delivered once the dropped member is back: what it got was held for it.
    let (got_a, a) = mqtt::session_subscriber(SHARED_PORT, &id_a, &filter).await;
    wait_for(
        "every message, once the dropped member is back",
        WAIT,
        || got_a.lock().expect("lock").len() + got_b.lock().expect("lock").len() >= N,
    )
    .await;
    let (to_a, to_b) = (
        got_a.lock().expect("lock").len(),
        got_b.lock().expect("lock").len(),
    );
    println!(
        "mosquitto shared subscription with a dropped member: the survivor got {to_b} of {N}, the dropped one {to_a} when it came back"
    );
    assert!(
        to_a > 0 && to_b < N,
        "the survivor got everything: Mosquitto changed"
    );
    a.abort();
    b.abort();
}

/// A `cel` filter reads an MQTT device's JSON payload (the README's example): only the
/// hot reading reaches the function; the cold one and a payload that is not JSON are filtered
/// and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cel_filter_reads_the_json_payload() {
    let root = format!("cel{}", uid());
    let server = FnServer::start().await;
    let cfg = config(
        &connector("iot", SHARED_PORT, &uid(), ""),
        &http_fn("f", &server.url("/f")),
        &yaml!(
            "  - name: hot\n    from: { connector: iot, topic: \"<root>/+/temperature\", qos: 1 }\n    event: { type: com.example.temperature }\n    filter: { cel: \"event.type == 'com.example.temperature' && event.data.celsius > 30\" }\n    to: f\n",
            root = root
        ),
    );
    let fb = Fnbroker::start(&cfg).await;
    let topic = format!("{root}/kitchen/temperature");
    mqtt::publish(
        SHARED_PORT,
        vec![
            Msg::plain(&topic, br#"{"celsius": 21.5}"#),
            Msg::plain(&topic, b"31 degrees"),
            Msg::plain(&topic, br#"{"celsius": 35}"#),
        ],
    )
    .await;
    server.wait_count("/f", 1, WAIT).await;
    // One delivered and two filtered: all three were taken.
    wait_for("two filtered", WAIT, || {
        fb.logs().matches("filtered out").count() >= 2
    })
    .await;
    let got = server.on("/f");
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0].body[..], br#"{"celsius": 35}"#);
    let metrics = fb.metrics().await;
    assert!(
        metrics.contains("fnbroker_events_filtered_total{trigger=\"hot\",function=\"f\"} 2"),
        "{metrics}"
    );
}

/// `fnbroker redrive` of MQTT dead letters: the reader's own persistent session
/// (opened by a first run) holds them; each goes back to the concrete topic it first came on
/// under the trigger's wildcard filter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_moves_dead_letters_back_exactly_once() {
    let root = format!("r{}", uid());
    let dlq = format!("dlq/{}", uid());
    let cfg = |url: &str| {
        config(
            &connector("iot", SHARED_PORT, &root, ""),
            &http_fn("f", url),
            &yaml!(
                "  - { name: t, from: { connector: iot, topic: \"<root>/+/t\" }, to: f, dead_letter: { connector: iot, topic: <dlq> } }\n",
                root = root,
                dlq = dlq
            ),
        )
    };
    let from = format!("iot:{dlq}");
    let publish_root = root.clone();
    common::redrive_round_trip(
        cfg,
        &from,
        6,
        common::Kept::Released,
        true,
        |n| async move {
            let messages = (0..n)
                .map(|i| {
                    Msg::plain(
                        &format!("{publish_root}/dev{}/t", i % 3),
                        format!("{i}").as_bytes(),
                    )
                })
                .collect();
            mqtt::publish(SHARED_PORT, messages).await;
        },
    )
    .await;
}

/// Durable retry state on MQTT: the retry topic is subscribed at QoS 1 in the
/// connector's persistent session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_in_a_topic_reach_the_function_once_it_is_back() {
    let root = format!("rt{}", uid());
    let cfg = |url: &str| {
        config(
            &connector("iot", SHARED_PORT, &root, ""),
            &http_fn("f", url),
            &yaml!(
                "  - { name: t, from: { connector: iot, topic: \"<root>/in\" }, to: f, delivery: { retries: 20, backoff: constant, delay: 500ms, retry_topic: { connector: iot, topic: <root>/retry } } }\n",
                root = root
            ),
        )
    };
    let topic = format!("{root}/in");
    common::retry_topic_outlives_an_outage(cfg, |n| async move {
        let messages = (0..n)
            .map(|i| Msg::plain(&topic, i.to_string().as_bytes()))
            .collect();
        mqtt::publish(SHARED_PORT, messages).await;
    })
    .await;
}

/// A reload that reopens an MQTT subscription while messages flow loses nothing: 2,000 QoS 1
/// messages on an MQTT 5 persistent session; mid-stream `max_in_flight` goes from 32 to 16
/// (the subscription is drained, closed and opened again), then a trigger filter is added (its
/// triggers swapped in). Every message reaches the function exactly once. (The closed
/// subscription's route used to stay with a closed queue: what was routed to it, and what it
/// held, was handed back and never acknowledged, so the broker sent it again only at the next
/// connection: 463 of 2,000 never arrived.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_reopens_the_subscription_under_load_loses_nothing() {
    const N: usize = 2_000;
    let broker = Mosquitto::start().await;
    let root = format!("rl{}", uid());
    let server = FnServer::with(|_, _| common::Answer::ok().delay(Duration::from_millis(2))).await;
    let cfg = |max: usize, filter: &str| {
        config(
            &connector("iot", broker.port, &root, ""),
            &http_fn("f", &server.url("/f")),
            &yaml!(
                "  - { name: t, from: { connector: iot, topic: \"<root>/#\", qos: 1 }, to: f, delivery: { max_in_flight: <max> }<filter> }\n",
                root = root,
                max = max,
                filter = filter
            ),
        )
    };
    let fb = Fnbroker::start(&cfg(32, "")).await;
    let publisher = tokio::spawn({
        let (port, root) = (broker.port, root.clone());
        async move {
            for chunk in (0..N).collect::<Vec<_>>().chunks(100) {
                let msgs = chunk
                    .iter()
                    .map(|i| Msg::plain(&format!("{root}/d{}", i % 10), i.to_string().as_bytes()))
                    .collect();
                mqtt::publish(port, msgs).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    server.wait_count("/f", N / 5, WAIT).await;
    fb.rewrite(&cfg(16, ""));
    fb.signal("HUP");
    fb.wait_reloads(1, 0).await;
    server.wait_count("/f", N / 2, WAIT).await;
    fb.rewrite(&cfg(16, ", filter: { prefix: { type: fnbroker } }"));
    fb.signal("HUP");
    let swapped = fb.wait_reloads(2, 0).await;
    assert_eq!(
        swapped["last_reload"]["changes"]["updated"],
        serde_json::json!(["trigger t"]),
        "{swapped}"
    );
    publisher.await.expect("publisher");
    wait_for("every message at the function", WAIT, || {
        common::delivered_numbers(&server, &["/f"]).0.len() >= N
    })
    .await;
    // A moment for duplicates to show up, if any were coming.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (distinct, total) = common::delivered_numbers(&server, &["/f"]);
    assert_eq!(distinct.len(), N, "lost: {}", N - distinct.len());
    assert_eq!(total, N, "duplicates: {}", total - N);
}

/// A trigger whose topic changes from `x/a/#` to `x/b/#`: the old filter is unsubscribed (what
/// is published to it after the reload is not consumed) and the new one gets every message,
/// on MQTT 3.1.1 and 5. (The old filter used to stay subscribed and routed to a closed queue:
/// its messages were never acknowledged, the broker's in-flight quota filled, and nothing more
/// was consumed at all.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_topic_unsubscribes_the_old_filter_and_consumes_the_new() {
    for version in [5, 3] {
        let broker = Mosquitto::start().await;
        let root = format!("tc{}", uid());
        let server = FnServer::start().await;
        let cfg = |leaf: &str| {
            config(
                &connector("iot", broker.port, &root, &format!(", version: {version}")),
                &http_fn("f", &server.url("/f")),
                &yaml!(
                    "  - { name: t, from: { connector: iot, topic: \"<root>/<leaf>/#\", qos: 1 }, to: f }\n",
                    root = root,
                    leaf = leaf
                ),
            )
        };
        let fb = Fnbroker::start(&cfg("a")).await;
        fb.rewrite(&cfg("b"));
        fb.signal("HUP");
        let view = fb.wait_reloads(1, 0).await;
        assert_eq!(
            view["last_reload"]["changes"]["replaced"],
            serde_json::json!(["trigger t"]),
            "{view}"
        );
        // Past Mosquitto's default in-flight and queue limits on the old topic.
        let old = (0..1_500)
            .map(|i| Msg::plain(&format!("{root}/a/x"), format!("old{i}").as_bytes()))
            .collect();
        mqtt::publish(broker.port, old).await;
        let new = (0..300)
            .map(|i| Msg::plain(&format!("{root}/b/x"), i.to_string().as_bytes()))
            .collect();
        mqtt::publish(broker.port, new).await;
        wait_for(
            &format!("300 messages of the new topic (MQTT {version})"),
            WAIT,
            || common::delivered_numbers(&server, &["/f"]).0.len() >= 300,
        )
        .await;
        let stray = server
            .on("/f")
            .iter()
            .filter(|r| r.body.starts_with(b"old"))
            .count();
        assert_eq!(stray, 0, "MQTT {version}: the old filter still delivers");
        drop(fb);
    }
}

/// `fnbroker send` with the running instance's configuration publishes on a connection of its
/// own: the running instance's publisher (replies) is never knocked off the broker, and every
/// reply arrives. (Both used the client id `<client_id>-pub`, so each `send` took the running
/// publisher's connection away.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_does_not_knock_the_running_publisher_off() {
    let root = format!("sd{}", uid());
    let server = FnServer::with(|_, _| common::Answer::ok().body("text/plain", b"pong")).await;
    let (got, _sub) = mqtt::subscribe(SHARED_PORT, &format!("{root}/replies")).await;
    let cfg = config(
        &connector("iot", SHARED_PORT, &uid(), ""),
        &http_fn("f", &server.url("/f")),
        &yaml!(
            "  - { name: t, from: { connector: iot, topic: \"<root>/in\", qos: 1 }, to: f, reply: { connector: iot, topic: \"<root>/replies\" } }\n",
            root = root
        ),
    );
    let fb = Fnbroker::start(&cfg).await;
    for i in 0..3 {
        let (code, _, err) = common::run_once(
            &cfg,
            &[
                "send",
                "--connector",
                "iot",
                "--topic",
                &format!("{root}/in"),
                "--data",
                &i.to_string(),
            ],
        );
        assert_eq!(code, 0, "{err}");
        wait_for("the reply", WAIT, || got.lock().expect("lock").len() > i).await;
    }
    let logs = fb.logs();
    assert!(
        !logs.contains("mqtt publisher connection lost"),
        "the running publisher was knocked off:\n{logs}"
    );
    assert!(
        !logs.contains("a new MQTT session joins shared subscriptions"),
        "no shared group here, no warning expected"
    );
}

/// A persistent session new to the broker that joins a shared subscription is warned about
/// once (a session left under an old client id would keep taking a share); the same client id
/// started again finds its session, and says nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_session_in_a_shared_group_is_warned_about_once() {
    const WARNING: &str = "a new MQTT session joins shared subscriptions";
    let root = format!("ns{}", uid());
    let server = FnServer::start().await;
    let cfg = config(
        &connector("iot", SHARED_PORT, &uid(), ""),
        &http_fn("f", &server.url("/f")),
        &yaml!(
            "  - { name: t, from: { connector: iot, topic: \"<root>/#\", qos: 1, group: g<root> }, to: f }\n",
            root = root
        ),
    );
    let mut fb = Fnbroker::start(&cfg).await;
    fb.wait_log(WARNING, WAIT).await;
    assert_eq!(fb.logs().matches(WARNING).count(), 1);
    fb.signal("TERM");
    fb.wait_exit(WAIT).await;
    drop(fb);
    let fb = Fnbroker::start(&cfg).await;
    fb.wait_log("session_present=true", WAIT).await;
    assert!(!fb.logs().contains(WARNING), "{}", fb.logs());
}

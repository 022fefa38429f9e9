//! End-to-end: the real `fnbroker` binary capturing the changes of a PostgreSQL cluster of the
//! test's own (`wal_level = logical`, started with `initdb`/`pg_ctl`), into a real HTTP function
//! server.

use crate::common;

use std::collections::HashSet;
use std::time::Duration;

use common::postgres::Cluster;
use common::{Answer, FnServer, Fnbroker, wait_for};

const WAIT: Duration = Duration::from_secs(60);

/// A configuration with the connector `db` on `url`, a function `f` at `server`'s `path` and
/// one trigger `t` from `topic` (with `extra` after `to: f`).
fn config(url: &str, server: &FnServer, path: &str, topic: &str, extra: &str) -> String {
    yaml!(
        "connectors:\n  db: { postgres: { url: \"<url>\" } }\nfunctions:\n  f: { http: { url: \"<function_url>\" }, timeout: 5s }\ntriggers:\n  - { name: t, from: { connector: db, topic: \"<topic>\" }, to: f<extra> }\n",
        url = url,
        function_url = server.url(path),
        topic = topic,
        extra = extra
    )
}

/// The table `items (n int)` in the publication `fnbroker`.
async fn items_table(cluster: &Cluster) -> tokio_postgres::Client {
    let c = cluster.client().await;
    c.batch_execute(
        "CREATE TABLE items (n int PRIMARY KEY); CREATE PUBLICATION fnbroker FOR TABLE items;",
    )
    .await
    .expect("items");
    c
}

/// Inserts the rows `range`, `per` rows a transaction.
async fn insert(c: &tokio_postgres::Client, range: std::ops::Range<usize>, per: usize) {
    let rows: Vec<usize> = range.collect();
    for chunk in rows.chunks(per) {
        let values: Vec<String> = chunk.iter().map(|n| format!("({n})")).collect();
        c.batch_execute(&format!("INSERT INTO items VALUES {}", values.join(",")))
            .await
            .expect("insert");
    }
}

/// The `n` of each insert event the function got at `path`.
fn numbers(server: &FnServer, path: &str) -> Vec<i64> {
    server
        .on(path)
        .iter()
        .filter_map(|r| {
            let v: serde_json::Value = serde_json::from_slice(&r.body).ok()?;
            v["new"]["n"].as_i64()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inserts_updates_deletes_and_truncates_become_typed_events_in_order() {
    let cluster = Cluster::start();
    let c = cluster.client().await;
    c.batch_execute(
        "CREATE TABLE orders (id bigint PRIMARY KEY, paid bool, total numeric, doc jsonb, blob bytea, note text);
         ALTER TABLE orders REPLICA IDENTITY FULL;
         CREATE PUBLICATION fnbroker FOR TABLE orders;",
    )
    .await
    .expect("schema");
    let server = FnServer::start().await;
    let fb = Fnbroker::start(&config(
        &cluster.url(),
        &server,
        "/f",
        "public.orders",
        ", delivery: { ordered: true }",
    ))
    .await;
    c.batch_execute(
        "INSERT INTO orders VALUES (7, false, 12345678901234567890.12, '{\"a\": [1, 2]}', '\\x00ff', NULL);
         UPDATE orders SET paid = true WHERE id = 7;
         DELETE FROM orders WHERE id = 7;
         TRUNCATE orders;",
    )
    .await
    .expect("changes");
    let got = server.wait_count("/f", 4, WAIT).await;
    let types: Vec<&str> = got.iter().filter_map(|r| r.header("ce-type")).collect();
    assert_eq!(
        types,
        [
            "com.fnbroker.postgres.insert",
            "com.fnbroker.postgres.update",
            "com.fnbroker.postgres.delete",
            "com.fnbroker.postgres.truncate"
        ],
        "{}",
        fb.logs()
    );
    let json = |i: usize| -> serde_json::Value {
        serde_json::from_slice(&got[i].body).expect("json data")
    };
    assert_eq!(
        json(0),
        serde_json::json!({"new": {"id": 7, "paid": false, "total": "12345678901234567890.12",
            "doc": {"a": [1, 2]}, "blob": "AP8=", "note": null}})
    );
    assert_eq!(json(1)["old"]["paid"], false);
    assert_eq!(json(1)["new"]["paid"], true);
    assert_eq!(json(2)["old"]["id"], 7);
    assert!(json(2).get("new").is_none());
    for r in &got {
        assert_eq!(r.header("ce-subject"), Some("public.orders"));
        assert_eq!(r.header("ce-source"), Some("postgres://db/public.orders"));
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert!(r.header("ce-time").is_some());
        let id = r.header("ce-id").expect("id");
        assert!(
            id.contains('/')
                && id
                    .rsplit('/')
                    .next()
                    .is_some_and(|p| p.parse::<u32>().is_ok()),
            "{id}"
        );
    }
    drop(fb);
}

/// kill -9 while 2,000 rows are inserted (100 transactions of 20) and consumed; start again:
/// every row arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_in_the_middle_loses_nothing() {
    const N: usize = 2_000;
    let cluster = Cluster::start();
    let c = items_table(&cluster).await;
    let server = FnServer::with(|_, _| Answer::ok().delay(Duration::from_millis(1))).await;
    let cfg = config(
        &cluster.url(),
        &server,
        "/f",
        "items",
        ", delivery: { max_in_flight: 64 }",
    );
    let fb = Fnbroker::start(&cfg).await;
    insert(&c, 0..N / 2, 20).await;
    let kill_at = 100 + rand::random_range(0..(N / 3));
    server.wait_count("/f", kill_at, WAIT).await;
    fb.signal("KILL");
    drop(fb);
    let before = server.count("/f");
    insert(&c, N / 2..N, 20).await;
    let fb = Fnbroker::start(&cfg).await;
    let seen = || numbers(&server, "/f").into_iter().collect::<HashSet<_>>();
    wait_for(
        "every row after the restart",
        Duration::from_secs(120),
        || seen().len() >= N,
    )
    .await;
    let total = server.count("/f");
    println!(
        "postgres kill test: killed after {before}; {N} rows, {total} deliveries, {} duplicates",
        total - N
    );
    drop(fb);
}

/// Two replicas on one slot: one reads it, the other stands by. The reader is killed with
/// SIGKILL: the other takes the slot over and every row arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_replica_takes_the_slot_over() {
    const N: usize = 600;
    let cluster = Cluster::start();
    let c = items_table(&cluster).await;
    let server = FnServer::with(|_, _| Answer::ok().delay(Duration::from_millis(2))).await;
    let a = Fnbroker::start(&config(&cluster.url(), &server, "/a", "items", "")).await;
    let b = Fnbroker::start(&config(&cluster.url(), &server, "/b", "items", "")).await;
    b.wait_log("standing by", WAIT).await;
    insert(&c, 0..N / 2, 10).await;
    server.wait_count("/a", 50, WAIT).await;
    a.signal("KILL");
    drop(a);
    insert(&c, N / 2..N, 10).await;
    let seen = || {
        let mut all: HashSet<i64> = numbers(&server, "/a").into_iter().collect();
        all.extend(numbers(&server, "/b"));
        all
    };
    wait_for(
        "every row, through the replica that took over",
        WAIT,
        || seen().len() >= N,
    )
    .await;
    assert!(server.count("/b") > 0, "{}", b.logs());
    println!(
        "postgres standby: a delivered {} before it was killed, b {} after it took over",
        server.count("/a"),
        server.count("/b")
    );
    drop(b);
}

/// Replies and dead letters are rows of tables: the function's answer as `data`, the refused
/// event with its `dlq*` extensions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_and_dead_letters_are_inserted_into_tables() {
    let cluster = Cluster::start();
    let c = items_table(&cluster).await;
    let columns = "(id text, source text, type text, subject text, time timestamptz, datacontenttype text, data jsonb, extensions jsonb)";
    c.batch_execute(&format!(
        "CREATE TABLE replies {columns}; CREATE SCHEMA audit; CREATE TABLE audit.dead {columns};"
    ))
    .await
    .expect("tables");
    let server = FnServer::with_body(|_, body, _| {
        if body.windows(3).any(|w| w == b"666") {
            Answer::status(400)
        } else {
            Answer::ok().body("application/json", br#"{"done":true}"#)
        }
    })
    .await;
    let fb = Fnbroker::start(&config(
        &cluster.url(),
        &server,
        "/f",
        "items",
        ", reply: { connector: db, topic: replies }, dead_letter: { connector: db, topic: audit.dead }",
    ))
    .await;
    c.batch_execute("INSERT INTO items VALUES (1), (666)")
        .await
        .expect("insert");
    let mut rows = (Vec::new(), Vec::new());
    for _ in 0..400 {
        rows = (
            c.query("SELECT type, source, data::text FROM replies", &[])
                .await
                .expect("replies"),
            c.query(
                "SELECT type, data::text, extensions->>'dlqstatus' FROM audit.dead",
                &[],
            )
            .await
            .expect("dead letters"),
        );
        if !rows.0.is_empty() && !rows.1.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reply = rows
        .0
        .first()
        .unwrap_or_else(|| panic!("no reply:\n{}", fb.logs()));
    assert_eq!(
        reply.get::<_, String>(0),
        "com.fnbroker.postgres.insert.reply"
    );
    assert_eq!(reply.get::<_, String>(1), "fnbroker://functions/f");
    assert_eq!(reply.get::<_, String>(2), r#"{"done": true}"#);
    let letter = rows
        .1
        .first()
        .unwrap_or_else(|| panic!("no dead letter:\n{}", fb.logs()));
    assert_eq!(letter.get::<_, String>(0), "com.fnbroker.postgres.insert");
    assert_eq!(letter.get::<_, String>(1), r#"{"new": {"n": 666}}"#);
    assert_eq!(letter.get::<_, Option<String>>(2).as_deref(), Some("400"));
    drop(fb);
}

/// What cannot work is said at start: the machine's server runs with `wal_level = replica`; a
/// cluster without the publication says how to make it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_logical_wal_or_a_publication_is_an_error_at_start() {
    let server = FnServer::start().await;
    common::postgres::connect("postgres://postgres@127.0.0.1:5432/postgres").await;
    let mut fb = Fnbroker::spawn(&config(
        "postgres://postgres@127.0.0.1:5432/postgres",
        &server,
        "/f",
        "items",
        "",
    ));
    assert!(!fb.wait_exit(WAIT).await.success());
    assert!(fb.logs().contains("wal_level = logical"), "{}", fb.logs());

    let cluster = Cluster::start();
    let mut fb = Fnbroker::spawn(&config(&cluster.url(), &server, "/f", "items", ""));
    assert!(!fb.wait_exit(WAIT).await.success());
    assert!(
        fb.logs().contains("CREATE PUBLICATION fnbroker FOR TABLE"),
        "{}",
        fb.logs()
    );
}

/// TLS: a cluster that accepts TLS only, its certificate signed by a private CA. With `tls.ca`
/// changes arrive; with another CA the connector is not ready and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_private_ca_and_a_wrong_ca_is_not_ready() {
    let pki = common::pki::pki();
    let cluster = Cluster::start_tls(&pki);
    // Plain TCP connections are refused (pg_hba: hostssl only); the test's session uses the
    // Unix socket.
    let c = items_table(&cluster).await;
    let server = FnServer::start().await;
    let with_ca = |ca: &std::path::Path| {
        config(&cluster.url(), &server, "/f", "items", "").replace(
            "postgres: { url: ",
            &yaml!(
                "postgres: { tls: { ca: \"<ca>\" }, url: ",
                ca = common::pki::Pki::s(ca)
            ),
        )
    };
    let fb = Fnbroker::start(&with_ca(&pki.ca)).await;
    // By name: the stream verifies the whole certificate (the IP address above, the chain).
    let by_name = with_ca(&pki.ca).replace("@127.0.0.1:", "@localhost:");
    let named = Fnbroker::start(&by_name).await;
    drop(named);
    c.batch_execute("INSERT INTO items VALUES (1)")
        .await
        .expect("insert");
    let got = server.wait_count("/f", 1, WAIT).await;
    assert_eq!(
        got[0].header("ce-type"),
        Some("com.fnbroker.postgres.insert")
    );
    drop(fb);

    let fb = Fnbroker::spawn(&with_ca(&pki.other_ca));
    let warning = common::not_ready_with_a_warning(&fb, "db").await;
    assert!(
        warning.to_lowercase().contains("certificate") || warning.contains("tls"),
        "{warning}"
    );
}

/// `fnbroker send` inserts one event into a table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_inserts_one_event_into_a_table() {
    let cluster = Cluster::start();
    let c = cluster.client().await;
    c.batch_execute("CREATE TABLE inbox (id text, source text, type text, subject text, time timestamptz, datacontenttype text, data jsonb, extensions jsonb)")
        .await
        .expect("table");
    let (code, out, err) = common::run_once(
        &yaml!(
            "connectors:\n  db: { postgres: { url: \"<url>\" } }\n",
            url = cluster.url()
        ),
        &[
            "send",
            "--connector",
            "db",
            "--topic",
            "inbox",
            "--type",
            "com.example.manual",
            "--source",
            "/me",
            "--data",
            r#"{"hello":"world"}"#,
        ],
    );
    assert_eq!(code, 0, "{err}");
    let row = c
        .query_one(
            "SELECT id, type, source, data::text, time IS NOT NULL FROM inbox",
            &[],
        )
        .await
        .expect("one row");
    assert_eq!(row.get::<_, String>(0), out.trim());
    assert_eq!(row.get::<_, String>(1), "com.example.manual");
    assert_eq!(row.get::<_, String>(2), "/me");
    assert_eq!(row.get::<_, String>(3), r#"{"hello": "world"}"#);
    assert!(row.get::<_, bool>(4));
}

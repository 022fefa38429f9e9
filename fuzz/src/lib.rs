//! Fuzz targets for every decoder of untrusted input, and a time-bounded runner that works on
//! the stable toolchain (nightly, and so cargo-fuzz, cannot be installed where fnbroker is
//! built).
//!
//! A target is a function of arbitrary bytes that must return, whatever the bytes: an error is
//! a fine answer, a panic or an abort (a stack overflow) is a crash. Inputs come from proptest:
//! arbitrary bytes, and mutations of valid seeds (bytes overwritten, inserted, removed, chunks
//! repeated, structural characters spliced in), so the decoders get past their first check.
//! A failure is shrunk to a minimal input by proptest before it is reported.
//!
//! The targets: `structured` (a structured-mode CloudEvent, JSON), `batch` (a batch, with the
//! ingress's `max_batch`), `http` (an HTTP request's headers and body through the ingress's
//! content-mode dispatch), `kafka`, `mqtt`, `nats`, `amqp` (each protocol's binary-mode
//! attributes through its connector's decoder), `cesql` (the CloudEvents SQL parser and an
//! evaluation of what parses), `config` (the configuration loader, every connector kind
//! registered), `redis` (a stream entry's fields through the Redis binding), `pgoutput` (a
//! logical replication stream, messages separated by a blank line), `answers` (what functions
//! and platforms send back: an HTTP reply with its status and headers, a Lambda payload, an
//! OpenWhisk activation record, an OpenFaaS callback, `batchItemFailures`), `cel` (the CEL
//! compiler and an evaluation of what compiles). Binary-mode inputs are read as `name: value`
//! lines, a blank line, then the body.

use std::time::{Duration, Instant};

use fnbroker_config::load_str;
use fnbroker_core::registry::{Kind, Registry};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};

/// A fuzz target.
pub struct Target {
    /// Its name on the command line.
    pub name: &'static str,
    /// Valid inputs to mutate.
    pub seeds: &'static [&'static str],
    /// Feeds one input to the decoder.
    pub run: fn(&[u8]),
}

/// Every target.
pub const TARGETS: &[Target] = &[
    Target {
        name: "structured",
        seeds: &[
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","datacontenttype":"application/json","data":{"a":[1,2,{"b":null}]},"time":"2026-01-01T00:00:00Z","ext":"x"}"#,
            r#"{"specversion":"1.0","id":"2","source":"/s","type":"t","data_base64":"AAEC","subject":"s"}"#,
        ],
        run: structured,
    },
    Target {
        name: "batch",
        seeds: &[
            r#"[{"specversion":"1.0","id":"1","source":"/s","type":"t"},{"specversion":"1.0","id":"2","source":"/s","type":"t","data":"x"}]"#,
        ],
        run: batch,
    },
    Target {
        name: "http",
        seeds: &[
            "ce-specversion: 1.0\nce-id: 1\nce-source: /s\nce-type: t\nce-time: 2026-01-01T00:00:00Z\nce-ext: a%20b\ncontent-type: text/plain\n\nbody",
            "content-type: application/cloudevents+json\n\n{\"specversion\":\"1.0\",\"id\":\"1\",\"source\":\"/s\",\"type\":\"t\"}",
            "content-type: application/cloudevents-batch+json\n\n[{\"specversion\":\"1.0\",\"id\":\"1\",\"source\":\"/s\",\"type\":\"t\"}]",
        ],
        run: http,
    },
    Target {
        name: "kafka",
        seeds: &[
            "ce_specversion: 1.0\nce_id: 1\nce_source: /s\nce_type: t\nce_time: 2026-01-01T00:00:00Z\ncontent-type: application/json\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\n\n{}",
            "content-type: application/cloudevents+json\n\n{\"specversion\":\"1.0\",\"id\":\"1\",\"source\":\"/s\",\"type\":\"t\"}",
        ],
        run: kafka,
    },
    Target {
        name: "mqtt",
        seeds: &[
            "specversion: 1.0\nid: 1\nsource: /s\ntype: t\ncontent-type: text/plain\n\n21.5",
            "content-type: application/cloudevents+json\n\n{\"specversion\":\"1.0\",\"id\":\"1\",\"source\":\"/s\",\"type\":\"t\"}",
        ],
        run: mqtt,
    },
    Target {
        name: "nats",
        seeds: &[
            "ce-specversion: 1.0\nce-id: 1\nce-source: /s\nce-type: t\nContent-Type: text/plain\n\nx",
        ],
        run: nats,
    },
    Target {
        name: "amqp",
        seeds: &[
            "cloudEvents:specversion: 1.0\nce_id: 1\nce-source: /s\ncloudEvents_type: t\ncontent-type: text/plain\n\nx",
        ],
        run: amqp,
    },
    Target {
        name: "cesql",
        seeds: &[
            "type = 'com.example' AND (subject LIKE 'a%' OR NOT EXISTS ext) AND INT(ext) + 1 > 2",
            "LOWER(source) IN ('a', 'b') AND CONCAT(id, 'x') <> 'y' AND -(3 * 4) / 0 = 1 XOR TRUE",
        ],
        run: cesql,
    },
    Target {
        name: "config",
        seeds: &[
            "connectors:\n  web: { http: { listen: 127.0.0.1:8080, auth: { bearer: [a] } } }\n  k: { kafka: { brokers: [\"k:9092\"], sasl: { mechanism: PLAIN, username: u, password: p } } }\n  m: { mqtt: { url: \"mqtt://m:1883\" } }\nfunctions:\n  f: { http: { url: \"http://f/\" }, timeout: 5s }\ntriggers:\n  - { name: t, from: { connector: web, topic: /in }, filter: { sql: \"type = 'x'\" }, to: f, delivery: { retries: 2, delay: 1s } }\n",
            "connectors:\n  n: { nats: { url: nats://n:4222 } }\n  a: { amqp: { url: \"amqp://a/%2f\" } }\nfunctions:\n  e: { exec: { command: [cat] } }\ntriggers:\n  - { name: t, from: { connector: n, topic: x.>, stream: S }, to: e, dead_letter: { connector: a, topic: q } }\nadmin: { listen: \"127.0.0.1:9464\" }\n",
        ],
        run: config,
    },
    Target {
        name: "redis",
        seeds: &[
            "ce_specversion: 1.0\nce_id: 1\nce_source: /s\nce_type: t\ncontent-type: text/plain\n\nx",
            "content-type: application/cloudevents+json\n\n{\"specversion\":\"1.0\",\"id\":\"1\",\"source\":\"/s\",\"type\":\"t\"}",
            "a: 1\nb: two\n\n",
        ],
        run: redis,
    },
    Target {
        name: "pgoutput",
        seeds: &[
            // Relation 16384 public.t (id int4 key, name text), then Insert, Update, Delete, Truncate.
            "R\0\0@\0public\0t\0d\0\x02\x01id\0\0\0\0\x17\0\0\0\0\0name\0\0\0\0\x19\0\0\0\0\n\nI\0\0@\0N\0\x02t\0\0\0\x017t\0\0\0\x03bob\n\nU\0\0@\0N\0\x02t\0\0\0\x017nu\n\nD\0\0@\0K\0\x02t\0\0\0\x017n\n\nT\0\0\0\x01\0\0\0@\0",
        ],
        run: pgoutput,
    },
    Target {
        name: "answers",
        seeds: &[
            ":status: 200\nce-specversion: 1.0\nce-id: r\nce-source: /f\nce-type: reply\ncontent-type: text/plain\n\nok",
            ":status: 200\ncontent-type: application/cloudevents+json\n\n{\"specversion\":\"1.0\",\"id\":\"1\",\"source\":\"/s\",\"type\":\"t\"}",
            ":status: 200\ncontent-type: application/json\n\n{\"batchItemFailures\":[{\"itemIdentifier\":\"a\"}]}",
            ":status: 503\nretry-after: 5\nx-function-status: 500\n\n{\"response\":{\"success\":false,\"status\":\"application error\",\"result\":{\"error\":\"x\"}}}",
        ],
        run: answers,
    },
    Target {
        name: "cel",
        seeds: &[
            "event.type == 't' && event.data.a[0] > 1 && has(event.data.b) && event.subject.startsWith('s')",
            "size(event.data.items.filter(i, i.ok)) > 2 || event.ext in ['12', '13']",
        ],
        run: cel,
    },
];

/// The target named `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

fn structured(data: &[u8]) {
    let _ = fnbroker_core::event::from_json_slice(data);
}

fn batch(data: &[u8]) {
    let _ = fnbroker_core::event::batch_from_json_slice_max(data, 1000);
}

/// `name: value` lines, a blank line, the body (all of it body when there is no blank line
/// after a header).
fn split(data: &[u8]) -> (Vec<(String, String)>, &[u8]) {
    let (head, body) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (&data[..0], data),
    };
    let headers = String::from_utf8_lossy(head)
        .lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    (headers, body)
}

fn http(data: &[u8]) {
    use fnbroker_core::binding::http::{Mode, decode_binary, mode};
    let (pairs, body) = split(data);
    let mut headers = http::HeaderMap::new();
    for (k, v) in &pairs {
        // hyper refuses what is no header; the ingress never sees it.
        if let (Ok(k), Ok(v)) = (
            http::HeaderName::from_bytes(k.as_bytes()),
            http::HeaderValue::from_str(v),
        ) {
            headers.append(k, v);
        }
    }
    match mode(&headers) {
        Mode::Binary => {
            let _ = decode_binary(&headers, body.to_vec());
        }
        Mode::Structured => structured(body),
        Mode::Batch => batch(body),
        Mode::Plain => {}
    }
}

fn kafka(data: &[u8]) {
    let (pairs, body) = split(data);
    let record = fnbroker_kafka::binding::Record {
        topic: "t",
        partition: 0,
        offset: 7,
        key: Some(b"k"),
        payload: Some(body),
        headers: pairs
            .iter()
            .map(|(k, v)| (k.as_str(), Some(v.as_bytes())))
            .collect(),
        timestamp_ms: Some(1_700_000_000_000),
    };
    let _ = fnbroker_kafka::binding::decode("k", &record);
}

fn mqtt(data: &[u8]) {
    let (mut pairs, body) = split(data);
    let content_type = pairs
        .iter()
        .position(|(k, _)| k == "content-type")
        .map(|i| pairs.remove(i).1);
    for v5 in [true, false] {
        let msg = fnbroker_mqtt::binding::Message {
            topic: "a/b",
            payload: body,
            content_type: content_type.as_deref(),
            user_properties: &pairs,
            v5,
        };
        let _ = fnbroker_mqtt::binding::decode("m", &msg);
    }
}

fn nats(data: &[u8]) {
    let (pairs, body) = split(data);
    let mut headers = async_nats::HeaderMap::new();
    for (k, v) in &pairs {
        // The client refuses names and values it could not have read off the wire.
        if let (Ok(k), Ok(v)) = (
            k.parse::<async_nats::header::HeaderName>(),
            v.parse::<async_nats::HeaderValue>(),
        ) {
            headers.append(k, v);
        }
    }
    let msg = fnbroker_nats::binding::Message {
        subject: "s",
        payload: body,
        headers: Some(&headers),
        sequence: Some(3),
        time: None,
    };
    let _ = fnbroker_nats::binding::decode("n", &msg);
}

fn amqp(data: &[u8]) {
    use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
    let (pairs, body) = split(data);
    let mut table = FieldTable::default();
    let mut content_type = None;
    // AMQP short strings (header names, the content type) hold at most 255 bytes on the wire.
    for (k, v) in pairs
        .into_iter()
        .filter(|(k, v)| k.len() < 256 && v.len() < 256)
    {
        if k == "content-type" {
            content_type = Some(ShortString::from(v));
        } else {
            table.insert(
                ShortString::from(k),
                AMQPValue::LongString(LongString::from(v)),
            );
        }
    }
    let mut props = lapin::BasicProperties::default().with_headers(table);
    if let Some(ct) = content_type {
        props = props.with_content_type(ct);
    }
    let msg = fnbroker_amqp::binding::Message {
        queue: "q",
        routing_key: "r",
        properties: &props,
        body,
    };
    let _ = fnbroker_amqp::binding::decode("a", &msg);
}

fn cesql(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(expr) = fnbroker_filters::cesql::Expr::parse(&text) {
        let event = fnbroker_core::event::from_json_slice(
            br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","ext":"12","flag":true}"#,
        );
        if let Ok(event) = event {
            let _ = expr.matches(&event);
        }
    }
}

fn redis(data: &[u8]) {
    let (pairs, body) = split(data);
    let mut fields: Vec<(Vec<u8>, Vec<u8>)> = pairs
        .into_iter()
        .map(|(k, v)| (k.into_bytes(), v.into_bytes()))
        .collect();
    fields.push((b"data".to_vec(), body.to_vec()));
    let entry = fnbroker_redis::binding::Entry::new("s", "1-0", &fields);
    let _ = fnbroker_redis::binding::decode("r", &entry);
}

fn pgoutput(data: &[u8]) {
    let mut messages = Vec::new();
    let mut rest = data;
    while let Some(i) = rest.windows(2).position(|w| w == b"\n\n") {
        messages.push(&rest[..i]);
        rest = &rest[i + 2..];
    }
    messages.push(rest);
    let _ = fnbroker_postgres::decode_pgoutput(&messages);
}

fn answers(data: &[u8]) {
    use fnbroker_functions::answers;
    let (pairs, body) = split(data);
    let mut status = 200;
    let mut headers = http::HeaderMap::new();
    for (k, v) in &pairs {
        if k == ":status" {
            status = v.trim().parse().unwrap_or(200);
            continue;
        }
        if let (Ok(k), Ok(v)) = (
            http::HeaderName::from_bytes(k.as_bytes()),
            http::HeaderValue::from_str(v),
        ) {
            headers.append(k, v);
        }
    }
    let body = bytes::Bytes::copy_from_slice(body);
    if let Ok(reply) = answers::http(status, &headers, body.clone()) {
        let _ = answers::batch_failures(reply.as_ref());
    }
    if let Ok(reply) = answers::lambda(body.clone()) {
        let _ = answers::batch_failures(reply.as_ref());
    }
    let _ = answers::openwhisk_activation(&body);
    let _ = answers::openfaas_callback(headers, body);
}

fn cel(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(expr) = fnbroker_filters::celexpr::CelExpr::parse(&text) {
        let event = fnbroker_core::event::from_json_slice(
            br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","subject":"s","ext":"12","data":{"a":[2],"b":1,"items":[{"ok":true}]}}"#,
        );
        if let Ok(event) = event {
            let _ = expr.eval(&event);
            let _ = expr.decide(&event);
        }
    }
}

/// The connector and function kinds of the real binary (broker/src/connectors.rs).
static REGISTRY: Registry = Registry::new(&[
    &Kind::<fnbroker_http::Plugin>::NEW,
    &Kind::<fnbroker_kafka::Plugin>::NEW,
    &Kind::<fnbroker_nats::Plugin>::NEW,
    &Kind::<fnbroker_amqp::Plugin>::NEW,
    &Kind::<fnbroker_mqtt::Plugin>::NEW,
    &Kind::<fnbroker_redis::Plugin>::NEW,
    &Kind::<fnbroker_postgres::Plugin>::NEW,
])
.with_functions(fnbroker_functions::KINDS);

fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = load_str("fuzz.yaml", &text, |_| None, &REGISTRY);
}

/// Bytes that matter to the formats: JSON, YAML, CESQL, percent-encoding, control characters.
const SPLICE: &[u8] = b"{}[]\"\\:,%() '\n\t\0-+.0123456789eE#&*|>!@$";

/// An edit of a seed.
#[derive(Debug, Clone)]
enum Edit {
    Overwrite(usize, u8),
    Insert(usize, u8),
    Remove(usize, usize),
    Repeat(usize, usize, u8),
}

fn byte() -> impl Strategy<Value = u8> {
    prop_oneof![any::<u8>(), proptest::sample::select(SPLICE)]
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), byte()).prop_map(|(i, b)| Edit::Overwrite(i, b)),
        (any::<usize>(), byte()).prop_map(|(i, b)| Edit::Insert(i, b)),
        (any::<usize>(), 1..16usize).prop_map(|(i, n)| Edit::Remove(i, n)),
        (any::<usize>(), 1..32usize, 1..64u8).prop_map(|(i, n, k)| Edit::Repeat(i, n, k)),
    ]
}

fn apply(seed: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut out = seed.to_vec();
    for e in edits {
        let len = out.len();
        match *e {
            Edit::Overwrite(i, b) if len > 0 => out[i % len] = b,
            Edit::Insert(i, b) => out.insert(i % (len + 1), b),
            Edit::Remove(i, n) if len > 0 => {
                let at = i % len;
                out.drain(at..(at + n).min(len));
            }
            // A chunk repeated k times: deep nesting, long runs.
            Edit::Repeat(i, n, k) if len > 0 => {
                let at = i % len;
                let chunk = out[at..(at + n).min(len)].to_vec();
                for _ in 0..k {
                    out.splice(at..at, chunk.iter().copied());
                }
            }
            _ => {}
        }
    }
    out
}

/// Inputs for `target`: arbitrary bytes, or a seed with edits.
pub fn inputs(target: &Target) -> BoxedStrategy<Vec<u8>> {
    let seeds: Vec<&'static [u8]> = target.seeds.iter().map(|s| s.as_bytes()).collect();
    prop_oneof![
        1 => proptest::collection::vec(byte(), 0..256),
        4 => (proptest::sample::select(seeds), proptest::collection::vec(edit(), 1..12))
            .prop_map(|(seed, edits)| apply(seed, &edits)),
    ]
    .boxed()
}

/// What a run did.
#[derive(Debug, Clone, Copy)]
pub struct Stats {
    /// Inputs fed to the target.
    pub cases: u64,
}

/// A crash: the (shrunk) input and what the panic said.
#[derive(Debug, Clone)]
pub struct Crash {
    /// The minimal input that fails.
    pub input: Vec<u8>,
    /// The panic message.
    pub reason: String,
}

/// Feeds `target` inputs until `budget` has passed or `max_cases` were run (whichever is
/// first); stops at the first crash, shrunk. `seed` makes the run reproducible.
pub fn run(
    target: &Target,
    budget: Duration,
    max_cases: u64,
    seed: u64,
) -> Result<Stats, Box<Crash>> {
    const CHUNK: u32 = 2_000;
    let started = Instant::now();
    let mut cases = 0u64;
    let mut round = 0u64;
    let strategy = inputs(target);
    // An abort (a stack overflow) cannot be caught and shrunk: with `FNBROKER_FUZZ_LAST` set,
    // each input is written to that file before it runs, so the one that aborted is left there.
    let last = std::env::var_os("FNBROKER_FUZZ_LAST");
    while started.elapsed() < budget && cases < max_cases {
        let chunk = u32::try_from((max_cases - cases).min(u64::from(CHUNK))).unwrap_or(CHUNK);
        let mut bytes = [0u8; 32];
        bytes[..8].copy_from_slice(&seed.to_le_bytes());
        bytes[8..16].copy_from_slice(&round.to_le_bytes());
        let rng = proptest::test_runner::TestRng::from_seed(
            proptest::test_runner::RngAlgorithm::ChaCha,
            &bytes,
        );
        let config = Config {
            cases: chunk,
            failure_persistence: None,
            max_shrink_iters: 10_000,
            ..Config::default()
        };
        let mut runner = TestRunner::new_with_rng(config, rng);
        let run = target.run;
        let result = runner.run(&strategy, |input| {
            if let Some(path) = &last {
                let _ = std::fs::write(path, &input);
            }
            run(&input);
            Ok::<(), TestCaseError>(())
        });
        match result {
            Ok(()) => {}
            Err(TestError::Fail(reason, input)) => {
                return Err(Box::new(Crash {
                    input,
                    reason: reason.to_string(),
                }));
            }
            Err(TestError::Abort(reason)) => {
                return Err(Box::new(Crash {
                    input: Vec::new(),
                    reason: format!("aborted: {reason}"),
                }));
            }
        }
        cases += u64::from(chunk);
        round += 1;
    }
    Ok(Stats { cases })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_seed_is_valid_where_it_should_be() {
        for t in TARGETS {
            for seed in t.seeds {
                (t.run)(seed.as_bytes());
            }
        }
        assert!(fnbroker_core::event::from_json_slice(TARGETS[0].seeds[0].as_bytes()).is_ok());
        assert!(
            fnbroker_filters::cesql::Expr::parse(target("cesql").map_or("", |t| t.seeds[0]))
                .is_ok()
        );
        let pg = target("pgoutput").map_or("", |t| t.seeds[0]).as_bytes();
        let messages: Vec<&[u8]> = pg
            .split(|b| *b == b'\n')
            .filter(|m| !m.is_empty())
            .collect();
        assert_eq!(
            fnbroker_postgres::decode_pgoutput(&messages),
            4,
            "the pgoutput seed decodes"
        );
        let failures =
            fnbroker_functions::answers::batch_failures(Some(&fnbroker_functions::Reply::Raw {
                content_type: None,
                body: bytes::Bytes::from_static(
                    br#"{"batchItemFailures":[{"itemIdentifier":"a"}]}"#,
                ),
            }));
        assert_eq!(failures.ok().flatten(), Some(vec!["a".to_string()]));
        assert!(
            fnbroker_filters::celexpr::CelExpr::parse(target("cel").map_or("", |t| t.seeds[0]))
                .is_ok()
        );
        let cfg = target("config").map_or("", |t| t.seeds[0]);
        if let Err(e) = load_str("seed.yaml", cfg, |_| None, &REGISTRY) {
            panic!("the config seed loads: {e}");
        }
    }

    #[test]
    fn edits_stay_in_bounds() {
        let out = apply(
            b"abc",
            &[
                Edit::Remove(10, 100),
                Edit::Remove(0, 5),
                Edit::Overwrite(3, b'x'),
                Edit::Insert(99, b'y'),
                Edit::Repeat(0, 1, 3),
            ],
        );
        assert_eq!(out, b"yyyy");
    }

    #[test]
    fn a_panicking_target_is_reported_shrunk() {
        let t = Target {
            name: "t",
            seeds: &["hello"],
            run: |d| assert!(!d.contains(&b'{'), "brace"),
        };
        let crash = run(&t, Duration::from_secs(30), 100_000, 1).expect_err("finds the brace");
        assert_eq!(crash.input, b"{");
        assert!(crash.reason.contains("brace"), "{}", crash.reason);
    }
}

//! Micro-benchmarks of the per-event work fnbroker does besides moving bytes: normalizing each
//! protocol's message into a CloudEvent (plain and binary mode), and encoding an event for an
//! HTTP function in binary mode. Criterion reports events per second on one core
//! (`Throughput::Elements(1)`). Filter evaluation is in `broker/filters/benches/filters.rs`.
//!
//! `cargo bench -p bench --bench codec`
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const PAYLOAD: &[u8] = br#"{"sensor":"kitchen","celsius":21.5,"humidity":40,"battery":0.91,"firmware":"2.4.1","seq":12345}"#;

fn normalize(c: &mut Criterion) {
    let mut g = c.benchmark_group("normalize");
    g.throughput(Throughput::Elements(1));

    let kafka_binary_headers = vec![
        ("ce_specversion", Some(&b"1.0"[..])),
        ("ce_id", Some(&b"order-1"[..])),
        ("ce_source", Some(&b"/shop"[..])),
        ("ce_type", Some(&b"com.example.order"[..])),
        ("content-type", Some(&b"application/json"[..])),
    ];
    for (name, headers) in [
        ("kafka-plain", Vec::new()),
        ("kafka-binary", kafka_binary_headers),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let record = fnbroker_kafka::binding::Record {
                    topic: "orders",
                    partition: 3,
                    offset: 123_456,
                    key: Some(b"customer-7"),
                    payload: Some(PAYLOAD),
                    headers: headers.clone(),
                    timestamp_ms: Some(1_764_000_000_000),
                };
                black_box(fnbroker_kafka::binding::decode(
                    "pipeline",
                    black_box(&record),
                ))
            })
        });
    }

    let mut nats_headers = async_nats::HeaderMap::new();
    nats_headers.insert("ce-specversion", "1.0");
    nats_headers.insert("ce-id", "order-1");
    nats_headers.insert("ce-source", "/shop");
    nats_headers.insert("ce-type", "com.example.order");
    nats_headers.insert("Content-Type", "application/json");
    for (name, headers) in [("nats-plain", None), ("nats-binary", Some(&nats_headers))] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let msg = fnbroker_nats::binding::Message {
                    subject: "orders.eu",
                    payload: PAYLOAD,
                    headers,
                    sequence: Some(42),
                    time: None,
                };
                black_box(fnbroker_nats::binding::decode("bus", black_box(&msg)))
            })
        });
    }

    let plain = lapin::BasicProperties::default()
        .with_content_type("application/json".into())
        .with_message_id("m-1".into());
    let mut table = lapin::types::FieldTable::default();
    for (k, v) in [
        ("ce-specversion", "1.0"),
        ("ce-id", "order-1"),
        ("ce-source", "/shop"),
        ("ce-type", "com.example.order"),
    ] {
        table.insert(k.into(), lapin::types::AMQPValue::LongString(v.into()));
    }
    let binary = plain.clone().with_headers(table);
    for (name, properties) in [("amqp-plain", &plain), ("amqp-binary", &binary)] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let msg = fnbroker_amqp::binding::Message {
                    queue: "jobs",
                    routing_key: "jobs.resize",
                    properties,
                    body: PAYLOAD,
                };
                black_box(fnbroker_amqp::binding::decode("rabbit", black_box(&msg)))
            })
        });
    }

    let user_properties = [
        ("ce-specversion".to_string(), "1.0".to_string()),
        ("ce-id".to_string(), "t-1".to_string()),
        ("ce-source".to_string(), "/devices/7".to_string()),
        ("ce-type".to_string(), "com.example.temperature".to_string()),
    ];
    for (name, props) in [
        ("mqtt-plain", &[][..]),
        ("mqtt5-binary", &user_properties[..]),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let msg = fnbroker_mqtt::binding::Message {
                    topic: "sensors/kitchen/temperature",
                    payload: PAYLOAD,
                    content_type: Some("application/json"),
                    user_properties: props,
                    v5: true,
                };
                black_box(fnbroker_mqtt::binding::decode("iot", black_box(&msg)))
            })
        });
    }
    g.finish();
}

fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode");
    g.throughput(Throughput::Elements(1));
    let msg = fnbroker_mqtt::binding::Message {
        topic: "sensors/kitchen/temperature",
        payload: PAYLOAD,
        content_type: Some("application/json"),
        user_properties: &[],
        v5: true,
    };
    let (event, _) = fnbroker_mqtt::binding::decode("iot", &msg);
    g.bench_function("http-binary", |b| {
        b.iter(|| {
            let mut headers = http::HeaderMap::new();
            fnbroker_core::binding::http::encode_binary(black_box(&event), &mut headers);
            black_box(headers)
        })
    });
    g.bench_function("json-structured", |b| {
        b.iter(|| black_box(fnbroker_core::event::to_json_vec(black_box(&event))))
    });
    g.finish();
}

criterion_group!(benches, normalize, encode);
criterion_main!(benches);

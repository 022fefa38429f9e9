//! Filter evaluation: CloudEvents SQL and CEL expressions against an event, per evaluation
//! (criterion reports the time; events per second per core is its inverse). The same
//! attribute cases in both dialects, and CEL on the JSON payload. Run with
//! `cargo bench -p fnbroker-core --bench filters`.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use fnbroker_core::celexpr::CelExpr;
use fnbroker_core::cesql::Expr;
use fnbroker_core::event::{self, PlainMessage};

fn filters(c: &mut Criterion) {
    let mut event = event::normalize(
        PlainMessage {
            kind: "mqtt",
            connector: "iot",
            topic: "sensors/kitchen/temperature",
            id: Some("id-1".into()),
            content_type: Some("application/json"),
            ..Default::default()
        },
        br#"{"celsius":31}"#.to_vec(),
    );
    event.set_extension("celsius", "31");
    let cases = [
        ("equality", "type = 'fnbroker.mqtt.message'"),
        ("like", "subject LIKE 'sensors/%/temperature'"),
        (
            "and-or",
            "type = 'a' OR (subject LIKE 'sensors/%' AND source != 'mqtt://iot/x')",
        ),
        ("cast-compare", "INT(celsius) > 30"),
        ("in", "subject IN ('a', 'b', 'sensors/kitchen/temperature')"),
    ];
    let mut group = c.benchmark_group("cesql");
    for (name, text) in cases {
        let expr = Expr::parse(text).expect("parses");
        assert!(expr.matches(&event), "{name} must match");
        group.bench_function(name, |b| {
            b.iter(|| black_box(&expr).matches(black_box(&event)))
        });
    }
    group.bench_function("parse", |b| {
        b.iter(|| {
            Expr::parse(black_box(
                "type = 'a' OR (subject LIKE 'sensors/%' AND INT(x) > 3)",
            ))
        })
    });
    group.finish();

    let cel_cases = [
        ("equality", "event.type == 'fnbroker.mqtt.message'"),
        ("like", "event.subject.matches('^sensors/.*/temperature$')"),
        (
            "and-or",
            "event.type == 'a' || (event.subject.startsWith('sensors/') && event.source != 'mqtt://iot/x')",
        ),
        ("cast-compare", "int(event.celsius) > 30"),
        (
            "in",
            "event.subject in ['a', 'b', 'sensors/kitchen/temperature']",
        ),
        ("data-json", "event.data.celsius > 30"),
    ];
    let mut group = c.benchmark_group("cel");
    for (name, text) in cel_cases {
        let expr = CelExpr::parse(text).expect("compiles");
        assert!(expr.matches(&event), "{name} must match");
        group.bench_function(name, |b| {
            b.iter(|| black_box(&expr).matches(black_box(&event)))
        });
    }
    group.bench_function("parse", |b| {
        b.iter(|| {
            CelExpr::parse(black_box(
                "event.type == 'a' || (event.subject.startsWith('sensors/') && int(event.x) > 3)",
            ))
        })
    });
    group.finish();
}

criterion_group!(benches, filters);
criterion_main!(benches);

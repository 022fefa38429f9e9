//! Filter evaluation: CloudEvents SQL expressions against an event, per evaluation (criterion
//! reports the time; events per second per core is its inverse). Run with
//! `cargo bench -p fnbroker-core --bench filters`.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
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
}

criterion_group!(benches, filters);
criterion_main!(benches);

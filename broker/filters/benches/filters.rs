//! Filter evaluation: CloudEvents SQL and CEL expressions against an event, per evaluation
//! (criterion reports the time; events per second per core is its inverse). The same
//! attribute cases in both dialects, and CEL on the JSON payload. Run with
//! `cargo bench -p fnbroker-core --bench filters`.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use fnbroker_core::event::{self, PlainMessage};
use fnbroker_filters::celexpr::CelExpr;
use fnbroker_filters::cesql::Expr;

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
    dialect(
        c,
        "cesql",
        &event,
        &cases,
        |t| Expr::parse(t).ok(),
        |e: &Expr, ev: &event::Event| e.matches(ev),
        "type = 'a' OR (subject LIKE 'sensors/%' AND INT(x) > 3)",
    );

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
    dialect(
        c,
        "cel",
        &event,
        &cel_cases,
        |t| CelExpr::parse(t).ok(),
        |e: &CelExpr, ev: &event::Event| e.matches(ev),
        "event.type == 'a' || (event.subject.startsWith('sensors/') && int(event.x) > 3)",
    );
}

/// One dialect's group: each case evaluated against `event` (it must match), and parsing.
fn dialect<E>(
    c: &mut Criterion,
    name: &str,
    event: &event::Event,
    cases: &[(&str, &str)],
    parse: impl Fn(&str) -> Option<E>,
    matches: impl Fn(&E, &event::Event) -> bool,
    to_parse: &str,
) {
    let mut group = c.benchmark_group(name);
    for (case, text) in cases {
        let expr = parse(text).unwrap_or_else(|| panic!("{name} {case} must parse"));
        assert!(matches(&expr, event), "{name} {case} must match");
        group.bench_function(*case, |b| {
            b.iter(|| matches(black_box(&expr), black_box(event)))
        });
    }
    group.bench_function("parse", |b| b.iter(|| parse(black_box(to_parse))));
    group.finish();
}

criterion_group!(benches, filters);
criterion_main!(benches);

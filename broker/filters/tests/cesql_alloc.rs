//! The filter fast path: evaluating a compiled CloudEvents SQL expression that compares
//! attributes with literals (equality, LIKE, IN, boolean logic, EXISTS) allocates nothing.
//! Counted by `allocation-counter`'s global allocator, per thread, so that the test harness's
//! own threads do not disturb the count.
#![allow(missing_docs)]

use fnbroker_core::event::{self, PlainMessage};
use fnbroker_filters::cesql::Expr;

#[test]
fn comparisons_with_literals_allocate_nothing() {
    let mut event = event::normalize(
        PlainMessage {
            kind: "mqtt",
            connector: "iot",
            topic: "sensors/küche/temperature",
            id: Some("id-1".into()),
            content_type: Some("application/json"),
            ..Default::default()
        },
        br#"{"celsius":31}"#.to_vec(),
    );
    event.set_extension("room", "kitchen");
    event.set_extension("floor", 2i64);
    event.set_extension("indoor", true);
    let cases = [
        ("type = 'fnbroker.mqtt.message'", true),
        ("source != 'mqtt://iot/test-rig'", true),
        ("subject LIKE 'sensors/%/temperature'", true),
        ("subject LIKE 'sensors/k_che/%'", true),
        ("subject LIKE 'sensors/k_che'", false),
        ("subject NOT LIKE '%humidity'", true),
        ("room IN ('kitchen', 'hall')", true),
        ("floor > 1 AND indoor", true),
        ("floor = 3 OR NOT indoor", false),
        ("EXISTS room AND NOT EXISTS dataschema", true),
        (
            "(type = 'a' OR subject LIKE 'sensors/%') AND room <> 'cellar'",
            true,
        ),
    ];
    for (text, expected) in cases {
        let expr = Expr::parse(text).expect("parses");
        // The first evaluation may touch lazily initialised state; count the second.
        expr.matches(&event);
        let mut matched = false;
        let allocations =
            allocation_counter::measure(|| matched = expr.matches(&event)).count_total;
        assert_eq!(matched, expected, "{text}");
        assert_eq!(allocations, 0, "`{text}` allocated {allocations} times");
    }
    // The counter is live: building a new string does allocate.
    let concat = Expr::parse("CONCAT(subject, '/x') = 'y'").expect("parses");
    assert!(allocation_counter::measure(|| assert!(!concat.matches(&event))).count_total > 0);
}

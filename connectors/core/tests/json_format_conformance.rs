//! The JSON event format conformance data of the CloudEvents project: every valid event and batch
//! parses, every invalid one is rejected. A missing file fails the test.

use fnbroker_core::event::{self, AttributesReader};
use serde_json::Value;

fn cases(file: &str) -> Vec<Value> {
    let text = fnbroker_testkit::read_conformance_file(file);
    let doc: Value = serde_json::from_str(text.trim_start_matches('\u{feff}'))
        .unwrap_or_else(|e| panic!("{file}: {e}"));
    let tests = doc["tests"].as_array().cloned().unwrap_or_default();
    assert!(!tests.is_empty(), "{file} has no tests");
    tests
}

#[test]
fn valid_events_parse() {
    let tests = cases("valid-events.json");
    for t in &tests {
        let id = t["id"].as_str().unwrap_or("?");
        let e = event::from_json_value(t["event"].clone())
            .unwrap_or_else(|err| panic!("{id}: rejected a valid event: {err}"));
        assert_eq!(
            e.id(),
            t["event"]["id"].as_str().unwrap_or_default(),
            "{id}"
        );
        // And it survives a round trip through the JSON format.
        let again = event::from_json_slice(&event::to_json_vec(&e))
            .unwrap_or_else(|err| panic!("{id}: round trip failed: {err}"));
        assert_eq!(again, e, "{id}");
    }
    println!("{} valid events accepted", tests.len());
}

#[test]
fn invalid_events_are_rejected() {
    let tests = cases("invalid-events.json");
    for t in &tests {
        let id = t["id"].as_str().unwrap_or("?");
        let res = event::from_json_value(t["event"].clone());
        assert!(res.is_err(), "{id}: accepted an invalid event");
    }
    println!("{} invalid events rejected", tests.len());
}

#[test]
fn valid_batches_parse() {
    let tests = cases("valid-batches.json");
    for t in &tests {
        let id = t["id"].as_str().unwrap_or("?");
        let batch = event::batch_from_json_value(t["batch"].clone())
            .unwrap_or_else(|err| panic!("{id}: rejected a valid batch: {err}"));
        assert_eq!(
            batch.len(),
            t["batch"].as_array().map_or(0, Vec::len),
            "{id}"
        );
        let again = event::batch_from_json_slice(&event::batch_to_json_vec(&batch))
            .unwrap_or_else(|err| panic!("{id}: round trip failed: {err}"));
        assert_eq!(again, batch, "{id}");
    }
    println!("{} valid batches accepted", tests.len());
}

#[test]
fn invalid_batches_are_rejected() {
    let tests = cases("invalid-batches.json");
    for t in &tests {
        let id = t["id"].as_str().unwrap_or("?");
        assert!(
            event::batch_from_json_value(t["batch"].clone()).is_err(),
            "{id}: accepted an invalid batch"
        );
    }
    println!("{} invalid batches rejected", tests.len());
}

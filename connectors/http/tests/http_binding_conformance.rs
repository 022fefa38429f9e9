//! The scenarios of the CloudEvents HTTP protocol binding (`http-protocol-binding.feature` of the
//! shared conformance data), run against the real ingress: each request is sent over HTTP, and
//! the event the ingress hands to the engine must have the attributes and data the scenario
//! names. A missing feature file fails the test.

use std::time::Duration;

use fnbroker_core::event::{self, Event};
use fnbroker_core::values::TriggerSource;
use fnbroker_core::{Connector, Subscription};
use fnbroker_http::HttpIngress;
use serde_json::Value;

/// Sends a raw request text (request line, headers, blank line, body) to the ingress.
async fn send(port: u16, raw: &str) -> reqwest::StatusCode {
    let (head, body) = raw.split_once("\n\n").unwrap_or((raw, ""));
    let mut lines = head.lines();
    let request_line = lines.next().expect("request line");
    let mut parts = request_line.split_whitespace();
    let method = parts.next().expect("method");
    let path = parts.next().expect("path");
    assert_eq!(method, "POST");
    let mut req = reqwest::Client::new().post(format!("http://127.0.0.1:{port}{path}"));
    for header in lines {
        let (name, value) = header.split_once(':').expect("header");
        let name = name.trim();
        // Host and Content-Length belong to this connection, not to the scenario.
        if name.eq_ignore_ascii_case("host") || name.eq_ignore_ascii_case("content-length") {
            continue;
        }
        req = req.header(name, value.trim());
    }
    req.body(body.to_string())
        .send()
        .await
        .expect("request")
        .status()
}

fn check(scenario: &str, event: &Event, attributes: &[(String, String)], data: Option<&str>) {
    for (name, expected) in attributes {
        let actual = event::attribute(event, name);
        assert_eq!(
            actual.as_deref(),
            Some(expected.as_str()),
            "{scenario}: attribute `{name}`"
        );
    }
    if let Some(data) = data {
        let expected: Value = serde_json::from_str(data).expect("expected data JSON");
        let actual: Value = serde_json::from_slice(&event::data_bytes(event))
            .unwrap_or_else(|e| panic!("{scenario}: data is not JSON: {e}"));
        assert_eq!(actual, expected, "{scenario}: data");
    }
}

#[tokio::test]
async fn http_protocol_binding_scenarios() {
    let scenarios = fnbroker_testkit::cases(&fnbroker_testkit::read_conformance_file(
        "http-protocol-binding.feature",
    ));
    assert!(
        !scenarios.is_empty(),
        "no scenario in http-protocol-binding.feature"
    );

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let ingress = HttpIngress::new("web", ([127, 0, 0, 1], port).into(), 1024 * 1024);
    let from: TriggerSource =
        serde_saphyr::from_str("{ connector: web, topic: /someresource }").expect("source");
    let sub = Subscription {
        from,
        max_in_flight: 4,
        ordered: false,
        attempt_timeout: Duration::from_secs(30),
        triggers: vec!["t".into()],
    };
    let mut source = ingress.subscribe(&sub).await.expect("subscribe");
    ingress.start().await.expect("start");

    let mut cases = 0;
    for s in scenarios {
        let name = s.name.clone();
        let request = s.message.clone();
        let sending = tokio::spawn(async move { send(port, &request).await });
        let incoming = tokio::time::timeout(Duration::from_secs(10), source.next())
            .await
            .unwrap_or_else(|_| panic!("{name}: no event reached the source"))
            .expect("source open");
        check(&name, &incoming.event, &s.attributes, s.data.as_deref());
        drop(incoming);
        assert_eq!(
            sending.await.expect("join"),
            reqwest::StatusCode::ACCEPTED,
            "{name}"
        );
        cases += 1;
    }
    println!("{cases} HTTP binding scenario cases passed");
    assert!(cases >= 4);
}

//! The scenarios of the CloudEvents HTTP protocol binding (`http-protocol-binding.feature` of the
//! shared conformance data), run against the real ingress: each request is sent over HTTP, and
//! the event the ingress hands to the engine must have the attributes and data the scenario
//! names. A missing feature file fails the test.

use std::path::PathBuf;
use std::time::Duration;

use fnbroker_core::config::TriggerSource;
use fnbroker_core::event::{self, Event};
use fnbroker_core::{Connector, Subscription};
use fnbroker_http::HttpIngress;
use serde_json::Value;

fn feature_file() -> PathBuf {
    std::env::var_os("FNBROKER_CONFORMANCE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/conformance")
        })
        .join("http-protocol-binding.feature")
}

/// One scenario outline of the feature file.
#[derive(Debug, Default)]
struct Scenario {
    name: String,
    request: String,
    attributes: Vec<(String, String)>,
    data: Option<String>,
    examples: Vec<Vec<(String, String)>>,
}

fn table_row(line: &str) -> Vec<String> {
    line.trim()
        .trim_matches('|')
        .split('|')
        .map(|c| c.trim().to_string())
        .collect()
}

/// A small reader for the Gherkin these files use: scenario outlines with one request doc
/// string, an attribute table, a data doc string and an examples table.
fn parse_feature(text: &str) -> Vec<Scenario> {
    let lines: Vec<&str> = text.lines().collect();
    let mut scenarios = Vec::new();
    let mut i = 0;
    let mut current: Option<Scenario> = None;
    let doc_string = |i: &mut usize| -> String {
        // `lines[*i]` is the opening `"""`; its indentation is removed from every line.
        let indent = lines[*i].len() - lines[*i].trim_start().len();
        *i += 1;
        let mut out = Vec::new();
        while *i < lines.len() && lines[*i].trim() != "\"\"\"" {
            out.push(lines[*i].get(indent..).unwrap_or("").to_string());
            *i += 1;
        }
        out.join("\n")
    };
    while i < lines.len() {
        let line = lines[i].trim();
        if let Some(name) = line
            .strip_prefix("Scenario Outline:")
            .or_else(|| line.strip_prefix("Scenario:"))
        {
            scenarios.extend(current.take());
            current = Some(Scenario {
                name: name.trim().to_string(),
                ..Default::default()
            });
        } else if let Some(s) = current.as_mut() {
            if line.starts_with("Given an HTTP request") {
                i += 1;
                s.request = doc_string(&mut i);
            } else if line.starts_with("Then the attributes are") {
                i += 2; // skip the header row
                while i < lines.len() && lines[i].trim().starts_with('|') {
                    let row = table_row(lines[i]);
                    s.attributes.push((row[0].clone(), row[1].clone()));
                    i += 1;
                }
                continue;
            } else if line.starts_with("And the data is equal to the following JSON") {
                i += 1;
                s.data = Some(doc_string(&mut i));
            } else if line.starts_with("Examples:") {
                i += 1;
                let header = table_row(lines[i]);
                i += 1;
                while i < lines.len() && lines[i].trim().starts_with('|') {
                    let row = table_row(lines[i]);
                    s.examples.push(header.iter().cloned().zip(row).collect());
                    i += 1;
                }
                continue;
            }
        }
        i += 1;
    }
    scenarios.extend(current);
    scenarios
}

fn substitute(text: &str, example: &[(String, String)]) -> String {
    example.iter().fold(text.to_string(), |t, (k, v)| {
        t.replace(&format!("<{k}>"), v)
    })
}

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
    let path = feature_file();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("conformance file {} is missing: {e}", path.display()));
    let scenarios = parse_feature(&text);
    assert!(!scenarios.is_empty(), "no scenario in {}", path.display());

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
        triggers: vec!["t".into()],
    };
    let mut source = ingress.subscribe(&sub).await.expect("subscribe");
    ingress.start().await.expect("start");

    let mut cases = 0;
    for s in &scenarios {
        let examples = if s.examples.is_empty() {
            vec![Vec::new()]
        } else {
            s.examples.clone()
        };
        for example in &examples {
            let name = substitute(&s.name, example);
            let request = substitute(&s.request, example);
            let attributes: Vec<(String, String)> = s
                .attributes
                .iter()
                .map(|(k, v)| (k.clone(), substitute(v, example)))
                .collect();
            let sending = tokio::spawn(async move { send(port, &request).await });
            let incoming = tokio::time::timeout(Duration::from_secs(10), source.next())
                .await
                .unwrap_or_else(|_| panic!("{name}: no event reached the source"))
                .expect("source open");
            check(&name, &incoming.event, &attributes, s.data.as_deref());
            drop(incoming);
            assert_eq!(
                sending.await.expect("join"),
                reqwest::StatusCode::ACCEPTED,
                "{name}"
            );
            cases += 1;
        }
    }
    println!("{cases} HTTP binding scenario cases passed");
    assert!(cases >= 4);
}

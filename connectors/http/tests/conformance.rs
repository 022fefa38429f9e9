//! The connector conformance suite on the HTTP ingress: this crate's adapter, and one test per case
//! (`fnbroker_conformance::suite!`).

use std::ops::Range;
use std::time::Duration;

use fnbroker_conformance::{
    Adapter, Mode, Modes, Redelivers, Topic, body_of, headers_of, unique_id,
};
use serde_json::{Value, json};

fnbroker_conformance::suite!(Http, modes);

/// The HTTP ingress: a path on a port of its own, events accepted with `202`. A sender that
/// gets no answer or a 5xx tries again (as webhook senders do); a 4xx is final.
struct Http {
    port: u16,
    client: reqwest::Client,
}

impl Adapter for Http {
    const NAME: &'static str = "http";
    const KEEPS_RETIRED: bool = false;
    const REDELIVERS: Redelivers = Redelivers::No;

    async fn new() -> Self {
        Self {
            port: fnbroker_conformance::free_port(),
            client: reqwest::Client::new(),
        }
    }

    fn connector(&self) -> Value {
        json!({ "http": { "listen": format!("127.0.0.1:{}", self.port) } })
    }

    async fn prepare(&self) -> Topic {
        let path = format!("/in-{}", unique_id());
        Topic {
            from: json!({ "connector": "c", "topic": path }),
            address: format!("http://127.0.0.1:{}{path}", self.port),
        }
    }

    async fn publish(&self, topic: &Topic, numbers: Range<usize>) {
        for n in numbers {
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            loop {
                let sent = self
                    .client
                    .post(&topic.address)
                    .header("content-type", "text/plain")
                    .body(n.to_string())
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status().is_success() => break,
                    // Refused for good (no trigger on the path): the sender knows, nothing to
                    // send again.
                    Ok(r) if r.status().is_client_error() => break,
                    other => {
                        assert!(
                            std::time::Instant::now() < deadline,
                            "POST {n} to {}: {other:?}",
                            topic.address
                        );
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        }
    }
}

impl Modes for Http {
    async fn publish_event(&self, topic: &Topic, mode: Mode, n: usize) {
        let (body, content_type) = body_of(mode, n);
        let mut request = self
            .client
            .post(&topic.address)
            .header("content-type", content_type)
            .body(body);
        for (k, v) in headers_of(mode, n, "ce-") {
            request = request.header(k, v);
        }
        let r = request.send().await.expect("POST");
        assert!(r.status().is_success(), "{mode:?} event: {}", r.status());
    }
}

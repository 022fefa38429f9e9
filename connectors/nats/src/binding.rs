//! The NATS binding of CloudEvents: binary mode with `ce-` headers (case-insensitive on read)
//! and `Content-Type`; structured mode by the content type `application/cloudevents+json`; plain
//! payloads normalized (JetStream: `id` the stream sequence, `time` the stored timestamp; the
//! subject is the concrete one the message came on).

use std::borrow::Cow;

use async_nats::HeaderMap;
use chrono::{DateTime, Utc};
use fnbroker_core::Origin;
use fnbroker_core::binding::Attributes;
use fnbroker_core::event::{self, AttributesReader, Event, PlainMessage};

/// What the binding reads of a message.
#[derive(Debug, Default)]
pub struct Message<'a> {
    /// The concrete subject.
    pub subject: &'a str,
    /// The payload.
    pub payload: &'a [u8],
    /// The headers.
    pub headers: Option<&'a HeaderMap>,
    /// JetStream: the stream sequence, a stable id.
    pub sequence: Option<u64>,
    /// JetStream: when the stream stored it.
    pub time: Option<DateTime<Utc>>,
}

fn header<'a>(headers: Option<&'a HeaderMap>, name: &str) -> Option<&'a str> {
    let headers = headers?;
    headers
        .iter()
        .find(|(k, _)| AsRef::<str>::as_ref(k).eq_ignore_ascii_case(name))
        .and_then(|(_, v)| v.first())
        .map(|v| v.as_str())
}

/// Turns a message into an event.
pub fn decode(connector: &str, msg: &Message<'_>) -> (Event, Origin) {
    fnbroker_core::binding::decode(connector, msg)
}

impl fnbroker_core::binding::Inbound for Message<'_> {
    fn content_type(&self) -> Option<&str> {
        header(self.headers, "content-type")
    }

    fn payload(&self) -> &[u8] {
        self.payload
    }

    fn attributes(&self) -> Result<Option<Attributes<'_>>, event::InvalidEvent> {
        let Some(headers) = self.headers else {
            return Ok(None);
        };
        let attributes: Attributes<'_> = headers
            .iter()
            .filter_map(|(k, v)| {
                let name = fnbroker_core::binding::strip_prefix_ci(AsRef::<str>::as_ref(k), "ce-")?;
                Some((name, Cow::Borrowed(v.first()?.as_str())))
            })
            .collect();
        Ok((!attributes.is_empty()).then_some(attributes))
    }

    fn plain(&self, connector: &str) -> Event {
        plain(connector, self, self.content_type())
    }
}

fn plain(connector: &str, msg: &Message<'_>, content_type: Option<&str>) -> Event {
    event::normalize(
        PlainMessage {
            kind: "nats",
            connector,
            topic: msg.subject,
            id: msg.sequence.map(|s| s.to_string()),
            time: msg.time,
            content_type,
            traceparent: header(msg.headers, "traceparent"),
            tracestate: header(msg.headers, "tracestate"),
            ..Default::default()
        },
        msg.payload.to_vec(),
    )
}

/// Whether a subject matches a subscription's subject (`*` one token, `>` one or more at the
/// end).
pub fn subject_matches(filter: &str, subject: &str) -> bool {
    let mut f = filter.split('.');
    let mut s = subject.split('.');
    loop {
        match (f.next(), s.next()) {
            (Some(">"), Some(_)) => return f.next().is_none(),
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Binary mode: `ce-` headers, `Content-Type`, the data as payload.
pub fn encode(event: &Event) -> (HeaderMap, Vec<u8>) {
    let mut headers = HeaderMap::new();
    for (name, value) in event::binary_attributes(event) {
        headers.insert(format!("ce-{name}").as_str(), value.as_ref());
    }
    if let Some(ct) = event.datacontenttype() {
        headers.insert("Content-Type", ct);
    }
    (headers, event::data_bytes(event).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_wildcards() {
        assert!(subject_matches("orders.*", "orders.eu"));
        assert!(!subject_matches("orders.*", "orders.eu.paid"));
        assert!(subject_matches("orders.>", "orders.eu.paid"));
        assert!(!subject_matches("orders.>", "orders"));
        assert!(subject_matches("orders", "orders"));
        assert!(!subject_matches("orders", "orders.eu"));
        assert!(subject_matches("*.eu.>", "orders.eu.paid"));
    }

    #[test]
    fn binary_round_trip_and_case_insensitive_headers() {
        let mut h = HeaderMap::new();
        h.insert("CE-SpecVersion", "1.0");
        h.insert("ce-id", "n-1");
        h.insert("Ce-Source", "/s");
        h.insert("ce-type", "t");
        h.insert("content-type", "text/plain");
        let msg = Message {
            subject: "orders.eu",
            payload: b"hi",
            headers: Some(&h),
            ..Default::default()
        };
        let (e, origin) = decode("bus", &msg);
        assert_eq!(origin, Origin::CloudEvent);
        assert_eq!(e.id(), "n-1");
        assert_eq!(e.datacontenttype(), Some("text/plain"));
        let (h2, payload) = encode(&e);
        let msg2 = Message {
            subject: "x",
            payload: &payload,
            headers: Some(&h2),
            ..Default::default()
        };
        assert_eq!(decode("bus", &msg2).0, e);
    }

    #[test]
    fn plain_jetstream_messages_get_the_sequence_as_id() {
        let msg = Message {
            subject: "orders.eu",
            payload: b"{}",
            sequence: Some(42),
            ..Default::default()
        };
        let (e, origin) = decode("bus", &msg);
        assert_eq!(origin, Origin::Plain);
        assert_eq!(e.id(), "42");
        assert_eq!(e.source(), "nats://bus/orders.eu");
        assert_eq!(e.subject(), Some("orders.eu"));
    }

    #[test]
    fn structured_mode_by_content_type() {
        let mut h = HeaderMap::new();
        h.insert("Content-Type", "application/cloudevents+json");
        let body = br#"{"specversion":"1.0","id":"s","source":"/s","type":"t"}"#;
        let msg = Message {
            subject: "a",
            payload: body,
            headers: Some(&h),
            ..Default::default()
        };
        assert_eq!(decode("bus", &msg).1, Origin::CloudEvent);
    }
}

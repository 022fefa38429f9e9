//! The Kafka protocol binding of CloudEvents.
//!
//! Reading: structured mode when the `content-type` header is `application/cloudevents+json`
//! (case-insensitively, parameters allowed); binary mode when there are `ce_` headers (attribute
//! per header, `content-type` as `datacontenttype`, the value as data); anything else is a plain
//! record, normalized: `id` `topic-partition-offset` (stable across redeliveries), `time` the
//! record's timestamp, the key as `partitionkey`, a `traceparent` header kept.
//!
//! Writing: binary mode, the `partitionkey` extension as the record key.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use fnbroker_core::Origin;
use fnbroker_core::binding::Attributes;
use fnbroker_core::event::{self, AttributesReader, Event, PlainMessage};
use rdkafka::message::{Header, OwnedHeaders};

/// What the binding reads of a record.
#[derive(Debug, Clone, Default)]
pub struct Record<'a> {
    /// The topic.
    pub topic: &'a str,
    /// The partition.
    pub partition: i32,
    /// The offset.
    pub offset: i64,
    /// The key.
    pub key: Option<&'a [u8]>,
    /// The value.
    pub payload: Option<&'a [u8]>,
    /// The headers, in order.
    pub headers: Vec<(&'a str, Option<&'a [u8]>)>,
    /// The record's timestamp in milliseconds since the epoch.
    pub timestamp_ms: Option<i64>,
}

const PREFIX: &str = "ce_";

fn header<'a>(record: &Record<'a>, name: &str) -> Option<&'a [u8]> {
    record
        .headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .and_then(|(_, v)| *v)
}

/// Turns a record into an event. `connector` names the connector in normalized sources.
pub fn decode(connector: &str, record: &Record<'_>) -> (Event, Origin) {
    let (mut e, origin) = fnbroker_core::binding::decode(connector, record);
    if origin == Origin::CloudEvent
        && e.extension("partitionkey").is_none()
        && let Some(key) = record.key
    {
        e.set_extension("partitionkey", String::from_utf8_lossy(key).into_owned());
    }
    (e, origin)
}

impl fnbroker_core::binding::Inbound for Record<'_> {
    fn content_type(&self) -> Option<&str> {
        header(self, "content-type").and_then(|v| std::str::from_utf8(v).ok())
    }

    fn payload(&self) -> &[u8] {
        self.payload.unwrap_or_default()
    }

    fn attributes(&self) -> Result<Option<Attributes<'_>>, event::InvalidEvent> {
        let mut attributes = Vec::new();
        for (name, value) in &self.headers {
            let Some(attr) = fnbroker_core::binding::strip_prefix_ci(name, PREFIX) else {
                continue;
            };
            let value = std::str::from_utf8(value.unwrap_or_default())
                .map_err(|_| event::InvalidEvent(format!("header `{name}` is not UTF-8")))?;
            attributes.push((attr, Cow::Borrowed(value)));
        }
        Ok((!attributes.is_empty()).then_some(attributes))
    }

    fn plain(&self, connector: &str) -> Event {
        plain(connector, self, self.content_type(), self.payload())
    }
}

fn plain(
    connector: &str,
    record: &Record<'_>,
    content_type: Option<&str>,
    payload: &[u8],
) -> Event {
    let key = record.key.map(String::from_utf8_lossy);
    let text = |name: &str| header(record, name).and_then(|v| std::str::from_utf8(v).ok());
    event::normalize(
        PlainMessage {
            kind: "kafka",
            connector,
            topic: record.topic,
            id: Some(format!(
                "{}-{}-{}",
                record.topic, record.partition, record.offset
            )),
            time: record
                .timestamp_ms
                .and_then(DateTime::<Utc>::from_timestamp_millis),
            content_type,
            partition_key: key.as_deref(),
            traceparent: text("traceparent"),
            tracestate: text("tracestate"),
        },
        payload.to_vec(),
    )
}

/// A record to publish: key, headers and value of `event` in binary mode.
pub struct Encoded {
    /// The `partitionkey` extension, if any.
    pub key: Option<String>,
    /// `ce_` headers and `content-type`.
    pub headers: OwnedHeaders,
    /// The data.
    pub payload: Vec<u8>,
}

/// Writes `event` in binary mode.
pub fn encode(event: &Event) -> Encoded {
    let mut headers = OwnedHeaders::new();
    for (name, value) in event::binary_attributes(event) {
        let key = format!("{PREFIX}{name}");
        headers = headers.insert(Header {
            key: &key,
            value: Some(value.as_bytes()),
        });
    }
    if let Some(ct) = event.datacontenttype() {
        headers = headers.insert(Header {
            key: "content-type",
            value: Some(ct.as_bytes()),
        });
    }
    Encoded {
        key: event::attribute(event, "partitionkey").map(Cow::into_owned),
        headers,
        payload: event::data_bytes(event).into_owned(),
    }
}

/// A plain record: the bytes, and the content type as a `content-type` header when known.
pub fn encode_plain(data: &[u8], content_type: Option<&str>) -> Encoded {
    let mut headers = OwnedHeaders::new();
    if let Some(ct) = content_type {
        headers = headers.insert(Header {
            key: "content-type",
            value: Some(ct.as_bytes()),
        });
    }
    Encoded {
        key: None,
        headers,
        payload: data.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::Headers;
    use serde_json::Value;

    fn record<'a>(headers: Vec<(&'a str, Option<&'a [u8]>)>, payload: &'a [u8]) -> Record<'a> {
        Record {
            topic: "orders",
            partition: 2,
            offset: 17,
            key: Some(b"customer-9"),
            payload: Some(payload),
            headers,
            timestamp_ms: Some(1_522_900_584_000),
        }
    }

    /// The scenarios of `kafka-protocol-binding.feature`, read from the shared conformance data.
    #[test]
    fn kafka_protocol_binding_scenarios() {
        let feature = fnbroker_testkit::read_conformance_file("kafka-protocol-binding.feature");
        let cases = fnbroker_testkit::cases(&feature);
        assert!(
            cases.len() >= 3,
            "expected the binary and two structured cases"
        );
        for case in &cases {
            let headers: Vec<(&str, Option<&[u8]>)> = case
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), Some(v.as_bytes())))
                .collect();
            let rec = record(headers, case.message.as_bytes());
            let (e, origin) = decode("k", &rec);
            assert_eq!(origin, Origin::CloudEvent, "{}", case.name);
            for (name, expected) in &case.attributes {
                assert_eq!(
                    event::attribute(&e, name).as_deref(),
                    Some(expected.as_str()),
                    "{}: `{name}`",
                    case.name
                );
            }
            let expected: Value =
                serde_json::from_str(case.data.as_deref().unwrap_or("null")).expect("json");
            let actual: Value = serde_json::from_slice(&event::data_bytes(&e)).expect("data");
            assert_eq!(actual, expected, "{}", case.name);
        }
        println!("{} Kafka binding scenario cases passed", cases.len());
    }

    #[test]
    fn plain_records_are_normalized_with_a_stable_id() {
        let rec = record(
            vec![
                ("Content-Type", Some(b"application/json")),
                (
                    "traceparent",
                    Some(b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
                ),
            ],
            br#"{"t":21.5}"#,
        );
        let (e, origin) = decode("pipeline", &rec);
        assert_eq!(origin, Origin::Plain);
        assert_eq!(e.id(), "orders-2-17");
        assert_eq!(e.source(), "kafka://pipeline/orders");
        assert_eq!(e.ty(), "fnbroker.kafka.message");
        assert_eq!(e.subject(), Some("orders"));
        assert_eq!(
            event::attribute(&e, "time").as_deref(),
            Some("2018-04-05T03:56:24Z")
        );
        assert_eq!(
            event::attribute(&e, "partitionkey").as_deref(),
            Some("customer-9")
        );
        assert!(event::attribute(&e, "traceparent").is_some());
        assert_eq!(e.datacontenttype(), Some("application/json"));
        assert_eq!(&*event::data_bytes(&e), br#"{"t":21.5}"#);
    }

    #[test]
    fn structured_mode_is_case_insensitive_and_invalid_events_keep_their_bytes() {
        let good = br#"{"specversion":"1.0","id":"1","source":"/s","type":"t"}"#;
        let rec = record(
            vec![("content-type", Some(b"Application/CloudEvents+JSON"))],
            good,
        );
        assert_eq!(decode("k", &rec).1, Origin::CloudEvent);

        let bad = br#"{"specversion":"1.0","source":"/s","type":"t"}"#;
        let rec = record(
            vec![("content-type", Some(b"application/cloudevents+json"))],
            bad,
        );
        let (e, origin) = decode("k", &rec);
        assert!(
            matches!(origin, Origin::Invalid(ref r) if r.contains("`id`")),
            "{origin:?}"
        );
        assert_eq!(&*event::data_bytes(&e), bad);
        assert_eq!(e.id(), "orders-2-17");
    }

    #[test]
    fn encode_writes_binary_mode_and_the_partition_key() {
        let rec = record(
            vec![
                ("ce_specversion", Some(b"1.0")),
                ("ce_id", Some(b"x-1")),
                ("ce_source", Some(b"/s")),
                ("ce_type", Some(b"t")),
                ("content-type", Some(b"text/plain")),
            ],
            b"hello",
        );
        let (e, _) = decode("k", &rec);
        let out = encode(&e);
        assert_eq!(out.key.as_deref(), Some("customer-9"));
        assert_eq!(out.payload, b"hello");
        let names: Vec<String> = out.headers.iter().map(|h| h.key.to_string()).collect();
        for n in [
            "ce_specversion",
            "ce_id",
            "ce_source",
            "ce_type",
            "ce_partitionkey",
            "content-type",
        ] {
            assert!(names.iter().any(|h| h == n), "{n} missing in {names:?}");
        }
    }
}

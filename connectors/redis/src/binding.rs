//! The Redis Streams binding of CloudEvents (after the pattern of the Kafka and NATS bindings:
//! the CloudEvents specification has none for Redis).
//!
//! An entry is a list of fields. **Binary mode**: an attribute is a field `ce_<name>` (or
//! `ce-<name>`), `datacontenttype` is the field `content-type`, the data is the field `data`.
//! **Structured mode**: `content-type: application/cloudevents+json` with the event in `data`.
//! Anything else is a plain entry: its `data` field is the payload (with the content type of its
//! `content-type` field), or, without one, the entry is the JSON object of its fields (values as
//! text). A plain entry's `id` is the entry id, stable across redeliveries; `time` the time in
//! that id; `source` `redis://<connector>/<stream>` and `subject` the stream.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use fnbroker_core::Origin;
use fnbroker_core::binding::Attributes;
use fnbroker_core::event::{self, AttributesReader, Event, PlainMessage};

/// The field prefixes of binary-mode attributes (`ce_` is the one fnbroker writes).
const PREFIXES: [&str; 2] = ["ce_", "ce-"];

/// One entry as the binding reads it.
#[derive(Debug, Clone)]
pub struct Entry<'a> {
    /// The stream key.
    pub stream: &'a str,
    /// The entry id (`<milliseconds>-<sequence>`).
    pub id: &'a str,
    fields: &'a [(Vec<u8>, Vec<u8>)],
    payload: Cow<'a, [u8]>,
    content_type: Option<&'a str>,
}

fn text(bytes: &[u8]) -> Option<&str> {
    std::str::from_utf8(bytes).ok()
}

fn attribute_name(field: &[u8]) -> Option<Cow<'_, str>> {
    let field = text(field)?;
    PREFIXES
        .iter()
        .find_map(|p| fnbroker_core::binding::strip_prefix_ci(field, p))
}

impl<'a> Entry<'a> {
    /// The entry `id` of `stream` with its `fields` in order.
    pub fn new(stream: &'a str, id: &'a str, fields: &'a [(Vec<u8>, Vec<u8>)]) -> Self {
        let field = |name: &str| {
            fields
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name.as_bytes()))
                .map(|(_, v)| v.as_slice())
        };
        let binary = fields.iter().any(|(k, _)| attribute_name(k).is_some());
        let (payload, content_type) = match field("data") {
            Some(data) => (Cow::Borrowed(data), field("content-type").and_then(text)),
            None if binary => (Cow::Borrowed(&[][..]), field("content-type").and_then(text)),
            None => (Cow::Owned(fields_as_json(fields)), Some("application/json")),
        };
        Self {
            stream,
            id,
            fields,
            payload,
            content_type,
        }
    }

    /// The size of the entry's fields and values, in bytes.
    pub fn size(&self) -> usize {
        self.fields.iter().map(|(k, v)| k.len() + v.len()).sum()
    }

    /// The time the entry was added: the milliseconds of its id.
    fn time(&self) -> Option<DateTime<Utc>> {
        let millis: i64 = self.id.split_once('-')?.0.parse().ok()?;
        (millis > 0).then(|| DateTime::from_timestamp_millis(millis))?
    }

    fn field(&self, name: &str) -> Option<&'a str> {
        self.fields
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name.as_bytes()))
            .and_then(|(_, v)| text(v))
    }
}

/// An entry without a `data` field: the JSON object of its fields, values as text.
fn fields_as_json(fields: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let object: serde_json::Map<String, serde_json::Value> = fields
        .iter()
        .map(|(k, v)| {
            (
                String::from_utf8_lossy(k).into_owned(),
                String::from_utf8_lossy(v).into_owned().into(),
            )
        })
        .collect();
    serde_json::Value::Object(object).to_string().into_bytes()
}

/// Turns an entry into an event.
pub fn decode(connector: &str, entry: &Entry<'_>) -> (Event, Origin) {
    fnbroker_core::binding::decode(connector, entry)
}

impl fnbroker_core::binding::Inbound for Entry<'_> {
    fn content_type(&self) -> Option<&str> {
        self.content_type
    }

    fn payload(&self) -> &[u8] {
        &self.payload
    }

    fn attributes(&self) -> Result<Option<Attributes<'_>>, event::InvalidEvent> {
        let mut attributes = Vec::new();
        for (name, value) in self.fields {
            let Some(attr) = attribute_name(name) else {
                continue;
            };
            let value = text(value)
                .ok_or_else(|| event::InvalidEvent(format!("field `{attr}` is not UTF-8")))?;
            attributes.push((attr, Cow::Borrowed(value)));
        }
        Ok((!attributes.is_empty()).then_some(attributes))
    }

    fn plain(&self, connector: &str) -> Event {
        event::normalize(
            PlainMessage {
                kind: "redis",
                connector,
                topic: self.stream,
                id: Some(self.id.to_string()),
                time: self.time(),
                content_type: self.content_type,
                traceparent: self.field("traceparent"),
                tracestate: self.field("tracestate"),
                ..Default::default()
            },
            self.payload.to_vec(),
        )
    }
}

/// Binary mode: `ce_<attribute>` fields, `content-type` and `data`.
pub fn encode(event: &Event) -> Vec<(String, Vec<u8>)> {
    let mut fields: Vec<(String, Vec<u8>)> = event::binary_attributes(event)
        .map(|(k, v)| (format!("ce_{k}"), v.into_owned().into_bytes()))
        .collect();
    if let Some(ct) = event.datacontenttype() {
        fields.push(("content-type".to_string(), ct.as_bytes().to_vec()));
    }
    if event.data().is_some() {
        fields.push(("data".to_string(), event::data_bytes(event).into_owned()));
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> Vec<(Vec<u8>, Vec<u8>)> {
        pairs
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn binary_mode_round_trips() {
        let f = fields(&[
            ("ce_specversion", "1.0"),
            ("CE-id", "r-1"),
            ("ce_source", "/s"),
            ("ce_type", "t"),
            ("ce_colour", "blue"),
            ("content-type", "application/json"),
            ("data", r#"{"a":1}"#),
        ]);
        let (e, origin) = decode("cache", &Entry::new("orders", "1700000000000-0", &f));
        assert_eq!(origin, Origin::CloudEvent);
        assert_eq!((e.id(), e.ty()), ("r-1", "t"));
        assert_eq!(
            e.extension("colour").map(|v| v.to_string()).as_deref(),
            Some("blue")
        );
        let back: Vec<(Vec<u8>, Vec<u8>)> = encode(&e)
            .into_iter()
            .map(|(k, v)| (k.into_bytes(), v))
            .collect();
        let (again, _) = decode("cache", &Entry::new("orders", "1-0", &back));
        assert_eq!(again, e);
    }

    #[test]
    fn structured_mode_is_the_event_in_data() {
        let f = fields(&[
            ("content-type", "application/cloudevents+json"),
            (
                "data",
                r#"{"specversion":"1.0","id":"s-1","source":"/s","type":"t"}"#,
            ),
        ]);
        let (e, origin) = decode("cache", &Entry::new("orders", "1-0", &f));
        assert_eq!((origin, e.id()), (Origin::CloudEvent, "s-1"));
    }

    #[test]
    fn a_plain_entry_is_its_data_or_the_object_of_its_fields() {
        let f = fields(&[("content-type", "text/plain"), ("data", "hi")]);
        let (e, origin) = decode("cache", &Entry::new("orders", "1700000000000-3", &f));
        assert_eq!(origin, Origin::Plain);
        assert_eq!(e.id(), "1700000000000-3");
        assert_eq!(e.source().to_string(), "redis://cache/orders");
        assert_eq!(e.subject(), Some("orders"));
        assert_eq!(e.datacontenttype(), Some("text/plain"));
        assert_eq!(
            e.time().map(|t| t.timestamp_millis()),
            Some(1_700_000_000_000)
        );
        assert_eq!(event::data_bytes(&e).as_ref(), b"hi");

        let f = fields(&[("device", "d-7"), ("celsius", "31.5")]);
        let (e, _) = decode("cache", &Entry::new("orders", "1-0", &f));
        assert_eq!(e.datacontenttype(), Some("application/json"));
        assert_eq!(
            event::data_bytes(&e).as_ref(),
            br#"{"device":"d-7","celsius":"31.5"}"#
        );
    }

    #[test]
    fn an_invalid_binary_entry_is_kept_as_plain_with_the_reason() {
        let f = fields(&[("ce_specversion", "1.0"), ("data", "x")]);
        let (_, origin) = decode("cache", &Entry::new("orders", "1-0", &f));
        assert!(matches!(origin, Origin::Invalid(_)), "{origin:?}");
    }
}

//! CloudEvents over AMQP 0-9-1. There is no CNCF binding for 0-9-1; this follows Knative's
//! RabbitMQ convention: attributes as headers with any of the prefixes `ce-`, `ce_`,
//! `cloudEvents_` and `cloudEvents:` (read case-insensitively), the `content-type` property as
//! `datacontenttype`, structured mode by the content type `application/cloudevents+json`. Written
//! with one prefix (default `ce-`). Plain messages are normalized: `id` the `message-id`
//! property when there is one (stable across redeliveries), `time` the `timestamp` property,
//! `source` `amqp://<connector>/<queue>`, `subject` the routing key.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use fnbroker_core::Origin;
use fnbroker_core::binding::Attributes;
use fnbroker_core::event::{self, AttributesReader, Event, PlainMessage};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

const PREFIXES: [&str; 4] = ["ce-", "ce_", "cloudEvents_", "cloudEvents:"];

/// What the binding reads of a delivery.
#[derive(Debug)]
pub struct Message<'a> {
    /// The queue it was consumed from.
    pub queue: &'a str,
    /// The routing key it was published with.
    pub routing_key: &'a str,
    /// The properties, headers included.
    pub properties: &'a BasicProperties,
    /// The body.
    pub body: &'a [u8],
}

fn value_text(v: &AMQPValue) -> Option<Cow<'_, str>> {
    Some(match v {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()),
        AMQPValue::ShortString(s) => Cow::Borrowed(s.as_str()),
        AMQPValue::Boolean(b) => Cow::Owned(b.to_string()),
        AMQPValue::ShortShortInt(i) => Cow::Owned(i.to_string()),
        AMQPValue::ShortShortUInt(i) => Cow::Owned(i.to_string()),
        AMQPValue::ShortInt(i) => Cow::Owned(i.to_string()),
        AMQPValue::ShortUInt(i) => Cow::Owned(i.to_string()),
        AMQPValue::LongInt(i) => Cow::Owned(i.to_string()),
        AMQPValue::LongUInt(i) => Cow::Owned(i.to_string()),
        AMQPValue::LongLongInt(i) => Cow::Owned(i.to_string()),
        AMQPValue::Timestamp(t) => Cow::Owned(event::format_time(
            &DateTime::<Utc>::from_timestamp(i64::try_from(*t).ok()?, 0)?,
        )),
        _ => return None,
    })
}

fn attribute_name(header: &str) -> Option<Cow<'_, str>> {
    PREFIXES
        .iter()
        .find_map(|p| fnbroker_core::binding::strip_prefix_ci(header, p))
}

/// Turns a delivery into an event.
pub fn decode(connector: &str, msg: &Message<'_>) -> (Event, Origin) {
    fnbroker_core::binding::decode(connector, msg)
}

impl fnbroker_core::binding::Inbound for Message<'_> {
    fn content_type(&self) -> Option<&str> {
        self.properties.content_type().as_ref().map(|s| s.as_str())
    }

    fn payload(&self) -> &[u8] {
        self.body
    }

    fn attributes(&self) -> Result<Option<Attributes<'_>>, event::InvalidEvent> {
        let Some(headers) = self.properties.headers().as_ref() else {
            return Ok(None);
        };
        let attributes: Attributes<'_> = headers
            .inner()
            .iter()
            .filter_map(|(k, v)| Some((attribute_name(k.as_str())?, value_text(v)?)))
            .collect();
        Ok((!attributes.is_empty()).then_some(attributes))
    }

    fn plain(&self, connector: &str) -> Event {
        plain(connector, self, self.content_type())
    }
}

fn plain(connector: &str, msg: &Message<'_>, content_type: Option<&str>) -> Event {
    let header = |name: &str| {
        msg.properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get(name))
            .and_then(value_text)
    };
    let (traceparent, tracestate) = (header("traceparent"), header("tracestate"));
    let mut e = event::normalize(
        PlainMessage {
            kind: "amqp",
            connector,
            topic: msg.queue,
            id: msg.properties.message_id().as_ref().map(|s| s.to_string()),
            time: msg
                .properties
                .timestamp()
                .and_then(|t| DateTime::<Utc>::from_timestamp(i64::try_from(t).ok()?, 0)),
            content_type,
            traceparent: traceparent.as_deref(),
            tracestate: tracestate.as_deref(),
            ..Default::default()
        },
        msg.body.to_vec(),
    );
    if !msg.routing_key.is_empty() {
        event::AttributesWriter::set_subject(&mut e, Some(msg.routing_key));
    }
    e
}

/// Binary mode: the data as body, `datacontenttype` as the content type, the attributes as
/// `<prefix><name>` headers; persistent delivery.
pub fn encode(event: &Event, prefix: &str) -> (Vec<u8>, BasicProperties) {
    let mut headers = FieldTable::default();
    for (name, value) in event::binary_attributes(event) {
        headers.insert(
            ShortString::from(format!("{prefix}{name}")),
            AMQPValue::LongString(LongString::from(value.into_owned())),
        );
    }
    let mut props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_message_id(ShortString::from(event.id().to_string()))
        .with_headers(headers);
    if let Some(ct) = event.datacontenttype() {
        props = props.with_content_type(ShortString::from(ct.to_string()));
    }
    (event::data_bytes(event).into_owned(), props)
}

/// The properties of a plain message: persistent, with its content type when known.
pub fn plain_properties(content_type: Option<&str>) -> BasicProperties {
    let props = BasicProperties::default().with_delivery_mode(2);
    match content_type {
        Some(ct) => props.with_content_type(ShortString::from(ct.to_string())),
        None => props,
    }
}

/// Queue arguments from the configuration's JSON values.
pub fn arguments(args: &std::collections::BTreeMap<String, serde_json::Value>) -> FieldTable {
    let mut table = FieldTable::default();
    for (k, v) in args {
        let value = match v {
            serde_json::Value::Bool(b) => AMQPValue::Boolean(*b),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => AMQPValue::LongLongInt(i),
                None => AMQPValue::Double(n.as_f64().unwrap_or_default()),
            },
            serde_json::Value::String(s) => AMQPValue::LongString(LongString::from(s.clone())),
            other => AMQPValue::LongString(LongString::from(other.to_string())),
        };
        table.insert(ShortString::from(k.clone()), value);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(headers: &[(&str, &str)], ct: Option<&str>) -> BasicProperties {
        let mut t = FieldTable::default();
        for (k, v) in headers {
            t.insert(
                ShortString::from(k.to_string()),
                AMQPValue::LongString(LongString::from(v.to_string())),
            );
        }
        let mut p = BasicProperties::default().with_headers(t);
        if let Some(ct) = ct {
            p = p.with_content_type(ShortString::from(ct.to_string()));
        }
        p
    }

    #[test]
    fn every_prefix_is_read() {
        for prefix in PREFIXES {
            let h: Vec<(String, String)> = [
                ("specversion", "1.0"),
                ("id", "a-1"),
                ("source", "/s"),
                ("type", "t"),
            ]
            .iter()
            .map(|(k, v)| (format!("{prefix}{k}"), v.to_string()))
            .collect();
            let hv: Vec<(&str, &str)> = h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let p = props(&hv, Some("text/plain"));
            let msg = Message {
                queue: "q",
                routing_key: "q",
                properties: &p,
                body: b"x",
            };
            let (e, origin) = decode("rabbit", &msg);
            assert_eq!(origin, Origin::CloudEvent, "{prefix}");
            assert_eq!(e.id(), "a-1", "{prefix}");
            assert_eq!(e.datacontenttype(), Some("text/plain"));
        }
    }

    #[test]
    fn round_trip_with_the_default_prefix() {
        let p = props(
            &[
                ("ce-specversion", "1.0"),
                ("ce-id", "r-1"),
                ("ce-source", "/s"),
                ("ce-type", "t"),
                ("ce-myext", "v"),
            ],
            Some("application/json"),
        );
        let msg = Message {
            queue: "q",
            routing_key: "orders.eu",
            properties: &p,
            body: b"{}",
        };
        let (e, _) = decode("rabbit", &msg);
        let (body, p2) = encode(&e, "ce-");
        let msg2 = Message {
            queue: "q",
            routing_key: "",
            properties: &p2,
            body: &body,
        };
        assert_eq!(decode("rabbit", &msg2).0, e);
        assert_eq!(p2.delivery_mode(), &Some(2));
    }

    #[test]
    fn plain_messages_use_the_message_id() {
        let p = BasicProperties::default()
            .with_message_id(ShortString::from("m-42".to_string()))
            .with_timestamp(1_522_900_584);
        let msg = Message {
            queue: "orders",
            routing_key: "orders.eu",
            properties: &p,
            body: b"{}",
        };
        let (e, origin) = decode("rabbit", &msg);
        assert_eq!(origin, Origin::Plain);
        assert_eq!(e.id(), "m-42");
        assert_eq!(e.source(), "amqp://rabbit/orders");
        assert_eq!(e.subject(), Some("orders.eu"));
        assert_eq!(
            event::attribute(&e, "time").as_deref(),
            Some("2018-04-05T03:56:24Z")
        );
    }
}

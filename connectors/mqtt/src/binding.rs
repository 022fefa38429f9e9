//! The MQTT protocol binding of CloudEvents.
//!
//! MQTT 5: binary mode carries each attribute as a User Property named like the attribute
//! (`specversion`, `id`, ...) and `datacontenttype` as the Content Type property; structured mode
//! is the Content Type `application/cloudevents+json`. MQTT 3.1.1 has no properties: structured
//! mode only (recognized by a payload that is a JSON object with a `specversion`). Anything else
//! is a plain message, normalized with `subject` the concrete topic it came on.

use std::borrow::Cow;

use fnbroker_core::Origin;
use fnbroker_core::binding::Attributes;
use fnbroker_core::event::{self, AttributesReader, Event, PlainMessage};

/// What the binding reads of a message.
#[derive(Debug, Clone, Default)]
pub struct Message<'a> {
    /// The concrete topic.
    pub topic: &'a str,
    /// The payload.
    pub payload: &'a [u8],
    /// MQTT 5 Content Type.
    pub content_type: Option<&'a str>,
    /// MQTT 5 User Properties.
    pub user_properties: &'a [(String, String)],
    /// Whether the connection speaks MQTT 5.
    pub v5: bool,
}

/// Turns a message into an event.
pub fn decode(connector: &str, msg: &Message<'_>) -> (Event, Origin) {
    fnbroker_core::binding::decode(connector, msg)
}

impl fnbroker_core::binding::Inbound for Message<'_> {
    fn content_type(&self) -> Option<&str> {
        self.content_type
    }

    fn payload(&self) -> &[u8] {
        self.payload
    }

    /// MQTT 5 user properties, when `specversion` is one of them.
    fn attributes(&self) -> Result<Option<Attributes<'_>>, event::InvalidEvent> {
        let props = &self.user_properties;
        if !self.v5 || !props.iter().any(|(k, _)| k == "specversion") {
            return Ok(None);
        }
        // User properties that cannot be attribute names (`Device-ID`) are the application's own.
        Ok(Some(
            props
                .iter()
                .filter(|(k, _)| event::is_valid_attribute_name(k))
                .map(|(k, v)| (Cow::Borrowed(k.as_str()), Cow::Borrowed(v.as_str())))
                .collect(),
        ))
    }

    /// MQTT 3.1.1 has no properties: a JSON object naming `specversion` is a structured event.
    fn looks_structured(&self) -> bool {
        !self.v5 && looks_structured(self.payload)
    }

    fn plain(&self, connector: &str) -> Event {
        plain(connector, self)
    }
}

/// A JSON object whose top level names `specversion`: what a 3.1.1 structured event looks like.
fn looks_structured(payload: &[u8]) -> bool {
    let trimmed = payload.trim_ascii_start();
    trimmed.first() == Some(&b'{') && serde_json_has_specversion(trimmed)
}

fn serde_json_has_specversion(payload: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Probe {
        specversion: Option<serde::de::IgnoredAny>,
    }
    serde_json::from_slice::<Probe>(payload).is_ok_and(|p| p.specversion.is_some())
}

fn plain(connector: &str, msg: &Message<'_>) -> Event {
    let property = |name: &str| {
        msg.user_properties
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    event::normalize(
        PlainMessage {
            kind: "mqtt",
            connector,
            topic: msg.topic,
            content_type: msg.content_type,
            traceparent: property("traceparent"),
            tracestate: property("tracestate"),
            ..Default::default()
        },
        msg.payload.to_vec(),
    )
}

/// MQTT 5 binary mode: the data, the Content Type, and the attributes as User Properties.
pub fn encode_binary(event: &Event) -> (Vec<u8>, Option<String>, Vec<(String, String)>) {
    let props = event::binary_attributes(event)
        .map(|(k, v)| (k.to_string(), v.into_owned()))
        .collect();
    (
        event::data_bytes(event).into_owned(),
        event.datacontenttype().map(str::to_string),
        props,
    )
}

/// Structured mode (MQTT 3.1.1): the event as JSON.
pub fn encode_structured(event: &Event) -> Vec<u8> {
    event::to_json_vec(event)
}

/// Whether a topic matches a filter (`+` one level, `#` the rest; `$share/<group>/` prefixes
/// are removed; topics starting with `$` match no leading wildcard).
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    let filter = strip_share(filter);
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// The filter of a shared subscription without its `$share/<group>/` prefix.
pub fn strip_share(filter: &str) -> &str {
    match filter.strip_prefix("$share/") {
        Some(rest) => rest.split_once('/').map_or(rest, |(_, f)| f),
        None => filter,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn wildcards() {
        assert!(topic_matches(
            "sensors/+/temperature",
            "sensors/kitchen/temperature"
        ));
        assert!(!topic_matches(
            "sensors/+/temperature",
            "sensors/kitchen/humidity"
        ));
        assert!(topic_matches("sensors/#", "sensors/kitchen/temperature"));
        assert!(topic_matches("sensors/#", "sensors"));
        assert!(topic_matches("#", "a/b"));
        assert!(!topic_matches("#", "$SYS/broker"));
        assert!(topic_matches("$share/g/sensors/+", "sensors/x"));
        assert!(!topic_matches("a/b", "a/b/c"));
    }

    #[test]
    fn v5_binary_mode_round_trips() {
        let up = props(&[
            ("specversion", "1.0"),
            ("id", "m-1"),
            ("source", "/dev/7"),
            ("type", "t.reading"),
            ("room", "kitchen"),
        ]);
        let msg = Message {
            topic: "sensors/kitchen/temperature",
            payload: b"21.5",
            content_type: Some("text/plain"),
            user_properties: &up,
            v5: true,
        };
        let (e, origin) = decode("iot", &msg);
        assert_eq!(origin, Origin::CloudEvent);
        assert_eq!(e.id(), "m-1");
        assert_eq!(event::attribute(&e, "room").as_deref(), Some("kitchen"));
        let (payload, ct, out) = encode_binary(&e);
        assert_eq!(payload, b"21.5");
        assert_eq!(ct.as_deref(), Some("text/plain"));
        let msg2 = Message {
            topic: "x",
            payload: &payload,
            content_type: ct.as_deref(),
            user_properties: &out,
            v5: true,
        };
        assert_eq!(decode("iot", &msg2).0, e);
    }

    #[test]
    fn plain_telemetry_is_normalized_with_the_concrete_topic() {
        let msg = Message {
            topic: "sensors/kitchen/temperature",
            payload: br#"{"celsius":21.5}"#,
            v5: false,
            ..Default::default()
        };
        let (e, origin) = decode("iot", &msg);
        assert_eq!(origin, Origin::Plain);
        assert_eq!(e.subject(), Some("sensors/kitchen/temperature"));
        assert_eq!(e.source(), "mqtt://iot/sensors/kitchen/temperature");
        assert_eq!(e.ty(), "fnbroker.mqtt.message");
        assert_eq!(e.id().len(), 36);
    }

    #[test]
    fn v311_structured_by_payload_and_invalid_ones_keep_their_bytes() {
        let good = br#"{"specversion":"1.0","id":"s-1","source":"/s","type":"t"}"#;
        let msg = Message {
            topic: "a",
            payload: good,
            v5: false,
            ..Default::default()
        };
        assert_eq!(decode("iot", &msg).1, Origin::CloudEvent);
        let bad = br#"{"specversion":"1.0","source":"/s","type":"t"}"#;
        let msg = Message {
            topic: "a",
            payload: bad,
            v5: false,
            ..Default::default()
        };
        let (e, origin) = decode("iot", &msg);
        assert!(matches!(origin, Origin::Invalid(_)));
        assert_eq!(&*event::data_bytes(&e), bad);
    }
}

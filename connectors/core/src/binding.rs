//! What the protocol bindings share: the one decoding of a received message ([`decode`], over
//! each protocol's [`Inbound`]), and helpers for the binary content mode.
//!
//! Every binding carries attributes as `<prefix><name>` headers or properties. The HTTP binding
//! (and so the HTTP ingress and the HTTP function invoker) also percent-encodes header values.

use std::borrow::Cow;

use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};

use crate::contract::Origin;
use crate::event::{self, Event, InvalidEvent};

/// The binary-mode attributes of a message: `(name, value)` pairs, names without the prefix.
pub type Attributes<'a> = Vec<(Cow<'a, str>, Cow<'a, str>)>;

/// What a protocol binding tells [`decode`] about one received message.
pub trait Inbound {
    /// The content type, when the protocol carries one.
    fn content_type(&self) -> Option<&str>;

    /// The message's bytes.
    fn payload(&self) -> &[u8];

    /// The binary-mode attributes read from the protocol's headers, or `None` when the message
    /// has none (it is not a binary-mode CloudEvent). An error when one cannot be read.
    fn attributes(&self) -> Result<Option<Attributes<'_>>, InvalidEvent>;

    /// Whether the message is a structured-mode event without a content type to say so (MQTT
    /// 3.1.1, which has no properties). Asked only when there is no content type.
    fn looks_structured(&self) -> bool {
        false
    }

    /// The message as a plain (not CloudEvents) one, normalized with the protocol's metadata;
    /// `connector` names the connector it came through.
    fn plain(&self, connector: &str) -> Event;
}

/// The one decoding of every broker binding: structured mode when the content type says so (or
/// the protocol cannot, see [`Inbound::looks_structured`]), then binary mode when there are
/// attribute headers, else a plain message. A message that claims to be a CloudEvent and is
/// not a valid one comes back as the plain message with [`Origin::Invalid`] and the reason, so
/// it is dead-lettered with its bytes rather than lost. The batch content type is defined for
/// HTTP only: on a broker it is invalid. `connector` names the connector in plain events.
pub fn decode(connector: &str, message: &impl Inbound) -> (Event, Origin) {
    let content_type = message.content_type();
    let result = if content_type.is_some_and(event::is_structured_content_type)
        || (content_type.is_none() && message.looks_structured())
    {
        Some(event::from_json_slice(message.payload()))
    } else if content_type.is_some_and(event::is_batch_content_type) {
        Some(Err(InvalidEvent(
            "the batch content mode is defined for HTTP only; send the events one by one".into(),
        )))
    } else {
        match message.attributes() {
            Ok(Some(attributes)) => Some(event::from_binary(
                attributes,
                content_type,
                message.payload().to_vec(),
            )),
            Ok(None) => None,
            Err(e) => Some(Err(e)),
        }
    };
    match result {
        Some(Ok(e)) => (e, Origin::CloudEvent),
        Some(Err(err)) => (message.plain(connector), Origin::Invalid(err.0)),
        None => (message.plain(connector), Origin::Plain),
    }
}

/// A message given by hand rather than received (`fnbroker explain`, `fnbroker test`): what a
/// connector would read of it, in terms every protocol has.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample<'a> {
    /// The topic, subject, queue or path it arrives on.
    pub topic: &'a str,
    /// Headers (Kafka, NATS, HTTP), header table entries (AMQP) or user properties (MQTT 5), in
    /// order; `content-type` is the protocol's content type wherever the protocol keeps it.
    pub headers: &'a [(String, String)],
    /// The message key (Kafka).
    pub key: Option<&'a str>,
    /// The payload.
    pub data: &'a [u8],
}

impl<'a> Sample<'a> {
    /// The value of the header `name` (ASCII case-insensitively).
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The headers but the content type, which protocols keep apart.
    pub fn other_headers(&self) -> impl Iterator<Item = (&'a str, &'a str)> {
        self.headers
            .iter()
            .filter(|(k, _)| !k.eq_ignore_ascii_case("content-type"))
            .map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// Where to republish an event so that it arrives again through a source on `from_topic`
/// (`fnbroker redrive`): the topic itself, or, where it has `wildcards`, the event's `subject`
/// when the source `takes` it (a plain message's subject is the concrete topic it came on).
pub fn concrete_topic(
    from_topic: Option<&str>,
    subject: Option<&str>,
    wildcards: &[char],
    takes: impl Fn(&str, &str) -> bool,
) -> Result<(String, crate::SourceKeys), crate::registry::RouteError> {
    let topic = from_topic.ok_or("the source has no topic")?;
    if !topic.contains(wildcards) {
        return Ok((topic.to_string(), crate::SourceKeys::new()));
    }
    match subject {
        Some(subject) if takes(topic, subject) => {
            Ok((subject.to_string(), crate::SourceKeys::new()))
        }
        _ => Err(
            format!("`{topic}` has wildcards and the event's subject is no topic it takes").into(),
        ),
    }
}

/// What the HTTP binding percent-encodes in a header value: controls, space, `"`, `%`, and every
/// byte outside printable ASCII.
const HTTP_VALUE: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b'%');

/// Percent-encodes an attribute value for an HTTP header, as the HTTP binding requires.
pub fn http_encode_value(value: &str) -> Cow<'_, str> {
    utf8_percent_encode(value, HTTP_VALUE).into()
}

/// Decodes a percent-encoded HTTP header value. Invalid UTF-8 after decoding is an error.
pub fn http_decode_value(value: &str) -> Result<Cow<'_, str>, std::str::Utf8Error> {
    percent_decode_str(value).decode_utf8()
}

/// If `header` starts with `prefix` (ASCII case-insensitively), the attribute name after it,
/// lowercased.
pub fn strip_prefix_ci<'a>(header: &'a str, prefix: &str) -> Option<Cow<'a, str>> {
    let head = header.get(..prefix.len())?;
    if !head.eq_ignore_ascii_case(prefix) {
        return None;
    }
    let name = &header[prefix.len()..];
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Some(Cow::Owned(name.to_ascii_lowercase()))
    } else {
        Some(Cow::Borrowed(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_encoding_round_trips() {
        let v = "Euro € \"quoted\" 100%";
        let enc = http_encode_value(v);
        assert_eq!(enc, "Euro%20%E2%82%AC%20%22quoted%22%20100%25");
        assert_eq!(http_decode_value(&enc).expect("utf8"), v);
    }

    /// A message as a test binding sees it.
    struct Fake {
        content_type: Option<&'static str>,
        attributes: Option<Vec<(&'static str, &'static str)>>,
        payload: &'static [u8],
        structured_look: bool,
    }

    impl Inbound for Fake {
        fn content_type(&self) -> Option<&str> {
            self.content_type
        }
        fn payload(&self) -> &[u8] {
            self.payload
        }
        fn attributes(&self) -> Result<Option<Attributes<'_>>, InvalidEvent> {
            Ok(self.attributes.as_ref().map(|a| {
                a.iter()
                    .map(|(k, v)| (Cow::Borrowed(*k), Cow::Borrowed(*v)))
                    .collect()
            }))
        }
        fn looks_structured(&self) -> bool {
            self.structured_look
        }
        fn plain(&self, _connector: &str) -> Event {
            event::normalize(
                event::PlainMessage {
                    kind: "fake",
                    connector: "f",
                    topic: "t",
                    ..Default::default()
                },
                self.payload.to_vec(),
            )
        }
    }

    const EVENT: &[u8] = br#"{"specversion":"1.0","id":"1","source":"/s","type":"t"}"#;

    #[test]
    fn decode_tries_structured_then_binary_then_plain() {
        use crate::event::AttributesReader;
        let msg = |content_type, attributes, payload, structured_look| Fake {
            content_type,
            attributes,
            payload,
            structured_look,
        };
        let (e, o) = decode(
            "c",
            &msg(Some("application/cloudevents+json"), None, EVENT, false),
        );
        assert_eq!((e.id(), o), ("1", Origin::CloudEvent));
        let (e, o) = decode("c", &msg(None, None, EVENT, true));
        assert_eq!((e.id(), o), ("1", Origin::CloudEvent));
        let binary = Some(vec![
            ("specversion", "1.0"),
            ("id", "b"),
            ("source", "/s"),
            ("type", "t"),
        ]);
        let (e, o) = decode("c", &msg(Some("text/plain"), binary, b"hi", false));
        assert_eq!((e.id(), o), ("b", Origin::CloudEvent));
        let (e, o) = decode("c", &msg(None, None, b"hi", false));
        assert_eq!((e.ty(), o), ("fnbroker.fake.message", Origin::Plain));
        // Claims to be a CloudEvent and is not: the plain message, with the reason.
        let (_, o) = decode(
            "c",
            &msg(Some("application/cloudevents+json"), None, b"{}", false),
        );
        assert!(matches!(o, Origin::Invalid(_)), "{o:?}");
        let (_, o) = decode(
            "c",
            &msg(
                Some("application/cloudevents-batch+json"),
                None,
                b"[]",
                false,
            ),
        );
        assert!(
            matches!(&o, Origin::Invalid(r) if r.contains("HTTP only")),
            "{o:?}"
        );
    }

    #[test]
    fn prefixes_are_case_insensitive() {
        assert_eq!(strip_prefix_ci("CE-Type", "ce-").as_deref(), Some("type"));
        assert_eq!(strip_prefix_ci("content-type", "ce-"), None);
    }
}

/// The HTTP protocol binding over [`http::HeaderMap`](::http::HeaderMap): shared by the HTTP ingress (reading
/// requests) and the HTTP function invoker (writing requests, reading replies).
pub mod http {
    use std::borrow::Cow;

    use http::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};

    use super::{http_decode_value, http_encode_value, strip_prefix_ci};
    use crate::event::{self, Event, InvalidEvent};

    /// The content mode of an HTTP message.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Mode {
        /// `ce-` headers and the data as the body.
        Binary,
        /// `application/cloudevents+json`.
        Structured,
        /// `application/cloudevents-batch+json`.
        Batch,
        /// No CloudEvent at all.
        Plain,
    }

    /// The content type header as text, if present and readable.
    pub fn content_type(headers: &HeaderMap) -> Option<&str> {
        headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok())
    }

    /// Tells the content mode of a message from its headers.
    pub fn mode(headers: &HeaderMap) -> Mode {
        match content_type(headers) {
            Some(ct) if event::is_structured_content_type(ct) => return Mode::Structured,
            Some(ct) if event::is_batch_content_type(ct) => return Mode::Batch,
            _ => {}
        }
        if headers.contains_key("ce-specversion") {
            Mode::Binary
        } else {
            Mode::Plain
        }
    }

    /// Reads a binary-mode message: attributes from `ce-` headers (percent-decoded), the content
    /// type as `datacontenttype`, the body as data.
    pub fn decode_binary(headers: &HeaderMap, body: Vec<u8>) -> Result<Event, InvalidEvent> {
        let mut attributes = Vec::with_capacity(8);
        for (name, value) in headers {
            let Some(attr) = strip_prefix_ci(name.as_str(), "ce-") else {
                continue;
            };
            let raw = raw_header_value(value.as_bytes());
            let decoded = http_decode_value(&raw).map_err(|_| {
                InvalidEvent(format!(
                    "header `{name}` is not UTF-8 after percent-decoding"
                ))
            })?;
            attributes.push((attr, Cow::Owned(decoded.into_owned())));
        }
        event::from_binary(attributes, content_type(headers), body)
    }

    /// A header value as text. The binding says to percent-encode, but the Python CloudEvents
    /// SDK 1.x puts attribute values in headers as they are, and its HTTP clients write them
    /// as UTF-8 (aiohttp) or as ISO-8859-1 (requests, through `http.client`): UTF-8 is taken
    /// when the bytes are valid UTF-8, else each byte is the ISO-8859-1 character it was in
    /// HTTP/1.1's first definition of header text. C1 controls that gives are refused later
    /// with every other control character.
    fn raw_header_value(bytes: &[u8]) -> Cow<'_, str> {
        match std::str::from_utf8(bytes) {
            Ok(text) => Cow::Borrowed(text),
            Err(_) => Cow::Owned(bytes.iter().map(|&b| char::from(b)).collect()),
        }
    }

    /// The `ce-` header of an attribute: the context attributes' names are made once, an
    /// extension's per event.
    fn ce_header(name: &str) -> Result<HeaderName, http::header::InvalidHeaderName> {
        const KNOWN: [(&str, HeaderName); 7] = [
            ("specversion", HeaderName::from_static("ce-specversion")),
            ("id", HeaderName::from_static("ce-id")),
            ("source", HeaderName::from_static("ce-source")),
            ("type", HeaderName::from_static("ce-type")),
            ("subject", HeaderName::from_static("ce-subject")),
            ("dataschema", HeaderName::from_static("ce-dataschema")),
            ("time", HeaderName::from_static("ce-time")),
        ];
        match KNOWN.iter().find(|(known, _)| *known == name) {
            Some((_, header)) => Ok(header.clone()),
            None => HeaderName::try_from(format!("ce-{name}")),
        }
    }

    /// Writes the attributes of `event` as `ce-` headers and its `datacontenttype` as the
    /// content type: the binary content mode. The body is [`event::data_bytes`].
    pub fn encode_binary(event: &Event, headers: &mut HeaderMap) {
        for (name, value) in event::binary_attributes(event) {
            let header = ce_header(name);
            let value = HeaderValue::try_from(http_encode_value(&value).as_ref());
            if let (Ok(h), Ok(v)) = (header, value) {
                headers.insert(h, v);
            }
        }
        if let Some(v) = event::AttributesReader::datacontenttype(event)
            .and_then(|ct| HeaderValue::try_from(ct).ok())
        {
            headers.insert(CONTENT_TYPE, v);
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn binary_round_trip_with_percent_encoding() {
            let e = event::normalize(
                event::PlainMessage {
                    kind: "http",
                    connector: "web",
                    topic: "/a b",
                    id: Some("ünïcode".into()),
                    content_type: Some("text/plain"),
                    ..Default::default()
                },
                b"hello".to_vec(),
            );
            let mut h = HeaderMap::new();
            encode_binary(&e, &mut h);
            assert_eq!(h["ce-id"], "%C3%BCn%C3%AFcode");
            assert_eq!(mode(&h), Mode::Binary);
            let back = decode_binary(&h, b"hello".to_vec()).expect("valid");
            assert_eq!(back, e);
        }

        #[test]
        fn raw_utf8_and_latin1_header_values_are_taken() {
            let mut h = HeaderMap::new();
            h.insert("ce-specversion", HeaderValue::from_static("1.0"));
            h.insert("ce-id", HeaderValue::from_static("1"));
            h.insert("ce-source", HeaderValue::from_static("/s"));
            h.insert("ce-type", HeaderValue::from_static("t"));
            let raw = HeaderValue::from_bytes("Grüße 100%25".as_bytes()).expect("obs-text");
            h.insert("ce-subject", raw);
            let e = decode_binary(&h, Vec::new()).expect("raw UTF-8 is taken");
            assert_eq!(event::AttributesReader::subject(&e), Some("Grüße 100%"));
            // What is sent stays percent-encoded.
            let mut out = HeaderMap::new();
            encode_binary(&e, &mut out);
            assert_eq!(out["ce-subject"], "Gr%C3%BC%C3%9Fe%20100%25");
            // What Python's `requests` sends for "Grüße": ISO-8859-1.
            h.insert(
                "ce-subject",
                HeaderValue::from_bytes(b"Gr\xfc\xdfe").expect("obs-text"),
            );
            let e = decode_binary(&h, Vec::new()).expect("ISO-8859-1 is taken");
            assert_eq!(event::AttributesReader::subject(&e), Some("Grüße"));
        }
    }
}

//! Helpers for the binary content mode of the protocol bindings.
//!
//! Every binding carries attributes as `<prefix><name>` headers or properties. The HTTP binding
//! (and so the HTTP ingress and the HTTP function invoker) also percent-encodes header values.

use std::borrow::Cow;

use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};

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

    #[test]
    fn prefixes_are_case_insensitive() {
        assert_eq!(strip_prefix_ci("CE-Type", "ce-").as_deref(), Some("type"));
        assert_eq!(strip_prefix_ci("content-type", "ce-"), None);
    }
}

/// The HTTP protocol binding over [`http::HeaderMap`]: shared by the HTTP ingress (reading
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
            let raw = value
                .to_str()
                .map_err(|_| InvalidEvent(format!("header `{name}` is not visible ASCII")))?;
            let decoded = http_decode_value(raw).map_err(|_| {
                InvalidEvent(format!(
                    "header `{name}` is not UTF-8 after percent-decoding"
                ))
            })?;
            attributes.push((attr, Cow::Owned(decoded.into_owned())));
        }
        event::from_binary(attributes, content_type(headers), body)
    }

    /// Writes the attributes of `event` as `ce-` headers and its `datacontenttype` as the
    /// content type: the binary content mode. The body is [`event::data_bytes`].
    pub fn encode_binary(event: &Event, headers: &mut HeaderMap) {
        for (name, value) in event::binary_attributes(event) {
            let header = HeaderName::try_from(format!("ce-{name}"));
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
    }
}

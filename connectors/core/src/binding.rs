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

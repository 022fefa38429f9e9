//! The CloudEvents 1.0 model and its JSON event format.
//!
//! The [`Event`] type is the one of the CloudEvents SDK; this module adds what the SDK leaves out:
//! strict validation (every case of the CloudEvents conformance data), the JSON format both ways
//! with `data` versus `data_base64`, the batch format, string access to any attribute by name (for
//! filters and bindings), and the normalization of messages that are no CloudEvent.

use std::borrow::Cow;

use base64::Engine as _;
use base64::prelude::BASE64_STANDARD;
use chrono::{DateTime, FixedOffset, Utc};
use cloudevents::event::SpecVersion;
use cloudevents::{EventBuilder, EventBuilderV10};
use serde_json::{Map, Value};

pub use cloudevents::event::ExtensionValue;
pub use cloudevents::{AttributesReader, AttributesWriter, Data, Event};

/// The content type of a structured-mode CloudEvent in the JSON format.
pub const STRUCTURED_JSON: &str = "application/cloudevents+json";
/// The content type of a batch of CloudEvents in the JSON format.
pub const BATCH_JSON: &str = "application/cloudevents-batch+json";

/// Why a message is not a valid CloudEvent. The text is one lowercase line that names the attribute.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidEvent(pub String);

impl InvalidEvent {
    fn new(msg: impl Into<String>) -> Self {
        Self(msg.into())
    }
}

/// The context attributes that the CloudEvents 1.0 specification defines (besides `data`).
const CORE_ATTRIBUTES: [&str; 8] = [
    "specversion",
    "id",
    "source",
    "type",
    "datacontenttype",
    "dataschema",
    "subject",
    "time",
];

/// Whether `name` is a legal attribute name: lowercase ASCII letters and digits, not empty.
pub fn is_valid_attribute_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// Whether `ct` is an RFC 2046 media type: `type/subtype` made of tokens, optional parameters.
pub fn is_valid_media_type(ct: &str) -> bool {
    // Parameters are not parsed, but nothing in a header may carry a control character (a TAB
    // or a newline would reach every log line and function the type is written to).
    if ct.chars().any(char::is_control) {
        return false;
    }
    let essence = ct.split(';').next().unwrap_or("").trim();
    let Some((ty, sub)) = essence.split_once('/') else {
        return false;
    };
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    token(ty) && token(sub)
}

/// Whether a content type names JSON (`application/json`, `text/json`, `*+json`).
pub fn is_json_content_type(ct: &str) -> bool {
    let essence = ct.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
        || essence.eq_ignore_ascii_case("text/json")
        || essence
            .get(essence.len().saturating_sub(5)..)
            .is_some_and(|s| s.eq_ignore_ascii_case("+json"))
}

/// Whether a content type is the structured JSON format (`application/cloudevents+json`).
pub fn is_structured_content_type(ct: &str) -> bool {
    media_essence_is(ct, STRUCTURED_JSON)
}

/// Whether a content type is the batch JSON format (`application/cloudevents-batch+json`).
pub fn is_batch_content_type(ct: &str) -> bool {
    media_essence_is(ct, BATCH_JSON)
}

fn media_essence_is(ct: &str, expected: &str) -> bool {
    ct.split(';')
        .next()
        .is_some_and(|e| e.trim().eq_ignore_ascii_case(expected))
}

/// Parses an RFC 3339 timestamp strictly (seconds required, offset `Z` or `±hh:mm` within range).
pub fn parse_time(s: &str) -> Result<DateTime<Utc>, InvalidEvent> {
    let bad = || InvalidEvent::new(format!("`time` is not an RFC 3339 timestamp: `{s}`"));
    let parsed: DateTime<FixedOffset> = DateTime::parse_from_rfc3339(s).map_err(|_| bad())?;
    // chrono accepts offsets up to ±23:59:59 already; RFC 3339 wants hours 00-23, minutes 00-59.
    if parsed.offset().local_minus_utc().abs() >= 24 * 3600 {
        return Err(bad());
    }
    Ok(parsed.with_timezone(&Utc))
}

/// Parses one event of the JSON format from bytes, validating it fully.
///
/// The attributes are parsed; `data` is kept as the JSON text it came in (checked, not built
/// into a tree: a tree of a large array costs 70 to 110 times its text), as bytes with a JSON
/// content type (`application/json` when the event named none, as the format implies). What
/// reads it parses it then: a `cel` filter on `event.data`, a structured-mode message out.
pub fn from_json_slice(bytes: &[u8]) -> Result<Event, InvalidEvent> {
    let members: Members<'_> = serde_json::from_slice(bytes)
        .map_err(|e| InvalidEvent::new(format!("not a JSON CloudEvent: {e}")))?;
    from_members(members)
}

/// The members of one JSON object, values unparsed.
struct Members<'a>(Vec<(String, &'a serde_json::value::RawValue)>);

impl<'de> serde::Deserialize<'de> for Members<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a CloudEvent, a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Members<'de>, A::Error> {
                let mut members = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    members.push(entry);
                }
                Ok(Members(members))
            }
        }
        d.deserialize_map(V)
    }
}

/// An event of its members: the attributes parsed, `data` kept as its JSON text.
fn from_members(members: Members<'_>) -> Result<Event, InvalidEvent> {
    let mut map = Map::new();
    let mut data = None;
    for (name, raw) in members.0 {
        if name == "data" {
            data = Some(raw);
        } else {
            let value: Value = serde_json::from_str(raw.get())
                .map_err(|e| InvalidEvent::new(format!("not a JSON CloudEvent: {e}")))?;
            map.insert(name, value);
        }
    }
    from_map(
        map,
        data.filter(|raw| raw.get() != "null").map(RawData::Text),
    )
}

/// The `data` member of an event being read.
enum RawData<'a> {
    /// Parsed already.
    Value(Value),
    /// As JSON text.
    Text(&'a serde_json::value::RawValue),
}

/// Parses a batch of the JSON format (an array of events); any invalid member rejects the batch.
pub fn batch_from_json_slice(bytes: &[u8]) -> Result<Vec<Event>, InvalidEvent> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| InvalidEvent::new(format!("not a JSON CloudEvents batch: {e}")))?;
    batch_from_json_value(value)
}

/// Why a batch was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// It holds more events than allowed (the limit is given).
    #[error("the batch holds more than {0} events")]
    TooMany(usize),
    /// It is not a valid batch.
    #[error(transparent)]
    Invalid(#[from] InvalidEvent),
}

/// Parses a batch of the JSON format holding at most `max` events, one member at a time: each is
/// validated and converted as it is read, so that memory holds the events, never the whole batch
/// as a JSON tree, and a batch over the limit is refused at its `max + 1`th member.
pub fn batch_from_json_slice_max(bytes: &[u8], max: usize) -> Result<Vec<Event>, BatchError> {
    use serde::de::{DeserializeSeed, Deserializer, Error as _, SeqAccess, Visitor};

    struct Batch<'s> {
        max: usize,
        refused: &'s mut Option<BatchError>,
    }
    impl<'de> DeserializeSeed<'de> for Batch<'_> {
        type Value = Vec<Event>;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<Event>, D::Error> {
            d.deserialize_any(self)
        }
    }
    impl<'de> Visitor<'de> for Batch<'_> {
        type Value = Vec<Event>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON array of CloudEvents")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Event>, A::Error> {
            let mut events = Vec::new();
            while let Some(item) = seq.next_element::<&'de serde_json::value::RawValue>()? {
                if events.len() == self.max {
                    *self.refused = Some(BatchError::TooMany(self.max));
                    return Err(A::Error::custom("too many events"));
                }
                let event = serde_json::from_str::<Members<'_>>(item.get())
                    .map_err(|_| InvalidEvent::new("a CloudEvent must be a JSON object"))
                    .and_then(from_members);
                match event {
                    Ok(event) => events.push(event),
                    Err(e) => {
                        let i = events.len();
                        *self.refused =
                            Some(InvalidEvent::new(format!("batch event {i}: {e}")).into());
                        return Err(A::Error::custom("invalid event"));
                    }
                }
            }
            Ok(events)
        }
    }

    let mut refused = None;
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed = Batch {
        max,
        refused: &mut refused,
    }
    .deserialize(&mut de)
    .and_then(|events| de.end().map(|()| events));
    match (parsed, refused) {
        (_, Some(refused)) => Err(refused),
        (Ok(events), None) => Ok(events),
        (Err(e), None) if e.is_data() => {
            Err(InvalidEvent::new("a CloudEvents batch must be a JSON array").into())
        }
        (Err(e), None) => {
            Err(InvalidEvent::new(format!("not a JSON CloudEvents batch: {e}")).into())
        }
    }
}

/// Validates and converts a JSON array into a batch of events.
pub fn batch_from_json_value(value: Value) -> Result<Vec<Event>, InvalidEvent> {
    let Value::Array(items) = value else {
        return Err(InvalidEvent::new(
            "a CloudEvents batch must be a JSON array",
        ));
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            from_json_value(item).map_err(|e| InvalidEvent::new(format!("batch event {i}: {e}")))
        })
        .collect()
}

/// Validates and converts one JSON object of the JSON event format into an [`Event`].
pub fn from_json_value(value: Value) -> Result<Event, InvalidEvent> {
    let Value::Object(mut map) = value else {
        return Err(InvalidEvent::new("a CloudEvent must be a JSON object"));
    };
    let data = map
        .remove("data")
        .filter(|v| !v.is_null())
        .map(RawData::Value);
    from_map(map, data)
}

/// An event of its attributes and its data.
fn from_map(mut map: Map<String, Value>, data: Option<RawData<'_>>) -> Result<Event, InvalidEvent> {
    // Optional attributes set to null count as absent.
    map.retain(|_, v| !v.is_null());

    match map.remove("specversion") {
        Some(Value::String(v)) if v == "1.0" => {}
        Some(Value::String(v)) => {
            return Err(InvalidEvent::new(format!(
                "unsupported `specversion` `{v}` (only 1.0)"
            )));
        }
        Some(_) => return Err(InvalidEvent::new("`specversion` must be a string")),
        None => {
            return Err(InvalidEvent::new(
                "missing required attribute `specversion`",
            ));
        }
    }
    let id = take_required_string(&mut map, "id")?;
    let source = take_required_string(&mut map, "source")?;
    let ty = take_required_string(&mut map, "type")?;

    let mut builder = EventBuilderV10::new().id(id).source(source).ty(ty);
    let datacontenttype = take_optional_string(&mut map, "datacontenttype")?;
    if let Some(ct) = datacontenttype
        .as_ref()
        .filter(|ct| !is_valid_media_type(ct))
    {
        return Err(InvalidEvent::new(format!(
            "`datacontenttype` is not an RFC 2046 media type: `{ct}`"
        )));
    }
    let dataschema = take_optional_string(&mut map, "dataschema")?
        .map(|s| {
            url::Url::parse(&s).map_err(|_| {
                InvalidEvent::new(format!("`dataschema` is not an absolute URI: `{s}`"))
            })
        })
        .transpose()?;
    if let Some(subject) = take_optional_string(&mut map, "subject")? {
        builder = builder.subject(subject);
    }
    if let Some(time) = take_optional_string(&mut map, "time")? {
        builder = builder.time(parse_time(&time)?);
    }

    let data_base64 = map.remove("data_base64");
    let mut datacontenttype = datacontenttype;
    let data = match (data, data_base64) {
        (Some(_), Some(_)) => {
            return Err(InvalidEvent::new(
                "an event must not carry both `data` and `data_base64`",
            ));
        }
        (None, Some(Value::String(b64))) => Some(Data::Binary(
            BASE64_STANDARD
                .decode(b64.as_bytes())
                .map_err(|e| InvalidEvent::new(format!("`data_base64` is not base64: {e}")))?,
        )),
        (None, Some(_)) => return Err(InvalidEvent::new("`data_base64` must be a string")),
        (Some(RawData::Value(Value::String(s))), None)
            if !datacontenttype.as_deref().is_some_and(is_json_content_type) =>
        {
            Some(Data::String(s))
        }
        (Some(RawData::Value(v)), None) => Some(Data::Json(v)),
        (Some(RawData::Text(raw)), None)
            if raw.get().starts_with('"')
                && !datacontenttype.as_deref().is_some_and(is_json_content_type) =>
        {
            let s: String = serde_json::from_str(raw.get())
                .map_err(|e| InvalidEvent::new(format!("`data`: {e}")))?;
            Some(Data::String(s))
        }
        (Some(RawData::Text(raw)), None) => {
            // JSON data without a content type is `application/json`, as the format says.
            datacontenttype.get_or_insert_with(|| "application/json".to_string());
            Some(Data::Binary(raw.get().as_bytes().to_vec()))
        }
        (None, None) => None,
    };

    let mut event = builder
        .build()
        .map_err(|e| InvalidEvent::new(e.to_string()))?;
    if let Some(data) = data {
        event.set_data_unchecked(data);
    }
    event.set_datacontenttype(datacontenttype);
    event.set_dataschema(dataschema);

    for (name, value) in map {
        if !is_valid_attribute_name(&name) {
            return Err(InvalidEvent::new(format!(
                "invalid extension attribute name `{name}` (lowercase letters and digits only)"
            )));
        }
        let value = match value {
            Value::String(s) => {
                check_text(&name, &s)?;
                ExtensionValue::String(s)
            }
            Value::Bool(b) => ExtensionValue::Boolean(b),
            Value::Number(n) => match n.as_i64() {
                Some(i) if i32::try_from(i).is_ok() => ExtensionValue::Integer(i),
                _ => {
                    return Err(InvalidEvent::new(format!(
                        "extension `{name}` is not a 32-bit integer: {n}"
                    )));
                }
            },
            _ => {
                return Err(InvalidEvent::new(format!(
                    "extension `{name}` must be a string, boolean or integer"
                )));
            }
        };
        event.set_extension(&name, value);
    }
    Ok(event)
}

/// CloudEvents strings must not contain control characters (U+0000-U+001F, U+007F-U+009F).
fn check_text(name: &str, value: &str) -> Result<(), InvalidEvent> {
    match value
        .chars()
        .find(|c| matches!(*c, '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}'))
    {
        Some(c) => Err(InvalidEvent::new(format!(
            "attribute `{name}` contains the control character U+{:04X}, which CloudEvents forbids",
            u32::from(c)
        ))),
        None => Ok(()),
    }
}

fn take_required_string(map: &mut Map<String, Value>, name: &str) -> Result<String, InvalidEvent> {
    take_optional_string(map, name)?
        .ok_or_else(|| InvalidEvent::new(format!("missing required attribute `{name}`")))
}

fn take_optional_string(
    map: &mut Map<String, Value>,
    name: &str,
) -> Result<Option<String>, InvalidEvent> {
    match map.remove(name) {
        None => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Err(InvalidEvent::new(format!(
            "attribute `{name}` must not be empty"
        ))),
        Some(Value::String(s)) => check_text(name, &s).map(|()| Some(s)),
        Some(_) => Err(InvalidEvent::new(format!(
            "attribute `{name}` must be a string"
        ))),
    }
}

/// Writes an event in the JSON format (`application/cloudevents+json`).
///
/// Data held as bytes is written as the format's section 3.1 asks: as a JSON value under `data`
/// when the content type is JSON and the bytes parse, as a string when it is `text/*` and the
/// bytes are UTF-8, else base64 under `data_base64`.
pub fn to_json_vec(event: &Event) -> Vec<u8> {
    if let (Some(Data::Binary(bytes)), Some(ct)) = (event.data(), event.datacontenttype())
        && is_json_content_type(ct)
        && serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok()
    {
        // The JSON text goes out as it is, never built into a tree: the attributes are written,
        // and `"data":` with the bytes appended before the closing brace.
        let mut attributes = event.clone();
        // Taking the data takes its content type and schema with it: they are put back.
        let (content_type, schema, _) = attributes.take_data();
        attributes.set_datacontenttype(content_type);
        attributes.set_dataschema(schema);
        let mut out = serde_json::to_vec(&attributes).unwrap_or_default();
        if out.last() == Some(&b'}') {
            out.pop();
            out.extend_from_slice(b",\"data\":");
            out.extend_from_slice(bytes);
            out.push(b'}');
            return out;
        }
    }
    let readable = match (event.data(), event.datacontenttype()) {
        (Some(Data::Binary(bytes)), Some(ct)) if media_type_is_text(ct) => {
            std::str::from_utf8(bytes)
                .ok()
                .map(|s| Data::String(s.to_string()))
        }
        _ => None,
    };
    // Serializing an `Event` into a Vec cannot fail: every key is a string and every value is
    // representable in JSON.
    match readable {
        Some(data) => {
            let mut event = event.clone();
            event.set_data_unchecked(data);
            serde_json::to_vec(&event).unwrap_or_default()
        }
        None => serde_json::to_vec(event).unwrap_or_default(),
    }
}

/// Whether a content type is `text/*`.
fn media_type_is_text(ct: &str) -> bool {
    ct.trim_start()
        .get(..5)
        .is_some_and(|t| t.eq_ignore_ascii_case("text/"))
}

/// Writes a batch in the JSON batch format (`application/cloudevents-batch+json`): each event
/// as [`to_json_vec`] writes it (JSON data as JSON, text as text).
pub fn batch_to_json_vec(events: &[Event]) -> Vec<u8> {
    let mut out = Vec::with_capacity(events.iter().map(|e| data_len(e) + 256).sum::<usize>() + 2);
    out.push(b'[');
    for (i, event) in events.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&to_json_vec(event));
    }
    out.push(b']');
    out
}

/// The data of an event as the bytes a binary-mode message carries (JSON data serialized).
pub fn data_bytes(event: &Event) -> Cow<'_, [u8]> {
    match event.data() {
        None => Cow::Borrowed(&[]),
        Some(Data::Binary(b)) => Cow::Borrowed(b),
        Some(Data::String(s)) => Cow::Borrowed(s.as_bytes()),
        Some(Data::Json(v)) => Cow::Owned(serde_json::to_vec(v).unwrap_or_default()),
    }
}

/// The length in bytes of [`data_bytes`], without building them (JSON data is serialized into
/// a counter, not a buffer).
pub fn data_len(event: &Event) -> usize {
    /// Counts what is written to it.
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    match event.data() {
        None => 0,
        Some(Data::Binary(b)) => b.len(),
        Some(Data::String(s)) => s.len(),
        Some(Data::Json(v)) => {
            let mut count = Count(0);
            match serde_json::to_writer(&mut count, v) {
                Ok(()) => count.0,
                Err(_) => 0,
            }
        }
    }
}

/// The value of any context attribute or extension as text, as filters and bindings see it.
/// `None` when the event does not carry it.
pub fn attribute<'a>(event: &'a Event, name: &str) -> Option<Cow<'a, str>> {
    match name {
        "specversion" => Some(Cow::Borrowed("1.0")),
        "id" => Some(Cow::Borrowed(event.id())),
        "source" => Some(Cow::Borrowed(event.source().as_str())),
        "type" => Some(Cow::Borrowed(event.ty())),
        "subject" => event.subject().map(Cow::Borrowed),
        "datacontenttype" => event.datacontenttype().map(Cow::Borrowed),
        "dataschema" => event.dataschema().map(|u| Cow::Borrowed(u.as_str())),
        "time" => event.time().map(|t| Cow::Owned(format_time(t))),
        _ => event.extension(name).map(|v| match v {
            ExtensionValue::String(s) => Cow::Borrowed(s.as_str()),
            ExtensionValue::Boolean(b) => Cow::Borrowed(if *b { "true" } else { "false" }),
            ExtensionValue::Integer(i) => Cow::Owned(i.to_string()),
        }),
    }
}

/// Every attribute of the event except `data`, as `(name, text)` pairs: what a binary-mode
/// message carries in its headers. `datacontenttype` is left out: bindings carry it as the
/// protocol's own content type.
pub fn binary_attributes(event: &Event) -> impl Iterator<Item = (&str, Cow<'_, str>)> {
    [
        "specversion",
        "id",
        "source",
        "type",
        "subject",
        "dataschema",
        "time",
    ]
    .into_iter()
    .filter_map(move |n| attribute(event, n).map(|v| (n, v)))
    .chain(
        event
            .iter_extensions()
            .map(|(n, _)| n)
            .filter_map(move |n| attribute(event, n).map(|v| (n, v))),
    )
}

/// Formats a timestamp as RFC 3339 in UTC with a `Z`, the form every binding writes.
pub fn format_time(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

/// Builds an event from the attributes of a binary-mode message (names already stripped of the
/// binding's prefix and lowercased, values already decoded), its content type and its body.
///
/// Every attribute arrives as text; extensions stay strings. The event is validated as the JSON
/// format's would be.
pub fn from_binary<'a>(
    attributes: impl IntoIterator<Item = (Cow<'a, str>, Cow<'a, str>)>,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> Result<Event, InvalidEvent> {
    let mut specversion = None;
    let mut id = None;
    let mut source = None;
    let mut ty = None;
    let mut subject = None;
    let mut dataschema = None;
    let mut time = None;
    let mut extensions: Vec<(String, String)> = Vec::new();
    for (name, value) in attributes {
        if value.is_empty() {
            return Err(InvalidEvent::new(format!(
                "attribute `{name}` must not be empty"
            )));
        }
        check_text(&name, &value)?;
        let slot = match name.as_ref() {
            "specversion" => &mut specversion,
            "id" => &mut id,
            "source" => &mut source,
            "type" => &mut ty,
            "subject" => &mut subject,
            "dataschema" => &mut dataschema,
            "time" => &mut time,
            "datacontenttype" | "data" | "data_base64" => {
                return Err(InvalidEvent::new(format!(
                    "attribute `{name}` cannot be carried as a binary-mode header"
                )));
            }
            other => {
                if !is_valid_attribute_name(other) {
                    return Err(InvalidEvent::new(format!(
                        "invalid extension attribute name `{other}` (lowercase letters and digits only)"
                    )));
                }
                if extensions.iter().any(|(n, _)| n == other) {
                    return Err(InvalidEvent::new(format!(
                        "attribute `{other}` is given twice"
                    )));
                }
                extensions.push((other.to_owned(), value.into_owned()));
                continue;
            }
        };
        // Two values of one attribute: which one a reader believes would depend on the reader.
        if slot.is_some() {
            return Err(InvalidEvent::new(format!(
                "attribute `{name}` is given twice"
            )));
        }
        *slot = Some(value.into_owned());
    }
    match specversion.as_deref() {
        Some("1.0") => {}
        Some(v) => {
            return Err(InvalidEvent::new(format!(
                "unsupported `specversion` `{v}` (only 1.0)"
            )));
        }
        None => {
            return Err(InvalidEvent::new(
                "missing required attribute `specversion`",
            ));
        }
    }
    let missing = |n: &str| InvalidEvent::new(format!("missing required attribute `{n}`"));
    let mut builder = EventBuilderV10::new()
        .id(id.ok_or_else(|| missing("id"))?)
        .source(source.ok_or_else(|| missing("source"))?)
        .ty(ty.ok_or_else(|| missing("type"))?);
    if let Some(subject) = subject {
        builder = builder.subject(subject);
    }
    if let Some(t) = time {
        builder = builder.time(parse_time(&t)?);
    }
    let mut event = builder
        .build()
        .map_err(|e| InvalidEvent::new(e.to_string()))?;
    if let Some(s) = dataschema {
        let url = url::Url::parse(&s).map_err(|_| {
            InvalidEvent::new(format!("`dataschema` is not an absolute URI: `{s}`"))
        })?;
        event.set_dataschema(Some(url));
    }
    if let Some(ct) = content_type {
        if !is_valid_media_type(ct) {
            return Err(InvalidEvent::new(format!(
                "content type is not an RFC 2046 media type: `{ct}`"
            )));
        }
        event.set_datacontenttype(Some(ct));
    }
    for (name, value) in extensions {
        event.set_extension(&name, value);
    }
    if !body.is_empty() || content_type.is_some() {
        event.set_data_unchecked(Data::Binary(body));
    }
    Ok(event)
}

/// What a connector knows about a message that is not a CloudEvent, to normalize it.
#[derive(Debug, Default)]
pub struct PlainMessage<'a> {
    /// The connector kind: `kafka`, `nats`, `amqp`, `mqtt`, `http`.
    pub kind: &'a str,
    /// The connector's name in the configuration.
    pub connector: &'a str,
    /// The concrete topic, subject, queue or path the message came on.
    pub topic: &'a str,
    /// An id stable across redeliveries, where the protocol has one; else a UUID is made.
    pub id: Option<String>,
    /// The broker's timestamp, where there is one.
    pub time: Option<DateTime<Utc>>,
    /// The message's content type, where it has one.
    pub content_type: Option<&'a str>,
    /// The message key (Kafka), carried as the `partitionkey` extension.
    pub partition_key: Option<&'a str>,
    /// A W3C `traceparent` carried by the message, kept as the extension of that name.
    pub traceparent: Option<&'a str>,
    /// The W3C `tracestate` that goes with it.
    pub tracestate: Option<&'a str>,
}

/// Turns a message that is no CloudEvent into one, as DESIGN.md lays down: `source`
/// `<kind>://<connector>/<topic>`, `type` `fnbroker.<kind>.message` (a trigger's `event.type`
/// replaces it later), `subject` the topic, the message's bytes as data.
pub fn normalize(msg: PlainMessage<'_>, data: Vec<u8>) -> Event {
    let topic = msg.topic.trim_start_matches('/');
    let mut builder = EventBuilderV10::new()
        .id(msg.id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string()))
        .source(format!("{}://{}/{}", msg.kind, msg.connector, topic))
        .ty(format!("fnbroker.{}.message", msg.kind));
    if !msg.topic.is_empty() {
        builder = builder.subject(msg.topic);
    }
    if let Some(t) = msg.time {
        builder = builder.time(t);
    }
    // The builder only fails on a missing id, source or type, and all three are set above.
    let mut event = builder.build().unwrap_or_default();
    if let Some(ct) = msg.content_type.filter(|ct| is_valid_media_type(ct)) {
        event.set_datacontenttype(Some(ct));
    }
    if let Some(key) = msg.partition_key {
        event.set_extension("partitionkey", key);
    }
    // A malformed trace context is ignored, as W3C Trace Context tells receivers to do.
    if let Some(tp) = msg.traceparent.filter(|tp| is_valid_traceparent(tp)) {
        event.set_extension("traceparent", tp);
        if let Some(ts) = msg.tracestate.filter(|s| {
            !s.is_empty() && s.len() <= 512 && s.bytes().all(|b| (0x20..0x7f).contains(&b))
        }) {
            event.set_extension("tracestate", ts);
        }
    }
    event.set_data_unchecked(Data::Binary(data));
    event
}

/// Whether `tp` is a W3C `traceparent` this version of the format defines or a later one reads:
/// `vv-<32 hex>-<16 hex>-ff` in lowercase hex, version not `ff`, ids not all zero.
pub fn is_valid_traceparent(tp: &str) -> bool {
    let parts: Vec<&str> = tp.split('-').collect();
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let zero = |s: &str| s.bytes().all(|b| b == b'0');
    match parts.as_slice() {
        [version, trace, parent, flags, rest @ ..] => {
            hex(version, 2)
                && *version != "ff"
                && (rest.is_empty() || *version != "00")
                && hex(trace, 32)
                && !zero(trace)
                && hex(parent, 16)
                && !zero(parent)
                && hex(flags, 2)
        }
        _ => false,
    }
}

/// Whether `name` is a core context attribute of CloudEvents 1.0.
pub fn is_core_attribute(name: &str) -> bool {
    CORE_ATTRIBUTES.contains(&name)
}

/// The spec version every event here has.
pub fn spec_version() -> SpecVersion {
    SpecVersion::V10
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn structured_round_trip_keeps_json_data() {
        let e = from_json_value(json!({
            "specversion": "1.0", "id": "1", "source": "/s", "type": "t",
            "datacontenttype": "application/json", "data": {"b": 1, "a": 2}
        }))
        .expect("valid");
        assert_eq!(&*data_bytes(&e), br#"{"b":1,"a":2}"#);
        let back: Value = serde_json::from_slice(&to_json_vec(&e)).expect("json");
        assert_eq!(back["data"], json!({"b": 1, "a": 2}));
    }

    /// JSON data read from bytes is kept as its text (not a tree), and written back as JSON
    /// with every attribute: the content type (implied `application/json` when absent), the
    /// schema, the extensions; a JSON string without a JSON content type stays text.
    #[test]
    fn json_data_stays_text_from_read_to_write() {
        let text = br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","dataschema":"http://s/x","data":[1, 2,  {"a":null}],"ext":"v"}"#;
        let e = from_json_slice(text).expect("valid");
        assert_eq!(
            e.data(),
            Some(&Data::Binary(br#"[1, 2,  {"a":null}]"#.to_vec()))
        );
        assert_eq!(e.datacontenttype(), Some("application/json"));
        let back: Value = serde_json::from_slice(&to_json_vec(&e)).expect("json");
        assert_eq!(
            back,
            json!({"specversion":"1.0","id":"1","source":"/s","type":"t","dataschema":"http://s/x",
                "datacontenttype":"application/json","data":[1,2,{"a":null}],"ext":"v"})
        );
        let s = from_json_slice(
            br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":"hi \u00e9"}"#,
        )
        .expect("valid");
        assert_eq!(s.data(), Some(&Data::String("hi é".into())));
        let null = from_json_slice(
            br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":null}"#,
        )
        .expect("valid");
        assert_eq!(null.data(), None);
        let batch = batch_from_json_slice_max(
            br#"[{"specversion":"1.0","id":"1","source":"/s","type":"t","data":{"k":[1]}}]"#,
            10,
        )
        .expect("valid");
        assert_eq!(&*data_bytes(&batch[0]), br#"{"k":[1]}"#);
    }

    /// Found with the Lambda kind: a plain JSON message (bytes, `application/json`) was written
    /// in structured mode as `data_base64`, which a function reading `data` does not see.
    #[test]
    fn plain_json_and_text_messages_are_written_readable() {
        let plain = |ct: &'static str, data: &[u8]| {
            let e = normalize(
                PlainMessage {
                    kind: "nats",
                    connector: "bus",
                    topic: "t",
                    content_type: Some(ct),
                    ..PlainMessage::default()
                },
                data.to_vec(),
            );
            serde_json::from_slice::<Value>(&to_json_vec(&e)).expect("json")
        };
        assert_eq!(
            plain("application/json", br#"{"celsius":31}"#)["data"]["celsius"],
            31
        );
        assert_eq!(plain("text/plain; charset=utf-8", b"hi")["data"], "hi");
        let broken = plain("application/json", b"{not json");
        assert_eq!(broken["data_base64"], BASE64_STANDARD.encode(b"{not json"));
        assert_eq!(
            plain("application/octet-stream", b"\x01")["data_base64"],
            "AQ=="
        );
    }

    #[test]
    fn base64_data_round_trips_as_binary() {
        let e = from_json_value(json!({
            "specversion": "1.0", "id": "1", "source": "/s", "type": "t", "data_base64": "AAEC"
        }))
        .expect("valid");
        assert_eq!(&*data_bytes(&e), &[0u8, 1, 2]);
        let back: Value = serde_json::from_slice(&to_json_vec(&e)).expect("json");
        assert_eq!(back["data_base64"], "AAEC");
    }

    #[test]
    fn text_data_with_text_content_type_stays_text() {
        let e = from_json_value(json!({
            "specversion": "1.0", "id": "1", "source": "/s", "type": "t",
            "datacontenttype": "text/plain", "data": "hi"
        }))
        .expect("valid");
        assert_eq!(e.data(), Some(&Data::String("hi".into())));
    }

    #[test]
    fn control_characters_in_strings_are_rejected() {
        for (name, value) in [
            ("id", "a\u{0}b"),
            ("subject", "x\ny"),
            ("foo", "\u{7f}"),
            ("source", "/s\u{85}"),
        ] {
            let mut json = json!({"specversion": "1.0", "id": "1", "source": "/s", "type": "t"});
            json[name] = json!(value);
            let err = from_json_value(json).expect_err(name);
            assert!(
                err.0.contains(&format!("`{name}`")) && err.0.contains("control character"),
                "{err}"
            );
            let mut attrs = vec![
                ("specversion", "1.0"),
                ("id", "1"),
                ("source", "/s"),
                ("type", "t"),
            ];
            attrs.retain(|(n, _)| *n != name);
            attrs.push((name, value));
            let err = from_binary(
                attrs
                    .into_iter()
                    .map(|(a, b)| (Cow::Borrowed(a), Cow::Borrowed(b))),
                None,
                vec![],
            )
            .expect_err(name);
            assert!(err.0.contains("control character"), "{err}");
        }
        // Other characters beyond ASCII are fine.
        let ok = json!({"specversion": "1.0", "id": "ü€😀\u{a0}", "source": "/s", "type": "t"});
        assert!(from_json_value(ok).is_ok());
    }

    #[test]
    fn a_batch_is_read_a_member_at_a_time_up_to_its_limit() {
        let one = r#"{"specversion":"1.0","id":"1","source":"/s","type":"t"}"#;
        let batch = |n: usize| format!("[{}]", vec![one; n].join(","));
        assert_eq!(
            batch_from_json_slice_max(batch(3).as_bytes(), 3).map(|b| b.len()),
            Ok(3)
        );
        assert_eq!(
            batch_from_json_slice_max(batch(4).as_bytes(), 3),
            Err(BatchError::TooMany(3))
        );
        assert_eq!(batch_from_json_slice_max(b"[]", 3).map(|b| b.len()), Ok(0));
        let invalid = format!(r#"[{one},{{"specversion":"1.0"}}]"#);
        let err = batch_from_json_slice_max(invalid.as_bytes(), 3).expect_err("invalid");
        assert!(
            err.to_string()
                .starts_with("batch event 1: missing required attribute"),
            "{err}"
        );
        let err = batch_from_json_slice_max(one.as_bytes(), 3).expect_err("an object");
        assert_eq!(err.to_string(), "a CloudEvents batch must be a JSON array");
        let err = batch_from_json_slice_max(br#"[{"a":"#, 3).expect_err("cut short");
        assert!(
            err.to_string().starts_with("not a JSON CloudEvents batch"),
            "{err}"
        );
        assert!(batch_from_json_slice_max(format!("{} x", batch(1)).as_bytes(), 3).is_err());
    }

    #[test]
    fn binary_mode_requires_core_attributes() {
        let attrs = [("specversion", "1.0"), ("id", "1"), ("type", "t")]
            .map(|(a, b)| (Cow::Borrowed(a), Cow::Borrowed(b)));
        let err = from_binary(attrs, None, vec![]).expect_err("no source");
        assert!(err.0.contains("`source`"), "{err}");
    }

    #[test]
    fn normalize_builds_source_from_kind_connector_and_topic() {
        let e = normalize(
            PlainMessage {
                kind: "http",
                connector: "web",
                topic: "/orders",
                id: Some("x".into()),
                content_type: Some("application/json"),
                ..Default::default()
            },
            b"{}".to_vec(),
        );
        assert_eq!(e.source(), "http://web/orders");
        assert_eq!(e.ty(), "fnbroker.http.message");
        assert_eq!(e.subject(), Some("/orders"));
        assert_eq!(e.id(), "x");
        assert_eq!(e.datacontenttype(), Some("application/json"));
    }

    #[test]
    fn a_batch_writes_json_data_as_json_as_a_single_event_does() {
        let e = normalize(
            PlainMessage {
                kind: "nats",
                connector: "bus",
                topic: "t",
                content_type: Some("application/json"),
                ..Default::default()
            },
            br#"{"n":1}"#.to_vec(),
        );
        let batch: Value = serde_json::from_slice(&batch_to_json_vec(&[e.clone(), e]))
            .unwrap_or_else(|err| panic!("{err}"));
        assert_eq!(batch[1]["data"]["n"], 1, "{batch}");
        assert!(batch[0].get("data_base64").is_none(), "{batch}");
    }

    #[test]
    fn time_offsets_out_of_range_are_rejected() {
        assert!(parse_time("2018-04-05T18:31:00+25:00").is_err());
        assert!(parse_time("2018-04-05T18:31:00+05").is_err());
        assert!(parse_time("2018-04-05T18:31Z").is_err());
        assert!(parse_time("2018-04-05T18:31:00.000000000Z").is_ok());
    }

    #[test]
    fn media_types() {
        assert!(is_valid_media_type("application/json; charset=utf-8"));
        assert!(!is_valid_media_type("xyz"));
        assert!(!is_valid_media_type(""));
        assert!(is_json_content_type("application/cloudevents+json"));
        assert!(is_structured_content_type(
            "Application/CloudEvents+JSON; charset=utf-8"
        ));
    }
}

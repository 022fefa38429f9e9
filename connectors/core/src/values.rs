//! The value types a connector's settings are made of: durations, sizes and locations that
//! remember where they were written (so that validation can point at them, and that parse
//! leniently so that one bad value does not hide the others), a trigger's source and a
//! destination with the keys of their connector's kind.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::ops::Deref;
use std::time::Duration;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::de::{self, DeserializeOwned, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_saphyr::{Location, Spanned};

use crate::registry::Settings;

/// A value with the line and column it was written at (unknown for defaults).
#[derive(Clone)]
pub struct Loc<T> {
    value: T,
    line: u64,
    column: u64,
}

impl<T> Loc<T> {
    /// A value with no location (a default).
    pub fn new(value: T) -> Self {
        Self {
            value,
            line: 0,
            column: 0,
        }
    }

    /// The 1-based line, or 0 when unknown.
    pub fn line(&self) -> u64 {
        self.line
    }

    /// The 1-based column, or 0 when unknown.
    pub fn column(&self) -> u64 {
        self.column
    }

    /// The value.
    pub fn get(&self) -> &T {
        &self.value
    }

    /// Consumes the wrapper, giving the value.
    pub fn into_inner(self) -> T {
        self.value
    }
}

impl<T> Deref for Loc<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T: fmt::Debug> fmt::Debug for Loc<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.value.fmt(f)
    }
}

impl<T: PartialEq> PartialEq for Loc<T> {
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value
    }
}

impl<T: Eq> Eq for Loc<T> {}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Loc<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let spanned = Spanned::<T>::deserialize(d)?;
        let loc = if spanned.referenced == Location::UNKNOWN {
            spanned.defined
        } else {
            spanned.referenced
        };
        Ok(Self {
            value: spanned.value,
            line: loc.line(),
            column: loc.column(),
        })
    }
}

impl<T: JsonSchema> JsonSchema for Loc<T> {
    fn inline_schema() -> bool {
        T::inline_schema()
    }
    fn schema_name() -> Cow<'static, str> {
        T::schema_name()
    }
    fn schema_id() -> Cow<'static, str> {
        T::schema_id()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        T::json_schema(generator)
    }
}

/// A duration written as text: `250ms`, `5s`, `1m`, `1h 30m`. A text that does not parse is kept
/// and reported by validation, with its location.
#[derive(Clone, PartialEq, Eq)]
pub struct ConfDuration {
    text: Loc<String>,
    parsed: Option<Duration>,
}

impl ConfDuration {
    /// A duration of whole seconds (a default).
    pub fn from_secs(s: u64) -> Self {
        Self::from_duration(Duration::from_secs(s))
    }

    /// A duration of milliseconds (a default).
    pub fn from_millis(ms: u64) -> Self {
        Self::from_duration(Duration::from_millis(ms))
    }

    fn from_duration(d: Duration) -> Self {
        Self {
            text: Loc::new(humantime::format_duration(d).to_string()),
            parsed: Some(d),
        }
    }

    /// The duration; zero for one that failed validation (a validated config has none).
    pub fn get(&self) -> Duration {
        self.parsed.unwrap_or_default()
    }

    /// The text as written, with its location.
    pub fn text(&self) -> &Loc<String> {
        &self.text
    }

    /// Whether the text parsed.
    pub fn is_valid(&self) -> bool {
        self.parsed.is_some()
    }
}

impl fmt::Debug for ConfDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.text.get())
    }
}

impl<'de> Deserialize<'de> for ConfDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = Loc::<String>::deserialize(d)?;
        let parsed = humantime::parse_duration(text.trim()).ok();
        Ok(Self { text, parsed })
    }
}

impl JsonSchema for ConfDuration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "A duration: a number and a unit (ns, us, ms, s, m, h, d), e.g. `250ms`, `5s`, `1m 30s`.",
            "pattern": "^\\s*[0-9]+\\s*[a-zµ]+(\\s*[0-9]+\\s*[a-zµ]+)*\\s*$"
        })
    }
}

/// A size in bytes: a number, or a number with a unit (`512KiB`, `1MiB`, `1MB`).
#[derive(Clone, PartialEq, Eq)]
pub struct ByteSize {
    text: Loc<String>,
    parsed: Option<u64>,
}

impl ByteSize {
    /// A size of `bytes` (a default).
    pub fn new(bytes: u64) -> Self {
        Self {
            text: Loc::new(bytes.to_string()),
            parsed: Some(bytes),
        }
    }

    /// The size in bytes; zero for one that failed validation.
    pub fn get(&self) -> u64 {
        self.parsed.unwrap_or_default()
    }

    /// The text as written, with its location.
    pub fn text(&self) -> &Loc<String> {
        &self.text
    }

    /// Whether the text parsed.
    pub fn is_valid(&self) -> bool {
        self.parsed.is_some()
    }

    fn parse(s: &str) -> Option<u64> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let num: u64 = num.parse().ok()?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kb" => 1000,
            "kib" | "k" => 1024,
            "mb" => 1000 * 1000,
            "mib" | "m" => 1024 * 1024,
            "gb" => 1000 * 1000 * 1000,
            "gib" | "g" => 1024 * 1024 * 1024,
            _ => return None,
        };
        num.checked_mul(mult)
    }
}

impl fmt::Debug for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.text.get())
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        // Untagged enums lose locations, so read the location first and the value inside it.
        let raw = Loc::<Raw>::deserialize(d)?;
        let (line, column) = (raw.line(), raw.column());
        let (text, parsed) = match raw.into_inner() {
            Raw::Int(n) => (n.to_string(), Some(n)),
            Raw::Text(t) => {
                let p = Self::parse(&t);
                (t, p)
            }
        };
        Ok(Self {
            text: Loc {
                value: text,
                line,
                column,
            },
            parsed,
        })
    }
}

impl JsonSchema for ByteSize {
    fn schema_name() -> Cow<'static, str> {
        "ByteSize".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A size: bytes, or a number with a unit (KiB, MiB, GiB, KB, MB, GB).",
            "anyOf": [
                { "type": "integer", "minimum": 0 },
                { "type": "string", "pattern": "^\\s*[0-9]+\\s*([KkMmGg]i?[Bb]?|[Bb])?\\s*$" }
            ]
        })
    }
}

/// What is wrong with a duration, if anything (the wording of every duration error).
pub fn duration_problem(d: &ConfDuration) -> Option<String> {
    (!d.is_valid()).then(|| {
        format!(
            "`{}` is not a duration (write `250ms`, `5s`, `1m`)",
            d.text().as_str()
        )
    })
}

/// What is wrong with an address `host:port`, if anything.
pub fn address_problem(value: &str) -> Option<String> {
    value
        .parse::<std::net::SocketAddr>()
        .is_err()
        .then(|| format!("`{value}` is not an address `host:port` (e.g. `127.0.0.1:8080`)"))
}

/// What is wrong with a URL that needs a host and one of `schemes`, if anything.
pub fn url_problem(value: &str, schemes: &[&str]) -> Option<String> {
    match url::Url::parse(value) {
        Ok(u) if !schemes.contains(&u.scheme()) => Some(format!(
            "URL scheme `{}` is not one of {}",
            u.scheme(),
            schemes.join(", ")
        )),
        Ok(u) if !u.has_host() => Some(format!("URL `{}` has no host", crate::redact::url(value))),
        Ok(_) => None,
        Err(e) => Some(format!("`{}` is not a URL: {e}", crate::redact::url(value))),
    }
}

/// Keys of a `from` or a destination that do not fit the kind's type.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct KeysError(#[from] serde_json::Error);

/// The keys of a `from` or a destination that belong to its connector's kind, as written, and
/// parsed into the kind's type at load.
#[derive(Debug, Clone, Default)]
pub struct ConnectorKeys {
    raw: BTreeMap<String, serde_json::Value>,
    parsed: Option<Settings>,
}

impl ConnectorKeys {
    /// Keys as written (parsed when used).
    pub fn new(raw: BTreeMap<String, serde_json::Value>) -> Self {
        Self { raw, parsed: None }
    }

    /// The keys as written.
    pub fn raw(&self) -> &BTreeMap<String, serde_json::Value> {
        &self.raw
    }

    /// The keys in the kind's type. A configuration that went through the configuration loader has them parsed
    /// already; one built otherwise (a test) is parsed here.
    pub fn get<T: DeserializeOwned + Clone + Send + Sync + fmt::Debug + 'static>(
        &self,
    ) -> Result<T, KeysError> {
        if let Some(t) = self.parsed.as_ref().and_then(Settings::get::<T>) {
            return Ok(t.clone());
        }
        let object = serde_json::Value::Object(self.raw.clone().into_iter().collect());
        Ok(serde_json::from_value(object)?)
    }

    /// The keys in the kind's type, once validation parsed them.
    pub fn parsed(&self) -> Option<&Settings> {
        self.parsed.as_ref()
    }

    /// Keeps the keys parsed into the kind's type (done once, at load).
    pub fn set(&mut self, parsed: Settings) {
        self.parsed = Some(parsed);
    }

    /// The keys as written, as one JSON object.
    pub fn object(&self) -> serde_json::Value {
        serde_json::Value::Object(self.raw.clone().into_iter().collect())
    }
}

impl PartialEq for ConnectorKeys {
    fn eq(&self, other: &Self) -> bool {
        self.raw == other.raw
    }
}

impl Eq for ConnectorKeys {}

/// Reads a mapping: `fixed` keys go to `on_fixed`, every other key into a [`ConnectorKeys`].
fn read_keys<'de, A: MapAccess<'de>>(
    mut map: A,
    fixed: &[&str],
    mut on_fixed: impl FnMut(&str, &mut A) -> Result<(), A::Error>,
) -> Result<ConnectorKeys, A::Error> {
    let mut keys = ConnectorKeys::default();
    while let Some(key) = map.next_key::<String>()? {
        if fixed.contains(&key.as_str()) {
            on_fixed(&key, &mut map)?;
        } else {
            let value = map.next_value::<serde_json::Value>()?;
            if keys.raw.insert(key.clone(), value).is_some() {
                return Err(de::Error::custom(format_args!("duplicate key `{key}`")));
            }
        }
    }
    Ok(keys)
}

/// The source of a trigger's events: the connector and topic every trigger has, and the keys
/// the connector's kind adds (a Kafka `group`, an AMQP `queue`, a JetStream `stream`...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TriggerSource {
    /// The connector's name.
    pub connector: Loc<String>,
    /// The protocol's address: Kafka topic, NATS subject (`*`, `>`), MQTT topic filter (`+`,
    /// `#`), HTTP path (`/orders`).
    pub topic: Option<Loc<String>>,
    /// The keys of the connector's kind.
    pub keys: ConnectorKeys,
}

impl TriggerSource {
    /// The topic, or the empty string.
    pub fn topic(&self) -> &str {
        self.topic.as_ref().map_or("", |t| t.as_str())
    }
}

impl<'de> Deserialize<'de> for TriggerSource {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TriggerSource;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a source: `{ connector: ..., topic: ... }`")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                let (mut connector, mut topic) = (None, None);
                let keys = read_keys(map, &["connector", "topic"], |key, map| {
                    if key == "connector" {
                        connector = Some(map.next_value::<Loc<String>>()?);
                    } else {
                        topic = Some(map.next_value::<Loc<String>>()?);
                    }
                    Ok(())
                })?;
                Ok(TriggerSource {
                    connector: connector.ok_or_else(|| de::Error::missing_field("connector"))?,
                    topic,
                    keys,
                })
            }
        }
        d.deserialize_map(V)
    }
}

impl JsonSchema for TriggerSource {
    fn schema_name() -> Cow<'static, str> {
        "TriggerSource".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        // The kinds' keys are added by the registry in the configuration's schema.
        json_schema!({
            "type": "object",
            "properties": {
                "connector": { "type": "string", "description": "The connector's name." },
                "topic": {
                    "type": "string",
                    "description": "The protocol's address: Kafka topic, NATS subject (`*`, `>`), MQTT topic filter (`+`, `#`), HTTP path (`/orders`)."
                }
            },
            "required": ["connector"],
            "additionalProperties": false
        })
    }
}

/// A destination for dead letters or replies: a connector's topic, or a function.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Destination {
    /// Publish through this connector...
    pub connector: Option<Loc<String>>,
    /// ...to this topic (subject, routing key).
    pub topic: Option<String>,
    /// Or deliver to this function.
    pub function: Option<Loc<String>>,
    /// The keys of the connector's kind (an AMQP `exchange`).
    pub keys: ConnectorKeys,
}

impl<'de> Deserialize<'de> for Destination {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Destination;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a destination: `{ connector: ..., topic: ... }` or `{ function: ... }`",
                )
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                let mut out = Destination::default();
                out.keys = read_keys(map, &["connector", "topic", "function"], |key, map| {
                    match key {
                        "connector" => out.connector = Some(map.next_value()?),
                        "topic" => out.topic = Some(map.next_value()?),
                        _ => out.function = Some(map.next_value()?),
                    }
                    Ok(())
                })?;
                Ok(out)
            }
        }
        d.deserialize_map(V)
    }
}

impl JsonSchema for Destination {
    fn schema_name() -> Cow<'static, str> {
        "Destination".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        // The kinds' keys are added by the registry in the configuration's schema.
        json_schema!({
            "type": "object",
            "properties": {
                "connector": { "type": "string", "description": "Publish through this connector..." },
                "topic": { "type": "string", "description": "...to this topic (subject, routing key)." },
                "function": { "type": "string", "description": "Or deliver to this function." }
            },
            "additionalProperties": false
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes() {
        assert_eq!(ByteSize::parse("1MiB"), Some(1024 * 1024));
        assert_eq!(ByteSize::parse("512 KiB"), Some(512 * 1024));
        assert_eq!(ByteSize::parse("10"), Some(10));
        assert_eq!(ByteSize::parse("10 parsecs"), None);
    }
}

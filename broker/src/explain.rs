//! What one message becomes, with no broker and no function running: the CloudEvent a connector
//! makes of it (each attribute and where it came from), the triggers that take it with the part
//! of their filter that decided, and the event each function would receive. `fnbroker explain`
//! prints it; `fnbroker test` checks it against expectations.

use std::fmt::Write as _;

use fnbroker_config::{Config, Trigger};
use fnbroker_core::Origin;
use fnbroker_core::binding::Sample;
use fnbroker_core::event::{self, AttributesReader, AttributesWriter, Event};

use crate::connectors::REGISTRY;
use crate::engine::filter::Filter;

/// One event of a message (an HTTP batch has several), and where it goes.
pub(crate) struct Explained {
    /// The event as the connector hands it to the triggers.
    pub(crate) event: Event,
    /// A CloudEvent, a plain message, or an invalid CloudEvent (dead-lettered as plain).
    pub(crate) origin: Origin,
    /// Every attribute: name, value, where it came from.
    pub(crate) attributes: Vec<(String, String, String)>,
    /// The triggers whose source takes the message, in configuration order.
    pub(crate) triggers: Vec<Verdict>,
}

/// One trigger's verdict on one event.
pub(crate) struct Verdict {
    /// The trigger's name.
    pub(crate) trigger: String,
    /// The function it calls.
    pub(crate) function: String,
    /// Whether the filter passes (or there is none).
    pub(crate) passes: bool,
    /// The part of the filter that decided.
    pub(crate) why: String,
    /// The event as the function would receive it: a plain message gets the trigger's
    /// `event.type`.
    pub(crate) delivered: Event,
    /// What `delivery.dedup` does with it, when the trigger deduplicates.
    pub(crate) dedup: Option<String>,
}

/// Where the message arrives: a connector of the configuration and what it reads.
pub(crate) struct Arrival<'a> {
    /// The connector's name.
    pub(crate) connector: &'a str,
    /// The message.
    pub(crate) sample: Sample<'a>,
}

/// Decodes the message as its connector would and runs it past every trigger on that connector
/// whose source takes its topic. An error for an unknown connector or a message the connector
/// could not receive.
pub(crate) fn explain(cfg: &Config, arrival: &Arrival<'_>) -> Result<Vec<Explained>, String> {
    let name = arrival.connector;
    let entry = cfg.connectors.get(name).ok_or_else(|| {
        format!(
            "no connector `{name}` in the configuration (it has: {})",
            cfg.connectors
                .keys()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        )
    })?;
    let kind = REGISTRY
        .get(entry.kind())
        .ok_or_else(|| format!("connector `{name}`: unknown kind `{}`", entry.kind()))?;
    let settings = entry
        .settings()
        .ok_or_else(|| format!("connector `{name}`: its settings were not validated"))?;
    let sample = &arrival.sample;
    let decoded = kind
        .decode_sample(name, settings, sample)
        .map_err(|e| e.to_string())?;
    let triggers: Vec<&Trigger> = cfg
        .triggers
        .iter()
        .filter(|t| t.from.connector.as_str() == name)
        .filter(|t| {
            let topic = t.from.topic.as_ref().map(|t| t.as_str());
            match t.from.keys.parsed() {
                Some(keys) => kind.source_takes(keys, topic, sample.topic),
                None => kind
                    .parse_source(
                        serde_json::Value::Object(t.from.keys.raw().clone().into_iter().collect()),
                        &mut |_| {},
                    )
                    .is_ok_and(|keys| kind.source_takes(&keys, topic, sample.topic)),
            }
        })
        .collect();
    // Triggers on one source agree on what it does to an event (an HTTP path's `attributes`),
    // so the first one's source shapes it for them all.
    let shaper = triggers.first().and_then(|t| {
        let keys = t.from.keys.parsed()?;
        Some((keys, t.from.topic.as_ref().map(|t| t.as_str())))
    });
    let batch = decoded.len() > 1;
    decoded
        .into_iter()
        .enumerate()
        .map(|(i, (mut event, origin))| {
            let shaped = match (&shaper, &origin) {
                (Some((keys, topic)), Origin::Plain) => kind
                    .shape_sample(keys, *topic, sample, &mut event)
                    .map_err(|e| e.to_string())?,
                _ => Vec::new(),
            };
            let mut attributes = provenance(&event, &origin, sample, batch.then_some(i + 1));
            for (name, from) in shaped {
                match attributes.iter_mut().find(|(n, _, _)| *n == name) {
                    Some(entry) => entry.2 = from,
                    None => {
                        let value = event::attribute(&event, &name).unwrap_or_default();
                        attributes.push((name, value.into_owned(), from));
                    }
                }
            }
            let triggers = triggers
                .iter()
                .map(|t| verdict(t, &event, &origin))
                .collect();
            Ok(Explained {
                event,
                origin,
                attributes,
                triggers,
            })
        })
        .collect()
}

fn verdict(trigger: &Trigger, event: &Event, origin: &Origin) -> Verdict {
    let mut delivered = event.clone();
    if let (Some(ty), Origin::Plain) = (trigger.event.as_ref().and_then(|e| e.ty.as_ref()), origin)
    {
        delivered.set_type(ty.as_str());
    }
    let (passes, why) = match (&trigger.filter, origin) {
        (_, Origin::Invalid(reason)) => (
            false,
            format!(
                "not a valid CloudEvent ({reason}): dead-lettered with its bytes, never delivered"
            ),
        ),
        (None, _) => (true, "no filter".to_string()),
        (Some(f), _) => Filter::compile(f).decide(&delivered),
    };
    let dedup = trigger.delivery.dedup.as_ref().map(|d| {
        let store = match &d.store {
            fnbroker_config::DedupStore::Memory(_) => "this replica's memory".to_string(),
            fnbroker_config::DedupStore::Shared(s) => format!("connector `{}`", s.connector),
        };
        format!(
            "delivery.dedup: acknowledged without a call when source `{}` with id `{}` was delivered in the last {} (marks in {store})",
            delivered.source(),
            delivered.id(),
            d.window.text().as_str()
        )
    });
    Verdict {
        trigger: trigger.name.to_string(),
        function: trigger.to.to_string(),
        passes,
        why,
        delivered,
        dedup,
    }
}

/// The names a binary-mode attribute header may have, by binding: Kafka `ce_`, NATS and HTTP
/// `ce-`, AMQP any of these and `cloudEvents_`/`cloudEvents:`, MQTT 5 the bare name.
const ATTRIBUTE_PREFIXES: [&str; 5] = ["ce-", "ce_", "cloudevents_", "cloudevents:", ""];

/// Every attribute of `event` with its value and where it came from.
fn provenance(
    event: &Event,
    origin: &Origin,
    sample: &Sample<'_>,
    batch_member: Option<usize>,
) -> Vec<(String, String, String)> {
    let header_of = |attribute: &str| {
        sample.headers.iter().find_map(|(k, _)| {
            let lower = k.to_ascii_lowercase();
            ATTRIBUTE_PREFIXES
                .iter()
                .any(|p| lower.strip_prefix(p) == Some(attribute))
                .then(|| format!("header `{k}`"))
        })
    };
    let content_type = || {
        sample
            .header("content-type")
            .map(|_| "the message's content type".to_string())
    };
    let structured = matches!(origin, Origin::CloudEvent) && header_of("id").is_none();
    let from = |name: &str| -> String {
        if let Some(n) = batch_member {
            return format!("member {n} of the batch");
        }
        match origin {
            Origin::CloudEvent if structured => "the structured event (the data)".into(),
            Origin::CloudEvent => match name {
                "datacontenttype" => content_type(),
                "partitionkey" => header_of(name).or_else(|| Some("the message key".into())),
                _ => header_of(name),
            }
            .unwrap_or_else(|| "-".into()),
            Origin::Plain | Origin::Invalid(_) => plain_from(name)
                .or_else(|| match name {
                    "datacontenttype" => content_type(),
                    _ => header_of(name),
                })
                .unwrap_or_else(|| "-".into()),
        }
    };
    let mut out = Vec::new();
    for name in [
        "specversion",
        "id",
        "source",
        "type",
        "subject",
        "time",
        "datacontenttype",
        "dataschema",
    ] {
        if let Some(value) = event::attribute(event, name) {
            out.push((name.to_string(), value.into_owned(), from(name)));
        }
    }
    let mut extensions: Vec<_> = event.iter_extensions().map(|(k, _)| k).collect();
    extensions.sort_unstable();
    for name in extensions {
        if let Some(value) = event::attribute(event, name) {
            out.push((name.to_string(), value.into_owned(), from(name)));
        }
    }
    out
}

/// Where a plain message's attribute comes from, by the normalization DESIGN.md lays down.
fn plain_from(name: &str) -> Option<String> {
    Some(match name {
        "specversion" => "CloudEvents 1.0".into(),
        "id" => "the message's id where the protocol has one (Kafka topic-partition-offset, \
                 JetStream sequence, AMQP message-id), else a new UUID"
            .into(),
        "source" => "the connector and the topic".into(),
        "type" => "a plain message's type (a trigger's `event.type` replaces it)".into(),
        "subject" => "the topic it came on".into(),
        "time" => "the broker's timestamp".into(),
        "partitionkey" => "the message key".into(),
        "traceparent" | "tracestate" => format!("header `{name}`"),
        _ => return None,
    })
}

/// The data as a line of text: JSON compact, text as it is, else its size.
pub(crate) fn data_text(event: &Event) -> String {
    let bytes = event::data_bytes(event);
    if bytes.is_empty() {
        return "(none)".into();
    }
    if let Ok(json) = serde_json::from_slice::<serde_json::Value>(&bytes) {
        return json.to_string();
    }
    match std::str::from_utf8(&bytes) {
        Ok(text) => format!("{text:?}"),
        Err(_) => format!("{} bytes, not UTF-8", bytes.len()),
    }
}

/// What `fnbroker explain` prints.
pub(crate) fn render(arrival: &Arrival<'_>, explained: &[Explained]) -> String {
    let mut out = String::new();
    let sample = &arrival.sample;
    let _ = writeln!(
        out,
        "message on `{}`, topic `{}`: {} header(s), {} byte(s) of data",
        arrival.connector,
        sample.topic,
        sample.headers.len(),
        sample.data.len()
    );
    if explained.len() > 1 {
        let _ = writeln!(out, "a batch of {} events", explained.len());
    }
    for (i, e) in explained.iter().enumerate() {
        if explained.len() > 1 {
            let _ = writeln!(out, "\nevent {}:", i + 1);
        }
        let _ = writeln!(
            out,
            "{}",
            match &e.origin {
                Origin::CloudEvent => "a CloudEvent".to_string(),
                Origin::Plain => "a plain message (not a CloudEvent), normalized".to_string(),
                Origin::Invalid(reason) => format!(
                    "NOT a valid CloudEvent: {reason}\n(every trigger dead-letters it as this plain message)"
                ),
            }
        );
        let width = e
            .attributes
            .iter()
            .map(|(n, ..)| n.len())
            .max()
            .unwrap_or(0);
        let vwidth = e
            .attributes
            .iter()
            .map(|(_, v, _)| v.chars().count())
            .max()
            .unwrap_or(0)
            .min(48);
        for (name, value, from) in &e.attributes {
            let _ = writeln!(out, "  {name:<width$}  {value:<vwidth$}  <- {from}");
        }
        let _ = writeln!(out, "  {:<width$}  {}", "data", data_text(&e.event));
        if e.triggers.is_empty() {
            let _ = writeln!(
                out,
                "no trigger on `{}` takes topic `{}`",
                arrival.connector, sample.topic
            );
            continue;
        }
        let _ = writeln!(out, "triggers:");
        for t in &e.triggers {
            let _ = writeln!(
                out,
                "  {} -> {}: {} ({})",
                t.trigger,
                t.function,
                if t.passes { "MATCHES" } else { "filtered out" },
                t.why
            );
            if t.passes && t.delivered.ty() != e.event.ty() {
                let _ = writeln!(
                    out,
                    "    the function receives type `{}` (the trigger's `event.type`)",
                    t.delivered.ty()
                );
            }
            if let (true, Some(dedup)) = (t.passes, &t.dedup) {
                let _ = writeln!(out, "    {dedup}");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
connectors:
  devices: { mqtt: { url: mqtt://127.0.0.1:1883 } }
  pipeline: { kafka: { brokers: [127.0.0.1:9092], group: g } }
  cache: { redis: { url: redis://127.0.0.1:6379 } }
  db: { postgres: { url: postgres://127.0.0.1/app } }
functions:
  thermostat: { http: { url: http://127.0.0.1:9/t } }
  archive: { http: { url: http://127.0.0.1:9/a } }
triggers:
  - name: hot-rooms
    from: { connector: devices, topic: "sensors/+/temperature" }
    event: { type: com.example.temperature }
    filter: { cel: "event.type == 'com.example.temperature' && event.data.celsius > 30" }
    to: thermostat
  - name: everything
    from: { connector: devices, topic: "sensors/#" }
    to: archive
  - name: lights
    from: { connector: devices, topic: "lights/#" }
    to: archive
  - name: orders
    from: { connector: pipeline, topic: orders }
    filter: { sql: "type LIKE 'com.shop.%' AND partitionkey = 'eu'" }
    to: archive
  - name: entries
    from: { connector: cache, topic: orders, group: g, create: true }
    to: archive
  - name: new-orders
    from: { connector: db, topic: orders }
    filter: { exact: { type: com.fnbroker.postgres.insert } }
    to: archive
  - name: every-table
    from: { connector: db, topic: "*" }
    filter: { exact: { type: com.fnbroker.postgres.delete } }
    to: archive
"#;

    fn config() -> Config {
        crate::connectors::test_config(CONFIG)
    }

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_plain_mqtt_message_through_wildcards_and_a_cel_filter() {
        let cfg = config();
        let arrival = Arrival {
            connector: "devices",
            sample: Sample {
                topic: "sensors/kitchen/temperature",
                data: br#"{"celsius": 28}"#,
                ..Default::default()
            },
        };
        let e = explain(&cfg, &arrival).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(e.len(), 1);
        let e = &e[0];
        assert_eq!(e.origin, Origin::Plain);
        let source = e.attributes.iter().find(|(n, ..)| n == "source");
        assert_eq!(
            source.map(|(_, v, f)| (v.as_str(), f.as_str())),
            Some((
                "mqtt://devices/sensors/kitchen/temperature",
                "the connector and the topic"
            ))
        );
        let names: Vec<_> = e.triggers.iter().map(|t| t.trigger.as_str()).collect();
        assert_eq!(
            names,
            ["hot-rooms", "everything"],
            "`lights/#` does not take it"
        );
        let hot = &e.triggers[0];
        assert!(!hot.passes);
        assert_eq!(hot.why, "cel `event.data.celsius > 30` is false");
        assert_eq!(hot.delivered.ty(), "com.example.temperature");
        assert!(e.triggers[1].passes);
        let text = render(&arrival, std::slice::from_ref(e));
        assert!(
            text.contains("hot-rooms -> thermostat: filtered out"),
            "{text}"
        );
    }

    #[test]
    fn a_binary_kafka_event_names_its_headers() {
        let cfg = config();
        let h = headers(&[
            ("ce_specversion", "1.0"),
            ("ce_id", "42"),
            ("ce_source", "/shop"),
            ("ce_type", "com.shop.order"),
            ("content-type", "application/json"),
        ]);
        let arrival = Arrival {
            connector: "pipeline",
            sample: Sample {
                topic: "orders",
                headers: &h,
                key: Some("us"),
                data: b"{}",
            },
        };
        let e = explain(&cfg, &arrival).unwrap_or_else(|e| panic!("{e}"));
        let e = &e[0];
        assert_eq!(e.origin, Origin::CloudEvent);
        let from = |name: &str| {
            e.attributes
                .iter()
                .find(|(n, ..)| n == name)
                .map(|(_, v, f)| format!("{v} <- {f}"))
        };
        assert_eq!(
            from("type").as_deref(),
            Some("com.shop.order <- header `ce_type`")
        );
        assert_eq!(
            from("datacontenttype").as_deref(),
            Some("application/json <- the message's content type")
        );
        assert_eq!(
            from("partitionkey").as_deref(),
            Some("us <- the message key")
        );
        assert_eq!(e.triggers.len(), 1);
        assert!(!e.triggers[0].passes);
        assert_eq!(e.triggers[0].why, "sql `partitionkey = 'eu'` is false");
    }

    #[test]
    fn a_redis_entry_and_a_postgres_change() {
        let cfg = config();
        let fields = headers(&[
            ("ce_specversion", "1.0"),
            ("ce_id", "r-1"),
            ("ce_source", "/shop"),
            ("ce_type", "com.shop.order"),
        ]);
        let arrival = Arrival {
            connector: "cache",
            sample: Sample {
                topic: "orders",
                headers: &fields,
                data: b"{}",
                ..Default::default()
            },
        };
        let e = explain(&cfg, &arrival).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (e[0].origin.clone(), e[0].event.id()),
            (Origin::CloudEvent, "r-1")
        );
        assert_eq!(e[0].triggers.len(), 1);
        assert!(e[0].triggers[0].passes);

        let arrival = Arrival {
            connector: "db",
            sample: Sample {
                topic: "public.orders",
                data: br#"{"id": 7, "total": "9.50"}"#,
                ..Default::default()
            },
        };
        let e = explain(&cfg, &arrival).unwrap_or_else(|e| panic!("{e}"));
        let e = &e[0];
        assert_eq!(e.event.ty(), "com.fnbroker.postgres.insert");
        assert_eq!(e.event.subject(), Some("public.orders"));
        let verdicts: Vec<_> = e
            .triggers
            .iter()
            .map(|t| (t.trigger.as_str(), t.passes))
            .collect();
        assert_eq!(verdicts, [("new-orders", true), ("every-table", false)]);
    }

    #[test]
    fn an_unknown_connector_is_named() {
        let cfg = config();
        let arrival = Arrival {
            connector: "nope",
            sample: Sample::default(),
        };
        let err = explain(&cfg, &arrival).err().unwrap_or_default();
        assert!(
            err.contains("no connector `nope`") && err.contains("devices, pipeline"),
            "{err}"
        );
    }
}

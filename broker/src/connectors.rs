//! Every connector kind this fnbroker knows: one line per connector crate, each behind the
//! cargo feature of its kind. The configuration's loading, `validate`, `fnbroker schema` and the
//! runtime all read this list.

use fnbroker_core::registry::{Kind, Registry};

/// The registered connector kinds, and those this build leaves out.
pub(crate) static REGISTRY: Registry = Registry::new(&[
    #[cfg(feature = "http")]
    &Kind::<fnbroker_http::Plugin>::NEW,
    #[cfg(feature = "kafka")]
    &Kind::<fnbroker_kafka::Plugin>::NEW,
    #[cfg(feature = "nats")]
    &Kind::<fnbroker_nats::Plugin>::NEW,
    #[cfg(feature = "amqp")]
    &Kind::<fnbroker_amqp::Plugin>::NEW,
    #[cfg(feature = "mqtt")]
    &Kind::<fnbroker_mqtt::Plugin>::NEW,
    #[cfg(feature = "redis")]
    &Kind::<fnbroker_redis::Plugin>::NEW,
    #[cfg(feature = "postgres")]
    &Kind::<fnbroker_postgres::Plugin>::NEW,
])
.leaving_out(&[
    #[cfg(not(feature = "http"))]
    ("http", "http"),
    #[cfg(not(feature = "kafka"))]
    ("kafka", "kafka"),
    #[cfg(not(feature = "nats"))]
    ("nats", "nats"),
    #[cfg(not(feature = "amqp"))]
    ("amqp", "amqp"),
    #[cfg(not(feature = "mqtt"))]
    ("mqtt", "mqtt"),
    #[cfg(not(feature = "redis"))]
    ("redis", "redis"),
    #[cfg(not(feature = "postgres"))]
    ("postgres", "postgres"),
])
.with_functions(fnbroker_functions::KINDS);

/// What the connector kind `kind` can do (a kind not registered: the defaults).
pub(crate) fn capabilities(kind: &str) -> fnbroker_core::ConnectorCapabilities {
    REGISTRY
        .get(kind)
        .map(|k| k.capabilities())
        .unwrap_or_default()
}

/// A configuration from text, for the tests of the offline commands; a test fails on errors.
#[cfg(test)]
pub(crate) fn test_config(text: &str) -> fnbroker_config::Config {
    fnbroker_config::load_str("test.yaml", text, |_| None, &REGISTRY)
        .unwrap_or_else(|e| panic!("{e}"))
}

#[cfg(test)]
mod tests {
    use super::REGISTRY;
    use fnbroker_config::{Config, ConfigErrors, load_str};

    fn load(text: &str) -> Result<Config, ConfigErrors> {
        load_str(
            "t.yaml",
            text,
            |n| (n == "SET").then(|| "value".to_string()),
            &REGISTRY,
        )
    }

    fn messages(text: &str) -> Vec<String> {
        match load(text) {
            Ok(_) => vec![],
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    }

    const GOOD: &str = "\
connectors:
  web: { http: { listen: 127.0.0.1:8080 } }
functions:
  f: { http: { url: http://127.0.0.1:9000/f } }
triggers:
  - name: t
    from: { connector: web, topic: /orders }
    to: f
";

    #[test]
    fn good_config_loads() {
        let c = load(GOOD).expect("valid");
        assert_eq!(c.triggers[0].to.as_str(), "f");
        assert_eq!(c.triggers[0].delivery.retries, 3);
    }

    #[test]
    fn batches_are_checked_at_load() {
        let with = |delivery: &str, extra: &str| {
            GOOD.replace(
                "    to: f\n",
                &format!("    to: f\n    delivery: {delivery}\n{extra}"),
            )
        };
        assert!(
            messages(&with(
                "{ batch: { max_events: 50, max_bytes: 256KiB, max_wait: 5ms } }",
                ""
            ))
            .is_empty()
        );
        let m = messages(&with(
            "{ batch: { max_events: 0, max_bytes: lots, max_wait: soon } }",
            "",
        ));
        for part in [
            "`batch.max_events` must be 1 to 10000",
            "`batch.max_bytes` is not a size",
            "max_wait",
        ] {
            assert!(m.iter().any(|e| e.contains(part)), "{part}: {m:?}");
        }
        let m = messages(&with("{ batch: {} }", "    reply: { function: f }\n"));
        assert!(
            m.iter()
                .any(|e| e.contains("`delivery.batch` and `reply` do not go together")),
            "{m:?}"
        );
        let whisk = with("{ batch: {} }", "").replace(
            "f: { http: { url: http://127.0.0.1:9000/f } }",
            "f: { openwhisk: { api: http://127.0.0.1:3233, namespace: guest, action: a, auth: \"u:p\" } }",
        );
        let m = messages(&whisk);
        assert!(
            m.iter()
                .any(|e| e.contains("function `f` (openwhisk) cannot take a batch")),
            "{m:?}"
        );
    }

    #[test]
    fn retry_topics_are_checked_at_load() {
        let kafka = "  k: { kafka: { brokers: [127.0.0.1:9092], group: g } }\n";
        let text = |delivery: &str, second: bool| {
            let mut t = GOOD.replace("connectors:\n", &format!("connectors:\n{kafka}"));
            t = t.replace(
                "    to: f\n",
                &format!("    to: f\n    delivery: {delivery}\n"),
            );
            if second {
                t.push_str(&format!("  - name: u\n    from: {{ connector: web, topic: /other }}\n    to: f\n    delivery: {delivery}\n"));
            }
            t
        };
        assert!(
            messages(&text(
                "{ retry_topic: { connector: k, topic: retries } }",
                false
            ))
            .is_empty()
        );
        let m = messages(&text(
            "{ retry_topic: { connector: web, topic: retries } }",
            false,
        ));
        assert!(
            m.iter()
                .any(|e| e.contains("a http connector cannot hold retry state")),
            "{m:?}"
        );
        let m = messages(&text(
            "{ ordered: true, retry_topic: { connector: k, topic: retries } }",
            false,
        ));
        assert!(
            m.iter()
                .any(|e| e.contains("`retry_topic` and `ordered: true` do not go together")),
            "{m:?}"
        );
        let m = messages(&text(
            "{ retry_topic: { connector: k, topic: retries } }",
            true,
        ));
        assert!(
            m.iter()
                .any(|e| e.contains("each trigger needs a retry topic of its own")),
            "{m:?}"
        );
        let discovered = GOOD.replace("connectors:\n", &format!("connectors:\n{kafka}"))
            + "discover:\n  - openfaas: { gateway: \"http://127.0.0.1:8080\", connector: k, delivery: { retry_topic: { connector: k, topic: r } } }\n";
        let m = messages(&discovered);
        assert!(
            m.iter().any(|e| e.contains("not for discovered functions")),
            "{m:?}"
        );
    }

    #[test]
    fn unknown_keys_are_all_reported_with_places() {
        let text = GOOD.replace(
            "to: f\n",
            "to: f\n    colour: blue\n    delivery: { retriez: 3 }\n",
        );
        let m = messages(&text);
        assert_eq!(m.len(), 2, "{m:?}");
        assert_eq!(m[0], "t.yaml:9:5: unknown key `colour` in `triggers.0`");
        assert!(
            m[1].starts_with("t.yaml:10:17: unknown key `retriez`"),
            "{m:?}"
        );
    }

    /// A key of `from` that the connector does not read was ignored;
    /// now it is an error at the key, saying what the source takes.
    #[test]
    fn a_misplaced_source_key_is_an_error_at_its_place() {
        let text = "\
connectors:
  k: { kafka: { brokers: [127.0.0.1:9092] } }
  bus: { nats: { url: nats://127.0.0.1:4222 } }
  iot: { mqtt: { url: mqtt://127.0.0.1:1883 } }
functions:
  f: { http: { url: http://127.0.0.1:9000/f } }
triggers:
  - { name: a, from: { connector: k, topic: t, queue: q }, to: f }
  - { name: b, from: { connector: bus, topic: t, qos: 1 }, to: f }
  - { name: c, from: { connector: iot, topic: t, stream: s }, to: f }
  - { name: d, from: { connector: k, topic: t, group: g }, to: f }
";
        let m = messages(text);
        assert_eq!(m.len(), 3, "{m:?}");
        assert_eq!(
            m[0],
            "t.yaml:8:48: trigger `a`: `queue` does not apply to a kafka source (its `from` takes `group` besides `connector` and `topic`)"
        );
        assert!(
            m[1].starts_with("t.yaml:9:50: trigger `b`: `qos` does not apply to a nats source"),
            "{m:?}"
        );
        assert!(
            m[2].starts_with("t.yaml:10:50: trigger `c`: `stream` does not apply to a mqtt source"),
            "{m:?}"
        );
    }

    /// rumqttc's MQTT 5 client panics on a keep-alive under 5 s: a located error instead.
    #[test]
    fn a_short_mqtt_5_keep_alive_is_an_error() {
        let text = "connectors:\n  iot: { mqtt: { url: mqtt://127.0.0.1:1883, keep_alive: 2s } }\n  old: { mqtt: { url: mqtt://127.0.0.1:1883, version: 3, keep_alive: 1s } }\n";
        let m = messages(text);
        assert_eq!(m.len(), 1, "{m:?}");
        assert!(
            m[0].starts_with("t.yaml:2:58: connector `iot`: `keep_alive` must be at least 5s"),
            "{m:?}"
        );
    }

    /// An error about a value with no place of its own is at its key, not at 1:1.
    #[test]
    fn a_function_without_a_kind_is_reported_at_its_name() {
        let text = GOOD.replace(
            "f: { http: { url: http://127.0.0.1:9000/f } }",
            "f: { timeout: 5s }",
        );
        assert_eq!(
            messages(&text),
            vec![
                "t.yaml:4:3: function `f` must have one of `http`, `exec`, `process`, `openfaas`, `openwhisk`, `fission`, `knative`, `fn` or `lambda`"
            ]
        );
    }

    /// Every message names the key and its place, without serde jargon, and a
    /// misspelled key gets a suggestion.
    #[test]
    fn messages_name_the_key_and_suggest_the_right_one() {
        let typo = GOOD.replace(
            "f: { http: { url: http://127.0.0.1:9000/f } }",
            "f: { http: { url: http://127.0.0.1:9000/f }, concurency: 3 }",
        );
        let m = messages(&typo);
        assert!(
            m[0].ends_with(
                "unknown key `concurency` in `functions.f`; did you mean `concurrency`?"
            ),
            "{m:?}"
        );
        let negative = GOOD.replace("to: f\n", "to: f\n    delivery: { retries: -1 }\n");
        let m = messages(&negative);
        assert_eq!(
            m,
            vec![
                "t.yaml:9:26: `triggers.0.delivery.retries`: expected a whole number from 0 to 4294967295"
            ],
        );
        let two_kinds = GOOD.replace(
            "web: { http: { listen: 127.0.0.1:8080 } }",
            "web: { http: { listen: 127.0.0.1:8080 }, kafka: { brokers: [a] } }",
        );
        let m = messages(&two_kinds);
        assert!(m[0].contains("`connectors.web"), "{m:?}");
        assert!(m[0].contains("only one kind may be given here"), "{m:?}");
    }

    #[test]
    fn unknown_key_inside_a_connector_kind() {
        let text = GOOD.replace("listen: 127.0.0.1:8080", "listen: 127.0.0.1:8080, port: 1");
        let m = messages(&text);
        assert_eq!(m.len(), 1, "{m:?}");
        assert!(m[0].starts_with("t.yaml:2:42: unknown key `port`"), "{m:?}");
    }

    #[test]
    fn semantic_errors_come_together() {
        let text = GOOD
            .replace("to: f", "to: g\n    delivery: { delay: soon }")
            .replace("connector: web", "connector: webb");
        let m = messages(&text);
        assert_eq!(m.len(), 3, "{m:?}");
        assert!(m[0].contains(":7:24: unknown connector `webb`"), "{m:?}");
        assert!(m[1].contains(":8:9: unknown function `g`"), "{m:?}");
        assert!(
            m[2].contains(":9:24: ") && m[2].contains("`soon` is not a duration"),
            "{m:?}"
        );
    }

    #[test]
    fn env_vars_are_substituted_and_unset_ones_reported() {
        let text = GOOD.replace("/orders", "/${SET}/${UNSET}/${MISSING:-x}");
        let m = messages(&text);
        assert_eq!(
            m,
            vec!["t.yaml:7:44: environment variable `UNSET` is not set".to_string()]
        );
        let ok = load(&GOOD.replace("/orders", "\"/${SET}/$${LIT}\"")).expect("valid");
        assert_eq!(ok.triggers[0].from.topic(), "/value/${LIT}");
    }

    #[test]
    fn invalid_yaml_has_a_place() {
        let m = messages("connectors: [\n");
        assert_eq!(m.len(), 1);
        assert!(m[0].starts_with("t.yaml:"), "{m:?}");
    }

    #[test]
    fn bad_urls_and_addresses() {
        let text = GOOD
            .replace("http://127.0.0.1:9000/f", "ftp://x/f")
            .replace("127.0.0.1:8080", "nowhere");
        let m = messages(&text);
        assert_eq!(m.len(), 2, "{m:?}");
        assert!(m[0].contains("not an address"), "{m:?}");
        assert!(m[1].contains("scheme `ftp`"), "{m:?}");
    }

    #[test]
    fn sql_filters_are_parsed_at_load() {
        let ok = GOOD.replace(
            "to: f",
            "to: f\n    filter: { all: [ { sql: \"type = 'x' AND EXISTS subject\" } ] }",
        );
        assert!(load(&ok).is_ok());
        let bad = GOOD.replace("to: f", "to: f\n    filter: { sql: \"type = 'x' AND (\" }");
        let m = messages(&bad);
        assert_eq!(m.len(), 1, "{m:?}");
        assert!(
            m[0].contains(":9:20: trigger `t`: invalid sql filter") && m[0].contains("position 17"),
            "{m:?}"
        );
    }

    /// Each kind's settings are its crate's types, parsed once at load;
    /// the connector gets them back typed.
    #[test]
    fn settings_are_parsed_into_the_kinds_types_at_load() {
        let text = "\
connectors:
  iot: { mqtt: { url: mqtt://127.0.0.1:1883, version: 3, keep_alive: 10s } }
  rabbit: { amqp: { url: amqp://127.0.0.1:5672 } }
functions:
  f: { http: { url: http://127.0.0.1:9000/f } }
triggers:
  - { name: a, from: { connector: iot, topic: t/#, qos: 2, group: g }, to: f, dead_letter: { connector: rabbit, topic: dl, exchange: x } }
";
        let c = load(text).expect("valid");
        let mqtt = c.connectors["iot"]
            .settings()
            .and_then(|s| s.get::<fnbroker_mqtt::MqttSettings>())
            .expect("typed mqtt settings");
        assert_eq!(mqtt.version, 3);
        assert_eq!(mqtt.keep_alive.get(), std::time::Duration::from_secs(10));
        let from: fnbroker_mqtt::MqttSourceSettings =
            c.triggers[0].from.keys.get().expect("source");
        assert_eq!((from.qos, from.group.as_deref()), (2, Some("g")));
        let dl = c.triggers[0].dead_letter.as_ref().expect("dead letter");
        assert!(dl.keys.parsed().is_some());
        let keys: fnbroker_amqp::AmqpDestinationSettings = dl.keys.get().expect("destination");
        assert_eq!(keys.exchange.as_deref(), Some("x"));
    }

    /// An AMQP `exchange` on a NATS dead letter was silently ignored.
    #[test]
    fn a_misplaced_destination_key_is_an_error() {
        let text = "\
connectors:
  bus: { nats: { url: nats://127.0.0.1:4222 } }
functions:
  f: { http: { url: http://127.0.0.1:9000/f } }
triggers:
  - { name: a, from: { connector: bus, topic: t }, to: f, dead_letter: { connector: bus, topic: dl, exchange: x } }
  - { name: b, from: { connector: bus, topic: u }, to: f, reply: { function: f, exchange: x } }
";
        let m = messages(text);
        assert_eq!(m.len(), 2, "{m:?}");
        assert_eq!(
            m[0],
            "t.yaml:6:101: dead_letter of trigger `a`: `exchange` does not apply to a nats destination (it takes `connector`, `topic`)"
        );
        assert_eq!(
            m[1],
            "t.yaml:7:81: reply of trigger `b`: `exchange` does not apply to a function destination (it takes `function`)"
        );
    }

    /// A misspelled kind names the kinds there are and the likely one; a value of the wrong type
    /// inside a kind's settings is reported at the value, with the key, in plain words.
    #[test]
    fn kind_and_type_errors_inside_connectors() {
        let text = "\
connectors:
  k: { kafak: { brokers: [127.0.0.1:9092] } }
  iot: { mqtt: { url: mqtt://127.0.0.1:1883, publish_qos: 300 } }
  bus: { nats: { url: 'nats://127.0.0.1:4222', publish: sometimes } }
";
        let m = messages(text);
        assert_eq!(m.len(), 3, "{m:?}");
        assert_eq!(
            m[0],
            "t.yaml:2:8: connector `k`: unknown kind `kafak` (the kinds are http, kafka, nats, amqp, mqtt, redis, postgres); did you mean `kafka`?"
        );
        assert_eq!(
            m[1],
            "t.yaml:3:59: connector `iot`: `publish_qos`: expected a whole number from 0 to 255, not integer `300`"
        );
        assert!(
            m[2].starts_with(
                "t.yaml:4:57: connector `bus`: `publish`: unknown variant `sometimes`"
            ),
            "{m:?}"
        );
    }

    /// `fnbroker schema` is complete from the registry: every kind under `connectors`, and every
    /// kind's `from` and destination keys, described with the kind they belong to.
    #[test]
    fn the_schema_has_every_kind_and_its_keys() {
        let schema = fnbroker_config::json_schema(&REGISTRY);
        let kinds: Vec<String> = schema["$defs"]["Connector"]["oneOf"]
            .as_array()
            .expect("oneOf")
            .iter()
            .flat_map(|k| k["required"].as_array().cloned().unwrap_or_default())
            .filter_map(|k| k.as_str().map(str::to_string))
            .collect();
        assert_eq!(
            kinds,
            ["http", "kafka", "nats", "amqp", "mqtt", "redis", "postgres"]
        );
        let from = &schema["$defs"]["TriggerSource"]["properties"];
        for key in [
            "connector",
            "topic",
            "queue",
            "declare",
            "stream",
            "create",
            "qos",
            "group",
            "sync",
            "start",
        ] {
            assert!(from[key].is_object(), "`from` lacks `{key}`: {from}");
        }
        let group = from["group"]["description"].as_str().expect("described");
        assert!(
            group.contains("kafka:") && group.contains("nats:") && group.contains("mqtt:"),
            "{group}"
        );
        let dest = &schema["$defs"]["Destination"]["properties"];
        assert!(
            dest["exchange"]["description"]
                .as_str()
                .is_some_and(|d| d.starts_with("amqp:"))
        );
    }
}

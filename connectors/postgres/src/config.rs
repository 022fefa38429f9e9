//! The PostgreSQL connector's configuration.

use std::sync::Arc;

use fnbroker_core::binding::Sample;
use fnbroker_core::registry::{ConnectorPlugin, NoSettings, Report, SourceUse};
use fnbroker_core::{Connector, ConnectorError, Event, Origin};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::PostgresConnector;

/// A PostgreSQL database.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct PostgresSettings {
    /// The database URL: `postgres://user:password@host:port/database`. The user needs the
    /// `REPLICATION` attribute (or to be a superuser) to capture changes; the server
    /// `wal_level = logical`.
    pub url: String,
    /// TLS: `ca`, `cert` + `key` (a client certificate), `server_name`,
    /// `insecure_skip_verify`. With it every connection (the replication stream, the SQL
    /// sessions, the sink) is TLS (`sslmode=verify-full`, or `require` with
    /// `insecure_skip_verify`). Without `ca`, the replication stream trusts the Mozilla roots
    /// and the SQL sessions the system's.
    #[serde(default)]
    pub tls: Option<fnbroker_core::tls::Tls>,
    /// The logical replication slot that keeps the changes not yet delivered (created with the
    /// `pgoutput` plugin when missing). Default `fnbroker`. One replica at a time reads a slot;
    /// the others stand by and take over when it goes.
    #[serde(default = "default_name")]
    pub slot: String,
    /// The publication whose tables are captured (`CREATE PUBLICATION fnbroker FOR TABLE ...`
    /// or `FOR ALL TABLES`); it must exist. Default `fnbroker`.
    #[serde(default = "default_name")]
    pub publication: String,
    /// The event types: `<type_prefix>.insert`, `.update`, `.delete`, `.truncate`. Default
    /// `com.fnbroker.postgres`.
    #[serde(default = "default_type_prefix")]
    pub type_prefix: String,
}

fn default_name() -> String {
    "fnbroker".into()
}

fn default_type_prefix() -> String {
    "com.fnbroker.postgres".into()
}

/// PostgreSQL as a registered connector kind.
pub struct Plugin;

impl ConnectorPlugin for Plugin {
    const KIND: &'static str = "postgres";
    const ABOUT: &'static str = "PostgreSQL change data capture (logical replication) and tables.";
    /// Keys (deduplication marks, schedule claims) live in a table it creates.
    const CAPABILITIES: fnbroker_core::ConnectorCapabilities =
        fnbroker_core::ConnectorCapabilities::AT_START.keeping_keys();
    type Settings = PostgresSettings;
    type Source = NoSettings;
    type Destination = NoSettings;

    fn validate(settings: &PostgresSettings, report: &Report<'_>) {
        report.url("url", &settings.url, &["postgres", "postgresql"]);
        report.tls(settings.tls.as_ref());
        for (key, value) in [
            ("slot", &settings.slot),
            ("publication", &settings.publication),
        ] {
            if value.is_empty() {
                report.error(&[key], format_args!("`{key}` must not be empty"));
            }
        }
        // Slot names: lower-case letters, digits and underscores (PostgreSQL's rule).
        if !settings
            .slot
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            report.error(
                &["slot"],
                "a replication slot name has only lower-case letters, digits and `_`",
            );
        }
    }

    fn validate_source(_: &NoSettings, from: &SourceUse<'_>, report: &Report<'_>) {
        from.require_topic(report);
    }

    /// `schema.table`, a table name (any schema) or `*`.
    fn topic_matches(filter: &str, topic: &str) -> bool {
        crate::table_matches(filter, topic)
    }

    /// Change events are made by the connector from rows: a sample is taken as the event's data
    /// of an `insert` on the table `topic`.
    fn decode_sample(
        name: &str,
        settings: &PostgresSettings,
        sample: &Sample<'_>,
    ) -> Result<Vec<(Event, Origin)>, fnbroker_core::registry::SampleError> {
        let new: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(sample.data)
                .map_err(|e| format!("a postgres sample is the new row as a JSON object: {e}"))?;
        let (schema, table) = sample
            .topic
            .split_once('.')
            .unwrap_or(("public", sample.topic));
        let change = crate::pgoutput::Change {
            op: crate::pgoutput::Op::Insert,
            schema: schema.to_string(),
            table: table.to_string(),
            new: Some(new),
            old: None,
        };
        let event = crate::change_event(name, &settings.type_prefix, change, "0/0", 0, None);
        Ok(vec![(event, Origin::CloudEvent)])
    }

    fn build(
        name: &str,
        settings: &PostgresSettings,
    ) -> Result<Arc<dyn Connector>, ConnectorError> {
        Ok(Arc::new(PostgresConnector::new(name, settings)?))
    }
}

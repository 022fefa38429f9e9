//! Events into tables: one `INSERT` per event.

use async_trait::async_trait;
use fnbroker_core::event::{self, AttributesReader};
use fnbroker_core::{ConnectorError, Event, Sink};
use tokio::sync::Mutex;

/// Inserts events into the table named by the topic (`table` or `schema.table`).
pub(crate) struct PostgresSink {
    connector: String,
    url: String,
    tls: crate::SqlTls,
    client: Mutex<Option<tokio_postgres::Client>>,
}

/// `"schema"."table"` from `schema.table` (or `"table"`), each part quoted.
fn quoted(topic: &str) -> String {
    topic
        .split('.')
        .map(|part| format!("\"{}\"", part.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(".")
}

/// The event's data as JSON: JSON as it is (also bytes of a JSON content type), text as a
/// string, other bytes as base64 text.
fn data_json(event: &Event) -> Option<String> {
    let data = event.data()?;
    let json_type = event
        .datacontenttype()
        .is_some_and(|ct| ct.starts_with("application/json") || ct.contains("+json"));
    let value = match data {
        fnbroker_core::Data::Json(v) => v.clone(),
        fnbroker_core::Data::String(s) => serde_json::Value::String(s.clone()),
        fnbroker_core::Data::Binary(bytes) => match serde_json::from_slice(bytes) {
            Ok(v) if json_type => v,
            _ => match std::str::from_utf8(bytes) {
                Ok(text) => serde_json::Value::String(text.to_string()),
                Err(_) => {
                    use base64::Engine as _;
                    serde_json::Value::String(
                        base64::engine::general_purpose::STANDARD.encode(event::data_bytes(event)),
                    )
                }
            },
        },
    };
    Some(value.to_string())
}

impl PostgresSink {
    pub(crate) fn new(connector: &str, url: &str, tls: crate::SqlTls) -> Self {
        Self {
            connector: connector.to_string(),
            url: url.to_string(),
            tls,
            client: Mutex::new(None),
        }
    }

    fn error(&self, e: tokio_postgres::Error, what: &str) -> ConnectorError {
        // The server refused the statement (no such table, a column missing): not transient.
        let message = format!("{what}: {}", crate::with_causes(&e));
        if e.as_db_error().is_some() {
            ConnectorError::permanent(&self.connector, message).caused_by(e)
        } else {
            ConnectorError::io(&self.connector, message).caused_by(e)
        }
    }

    /// Runs `f` on the connection, opened (again) when needed.
    pub(crate) async fn with_client<T>(
        &self,
        what: &str,
        f: impl AsyncFnOnce(&tokio_postgres::Client) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T, ConnectorError> {
        let mut slot = self.client.lock().await;
        if slot.as_ref().is_none_or(|c| c.is_closed()) {
            let client = self
                .tls
                .connect(&self.url)
                .await
                .map_err(|e| self.error(e, "cannot connect"))?;
            *slot = Some(client);
        }
        let Some(client) = slot.as_ref() else {
            return Err(ConnectorError::io(&self.connector, "not connected"));
        };
        f(client).await.map_err(|e| self.error(e, what))
    }
}

#[async_trait]
impl Sink for PostgresSink {
    /// The table must exist.
    async fn check(&self, topic: &str) -> Result<(), ConnectorError> {
        let found = self
            .with_client("cannot look up the table", async |c| {
                c.query_one("SELECT to_regclass($1)::text", &[&quoted(topic)])
                    .await
                    .map(|row| row.get::<_, Option<String>>(0))
            })
            .await?;
        if found.is_none() {
            return Err(ConnectorError::permanent(
                &self.connector,
                format!(
                    "the table `{topic}` does not exist; create it: CREATE TABLE {topic} (id text, source text, type text, subject text, time timestamptz, datacontenttype text, data jsonb, extensions jsonb)"
                ),
            ));
        }
        Ok(())
    }

    async fn publish(&self, topic: &str, event: &Event) -> Result<(), ConnectorError> {
        let statement = format!(
            "INSERT INTO {} (id, source, type, subject, time, datacontenttype, data, extensions) VALUES ($1, $2, $3, $4, $5::text::timestamptz, $6, $7::text::jsonb, $8::text::jsonb)",
            quoted(topic)
        );
        let extensions: serde_json::Map<String, serde_json::Value> = event
            .iter_extensions()
            .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string())))
            .collect();
        let params = (
            event.id().to_string(),
            event.source().to_string(),
            event.ty().to_string(),
            event.subject().map(str::to_string),
            event.time().map(|t| t.to_rfc3339()),
            event.datacontenttype().map(str::to_string),
            data_json(event),
            serde_json::Value::Object(extensions).to_string(),
        );
        self.with_client(&format!("cannot insert into `{topic}`"), async |c| {
            c.execute(
                statement.as_str(),
                &[
                    &params.0, &params.1, &params.2, &params.3, &params.4, &params.5, &params.6,
                    &params.7,
                ],
            )
            .await
        })
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_quoted_per_part() {
        assert_eq!(quoted("events"), "\"events\"");
        assert_eq!(quoted("audit.dead"), "\"audit\".\"dead\"");
        assert_eq!(quoted("we\"ird"), "\"we\"\"ird\"");
    }
}

//! The sink: `XADD` with the event in binary mode.

use crate::*;

/// Adds events to streams.
pub(crate) struct RedisSink {
    pub(crate) shared: Arc<Shared>,
    pub(crate) maxlen: Option<u64>,
}

#[async_trait]
impl Sink for RedisSink {
    async fn publish(&self, topic: &str, event: &Event) -> Result<(), ConnectorError> {
        self.add(topic, binding::encode(event)).await
    }

    /// An entry with a `data` field (and `content-type` when known), as the source reads a
    /// plain entry.
    async fn publish_plain(
        &self,
        topic: &str,
        data: &[u8],
        content_type: Option<&str>,
    ) -> Result<(), ConnectorError> {
        let mut fields = Vec::with_capacity(2);
        if let Some(ct) = content_type {
            fields.push(("content-type".to_string(), ct.as_bytes().to_vec()));
        }
        fields.push(("data".to_string(), data.to_vec()));
        self.add(topic, fields).await
    }
}

impl RedisSink {
    async fn add(&self, topic: &str, fields: Vec<(String, Vec<u8>)>) -> Result<(), ConnectorError> {
        let mut conn = self.shared.get().await?;
        let mut cmd = redis::cmd("XADD");
        cmd.arg(topic);
        if let Some(n) = self.maxlen {
            cmd.arg("MAXLEN").arg("~").arg(n);
        }
        cmd.arg("*");
        for (field, value) in fields {
            cmd.arg(field).arg(value);
        }
        cmd.query_async::<Value>(&mut conn).await.map_err(|e| {
            let error = ConnectorError::io(
                &self.shared.connector,
                format!("cannot add to `{topic}`: {e}"),
            );
            if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError) {
                ConnectorError::permanent(
                    &self.shared.connector,
                    format!("cannot add to `{topic}`: {e}"),
                )
                .caused_by(e)
            } else {
                error.caused_by(e)
            }
        })?;
        Ok(())
    }
}

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
        let mut conn = self.shared.get().await?;
        let mut cmd = redis::cmd("XADD");
        cmd.arg(topic);
        if let Some(n) = self.maxlen {
            cmd.arg("MAXLEN").arg("~").arg(n);
        }
        cmd.arg("*");
        for (field, value) in binding::encode(event) {
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

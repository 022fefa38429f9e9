//! Keys that expire, for the replicas to agree on (deduplication marks, schedule claims):
//! `SET key 1 NX PX ttl` claims, `EXISTS` looks up. Redis expires them itself.

use crate::*;

/// The key store of a Redis connector: keys under `fnbroker:<namespace>:`.
pub(crate) struct RedisKeys {
    pub(crate) shared: Arc<Shared>,
    pub(crate) prefix: String,
}

impl RedisKeys {
    fn error(&self, what: &str, e: redis::RedisError) -> ConnectorError {
        ConnectorError::io(&self.shared.connector, format!("cannot {what} a key: {e}")).caused_by(e)
    }
}

#[async_trait]
impl fnbroker_core::KeyStore for RedisKeys {
    async fn contains(&self, key: &str) -> Result<bool, ConnectorError> {
        let mut conn = self.shared.get().await?;
        redis::cmd("EXISTS")
            .arg(format!("{}{key}", self.prefix))
            .query_async::<u64>(&mut conn)
            .await
            .map(|n| n > 0)
            .map_err(|e| self.error("look up", e))
    }

    async fn insert(&self, key: &str, ttl: Duration) -> Result<bool, ConnectorError> {
        let mut conn = self.shared.get().await?;
        let millis = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        redis::cmd("SET")
            .arg(format!("{}{key}", self.prefix))
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(millis)
            .query_async::<Option<String>>(&mut conn)
            .await
            .map(|set| set.is_some())
            .map_err(|e| self.error("set", e))
    }
}

//! Keys that expire, for the replicas to agree on (deduplication marks, schedule claims), in a
//! small table fnbroker creates: `fnbroker_keys (key, expires_at)`. A claim is one `INSERT ...
//! ON CONFLICT DO UPDATE ... WHERE` the held key has expired, so exactly one replica sets it;
//! expired rows are deleted now and then by whoever inserts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use fnbroker_core::ConnectorError;
use tokio::sync::OnceCell;

use crate::sink::PostgresSink;

/// The table, created when first used.
const CREATE: &str = "CREATE TABLE IF NOT EXISTS fnbroker_keys (\
    key text PRIMARY KEY, expires_at timestamptz NOT NULL)";

/// Expired rows are deleted on one insert in this many.
const SWEEP_EVERY: u64 = 1000;

/// The key store of a PostgreSQL connector: keys under `<namespace>:`.
pub(crate) struct PostgresKeys {
    pub(crate) sql: PostgresSink,
    pub(crate) prefix: String,
    pub(crate) created: OnceCell<()>,
    pub(crate) inserts: AtomicU64,
}

impl PostgresKeys {
    async fn table(&self) -> Result<(), ConnectorError> {
        self.created
            .get_or_try_init(|| async {
                self.sql
                    .with_client("cannot create the table fnbroker_keys", async |c| {
                        c.batch_execute(CREATE).await
                    })
                    .await
            })
            .await
            .map(|_| ())
    }
}

#[async_trait]
impl fnbroker_core::KeyStore for PostgresKeys {
    async fn contains(&self, key: &str) -> Result<bool, ConnectorError> {
        self.table().await?;
        let key = format!("{}{key}", self.prefix);
        self.sql
            .with_client("cannot look up a key", async |c| {
                c.query_opt(
                    "SELECT 1 FROM fnbroker_keys WHERE key = $1 AND expires_at > now()",
                    &[&key],
                )
                .await
                .map(|row| row.is_some())
            })
            .await
    }

    async fn insert(&self, key: &str, ttl: Duration) -> Result<bool, ConnectorError> {
        self.table().await?;
        let key = format!("{}{key}", self.prefix);
        let millis = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1);
        let sweep = self
            .inserts
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(SWEEP_EVERY);
        self.sql
            .with_client("cannot set a key", async |c| {
                if sweep {
                    c.execute("DELETE FROM fnbroker_keys WHERE expires_at <= now()", &[])
                        .await?;
                }
                c.execute(
                    "INSERT INTO fnbroker_keys (key, expires_at) \
                     VALUES ($1, now() + $2::bigint * interval '1 millisecond') \
                     ON CONFLICT (key) DO UPDATE SET expires_at = EXCLUDED.expires_at \
                     WHERE fnbroker_keys.expires_at <= now()",
                    &[&key, &millis],
                )
                .await
                .map(|rows| rows == 1)
            })
            .await
    }
}

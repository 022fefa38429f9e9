//! Acknowledgements: `XACK` once delivered or dead-lettered, and held entries kept from others.

use crate::*;

/// Acknowledges entries: `XACK` once delivered or dead-lettered; the idle time of held ones reset.
pub(crate) struct RedisSettler {
    pub(crate) spec: Arc<Spec>,
    pub(crate) shared: Arc<Shared>,
    /// Entries to deliver again after their delay (read by the consume loop).
    pub(crate) retries: mpsc::UnboundedSender<(String, Instant)>,
}

#[async_trait]
impl Settler for RedisSettler {
    type Token = String;

    async fn settle(&self, id: &String, settlement: Settlement) {
        match settlement {
            Settlement::Delivered { .. } | Settlement::Failed { .. } => {}
            // Left pending, and claimed again by this consumer once the delay is over (the
            // group counts the delivery); if the loop has stopped, read again at this
            // replica's restart, or claimed by another after `claim_after`.
            Settlement::Retry { delay } => {
                let _ = self.retries.send((id.clone(), Instant::now() + delay));
                return;
            }
            // Left pending: read again at this replica's restart.
            Settlement::Released => return,
        }
        let acked = async {
            let mut conn = self.shared.get().await.map_err(|e| e.to_string())?;
            redis::cmd("XACK")
                .arg(&self.spec.stream)
                .arg(&self.spec.group)
                .arg(id)
                .query_async::<Value>(&mut conn)
                .await
                .map_err(|e| e.to_string())
        };
        if let Err(e) = acked.await {
            tracing::warn!(connector = %self.spec.connector, stream = %self.spec.stream, error = %e, "cannot acknowledge; the entry stays pending and comes back");
        }
    }

    async fn extend(&self, id: &String) {
        let Ok(mut conn) = self.shared.get().await else {
            return;
        };
        let reset: Result<Value, RedisError> = redis::cmd("XCLAIM")
            .arg(&self.spec.stream)
            .arg(&self.spec.group)
            .arg(&self.spec.consumer)
            .arg(0)
            .arg(id)
            .arg("JUSTID")
            .query_async(&mut conn)
            .await;
        if let Err(e) = reset {
            tracing::debug!(connector = %self.spec.connector, error = %e, "cannot reset an entry's idle time");
        }
    }
}

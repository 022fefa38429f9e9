//! What a connector's subscriptions have waiting at their brokers (consumer lag), as the brokers
//! tell it, and whether one is stuck: messages waiting and none taken for a while. Sources
//! update their entries now and then (Kafka from librdkafka's statistics, JetStream from the
//! consumer's info, AMQP from the queue's depth); `/metrics` and `/readyz` read them.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// How often [`Backlogs::watch`] reads a backlog from its broker.
pub const WATCH_EVERY: Duration = Duration::from_secs(5);

/// One subscription (a Kafka partition, a JetStream consumer, an AMQP queue).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backlog {
    /// The topic, `stream/consumer` or queue.
    pub source: String,
    /// The partition (Kafka), else `None`.
    pub partition: Option<i32>,
    /// Messages waiting at the broker for this subscription.
    pub messages: u64,
    /// Since when messages have been waiting with none taken; `None` while it makes progress.
    pub stalled_since: Option<Instant>,
}

impl Backlog {
    /// How long it has had messages waiting and taken none, at `now`.
    pub fn stalled_for(&self, now: Instant) -> Duration {
        self.stalled_since
            .map_or(Duration::ZERO, |since| now.duration_since(since))
    }
}

/// A subscription's key: source and partition.
type Key = (String, Option<i32>);

/// The backlogs of one connector's subscriptions, each with the count of messages taken when it
/// was last updated.
#[derive(Debug, Default)]
pub struct Backlogs {
    entries: Mutex<BTreeMap<Key, (Backlog, u64)>>,
}

impl Backlogs {
    /// Records that `source` (`partition`) has `messages` waiting, and that `taken` messages
    /// were taken from it so far (any count that grows as messages are taken: an offset, a
    /// delivered sequence, a counter). No growth while messages wait is a stall.
    pub fn update(&self, source: &str, partition: Option<i32>, messages: u64, taken: u64) {
        self.update_at(source, partition, messages, taken, Instant::now());
    }

    fn update_at(
        &self,
        source: &str,
        partition: Option<i32>,
        messages: u64,
        taken: u64,
        now: Instant,
    ) {
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        let key = (source.to_string(), partition);
        let previous = entries.get(&key).cloned();
        let stalled_since = match previous {
            Some((before, taken_before)) if messages > 0 && taken == taken_before => {
                Some(before.stalled_since.unwrap_or(now))
            }
            _ => None,
        };
        entries.insert(
            key,
            (
                Backlog {
                    source: source.to_string(),
                    partition,
                    messages,
                    stalled_since,
                },
                taken,
            ),
        );
    }

    /// Forgets `source` (a subscription closed, a partition revoked).
    pub fn remove(&self, source: &str, partition: Option<i32>) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.remove(&(source.to_string(), partition));
        }
    }

    /// Reads the backlog of `source` with `read` every [`WATCH_EVERY`] until `stop` fires, then
    /// forgets it. `read` gives what [`Backlogs::update`] takes (the messages waiting, and a
    /// count that grows as messages are taken), or `None` when the broker cannot say this time.
    pub async fn watch<F, Fut>(&self, source: &str, stop: &CancellationToken, mut read: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Option<(u64, u64)>>,
    {
        let mut tick = tokio::time::interval(WATCH_EVERY);
        loop {
            let reading = tokio::select! {
                () = stop.cancelled() => break,
                reading = async {
                    tick.tick().await;
                    read().await
                } => reading,
            };
            if let Some((messages, taken)) = reading {
                self.update(source, None, messages, taken);
            }
        }
        self.remove(source, None);
    }

    /// Every entry now.
    pub fn all(&self) -> Vec<Backlog> {
        self.entries
            .lock()
            .map(|e| e.values().map(|(b, _)| b.clone()).collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_messages_with_nothing_taken_are_a_stall() {
        let b = Backlogs::default();
        let t0 = Instant::now();
        b.update_at("orders", Some(0), 10, 5, t0);
        assert_eq!(b.all()[0].stalled_for(t0), Duration::ZERO, "first sight");
        b.update_at("orders", Some(0), 12, 5, t0 + Duration::from_secs(5));
        b.update_at("orders", Some(0), 12, 5, t0 + Duration::from_secs(10));
        assert_eq!(
            b.all()[0].stalled_for(t0 + Duration::from_secs(10)),
            Duration::from_secs(5),
            "stalled since the second look"
        );
        b.update_at("orders", Some(0), 11, 6, t0 + Duration::from_secs(15));
        assert_eq!(b.all()[0].stalled_since, None, "progress");
        b.update_at("orders", Some(0), 0, 6, t0 + Duration::from_secs(20));
        b.update_at("orders", Some(0), 0, 6, t0 + Duration::from_secs(25));
        assert_eq!(
            b.all()[0].stalled_since,
            None,
            "nothing waiting is no stall"
        );
        b.remove("orders", Some(0));
        assert!(b.all().is_empty());
    }
}

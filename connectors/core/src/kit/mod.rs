//! The connector kit: the parts every broker connector shares, so that each connector crate is
//! left with its protocol and nothing else.
//!
//! # Acknowledgements: [`Acker`]
//!
//! A connector gives every message an [`AckHandle`](crate::AckHandle) built by its [`Acker`]. Settling the handle
//! (or dropping it) sends the settlement to one task per source, which applies it to the broker
//! with the connector's [`Settler`] (`basic.ack`, a JetStream `+ACK`, a PUBACK), many at once so
//! that one round trip does not hold the next. That task is owned: [`AckerTask::finish`] waits
//! until every handle that was given out was settled or dropped and every acknowledgement it
//! caused was sent. A source calls it in [`Source::close`](crate::Source::close) *before* it
//! closes its connection, so a clean stop acknowledges everything that finished and a restart
//! redelivers nothing that was delivered.
//!
//! # Leases
//!
//! Brokers that redeliver what is not acknowledged within a deadline (JetStream's `ack_wait`,
//! SQS-like visibility timeouts) would hand a message to another consumer while fnbroker still
//! holds it (its deliveries retry in memory, or wait behind an ordered key). With
//! [`Acker::with_lease`], the task remembers every message handed out and not yet settled and
//! calls [`Settler::extend`] for each of them on an interval, so the broker never redelivers a
//! message fnbroker still works on.
//!
//! # Reconnecting: [`Backoff`]
//!
//! One jittered exponential schedule for every connector's reconnect loop.
//!
//! # The channel-backed source: [`ChannelSource`]
//!
//! A connector's consume loop runs on a task of its own and sends [`Incoming`](crate::Incoming) messages into a
//! bounded channel; [`ChannelSource`] is the [`Source`](crate::Source) the engine reads. Its
//! `next` is cancel-safe (a message is either returned or still in the channel), and its `close`
//! stops the loop, releases what it fetched but never handed out, and waits for it; the loop
//! finishes its acknowledgements (with [`AckerTask::finish`]) before it returns.

mod ack;
mod backoff;
mod channel;
mod link;

use std::sync::Arc;

pub use ack::{Acker, AckerTask, Settler};
pub use backoff::{Backoff, exponential_ceiling, full_jitter, sleep_unless_stopped};
pub use channel::ChannelSource;
pub use link::Link;

/// The ordering key of a message (see [`Incoming::key`](crate::Incoming::key)): a hash of
/// what orders it in its broker (an MQTT topic, a NATS subject, an AMQP routing key, a Kafka
/// topic and partition).
pub fn ordering_key(parts: impl std::hash::Hash) -> u64 {
    use std::hash::Hasher;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    parts.hash(&mut h);
    h.finish()
}

/// One unit of a shared count (subscriptions open, consumers reading), held while the guard
/// lives: added when it is made, taken back when it is dropped. A task aborted or a source
/// dropped without being closed (a drain that ran out of time) still takes its unit back, so a
/// readiness that compares such counts never stays wrong for good.
#[must_use = "the unit is taken back when the guard is dropped"]
#[derive(Debug)]
pub struct Counted(Arc<std::sync::atomic::AtomicUsize>);

impl Counted {
    /// Adds one to `count` until the guard is dropped.
    pub fn new(count: &Arc<std::sync::atomic::AtomicUsize>) -> Self {
        count.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Self(Arc::clone(count))
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// How many messages a source's channel holds at most, between its consume loop and the engine,
/// whatever the subscription's `max_in_flight`: a bound on memory per subscription.
pub const MAX_SOURCE_BUFFER: usize = 1024;

/// The size of a source's channel for a subscription with `max_in_flight`.
pub fn source_buffer(max_in_flight: usize) -> usize {
    max_in_flight.clamp(1, MAX_SOURCE_BUFFER)
}

/// A name for this replica's consumer on a broker, `fnbroker-<connector>-<hostname>`
/// (`HOSTNAME`, a Kubernetes pod's name, else the kernel's host name): stable across restarts,
/// so the broker keeps what it holds for it (an MQTT session, a Redis consumer's pending
/// entries), and different on every replica, so replicas sharing one configuration do not
/// knock each other off the broker or take each other's messages. Characters outside
/// `[A-Za-z0-9_-]` become `-`.
pub fn replica_name(connector: &str) -> String {
    replica_name_on(connector, &hostname())
}

fn replica_name_on(connector: &str, hostname: &str) -> String {
    format!("fnbroker-{connector}-{hostname}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// This replica's host name: `HOSTNAME` (a Kubernetes pod's name), else the kernel's.
fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use async_trait::async_trait;

    use crate::contract::{AckHandle, Incoming, Settlement};

    /// A unit held across an await comes back when the future holding it is dropped midway
    /// (a task aborted, a drain that ran out of time), not only when it runs to its end.
    #[tokio::test(start_paused = true)]
    async fn a_counted_unit_comes_back_when_its_future_is_dropped() {
        let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let held = {
            let count = Arc::clone(&count);
            tokio::spawn(async move {
                let _unit = Counted::new(&count);
                std::future::pending::<()>().await;
            })
        };
        tokio::task::yield_now().await;
        assert_eq!(count.load(std::sync::atomic::Ordering::Acquire), 1);
        held.abort();
        let _ = held.await;
        assert_eq!(count.load(std::sync::atomic::Ordering::Acquire), 0);
    }
    use crate::Source;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Log(Arc<Mutex<Vec<String>>>);

    #[async_trait]
    impl Settler for Log {
        type Token = u32;
        async fn settle(&self, token: &u32, settlement: Settlement) {
            // A broker round trip.
            tokio::time::sleep(Duration::from_millis(10)).await;
            let name = match settlement {
                Settlement::Delivered { .. } => "ack",
                Settlement::Failed { .. } => "term",
                Settlement::Retry { .. } => "retry",
                Settlement::Released => "release",
            };
            self.0.lock().expect("lock").push(format!("{name} {token}"));
        }
        async fn extend(&self, token: &u32) {
            self.0.lock().expect("lock").push(format!("extend {token}"));
        }
    }

    fn sorted(log: &Arc<Mutex<Vec<String>>>) -> Vec<String> {
        let mut v = log.lock().expect("lock").clone();
        v.sort();
        v
    }

    #[test]
    fn the_replica_name_names_the_connector_and_the_host() {
        assert_eq!(
            replica_name_on("iot", "pod-7f9c.example"),
            "fnbroker-iot-pod-7f9c-example"
        );
    }

    #[test]
    fn backoff_grows_to_its_cap_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let ceilings = [100, 200, 400, 800, 1000, 1000];
        for ceiling in ceilings {
            assert!(b.next_delay() <= Duration::from_millis(ceiling));
        }
        b.reset();
        let firsts: std::collections::HashSet<Duration> = (0..20)
            .map(|_| {
                let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
                b.next_delay()
            })
            .collect();
        assert!(firsts.len() > 5, "no jitter: {firsts:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn finish_waits_for_every_acknowledgement() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let (acker, task) = Acker::new(Log(Arc::clone(&log)));
        let a = acker.handle(1);
        let b = acker.handle(2);
        drop(acker);
        a.settle(Settlement::Delivered { reply: None });
        drop(b);
        task.finish().await;
        assert_eq!(sorted(&log), vec!["ack 1", "release 2"]);
    }

    #[tokio::test(start_paused = true)]
    async fn leases_are_extended_until_settled() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let (acker, task) = Acker::with_lease(Log(Arc::clone(&log)), Duration::from_secs(5));
        let a = acker.handle(1);
        let b = acker.handle(2);
        tokio::time::sleep(Duration::from_millis(5001)).await;
        a.settle(Settlement::Delivered { reply: None });
        tokio::time::sleep(Duration::from_millis(5001)).await;
        b.settle(Settlement::Failed {
            reason: "x".into(),
            timed_out: false,
        });
        tokio::time::sleep(Duration::from_secs(20)).await;
        drop(acker);
        task.finish().await;
        assert_eq!(
            sorted(&log),
            vec!["ack 1", "extend 1", "extend 2", "extend 2", "term 2"]
        );
    }

    /// `Source::next` is cancel safe: a call dropped by a `select!` loses no message.
    #[tokio::test(start_paused = true)]
    async fn next_is_cancel_safe() {
        let mut source = ChannelSource::spawn(4, move |tx, stop| async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let event = crate::event::normalize(crate::event::PlainMessage::default(), vec![]);
            let incoming = Incoming {
                event,
                origin: crate::Origin::Plain,
                key: 7,
                redeliveries: 0,
                size: 0,
                ack: AckHandle::none(),
            };
            let _ = tx.send(incoming).await;
            stop.cancelled().await;
        });
        // Cancelled while waiting, before the message exists...
        tokio::select! {
            _ = source.next() => panic!("no message yet"),
            () = tokio::time::sleep(Duration::from_millis(10)) => {}
        }
        // ...and the message still arrives on the next call.
        let got = source.next().await.expect("the message");
        assert_eq!(got.key, 7);
        Box::new(source).close().await;
    }

    #[tokio::test(start_paused = true)]
    async fn closing_a_channel_source_releases_what_was_never_handed_out() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let closed = Arc::new(Mutex::new(false));
        let log2 = Arc::clone(&log);
        let closed2 = Arc::clone(&closed);
        let mut source = Box::new(ChannelSource::spawn(4, move |tx, stop| async move {
            let (acker, task) = Acker::new(Log(log2));
            for i in 0..3 {
                let event = crate::event::normalize(crate::event::PlainMessage::default(), vec![]);
                let incoming = Incoming {
                    event,
                    origin: crate::Origin::Plain,
                    key: 0,
                    redeliveries: 0,
                    size: 0,
                    ack: acker.handle(i),
                };
                if tx.send(incoming).await.is_err() {
                    break;
                }
            }
            stop.cancelled().await;
            drop(acker);
            task.finish().await;
            *closed2.lock().expect("lock") = true;
        }));
        let first = source.next().await.expect("a message");
        first.ack.settle(Settlement::Delivered { reply: None });
        source.close().await;
        assert!(*closed.lock().expect("lock"), "the loop finished first");
        assert_eq!(sorted(&log), vec!["ack 0", "release 1", "release 2"]);
    }
}

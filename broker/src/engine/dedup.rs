//! `delivery.dedup`: an event whose (`source`, `id`) a trigger delivered within the window is
//! acknowledged without a call. The mark is written only once the function succeeded, so a
//! failed or interrupted delivery is tried again as before: deduplication never loses an event,
//! it only spares the function what it already did. Two copies in flight at once (a redelivery
//! that overtakes its original) may both be called; a store that cannot be reached lets events
//! through, with a warning, rather than hold or drop them.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fnbroker_core::KeyStore;
use fnbroker_core::event::{AttributesReader, Event};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

/// One trigger's deduplication.
pub(crate) struct Dedup {
    window: Duration,
    store: Store,
    /// When a warning about the shared store was last logged: one per minute at most.
    warned: Mutex<Option<Instant>>,
}

enum Store {
    Memory(Mutex<Memory>),
    Shared(Arc<dyn KeyStore>),
}

/// The marks of one replica: a key's expiry, and the keys in the order they were marked, so
/// that the oldest go first when `max` is reached.
struct Memory {
    max: usize,
    until: HashMap<[u8; 16], Instant>,
    order: VecDeque<([u8; 16], Instant)>,
}

impl Memory {
    fn contains(&mut self, key: &[u8; 16], now: Instant) -> bool {
        self.expire(now);
        self.until.get(key).is_some_and(|until| *until > now)
    }

    fn insert(&mut self, key: [u8; 16], until: Instant, now: Instant) {
        self.expire(now);
        while self.until.len() >= self.max {
            let Some((oldest, _)) = self.order.pop_front() else {
                break;
            };
            self.until.remove(&oldest);
        }
        self.until.insert(key, until);
        self.order.push_back((key, until));
    }

    /// Forgets what expired; a key marked again keeps its newest expiry.
    fn expire(&mut self, now: Instant) {
        while let Some((key, until)) = self.order.front().copied() {
            if until > now {
                break;
            }
            self.order.pop_front();
            if self.until.get(&key).is_some_and(|u| *u <= now) {
                self.until.remove(&key);
            }
        }
    }
}

/// The event's mark: a hash of its `source` and `id` (128 bits: a collision in a window of
/// marks is not to be expected in the life of the universe), so that a key is small whatever
/// the attributes' sizes.
pub(crate) fn key(event: &Event) -> [u8; 16] {
    let mut hash = Sha256::new();
    hash.update(event.source().as_str().as_bytes());
    hash.update([0]);
    hash.update(event.id().as_bytes());
    let digest = hash.finalize();
    let mut key = [0u8; 16];
    key.copy_from_slice(&digest[..16]);
    key
}

impl Dedup {
    /// Marks in this replica's memory, at most `max_entries`.
    pub(crate) fn memory(window: Duration, max_entries: usize) -> Self {
        Self {
            window,
            store: Store::Memory(Mutex::new(Memory {
                max: max_entries.max(1),
                until: HashMap::new(),
                order: VecDeque::new(),
            })),
            warned: Mutex::new(None),
        }
    }

    /// Marks in a store the replicas share.
    pub(crate) fn shared(window: Duration, store: Arc<dyn KeyStore>) -> Self {
        Self {
            window,
            store: Store::Shared(store),
            warned: Mutex::new(None),
        }
    }

    /// Whether the event of `key` ([`key`]) was delivered within the window.
    pub(crate) async fn seen(&self, trigger: &str, key: [u8; 16]) -> bool {
        match &self.store {
            Store::Memory(memory) => memory
                .lock()
                .is_ok_and(|mut m| m.contains(&key, Instant::now())),
            Store::Shared(store) => match store.contains(&hex::encode(key)).await {
                Ok(seen) => seen,
                Err(e) => {
                    self.warn(trigger, "cannot look up", &e);
                    false
                }
            },
        }
    }

    /// Marks the event of `key` as delivered.
    pub(crate) async fn mark(&self, trigger: &str, key: [u8; 16]) {
        match &self.store {
            Store::Memory(memory) => {
                let now = Instant::now();
                if let Ok(mut m) = memory.lock() {
                    m.insert(key, now + self.window, now);
                }
            }
            Store::Shared(store) => {
                if let Err(e) = store.insert(&hex::encode(key), self.window).await {
                    self.warn(trigger, "cannot mark", &e);
                }
            }
        }
    }

    fn warn(&self, trigger: &str, what: &str, error: &fnbroker_core::ConnectorError) {
        let now = Instant::now();
        let Ok(mut last) = self.warned.lock() else {
            return;
        };
        if last.is_some_and(|at| now.duration_since(at) < Duration::from_secs(60)) {
            return;
        }
        *last = Some(now);
        tracing::warn!(trigger, %error, "deduplication {what} its store: events go through unchecked meanwhile (duplicates possible, none lost)");
    }
}

#[cfg(test)]
mod tests {
    use fnbroker_core::event::{self, AttributesWriter};

    use super::*;

    fn event(source: &str, id: &str) -> Event {
        let mut e = event::normalize(
            event::PlainMessage {
                kind: "http",
                connector: "web",
                topic: "/gh",
                ..Default::default()
            },
            Vec::new(),
        );
        e.set_source(source);
        e.set_id(id);
        e
    }

    #[tokio::test(start_paused = true)]
    async fn a_mark_holds_for_the_window_and_source_and_id_both_count() {
        let d = Dedup::memory(Duration::from_secs(600), 10);
        let push = event("https://github.com", "72d3162e");
        assert!(!d.seen("t", key(&push)).await);
        d.mark("t", key(&push)).await;
        assert!(d.seen("t", key(&push)).await);
        assert!(
            !d.seen("t", key(&event("https://github.com", "other")))
                .await
        );
        assert!(
            !d.seen("t", key(&event("https://example.com", "72d3162e")))
                .await
        );
        tokio::time::advance(Duration::from_secs(599)).await;
        assert!(d.seen("t", key(&push)).await);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(!d.seen("t", key(&push)).await, "forgotten after the window");
    }

    #[tokio::test(start_paused = true)]
    async fn the_oldest_marks_go_first_past_max_entries() {
        let d = Dedup::memory(Duration::from_secs(600), 3);
        for i in 0..5 {
            d.mark("t", key(&event("/s", &i.to_string()))).await;
            tokio::time::advance(Duration::from_millis(10)).await;
        }
        let mut seen = Vec::new();
        for i in 0..5 {
            seen.push(d.seen("t", key(&event("/s", &i.to_string()))).await);
        }
        assert_eq!(seen, [false, false, true, true, true]);
        // A mark made again outlives its first expiry.
        let again = event("/s", "4");
        tokio::time::advance(Duration::from_secs(300)).await;
        d.mark("t", key(&again)).await;
        tokio::time::advance(Duration::from_secs(400)).await;
        assert!(d.seen("t", key(&again)).await);
        let Store::Memory(m) = &d.store else {
            panic!("memory")
        };
        assert!(m.lock().expect("lock").until.len() <= 3);
    }
}

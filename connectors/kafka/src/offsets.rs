//! Which offsets may be committed: per partition, only up to the lowest unfinished message.
//!
//! Messages finish out of order (deliveries run in parallel, retries take time), but a Kafka
//! commit says "everything before this offset is done". So each partition keeps its in-flight
//! offsets in order, and the committable offset advances only over a prefix of finished ones, as
//! Vector's ordered finalizer does. A message that is released (not finished) holds its
//! partition's commits back until it is redelivered after a restart or a rebalance: duplicates are
//! possible, losses are not.
//!
//! Each assignment of a partition gets a new generation: the settlement of a message consumed
//! under an earlier assignment (before a revoke) is ignored, so it can never commit over the
//! progress of the partition's new owner.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// A topic and a partition. The topic is shared (one allocation per topic, not per record).
pub(crate) type Partition = (Arc<str>, i32);

#[derive(Debug, Default)]
struct State {
    generation: u64,
    /// In-flight offsets, and whether each finished.
    pending: BTreeMap<i64, bool>,
    /// The next offset to commit (one past the last finished prefix).
    committable: Option<i64>,
    /// What was committed last.
    committed: Option<i64>,
}

/// The offset bookkeeping of one consumer.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    parts: HashMap<Partition, State>,
    generations: u64,
}

impl Tracker {
    /// Records a message handed to the engine; returns its partition's generation.
    pub(crate) fn track(&mut self, key: &Partition, offset: i64) -> u64 {
        let state = match self.parts.get_mut(key) {
            Some(state) => state,
            None => {
                self.generations += 1;
                let state = State {
                    generation: self.generations,
                    ..State::default()
                };
                self.parts.entry(key.clone()).or_insert(state)
            }
        };
        state.pending.insert(offset, false);
        state.generation
    }

    /// The first offset of `key` not finished yet, as far as this consumer knows: what a
    /// commit would say now (before the group's first commit, the lowest record taken).
    pub(crate) fn position(&self, key: &Partition) -> Option<i64> {
        let state = self.parts.get(key)?;
        state
            .committable
            .or(state.committed)
            .or_else(|| state.pending.keys().next().copied())
    }

    /// Records the end of a message: `finished` (delivered, dead-lettered or dropped) lets the
    /// commit move past it; not finished (released) holds it back.
    pub(crate) fn settle(&mut self, key: &Partition, generation: u64, offset: i64, finished: bool) {
        let Some(state) = self.parts.get_mut(key) else {
            return;
        };
        if state.generation != generation || !finished {
            return;
        }
        if let Some(done) = state.pending.get_mut(&offset) {
            *done = true;
        }
        while let Some((&off, &done)) = state.pending.first_key_value() {
            if !done {
                break;
            }
            state.pending.pop_first();
            state.committable = Some(off + 1);
        }
    }

    /// Forgets `offset` and everything after it in the partition (the consumer is sent back to
    /// `offset` to read them again): their old copies' settlements change nothing, and the new
    /// copies are tracked as they come.
    pub(crate) fn rewind(&mut self, key: &Partition, generation: u64, offset: i64) {
        if let Some(state) = self.parts.get_mut(key)
            && state.generation == generation
        {
            state.pending.retain(|&o, _| o < offset);
        }
    }

    /// The offsets to commit now (those that moved since the last commit), marked as committed.
    /// With `only`, just those partitions.
    pub(crate) fn take_commits(&mut self, only: Option<&[Partition]>) -> Vec<(Partition, i64)> {
        let mut out = Vec::new();
        for (key, state) in &mut self.parts {
            if only.is_some_and(|o| !o.contains(key)) {
                continue;
            }
            if let Some(c) = state.committable
                && state.committed != Some(c)
            {
                state.committed = Some(c);
                out.push((key.clone(), c));
            }
        }
        out
    }

    /// Marks commits that failed as not done, so the next commit sends them again.
    pub(crate) fn failed(&mut self, commits: &[(Partition, i64)]) {
        for (key, offset) in commits {
            if let Some(state) = self.parts.get_mut(key)
                && state.committed == Some(*offset)
            {
                state.committed = None;
            }
        }
    }

    /// Forgets revoked partitions, returning what of them may still be committed.
    pub(crate) fn revoke(&mut self, partitions: &[Partition]) -> Vec<(Partition, i64)> {
        let commits = self.take_commits(Some(partitions));
        for p in partitions {
            self.parts.remove(p);
        }
        commits
    }

    /// How many messages are in flight, all partitions together.
    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> usize {
        self.parts.values().map(|s| s.pending.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(n: i32) -> Partition {
        (Arc::from("t"), n)
    }

    #[test]
    fn commits_only_the_finished_prefix() {
        let mut t = Tracker::default();
        let g = t.track(&p(0), 10);
        t.track(&p(0), 11);
        t.track(&p(0), 12);
        t.settle(&p(0), g, 11, true);
        t.settle(&p(0), g, 12, true);
        assert!(t.take_commits(None).is_empty(), "10 is unfinished");
        t.settle(&p(0), g, 10, true);
        assert_eq!(t.take_commits(None), vec![(p(0), 13)]);
        assert!(t.take_commits(None).is_empty(), "nothing new");
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn released_messages_hold_the_partition_back() {
        let mut t = Tracker::default();
        let g = t.track(&p(0), 1);
        t.track(&p(0), 2);
        t.settle(&p(0), g, 1, false);
        t.settle(&p(0), g, 2, true);
        assert!(t.take_commits(None).is_empty());
    }

    #[test]
    fn a_rewound_partition_commits_only_after_the_record_is_read_again() {
        let mut t = Tracker::default();
        let g = t.track(&p(0), 1);
        t.track(&p(0), 2);
        t.track(&p(0), 3);
        t.settle(&p(0), g, 1, true);
        t.rewind(&p(0), g, 2);
        // The old copy of 3 finishing changes nothing: 2 is read again first.
        t.settle(&p(0), g, 3, true);
        assert_eq!(t.take_commits(None), vec![(p(0), 2)]);
        t.track(&p(0), 2);
        t.track(&p(0), 3);
        t.settle(&p(0), g, 2, true);
        t.settle(&p(0), g, 3, true);
        assert_eq!(t.take_commits(None), vec![(p(0), 4)]);
    }

    #[test]
    fn partitions_are_independent() {
        let mut t = Tracker::default();
        let g0 = t.track(&p(0), 5);
        let g1 = t.track(&p(1), 7);
        t.settle(&p(1), g1, 7, true);
        assert_eq!(t.take_commits(None), vec![(p(1), 8)]);
        t.settle(&p(0), g0, 5, true);
        assert_eq!(t.take_commits(None), vec![(p(0), 6)]);
    }

    #[test]
    fn revoke_commits_what_finished_and_ignores_late_settlements() {
        let mut t = Tracker::default();
        let g = t.track(&p(0), 1);
        t.track(&p(0), 2);
        t.settle(&p(0), g, 1, true);
        assert_eq!(t.revoke(&[p(0)]), vec![(p(0), 2)]);
        // Reassigned later: a new generation; the old in-flight message settling changes nothing.
        let g2 = t.track(&p(0), 2);
        assert_ne!(g, g2);
        t.settle(&p(0), g, 2, true);
        assert!(t.take_commits(None).is_empty());
        t.settle(&p(0), g2, 2, true);
        assert_eq!(t.take_commits(None), vec![(p(0), 3)]);
    }
}

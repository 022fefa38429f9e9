//! Which transactions are finished: the slot's confirmed position may move only over the
//! finished prefix of the transactions read (every event made of them settled as delivered or
//! dead-lettered), so that whatever a crash interrupts is read again.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fnbroker_core::{AckHandle, Settlement};
use pgwire_replication::Lsn;
use tokio::sync::{Notify, watch};

/// A transaction of the current session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TxnId {
    session: u64,
    seq: u64,
}

#[derive(Debug)]
struct Txn {
    seq: u64,
    /// Its end position, once its commit was read.
    end: Option<Lsn>,
    /// Events made of it and not settled yet.
    open: usize,
    /// An event was released or handed back: the transaction is not finished this session.
    held: bool,
}

#[derive(Debug, Default)]
struct State {
    session: u64,
    next_seq: u64,
    txns: VecDeque<Txn>,
    /// The delay of a hand-back, once one happened this session.
    handed_back: Option<Duration>,
    /// Whether the position moved this session.
    moved: bool,
}

/// See the module documentation. Shared by the replication task and the events' handles.
#[derive(Debug)]
pub(crate) struct Tracker {
    state: Mutex<State>,
    flushed: watch::Sender<Lsn>,
    handed_back: Notify,
}

impl Default for Tracker {
    fn default() -> Self {
        Self {
            state: Mutex::default(),
            flushed: watch::Sender::new(Lsn::ZERO),
            handed_back: Notify::new(),
        }
    }
}

impl Tracker {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new session: what the last one left unfinished is read again, and settlements of its
    /// events no longer count.
    pub(crate) fn restart(&self) {
        let mut s = self.lock();
        s.session += 1;
        s.txns.clear();
        s.handed_back = None;
        s.moved = false;
    }

    /// Whether the position moved this session.
    pub(crate) fn moved(&self) -> bool {
        self.lock().moved
    }

    /// The finished position, as it changes.
    pub(crate) fn watch(&self) -> watch::Receiver<Lsn> {
        self.flushed.subscribe()
    }

    /// The finished position now.
    pub(crate) fn flushed(&self) -> Lsn {
        *self.flushed.borrow()
    }

    /// Resolves once an event was handed back this session, with its delay.
    pub(crate) async fn handed_back(&self) -> Duration {
        loop {
            let notified = self.handed_back.notified();
            if let Some(delay) = self.lock().handed_back {
                return delay;
            }
            notified.await;
        }
    }

    /// A transaction starts (its Begin was read).
    pub(crate) fn begin(&self) -> TxnId {
        let mut s = self.lock();
        let seq = s.next_seq;
        s.next_seq += 1;
        s.txns.push_back(Txn {
            seq,
            end: None,
            open: 0,
            held: false,
        });
        TxnId {
            session: s.session,
            seq,
        }
    }

    /// The handle of one more event of `txn`.
    pub(crate) fn hold(self: &Arc<Self>, txn: TxnId) -> AckHandle {
        if let Some(t) = self.lock().find(txn) {
            t.open += 1;
        }
        let tracker = Arc::clone(self);
        AckHandle::new(move |settlement| tracker.settle(txn, settlement))
    }

    /// `txn`'s commit was read: it ends at `end`.
    pub(crate) fn commit(&self, txn: TxnId, end: Lsn) {
        let mut s = self.lock();
        if let Some(t) = s.find(txn) {
            t.end = Some(end);
        }
        self.advance(&mut s);
    }

    /// The stream is between transactions at `wal_end`, with every transaction before it
    /// finished: the position may move there (WAL of tables not captured is not kept).
    pub(crate) fn idle_at(&self, wal_end: Lsn) {
        let mut s = self.lock();
        if s.txns.is_empty() && wal_end > *self.flushed.borrow() {
            s.moved = true;
            self.flushed.send_replace(wal_end);
        }
    }

    fn settle(&self, txn: TxnId, settlement: Settlement) {
        let mut s = self.lock();
        let (held, handed_back) = match settlement {
            Settlement::Delivered { .. } | Settlement::Failed { .. } => (false, None),
            Settlement::Retry { delay } => (true, Some(delay)),
            Settlement::Released => (true, None),
        };
        let Some(t) = s.find(txn) else { return };
        t.open = t.open.saturating_sub(1);
        t.held |= held;
        if let Some(delay) = handed_back {
            s.handed_back.get_or_insert(delay);
            self.handed_back.notify_waiters();
        }
        self.advance(&mut s);
    }

    fn advance(&self, s: &mut State) {
        let mut to = None;
        while let Some(front) = s.txns.front() {
            match front.end {
                Some(end) if front.open == 0 && !front.held => {
                    to = Some(end);
                    s.txns.pop_front();
                }
                _ => break,
            }
        }
        if let Some(end) = to {
            s.moved = true;
            self.flushed.send_replace(end);
        }
    }
}

impl State {
    fn find(&mut self, txn: TxnId) -> Option<&mut Txn> {
        if txn.session != self.session {
            return None;
        }
        let first = self.txns.front()?.seq;
        let index = usize::try_from(txn.seq.checked_sub(first)?).ok()?;
        self.txns.get_mut(index).filter(|t| t.seq == txn.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lsn(n: u64) -> Lsn {
        Lsn::from_u64(n)
    }

    #[test]
    fn the_position_moves_over_finished_transactions_only_in_order() {
        let t = Arc::new(Tracker::default());
        t.restart();
        let a = t.begin();
        let a1 = t.hold(a);
        let a2 = t.hold(a);
        t.commit(a, lsn(100));
        let b = t.begin();
        let b1 = t.hold(b);
        t.commit(b, lsn(200));
        b1.settle(Settlement::Delivered { reply: None });
        assert_eq!(t.flushed(), Lsn::ZERO, "b is finished, a is not");
        a1.settle(Settlement::Failed {
            reason: "x".into(),
            timed_out: false,
        });
        assert_eq!(t.flushed(), Lsn::ZERO);
        a2.settle(Settlement::Delivered { reply: None });
        assert_eq!(t.flushed(), lsn(200), "a and b are finished");
    }

    #[test]
    fn a_released_event_holds_its_transaction_and_an_old_session_counts_no_more() {
        let t = Arc::new(Tracker::default());
        t.restart();
        let a = t.begin();
        let a1 = t.hold(a);
        t.commit(a, lsn(100));
        drop(a1);
        assert_eq!(t.flushed(), Lsn::ZERO);
        t.restart();
        let b = t.begin();
        let b1 = t.hold(b);
        t.commit(b, lsn(300));
        b1.settle(Settlement::Delivered { reply: None });
        assert_eq!(t.flushed(), lsn(300));
        assert!(t.moved());
    }

    #[tokio::test]
    async fn a_hand_back_asks_for_a_replay_with_its_delay() {
        let t = Arc::new(Tracker::default());
        t.restart();
        let a = t.begin();
        let a1 = t.hold(a);
        t.commit(a, lsn(100));
        a1.settle(Settlement::Retry {
            delay: Duration::from_secs(3),
        });
        assert_eq!(t.handed_back().await, Duration::from_secs(3));
        assert_eq!(t.flushed(), Lsn::ZERO);
    }
}

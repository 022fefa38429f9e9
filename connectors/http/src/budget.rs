//! Byte budgets: how much of its requests' bodies the ingress may hold at once.
//!
//! A body is charged from its first byte read until the engine takes the event made of it (or
//! the request is answered otherwise), so a function that cannot keep up, or clients that stall
//! their bodies, cost at most the budget, never memory without bound. Nothing waits for room: a
//! request that does not fit is answered `503` with `Retry-After` before more of its body is read.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A number of bytes that may be held at once.
#[derive(Debug, Clone)]
pub(crate) struct Budget {
    bytes: Arc<Semaphore>,
}

impl Budget {
    /// A budget of `bytes`.
    pub(crate) fn new(bytes: usize) -> Self {
        Self {
            bytes: Arc::new(Semaphore::new(bytes.min(Semaphore::MAX_PERMITS))),
        }
    }

    /// Makes the budget `bytes` larger.
    pub(crate) fn grow(&self, bytes: usize) {
        let room = Semaphore::MAX_PERMITS.saturating_sub(self.bytes.available_permits());
        self.bytes.add_permits(bytes.min(room));
    }

    /// Takes `bytes` of the budget, or `None` when they are not free now.
    fn take(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        let n = u32::try_from(bytes).ok()?;
        Arc::clone(&self.bytes).try_acquire_many_owned(n).ok()
    }

    /// The bytes free now.
    #[cfg(test)]
    pub(crate) fn free(&self) -> usize {
        self.bytes.available_permits()
    }
}

/// What one request holds of the budgets it was charged to; given back when dropped.
#[derive(Debug, Default)]
pub(crate) struct Held {
    permits: Vec<OwnedSemaphorePermit>,
}

impl Held {
    /// Charges `bytes` to every one of `budgets`, all or none.
    pub(crate) fn charge(&mut self, budgets: &[&Budget], bytes: usize) -> bool {
        if bytes == 0 {
            return true;
        }
        let mut taken = Vec::with_capacity(budgets.len());
        for budget in budgets {
            match budget.take(bytes) {
                Some(p) => taken.push(p),
                None => return false,
            }
        }
        self.permits.extend(taken);
        true
    }

    /// Gives back what is held of `budget`, keeping the rest.
    pub(crate) fn release(&mut self, budget: &Budget) {
        self.permits
            .retain(|p| !Arc::ptr_eq(p.semaphore(), &budget.bytes));
    }
}

/// Why a body was not read whole.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Unread {
    /// It is larger than the most a request may send.
    TooLarge,
    /// A budget has no room for it now.
    Busy,
    /// The client stopped sending, or the connection broke.
    Broken,
}

/// Reads `body` (at most `max` bytes), charging every byte to `budgets` as it arrives (the
/// whole `Content-Length` at once when the client declared it), so a body that does not fit is
/// refused before the rest of it is read.
pub(crate) async fn read(
    body: &mut axum::body::Body,
    declared: Option<usize>,
    max: usize,
    budgets: &[&Budget],
    held: &mut Held,
) -> Result<Bytes, Unread> {
    let mut charged = 0;
    if let Some(len) = declared {
        if len > max {
            return Err(Unread::TooLarge);
        }
        if !held.charge(budgets, len) {
            return Err(Unread::Busy);
        }
        charged = len;
    }
    // Each frame is copied out of the connection's read buffer (so that buffer is not kept
    // alive by a slice of it) into an allocation of its own size: what is held is what was
    // charged, with no doubling growth.
    let mut parts: Vec<Bytes> = Vec::new();
    let mut len = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            // axum's own limit (the same `max`) reports itself as an error of the body.
            if std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
            {
                Unread::TooLarge
            } else {
                Unread::Broken
            }
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if len + data.len() > max {
            return Err(Unread::TooLarge);
        }
        let more = (len + data.len()).saturating_sub(charged);
        if more > 0 {
            if !held.charge(budgets, more) {
                return Err(Unread::Busy);
            }
            charged += more;
        }
        len += data.len();
        parts.push(Bytes::copy_from_slice(&data));
    }
    Ok(match parts.len() {
        0 => Bytes::new(),
        1 => parts.remove(0),
        _ => {
            let mut whole = BytesMut::with_capacity(len);
            for part in parts {
                whole.extend_from_slice(&part);
            }
            whole.freeze()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_charge_takes_from_every_budget_or_none_and_is_given_back() {
        let route = Budget::new(10);
        let listener = Budget::new(5);
        let mut held = Held::default();
        assert!(held.charge(&[&route, &listener], 4));
        assert_eq!((route.free(), listener.free()), (6, 1));
        // The listener has 1 left: nothing is taken from the route either.
        assert!(!held.charge(&[&route, &listener], 2));
        assert_eq!((route.free(), listener.free()), (6, 1));
        drop(held);
        assert_eq!((route.free(), listener.free()), (10, 5));
        listener.grow(3);
        assert_eq!(listener.free(), 8);
    }

    #[tokio::test]
    async fn a_declared_body_that_does_not_fit_is_refused_before_it_is_read() {
        let budget = Budget::new(100);
        let mut held = Held::default();
        // The body never ends: reading it would hang, so the refusal cannot have read it.
        let body = axum::body::Body::from_stream(futures::stream::pending::<
            Result<Bytes, std::io::Error>,
        >());
        let mut body = body;
        let got = read(&mut body, Some(101), 1000, &[&budget], &mut held).await;
        assert_eq!(got, Err(Unread::Busy));
        let got = read(
            &mut axum::body::Body::from("x".repeat(50)),
            None,
            40,
            &[&budget],
            &mut held,
        )
        .await;
        assert_eq!(got, Err(Unread::TooLarge));
        let got = read(
            &mut axum::body::Body::from("x".repeat(50)),
            None,
            1000,
            &[&budget],
            &mut held,
        )
        .await;
        assert_eq!(got.map(|b| b.len()), Ok(50));
        assert_eq!(budget.free(), 50);
    }
}

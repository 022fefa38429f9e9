//! Is a function down? Outages are told apart from events that fail on their own.
//!
//! An event that fails on its own (the function answers 500 or 400 for it and 200 for others)
//! goes through its trigger's retry schedule and then to the dead letter. A function that is
//! unreachable or overloaded is an outage: spending every event's retries on it would drop or
//! dead-letter the whole stream in the first second of a restart.
//!
//! What counts toward an outage is what says something about the function rather than the
//! event: a connection that could not be made, and the answers that by their HTTP meaning are
//! about the service (429, 502, 503) count at every call. A timeout (or a gateway's 504) may
//! be one slow event, which must spend its own attempts and reach its dead letter like any
//! other failure, so timeouts count once per distinct event: one event timing out again and
//! again never makes an outage, several different events timing out do.
//!
//! A function is marked **down** when the failures of the last calls in a row weigh
//! [`DOWN_AFTER_CONSECUTIVE`], or at least half of the last [`WINDOW`] calls do (each weighing
//! as above). While it is down, deliveries hold their events without spending attempts (they
//! keep their slots, so consumption slows to a stop and the backlog stays in the broker), and
//! one of them at a time probes the function with capped, jittered backoff. The first answer
//! that is not an unavailability (a 2xx, or a per-event error) marks it **up** and wakes every
//! held delivery.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fnbroker_functions::InvokeError;
use rand::Rng;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::sync::CancellationToken;

/// Unavailability failures in a row that mark a function down.
pub(crate) const DOWN_AFTER_CONSECUTIVE: usize = 3;
/// How many recent calls the failure ratio looks at.
pub(crate) const WINDOW: usize = 20;
/// The first and the longest wait between two probes of a function that is down.
const PROBE_MIN: Duration = Duration::from_millis(100);
const PROBE_MAX: Duration = Duration::from_secs(5);

/// One call as the outage detection sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    /// The function answered (2xx, or an error about the event).
    Answered,
    /// The function could not be reached, or answered that it cannot serve (429, 502, 503).
    Service,
    /// The call ran out of time (or a gateway's did, 504): the event with this key may be slow.
    Slow(u64),
}

impl Call {
    /// How the outcome of a call counts, `event` being the key of what it carried.
    fn of(error: Option<&InvokeError>, event: impl FnOnce() -> u64) -> Self {
        match error {
            Some(InvokeError::Connect(_)) => Call::Service,
            Some(InvokeError::Status { status, .. }) if matches!(*status, 429 | 502 | 503) => {
                Call::Service
            }
            Some(e) if e.is_unavailable() => Call::Slow(event()),
            _ => Call::Answered,
        }
    }
}

/// The weight of unavailable `calls`: each failure about the service, plus each distinct event
/// among the timeouts.
fn weight<'a>(calls: impl Iterator<Item = &'a Call>) -> usize {
    let mut slow: Vec<u64> = Vec::new();
    let mut service = 0;
    for call in calls {
        match call {
            Call::Answered => {}
            Call::Service => service += 1,
            Call::Slow(key) => {
                if !slow.contains(key) {
                    slow.push(*key);
                }
            }
        }
    }
    service + slow.len()
}

#[derive(Debug, Default)]
struct Recent {
    /// The last [`WINDOW`] calls.
    calls: VecDeque<Call>,
}

/// The health of one function, shared by every trigger that calls it.
#[derive(Debug)]
pub(crate) struct Health {
    recent: Mutex<Recent>,
    down: watch::Sender<bool>,
    /// One probe at a time while the function is down.
    probe: Arc<Semaphore>,
    /// Probes that failed since the function went down: the backoff grows with them.
    failed_probes: AtomicU32,
}

/// What a delivery may do now.
pub(crate) enum Turn {
    /// The function is up: call it.
    Call,
    /// The function is down and this delivery probes it; keep the permit until the function
    /// answers (or the delivery ends).
    Probe(OwnedSemaphorePermit),
    /// Stopping.
    Stop,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            recent: Mutex::default(),
            down: watch::Sender::new(false),
            probe: Arc::new(Semaphore::new(1)),
            failed_probes: AtomicU32::new(0),
        }
    }
}

impl Health {
    /// Whether the function is down now.
    pub(crate) fn is_down(&self) -> bool {
        *self.down.borrow()
    }

    /// Records one call's outcome: `error` when it failed, `event` the key of what it carried
    /// (asked for only when the call timed out). Returns whether the function is down after it.
    pub(crate) fn record(&self, error: Option<&InvokeError>, event: impl FnOnce() -> u64) -> bool {
        let call = Call::of(error, event);
        let Ok(mut recent) = self.recent.lock() else {
            return false;
        };
        recent.calls.push_back(call);
        if recent.calls.len() > WINDOW {
            recent.calls.pop_front();
        }
        let down = call != Call::Answered
            && (self.is_down() || {
                let in_a_row = recent
                    .calls
                    .iter()
                    .rev()
                    .take_while(|c| **c != Call::Answered);
                let failing = weight(recent.calls.iter());
                weight(in_a_row) >= DOWN_AFTER_CONSECUTIVE
                    || (recent.calls.len() >= WINDOW / 2 && failing * 2 >= recent.calls.len())
            });
        if down != self.is_down() {
            if down {
                tracing::warn!(
                    failing = weight(recent.calls.iter()),
                    of = recent.calls.len(),
                    "function unavailable: holding its deliveries and probing it"
                );
            } else {
                tracing::info!("function answers again: resuming its deliveries");
                // A fresh window: the outage's failures do not count against what follows.
                recent.calls.clear();
                self.failed_probes.store(0, Ordering::Relaxed);
            }
            self.down.send_replace(down);
        }
        down
    }

    /// Waits until the function is up, or until this delivery gets to probe it. `probing` is
    /// the permit a delivery kept from its last probe: it probes again without waiting.
    pub(crate) async fn turn(
        &self,
        probing: Option<OwnedSemaphorePermit>,
        shutdown: &CancellationToken,
    ) -> Turn {
        // The common case, on every attempt: up, and no receiver to make.
        if !self.is_down() {
            return Turn::Call;
        }
        let mut down = self.down.subscribe();
        loop {
            if !*down.borrow_and_update() {
                return Turn::Call;
            }
            if let Some(permit) = probing {
                return Turn::Probe(permit);
            }
            tokio::select! {
                () = shutdown.cancelled() => return Turn::Stop,
                changed = down.changed() => {
                    if changed.is_err() {
                        return Turn::Call;
                    }
                }
                permit = Arc::clone(&self.probe).acquire_owned() => match permit {
                    Ok(permit) => return Turn::Probe(permit),
                    Err(_) => return Turn::Call,
                },
            }
        }
    }

    /// The wait before the next probe, after one failed.
    pub(crate) fn next_probe_delay(&self, rng: &mut impl Rng) -> Duration {
        let n = self.failed_probes.fetch_add(1, Ordering::Relaxed) + 1;
        Self::probe_delay(n, rng)
    }

    /// The wait before probe number `n` (1 for the first): exponential from 100 ms, capped at
    /// 5 s, with full jitter.
    pub(crate) fn probe_delay(n: u32, rng: &mut impl Rng) -> Duration {
        let factor = 1u32.checked_shl(n.saturating_sub(1)).unwrap_or(u32::MAX);
        let ceiling = PROBE_MIN.saturating_mul(factor).min(PROBE_MAX);
        rng.random_range(Duration::ZERO..=ceiling)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused() -> InvokeError {
        InvokeError::Connect("connection refused".into())
    }

    fn timeout() -> InvokeError {
        InvokeError::Timeout(Duration::from_millis(500))
    }

    fn status(status: u16) -> InvokeError {
        InvokeError::Status {
            status,
            retry_after: None,
            body: String::new(),
        }
    }

    #[test]
    fn three_unavailable_calls_in_a_row_mark_it_down_and_an_answer_up() {
        let h = Health::default();
        assert!(!h.record(Some(&refused()), || 1));
        assert!(!h.record(Some(&status(503)), || 1));
        assert!(h.record(Some(&refused()), || 1));
        assert!(h.is_down());
        assert!(!h.record(None, || 1));
        assert!(!h.is_down());
    }

    #[test]
    fn per_event_failures_never_mark_it_down() {
        let h = Health::default();
        for i in 0..100 {
            assert!(!h.record(Some(&status(500)), || i));
            assert!(!h.record(None, || i));
        }
    }

    #[test]
    fn one_event_timing_out_again_and_again_is_no_outage() {
        let h = Health::default();
        for _ in 0..50 {
            assert!(!h.record(Some(&timeout()), || 7));
            assert!(!h.record(Some(&status(504)), || 7));
        }
        assert!(!h.is_down());
    }

    #[test]
    fn distinct_events_timing_out_are_an_outage() {
        let h = Health::default();
        assert!(!h.record(Some(&timeout()), || 1));
        assert!(!h.record(Some(&timeout()), || 1));
        assert!(!h.record(Some(&timeout()), || 2));
        assert!(h.record(Some(&timeout()), || 3));
    }

    #[test]
    fn a_slow_event_among_answers_never_tips_the_window() {
        let h = Health::default();
        for _ in 0..WINDOW {
            assert!(!h.record(Some(&timeout()), || 9));
            assert!(!h.record(None, || 0));
        }
    }

    #[test]
    fn half_of_the_window_failing_marks_it_down() {
        let h = Health::default();
        let mut went_down = false;
        for i in 0..WINDOW {
            // Alternating: never three in a row, but half of them.
            let error = (i % 2 == 1).then(refused);
            went_down |= h.record(error.as_ref(), || i as u64);
        }
        assert!(went_down);
    }

    #[test]
    fn probe_delays_are_jittered_and_capped() {
        let mut rng = rand::rng();
        let first: Vec<Duration> = (0..50).map(|_| Health::probe_delay(1, &mut rng)).collect();
        assert!(first.iter().all(|d| *d <= PROBE_MIN));
        assert!(first.iter().any(|d| *d != first[0]), "no jitter");
        assert!((0..50).all(|_| Health::probe_delay(40, &mut rng) <= PROBE_MAX));
    }
}

//! Reconnecting: one jittered exponential schedule for every connector's reconnect loop.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// The wait before reconnecting to a broker: exponential from `min` to `max`, with full jitter
/// (drawn from zero up to the current ceiling), so that replicas that lost a broker together do
/// not reconnect together. Every connector's reconnect loop uses it.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    /// The usual reconnect schedule: 500 ms doubling up to 30 s.
    pub fn reconnect() -> Self {
        Self::new(Duration::from_millis(500), Duration::from_secs(30))
    }

    /// A schedule from `min` up to `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            failures: 0,
        }
    }

    /// The wait after one more failure.
    pub fn next_delay(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        full_jitter(
            exponential_ceiling(self.min, self.max, self.failures),
            &mut rand::rng(),
        )
    }

    /// Back to the start, after a success.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// Sleeps `delay` unless `stop` fires first; true when it did (the caller stops). The wait of
/// every reconnect loop.
pub async fn sleep_unless_stopped(stop: &CancellationToken, delay: Duration) -> bool {
    tokio::select! {
        () = stop.cancelled() => true,
        () = tokio::time::sleep(delay) => false,
    }
}

/// The longest wait after `failure` failures (1 for the first): `min * 2^(failure - 1)`, capped
/// at `max`. The one exponential schedule of fnbroker: reconnects ([`Backoff`]) and the engine's
/// retries between delivery attempts both use it.
pub fn exponential_ceiling(min: Duration, max: Duration, failure: u32) -> Duration {
    let factor = 1u32.checked_shl(failure.max(1) - 1).unwrap_or(u32::MAX);
    min.saturating_mul(factor).min(max)
}

/// A wait drawn uniformly between zero and `ceiling` ("full jitter"): clients that failed together
/// spread out instead of coming back together.
pub fn full_jitter(ceiling: Duration, rng: &mut impl rand::Rng) -> Duration {
    rng.random_range(Duration::ZERO..=ceiling)
}

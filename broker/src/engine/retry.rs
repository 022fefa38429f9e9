//! The retry policy of a trigger: how many attempts, and how long to wait between them.
//!
//! The exponential schedule and its full jitter are the connector kit's
//! ([`kit::exponential_ceiling`], [`kit::full_jitter`]), the same that reconnects use.
//! Hand-written rather than taken from `backon`: backon's jitter is added on top of the delay
//! (so a capped delay can reach twice `max_delay`), it has no linear schedule, and its schedules
//! are iterators, where we need the delay of attempt *n* directly (a broker may tell us how often
//! it delivered a message already).

use std::time::Duration;

use fnbroker_config::{Backoff, Delivery};
use fnbroker_core::kit;
use rand::Rng;

/// When and how often to try again.
#[derive(Debug, Clone)]
pub(crate) struct RetryPolicy {
    /// Extra attempts after the first.
    pub(crate) retries: u32,
    backoff: Backoff,
    delay: Duration,
    max_delay: Duration,
}

impl RetryPolicy {
    pub(crate) fn from_config(d: &Delivery) -> Self {
        Self {
            retries: d.retries,
            backoff: d.backoff,
            delay: d.delay.get(),
            max_delay: d.max_delay.get(),
        }
    }

    /// The longest wait between attempts.
    pub(crate) fn max_delay(&self) -> Duration {
        self.max_delay
    }

    /// The longest wait before retry number `retry` (1 for the first retry).
    pub(crate) fn ceiling(&self, retry: u32) -> Duration {
        let retry = retry.max(1);
        let d = match self.backoff {
            Backoff::Constant => self.delay,
            Backoff::Linear => self.delay.saturating_mul(retry),
            Backoff::Exponential => kit::exponential_ceiling(self.delay, self.max_delay, retry),
        };
        d.min(self.max_delay)
    }

    /// The wait before retry number `retry`. A `Retry-After` from the function wins, capped at
    /// `max_delay`; otherwise exponential backoff draws uniformly between zero and its ceiling
    /// (full jitter, the first retry included, so events that failed together do not retry
    /// together), and linear and constant backoff wait exactly their ceiling.
    pub(crate) fn delay(
        &self,
        retry: u32,
        retry_after: Option<Duration>,
        rng: &mut impl Rng,
    ) -> Duration {
        if let Some(asked) = retry_after {
            return asked.min(self.max_delay);
        }
        let ceiling = self.ceiling(retry);
        match self.backoff {
            Backoff::Exponential => kit::full_jitter(ceiling, rng),
            _ => ceiling,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(backoff: Backoff) -> RetryPolicy {
        RetryPolicy {
            retries: 10,
            backoff,
            delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        }
    }

    #[test]
    fn exponential_ceilings_double_and_cap() {
        let p = policy(Backoff::Exponential);
        let ms: Vec<u128> = (1..=6).map(|n| p.ceiling(n).as_millis()).collect();
        assert_eq!(ms, vec![100, 200, 400, 800, 1000, 1000]);
        assert_eq!(p.ceiling(200), Duration::from_secs(1));
    }

    #[test]
    fn jitter_stays_below_the_ceiling() {
        let p = policy(Backoff::Exponential);
        let mut rng = rand::rng();
        for n in 1..=8 {
            for _ in 0..200 {
                let d = p.delay(n, None, &mut rng);
                assert!(d <= p.ceiling(n), "{n}: {d:?}");
            }
        }
    }

    /// Events that failed together must not retry together: the first retry is jittered too.
    #[test]
    fn the_first_retry_is_jittered() {
        let p = policy(Backoff::Exponential);
        let mut rng = rand::rng();
        let first: std::collections::HashSet<Duration> =
            (0..50).map(|_| p.delay(1, None, &mut rng)).collect();
        assert!(first.len() > 10, "{first:?}");
    }

    #[test]
    fn linear_and_constant() {
        let l = policy(Backoff::Linear);
        let c = policy(Backoff::Constant);
        let mut rng = rand::rng();
        assert_eq!(l.delay(3, None, &mut rng), Duration::from_millis(300));
        assert_eq!(l.delay(30, None, &mut rng), Duration::from_secs(1));
        assert_eq!(c.delay(7, None, &mut rng), Duration::from_millis(100));
    }

    #[test]
    fn retry_after_wins_up_to_max_delay() {
        let p = policy(Backoff::Exponential);
        let mut rng = rand::rng();
        assert_eq!(
            p.delay(1, Some(Duration::from_millis(700)), &mut rng),
            Duration::from_millis(700)
        );
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(60)), &mut rng),
            Duration::from_secs(1)
        );
    }
}

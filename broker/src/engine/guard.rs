//! What a function's configuration asks to protect it: a rate limit (`rate_limit`) and a circuit
//! breaker (`circuit_breaker`). Both act before a call, as waits: an exhausted rate or an open
//! breaker holds the delivery where it is, without spending one of its attempts, so it keeps
//! its `max_in_flight` slot and consumption slows down (backpressure) instead of events being
//! retried away or dead-lettered.
//!
//! The breaker counts the calls of the last `window` that failed on the function's side (what
//! [`InvokeError::is_retryable`] says: unreachable, timed out, 408, 429, 5xx, a command that
//! failed); when at least `min_calls` were made and `failure_ratio` of them failed, it opens:
//! no call for `open_for`. Then it is half-open: one call goes through as a probe (a real
//! attempt of the event that makes it); success closes the breaker, failure opens it again.
//! The others wait for the verdict.
//!
//! Time is tokio's, so both are tested with paused time.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use fnbroker_config as config;
use fnbroker_functions::InvokeError;
use governor::clock::Clock;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;
use tokio::time::Instant;

/// governor's clock on tokio's time (so a rate limit follows paused time in tests).
#[derive(Debug, Clone)]
struct TokioClock {
    start: Instant,
}

impl Clock for TokioClock {
    type Instant = Duration;

    fn now(&self) -> Duration {
        self.start.elapsed()
    }
}

type Limiter = governor::RateLimiter<
    governor::state::NotKeyed,
    governor::state::InMemoryState,
    TokioClock,
    governor::middleware::NoOpMiddleware<Duration>,
>;

/// A function's rate limit and circuit breaker.
pub(crate) struct Guard {
    rate: Option<(Limiter, TokioClock)>,
    breaker: Option<Breaker>,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("rate_limited", &self.rate.is_some())
            .field("breaker", &self.breaker.as_ref().map(Breaker::state))
            .finish()
    }
}

/// Where a breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BreakerState {
    /// Calls go through.
    Closed,
    /// No call until the open time is over.
    Open,
    /// One probe call decides.
    HalfOpen,
}

impl BreakerState {
    /// The name `/v1/functions` shows.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
        }
    }

    /// The value of the `fnbroker_function_circuit_state` gauge.
    pub(crate) fn gauge(self) -> i64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }
}

/// A pass through the guard: say how the call went with [`Pass::done`]. A pass dropped without
/// it (the delivery stopped) gives its probe turn back.
pub(crate) struct Pass<'a> {
    breaker: Option<&'a Breaker>,
    probe: bool,
    /// How long the call waited at the guard (the rate limit and the breaker).
    pub(crate) waited: Duration,
}

impl Pass<'_> {
    /// Records the call's outcome with the breaker.
    pub(crate) fn done(mut self, result: Result<(), &InvokeError>) {
        if let Some(b) = self.breaker.take() {
            b.record(self.probe, result.is_err_and(InvokeError::is_retryable));
        }
    }
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        if let Some(b) = self.breaker
            && self.probe
        {
            b.probe_abandoned();
        }
    }
}

impl Guard {
    /// The guard a function's configuration asks for; `None` when it asks for none.
    pub(crate) fn new(
        rate: Option<&config::RateLimit>,
        breaker: Option<&config::CircuitBreaker>,
        circuit: Gauge,
    ) -> Option<Self> {
        if rate.is_none() && breaker.is_none() {
            return None;
        }
        let rate = rate.and_then(|r| {
            let per_second = NonZeroU32::new(*r.per_second)?;
            let burst = r
                .burst
                .as_ref()
                .and_then(|b| NonZeroU32::new(**b))
                .unwrap_or(per_second);
            let clock = TokioClock {
                start: Instant::now(),
            };
            let quota = governor::Quota::per_second(per_second).allow_burst(burst);
            Some((Limiter::direct_with_clock(quota, clock.clone()), clock))
        });
        Some(Self {
            rate,
            breaker: breaker.map(|b| Breaker::new(b, circuit)),
        })
    }

    /// Waits until a call may go: the breaker lets it (closed, or this call is the probe) and
    /// the rate has room.
    pub(crate) async fn pass(&self) -> Pass<'_> {
        let started = Instant::now();
        let probe = match &self.breaker {
            Some(b) => b.admit().await,
            None => false,
        };
        // Built before the rate wait, so that a delivery stopped while it waits for the rate
        // gives its probe turn back.
        let mut pass = Pass {
            breaker: self.breaker.as_ref(),
            probe,
            waited: Duration::ZERO,
        };
        if let Some((limiter, clock)) = &self.rate {
            while let Err(not_until) = limiter.check() {
                tokio::time::sleep(not_until.wait_time_from(clock.now())).await;
            }
        }
        pass.waited = started.elapsed();
        pass
    }

    /// The breaker's state, if there is one.
    pub(crate) fn breaker_state(&self) -> Option<BreakerState> {
        self.breaker.as_ref().map(Breaker::state)
    }
}

#[derive(Debug)]
enum Phase {
    Closed,
    Open { until: Instant },
    HalfOpen { probing: bool },
}

#[derive(Debug)]
struct Window {
    phase: Phase,
    /// The calls of the last `window`: when, and whether they failed.
    calls: VecDeque<(Instant, bool)>,
}

/// A circuit breaker (see the module's documentation).
#[derive(Debug)]
struct Breaker {
    failure_ratio: f64,
    min_calls: usize,
    window: Duration,
    open_for: Duration,
    state: Mutex<Window>,
    changed: Notify,
    /// `fnbroker_function_circuit_state`.
    gauge: Gauge,
}

impl Breaker {
    fn new(cfg: &config::CircuitBreaker, gauge: Gauge) -> Self {
        gauge.set(BreakerState::Closed.gauge());
        Self {
            gauge,
            failure_ratio: *cfg.failure_ratio,
            min_calls: usize::try_from(*cfg.min_calls).unwrap_or(usize::MAX).max(1),
            window: cfg.window.get(),
            open_for: cfg.open_for.get(),
            state: Mutex::new(Window {
                phase: Phase::Closed,
                calls: VecDeque::new(),
            }),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Window> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn state(&self) -> BreakerState {
        match self.lock().phase {
            Phase::Closed => BreakerState::Closed,
            Phase::Open { .. } => BreakerState::Open,
            Phase::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Waits until a call may go; `true` when it is the half-open probe.
    async fn admit(&self) -> bool {
        loop {
            // Registered before the state is read, so that no change is missed.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let wait_until = {
                let mut w = self.lock();
                match w.phase {
                    Phase::Closed => return false,
                    Phase::Open { until } if Instant::now() >= until => {
                        w.phase = Phase::HalfOpen { probing: true };
                        self.gauge.set(BreakerState::HalfOpen.gauge());
                        tracing::info!("circuit breaker half-open: one call probes the function");
                        return true;
                    }
                    Phase::HalfOpen { probing: false } => {
                        w.phase = Phase::HalfOpen { probing: true };
                        return true;
                    }
                    Phase::Open { until } => Some(until),
                    Phase::HalfOpen { probing: true } => None,
                }
            };
            match wait_until {
                Some(until) => {
                    tokio::select! {
                        () = changed => {}
                        () = tokio::time::sleep_until(until) => {}
                    }
                }
                None => changed.await,
            }
        }
    }

    fn record(&self, probe: bool, failed: bool) {
        let now = Instant::now();
        let mut w = self.lock();
        if probe {
            if failed {
                w.phase = Phase::Open {
                    until: now + self.open_for,
                };
                self.gauge.set(BreakerState::Open.gauge());
                tracing::warn!(open_for = ?self.open_for, "circuit breaker probe failed: open again");
            } else {
                w.phase = Phase::Closed;
                w.calls.clear();
                self.gauge.set(BreakerState::Closed.gauge());
                tracing::info!("circuit breaker closed: the probe succeeded");
            }
            drop(w);
            self.changed.notify_waiters();
            return;
        }
        if !matches!(w.phase, Phase::Closed) {
            // A call admitted before the breaker opened: its outcome is already judged.
            return;
        }
        w.calls.push_back((now, failed));
        while w
            .calls
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > self.window)
        {
            w.calls.pop_front();
        }
        let total = w.calls.len();
        let failures = w.calls.iter().filter(|(_, f)| *f).count();
        if total >= self.min_calls && failures as f64 >= self.failure_ratio * total as f64 {
            w.phase = Phase::Open {
                until: now + self.open_for,
            };
            w.calls.clear();
            self.gauge.set(BreakerState::Open.gauge());
            tracing::warn!(failures, calls = total, open_for = ?self.open_for, "circuit breaker open: calls held");
            drop(w);
            self.changed.notify_waiters();
        }
    }

    /// A probe's delivery stopped before its call finished: another may probe.
    fn probe_abandoned(&self) {
        let mut w = self.lock();
        if matches!(w.phase, Phase::HalfOpen { probing: true }) {
            w.phase = Phase::HalfOpen { probing: false };
        }
        drop(w);
        self.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(ratio: f64, min_calls: u32, window: u64, open_for: u64) -> config::CircuitBreaker {
        config::CircuitBreaker {
            failure_ratio: config::Loc::new(ratio),
            min_calls: config::Loc::new(min_calls),
            window: config::ConfDuration::from_secs(window),
            open_for: config::ConfDuration::from_secs(open_for),
        }
    }

    fn failure() -> InvokeError {
        InvokeError::Status {
            status: 503,
            retry_after: None,
            body: String::new(),
        }
    }

    fn guard(b: &config::CircuitBreaker) -> Guard {
        Guard::new(None, Some(b), Gauge::default()).unwrap_or_else(|| panic!("a guard"))
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_limit_spaces_calls_after_the_burst() {
        let rate = config::RateLimit {
            per_second: config::Loc::new(10),
            burst: Some(config::Loc::new(5)),
        };
        let g =
            Guard::new(Some(&rate), None, Gauge::default()).unwrap_or_else(|| panic!("a guard"));
        let start = Instant::now();
        for _ in 0..5 {
            let p = g.pass().await;
            assert_eq!(p.waited, Duration::ZERO, "the burst goes at once");
            p.done(Ok(()));
        }
        for _ in 0..10 {
            g.pass().await.done(Ok(()));
        }
        // Ten more at 10 per second after the burst of five.
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(900) && took <= Duration::from_millis(1100),
            "{took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_breaker_opens_holds_probes_and_closes() {
        let g = guard(&breaker(0.5, 4, 30, 10));
        // Two successes and two failures: half of four calls failed, the breaker opens.
        for ok in [true, false, true, false] {
            let e = failure();
            g.pass().await.done(if ok { Ok(()) } else { Err(&e) });
        }
        assert_eq!(g.breaker_state(), Some(BreakerState::Open));
        // Calls wait for the open time; the first after it is the probe, the rest wait for it.
        let start = Instant::now();
        let probe = g.pass().await;
        assert_eq!(start.elapsed(), Duration::from_secs(10));
        assert_eq!(g.breaker_state(), Some(BreakerState::HalfOpen));
        let other = tokio::time::timeout(Duration::from_secs(60), g.pass()).await;
        assert!(other.is_err(), "a second call waits while the probe is out");
        let e = failure();
        probe.done(Err(&e));
        assert_eq!(
            g.breaker_state(),
            Some(BreakerState::Open),
            "a failed probe opens it again"
        );
        let start = Instant::now();
        let probe = g.pass().await;
        assert_eq!(start.elapsed(), Duration::from_secs(10));
        probe.done(Ok(()));
        assert_eq!(g.breaker_state(), Some(BreakerState::Closed));
        let p = g.pass().await;
        assert_eq!(p.waited, Duration::ZERO);
        p.done(Ok(()));
    }

    /// Per-event failures (a 400) and too few calls do not open it; failures older than the
    /// window do not count.
    #[tokio::test(start_paused = true)]
    async fn what_does_not_open_the_breaker() {
        let g = guard(&breaker(0.5, 4, 30, 10));
        let bad_request = InvokeError::Status {
            status: 400,
            retry_after: None,
            body: String::new(),
        };
        for _ in 0..10 {
            g.pass().await.done(Err(&bad_request));
        }
        let e = failure();
        for _ in 0..3 {
            g.pass().await.done(Err(&e));
        }
        assert_eq!(
            g.breaker_state(),
            Some(BreakerState::Closed),
            "3 failures of 13"
        );
        let g = guard(&breaker(0.5, 4, 30, 10));
        for _ in 0..3 {
            g.pass().await.done(Err(&e));
        }
        tokio::time::advance(Duration::from_secs(31)).await;
        g.pass().await.done(Err(&e));
        assert_eq!(
            g.breaker_state(),
            Some(BreakerState::Closed),
            "1 call in the window"
        );
    }

    /// A probe whose delivery stops gives its turn to the next call.
    #[tokio::test(start_paused = true)]
    async fn an_abandoned_probe_lets_another_probe() {
        let g = guard(&breaker(1.0, 1, 30, 5));
        let e = failure();
        g.pass().await.done(Err(&e));
        assert_eq!(g.breaker_state(), Some(BreakerState::Open));
        let probe = g.pass().await;
        drop(probe);
        let next = tokio::time::timeout(Duration::from_millis(1), g.pass()).await;
        assert!(next.is_ok(), "the next call probes");
    }
}

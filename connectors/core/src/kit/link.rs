//! The health of a connector's connection, and how it is reported.

use std::sync::Arc;
use std::time::Duration;

/// The health of one connector's connection to its broker, and the one way connectors report
/// it: the first failure of a run of failures is a warning naming the connector, the address
/// (its password masked) and the root cause; while the failures go on, one summary warning per
/// [`Link::SUMMARY_EVERY`] (how many, the last cause) instead of a line per attempt; a recovery
/// is said once at info. The last cause is what `/readyz` and the status page show, and the
/// reconnections are counted for `fnbroker_connector_reconnects_total`.
#[derive(Debug)]
pub struct Link {
    connector: String,
    server: &'static str,
    address: String,
    state: std::sync::Mutex<LinkState>,
    reconnects: std::sync::atomic::AtomicU64,
}

#[derive(Debug, Default)]
struct LinkState {
    /// Connected at least once in this run.
    was_up: bool,
    /// Failing now: since when, how many failures, the last cause.
    failing: Option<(std::time::Instant, u64)>,
    last_error: Option<String>,
    /// When the last warning went out, and how many failures since.
    warned: Option<(std::time::Instant, u64)>,
}

impl Link {
    /// How often a run of failures is summed up in one warning.
    pub const SUMMARY_EVERY: Duration = Duration::from_secs(30);

    /// The link of `connector`, which connects to `server` (`the AMQP server`) at `address`
    /// (masked here before it is kept).
    pub fn new(connector: &str, server: &'static str, address: &str) -> Arc<Self> {
        let masked: Vec<String> = address
            .split(',')
            .map(|a| crate::redact::url(a.trim()).into_owned())
            .collect();
        Arc::new(Self {
            connector: connector.to_string(),
            server,
            address: masked.join(","),
            state: std::sync::Mutex::default(),
            reconnects: std::sync::atomic::AtomicU64::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LinkState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A connection attempt failed, or the connection was lost, because of `cause` (the whole
    /// error chain, root cause last). `hint` says what to check, if anything.
    pub fn failed(&self, cause: &str, hint: &str) {
        self.failed_at(cause, hint, std::time::Instant::now());
    }

    fn failed_at(&self, cause: &str, hint: &str, now: std::time::Instant) {
        let mut s = self.lock();
        let (since, count) = s.failing.get_or_insert((now, 0));
        *count += 1;
        let (since, count) = (*since, *count);
        s.last_error = Some(cause.to_string());
        match &mut s.warned {
            None => {
                s.warned = Some((now, 0));
                drop(s);
                tracing::warn!(connector = %self.connector, address = %self.address, cause, "cannot connect to {}; retrying{hint}", self.server);
            }
            Some((at, since_warning)) => {
                *since_warning += 1;
                if now.duration_since(*at) >= Self::SUMMARY_EVERY {
                    let n = *since_warning;
                    *at = now;
                    *since_warning = 0;
                    drop(s);
                    tracing::warn!(connector = %self.connector, address = %self.address, failures = n, failing_for = ?now.duration_since(since), total = count, last_cause = cause, "still cannot connect to {}; retrying{hint}", self.server);
                } else {
                    drop(s);
                    tracing::debug!(connector = %self.connector, address = %self.address, cause, "cannot connect; retrying");
                }
            }
        }
    }

    /// Connected (again).
    pub fn connected(&self) {
        let mut s = self.lock();
        let failing = s.failing.take();
        let again = std::mem::replace(&mut s.was_up, true) && failing.is_some();
        s.warned = None;
        s.last_error = None;
        drop(s);
        if again {
            self.reconnects
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        if let Some((since, failures)) = failing {
            tracing::info!(connector = %self.connector, address = %self.address, failures, after = ?since.elapsed(), "connected to {} again", self.server);
        }
    }

    /// The cause of the failures going on now, if any.
    pub fn last_error(&self) -> Option<String> {
        self.lock().last_error.clone()
    }

    /// The address, its password masked.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// How many times the connection came back after it was up and then failed.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[cfg(test)]
mod link_tests {
    use super::*;

    #[test]
    fn a_run_of_failures_is_said_once_then_summed_up_and_a_recovery_is_a_reconnect() {
        let link = Link::new("bus", "the NATS server", "nats://user:secret@10.0.0.1:4222");
        assert_eq!(link.address(), "nats://user:***@10.0.0.1:4222");
        link.connected();
        assert_eq!(link.reconnects(), 0, "the first connection is no reconnect");
        let t0 = std::time::Instant::now();
        link.failed_at("connection refused", "", t0);
        for i in 1..100 {
            link.failed_at("connection refused", "", t0 + Duration::from_millis(i * 10));
        }
        {
            let s = link.lock();
            assert_eq!(s.failing.map(|f| f.1), Some(100));
            assert_eq!(s.warned.map(|w| w.1), Some(99), "one warning, 99 held back");
        }
        link.failed_at("tls: UnknownIssuer", "", t0 + Link::SUMMARY_EVERY);
        assert_eq!(
            link.lock().warned.map(|w| w.1),
            Some(0),
            "summed up after 30 s"
        );
        assert_eq!(link.last_error().as_deref(), Some("tls: UnknownIssuer"));
        link.connected();
        assert_eq!(link.reconnects(), 1);
        assert_eq!(link.last_error(), None);
        link.connected();
        assert_eq!(
            link.reconnects(),
            1,
            "connected twice without a failure between"
        );
    }
}

//! systemd's service notifications, for `Type=notify` units: `READY=1` once every connector is
//! ready (what `/readyz` answers), `RELOADING=1` and `READY=1` around a reload, `STOPPING=1`
//! when a stop begins, and `WATCHDOG=1` at half of `WatchdogSec` while the runtime is alive.
//! Outside systemd (no `NOTIFY_SOCKET`) nothing runs.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

/// How often readiness is looked at until it is reached.
const READY_POLL: Duration = Duration::from_millis(50);

/// The notifications of a running fnbroker.
pub(crate) struct Notifier {
    task: tokio::task::JoinHandle<()>,
}

fn notify(state: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

impl Notifier {
    /// Starts notifying when systemd asks for it (`NOTIFY_SOCKET` is set).
    pub(crate) fn start(
        ready: impl Fn() -> bool + Send + 'static,
        stop: CancellationToken,
    ) -> Option<Self> {
        std::env::var_os("NOTIFY_SOCKET")?;
        let watchdog = sd_notify::watchdog_enabled()
            .map(|d| d / 2)
            .filter(|d| !d.is_zero());
        let task = tokio::spawn(async move {
            let mut said_ready = false;
            let mut next_ping = tokio::time::Instant::now();
            loop {
                if !said_ready && ready() {
                    notify(&[NotifyState::Ready]);
                    said_ready = true;
                }
                if let Some(every) = watchdog
                    && tokio::time::Instant::now() >= next_ping
                {
                    // The runtime answers: a hung process stops pinging and systemd restarts it.
                    notify(&[NotifyState::Watchdog]);
                    next_ping += every;
                }
                let wait = match (said_ready, watchdog) {
                    (false, _) => READY_POLL,
                    (true, Some(_)) => {
                        next_ping.saturating_duration_since(tokio::time::Instant::now())
                    }
                    (true, None) => return,
                };
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                }
            }
        });
        Some(Self { task })
    }

    /// A reload began (`Type=notify-reload` units wait for the `READY=1` that ends it).
    pub(crate) fn reloading(&self) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => notify(&[NotifyState::Reloading, now]),
            Err(e) => tracing::warn!(error = %e, "cannot read the monotonic clock for systemd"),
        }
    }

    /// A reload ended, applied or not: the service is running again.
    pub(crate) fn reloaded(&self) {
        notify(&[NotifyState::Ready]);
    }

    /// A stop began: say so, and stop pinging.
    pub(crate) fn stopping(&self) {
        notify(&[NotifyState::Stopping]);
        self.task.abort();
    }
}

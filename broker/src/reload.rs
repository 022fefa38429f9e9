//! Configuration reload without a restart: on SIGHUP, and with `run --watch` when the file
//! changes. The new file is read and validated first; a configuration with errors is refused
//! (each error logged with its line and column, the failure counted) and the running one goes
//! on. A valid one is applied by [`Broker::apply`], which replaces only what changed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fnbroker_core::config::{self, Config};
use serde_json::{Value, json};
use sha2::Digest as _;
use tokio::sync::mpsc;

use crate::connectors::REGISTRY;
use crate::runtime::Broker;

/// How long the file must be quiet after a change before it is read: editors and Kubernetes
/// write a file in several steps (a temporary file, a rename, a symlink swap).
const SETTLE: Duration = Duration::from_millis(300);

/// Why a reload was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cause {
    /// SIGHUP (`systemctl reload`, `kill -HUP`).
    Signal,
    /// `--watch` saw the file change.
    FileChanged,
}

impl Cause {
    fn as_str(self) -> &'static str {
        match self {
            Self::Signal => "SIGHUP",
            Self::FileChanged => "file changed",
        }
    }
}

/// A configuration read from its file, with the revision of the text it came from.
pub(crate) struct Loaded {
    pub(crate) config: Config,
    pub(crate) revision: String,
}

/// A configuration file that was refused.
pub(crate) struct Refused {
    /// The revision of the text, when it could be read.
    pub(crate) revision: Option<String>,
    /// Each error as `FILE:LINE:COL: message`.
    pub(crate) errors: Vec<String>,
}

/// Reads and validates the configuration at `path`.
pub(crate) fn read(path: &Path) -> Result<Loaded, Refused> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| Refused {
        revision: None,
        errors: vec![format!("{file}:0:0: cannot read the file: {e}")],
    })?;
    let revision = revision(&text);
    match config::load_str(&file, &text, |name| std::env::var(name).ok(), &REGISTRY) {
        Ok(config) => Ok(Loaded { config, revision }),
        Err(errors) => Err(Refused {
            revision: Some(revision),
            errors: errors.0.iter().map(ToString::to_string).collect(),
        }),
    }
}

/// The revision of a configuration text: the start of its SHA-256, in hex.
fn revision(text: &str) -> String {
    let digest = sha2::Sha256::digest(text.as_bytes());
    hex::encode(&digest[..8])
}

/// The reloads of one running broker, and what `/v1/config` shows of them.
pub(crate) struct Reloader {
    path: PathBuf,
    revision: String,
    /// The revision of the file as last read, applied or refused.
    seen: String,
    loaded_at: chrono::DateTime<chrono::Utc>,
    succeeded: u64,
    failed: u64,
    last: Value,
    shutdown_timeout: Option<Duration>,
}

impl Reloader {
    /// The reloader of the configuration at `path`, running `revision` since now.
    pub(crate) fn new(path: PathBuf, revision: String) -> Self {
        Self {
            path,
            seen: revision.clone(),
            revision,
            loaded_at: chrono::Utc::now(),
            succeeded: 0,
            failed: 0,
            last: Value::Null,
            shutdown_timeout: None,
        }
    }

    /// The configuration file.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The `shutdown_timeout` of the configuration a reload applied, if one did.
    pub(crate) fn shutdown_timeout(&self) -> Option<Duration> {
        self.shutdown_timeout
    }

    /// `/v1/config`.
    pub(crate) fn about(&self) -> Value {
        json!({
            "file": self.path.display().to_string(),
            "revision": self.revision,
            "loaded_at": self.loaded_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "reloads": { "succeeded": self.succeeded, "failed": self.failed },
            "last_reload": self.last,
        })
    }

    /// Reads the file again and applies it to `broker`. When the watcher asked, a file that is
    /// the same as when last read (applied or refused) is left alone: the watcher hears every
    /// write in the directory.
    pub(crate) async fn reload(&mut self, broker: &mut Broker, cause: Cause) {
        let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let loaded = match read(&self.path) {
            Ok(loaded) => loaded,
            Err(Refused { revision, errors }) => {
                if cause == Cause::FileChanged && revision.as_ref() == Some(&self.seen) {
                    return;
                }
                if let Some(revision) = revision {
                    self.seen = revision;
                }
                for e in &errors {
                    tracing::error!(error = %e, cause = cause.as_str(), "configuration not reloaded: keeping the running one");
                }
                self.failed += 1;
                self.last = json!({ "at": at, "cause": cause.as_str(), "result": "failure", "errors": errors });
                broker.metrics().reloaded(false);
                broker.show_about(self.about());
                return;
            }
        };
        if cause == Cause::FileChanged && loaded.revision == self.seen {
            return;
        }
        self.seen.clone_from(&loaded.revision);
        tracing::info!(cause = cause.as_str(), revision = %loaded.revision, "reloading the configuration");
        match broker.apply(&loaded.config).await {
            Ok(changes) => {
                if changes.is_empty() {
                    tracing::info!(revision = %loaded.revision, "configuration reloaded: nothing to change");
                } else {
                    tracing::info!(
                        revision = %loaded.revision,
                        added = ?changes.added,
                        replaced = ?changes.replaced,
                        updated = ?changes.updated,
                        removed = ?changes.removed,
                        "configuration reloaded"
                    );
                }
                self.succeeded += 1;
                self.shutdown_timeout = Some(loaded.config.shutdown_timeout.get());
                self.revision = loaded.revision;
                self.loaded_at = chrono::Utc::now();
                self.last = json!({ "at": at, "cause": cause.as_str(), "result": "success", "changes": changes.view() });
                broker.metrics().reloaded(true);
                broker.show(&loaded.config, self.about());
            }
            Err(e) => {
                // Applying stops at the first part that cannot start (a subscription refused by
                // its broker); what was applied before it runs, the rest is tried again by the
                // next reload.
                let error = format!("{e:#}");
                tracing::error!(error = %error, "configuration reload failed part way: the parts before the failure run with the new configuration");
                self.failed += 1;
                self.revision = loaded.revision;
                self.loaded_at = chrono::Utc::now();
                self.last = json!({ "at": at, "cause": cause.as_str(), "result": "failure", "errors": [error] });
                broker.metrics().reloaded(false);
                broker.show(&loaded.config, self.about());
            }
        }
    }
}

/// Sends a [`Cause::Signal`] on every SIGHUP. Registered at once: SIGHUP's default action ends
/// the process.
pub(crate) fn on_sighup(requests: mpsc::Sender<Cause>) -> std::io::Result<()> {
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            if requests.send(Cause::Signal).await.is_err() {
                return;
            }
        }
    });
    Ok(())
}

/// Watches the directory of the configuration file (so that a file replaced by a rename, or a
/// Kubernetes ConfigMap's symlink swap, is seen) and sends a [`Cause::FileChanged`] once the
/// directory has been quiet for a moment after a change. The watcher lives as long as the
/// returned value.
pub(crate) fn watch(
    path: &Path,
    requests: mpsc::Sender<Cause>,
) -> notify::Result<notify::RecommendedWatcher> {
    use notify::Watcher as _;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let mut watcher =
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
            Ok(e) if e.kind.is_access() => {}
            Ok(_) => {
                let _ = tx.send(());
            }
            Err(e) => tracing::warn!(error = %e, "configuration watcher"),
        })?;
    watcher.watch(&dir, notify::RecursiveMode::NonRecursive)?;
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            // Quiet for SETTLE: every write of one save is one reload.
            loop {
                match tokio::time::timeout(SETTLE, rx.recv()).await {
                    Ok(Some(())) => {}
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            if requests.send(Cause::FileChanged).await.is_err() {
                return;
            }
        }
    });
    tracing::info!(directory = %dir.display(), "watching the configuration for changes");
    Ok(watcher)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_revision_follows_the_text() {
        assert_eq!(revision("a: 1\n"), revision("a: 1\n"));
        assert_ne!(revision("a: 1\n"), revision("a: 2\n"));
        assert_eq!(revision("").len(), 16);
    }

    #[test]
    fn a_file_with_errors_is_refused_with_its_locations() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("f.yaml");
        std::fs::write(
            &path,
            "functions:\n  f: { http: { url: http://x/ } }\ntriggers:\n  - { name: t, from: { connector: nope, topic: a }, to: f }\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let Err(Refused { errors, .. }) = read(&path) else {
            panic!("an unknown connector must be refused")
        };
        assert!(
            errors
                .iter()
                .any(|e| e.contains("f.yaml:4:") && e.contains("nope")),
            "{errors:?}"
        );
    }
}

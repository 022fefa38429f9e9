//! Configuration reload without a restart: on SIGHUP, and with `run --watch` when the file
//! changes. The new file is read and validated first; a configuration with errors is refused
//! (each error logged with its line and column, the failure counted) and the running one goes
//! on. A valid one is applied by [`Broker::apply`], which replaces only what changed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fnbroker_config::{self as config, Config};
use serde_json::{Value, json};
use sha2::Digest as _;
use tokio::sync::mpsc;

use crate::connectors::REGISTRY;
use crate::runtime::Broker;

/// How long the file must be quiet after a change before it is read: editors and Kubernetes
/// write a file in several steps (a temporary file, a rename, a symlink swap).
const SETTLE: Duration = Duration::from_millis(300);

/// The longest a reload waits after the first change it heard, however often the file is
/// written after it: a file rewritten without pause is still read.
const SETTLE_AT_MOST: Duration = Duration::from_secs(2);

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
    /// What the last apply could not do; the next one tries it again.
    pending: Vec<String>,
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
            pending: Vec::new(),
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
            "pending": self.pending,
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
        let applied = broker.apply(&loaded.config).await;
        // Applied (wholly or in part), the new revision is what runs.
        if applied.is_ok() {
            self.shutdown_timeout = Some(loaded.config.shutdown_timeout.get());
            self.revision = loaded.revision.clone();
            self.loaded_at = chrono::Utc::now();
        }
        match applied {
            Ok(changes) if changes.failed.is_empty() => {
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
                self.pending.clear();
                self.last = json!({ "at": at, "cause": cause.as_str(), "result": "success", "changes": changes.view() });
                broker.metrics().reloaded(true);
            }
            Ok(changes) => {
                // The parts that failed did not stop the others; the next reload (a SIGHUP
                // with the same file will do) tries them again.
                for e in &changes.failed {
                    tracing::error!(error = %e, "configuration reload failed part way: the rest runs with the new configuration, this is tried again at the next reload");
                }
                self.failed += 1;
                self.pending.clone_from(&changes.failed);
                self.last = json!({ "at": at, "cause": cause.as_str(), "result": "failure", "errors": changes.failed, "changes": changes.view() });
                broker.metrics().reloaded(false);
            }
            Err(e) => {
                // Nothing was stopped: the configuration could not be built.
                let error = format!("{e:#}");
                tracing::error!(error = %error, "configuration not reloaded: keeping the running one");
                self.failed += 1;
                self.last = json!({ "at": at, "cause": cause.as_str(), "result": "failure", "errors": [error] });
                broker.metrics().reloaded(false);
                broker.show_about(self.about());
                return;
            }
        }
        broker.show(&loaded.config, self.about());
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
/// file has been quiet for a moment after a change. Only what happens to the file itself (and
/// to a ConfigMap's `..data` link) counts: other files written in the same directory (logs) are
/// not heard. The watcher lives as long as the returned value.
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
    let file = path.file_name().map(std::ffi::OsStr::to_os_string);
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let mut watcher =
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
            Ok(e) if e.kind.is_access() => {}
            Ok(e) if concerns(&e.paths, file.as_deref()) => {
                let _ = tx.send(());
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "configuration watcher"),
        })?;
    watcher.watch(&dir, notify::RecursiveMode::NonRecursive)?;
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            // Quiet for SETTLE (every write of one save is one reload), and never longer than
            // SETTLE_AT_MOST after the first write.
            let latest = tokio::time::Instant::now() + SETTLE_AT_MOST;
            loop {
                let until = (tokio::time::Instant::now() + SETTLE).min(latest);
                match tokio::time::timeout_at(until, rx.recv()).await {
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
    tracing::info!(file = %path.display(), "watching the configuration for changes");
    Ok(watcher)
}

/// Whether a change of `paths` in the configuration's directory concerns the configuration
/// named `file`: the file itself (written, or a new one renamed over it), or `..data`, the link
/// a Kubernetes ConfigMap volume swaps to publish a new version of every file it holds.
fn concerns(paths: &[PathBuf], file: Option<&std::ffi::OsStr>) -> bool {
    paths.iter().any(|p| {
        let name = p.file_name();
        name.is_some() && (name == file || name == Some(std::ffi::OsStr::new("..data")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_file_and_a_config_map_swap_concern_the_watcher() {
        let file = Some(std::ffi::OsStr::new("fnbroker.yaml"));
        let at = |names: &[&str]| -> Vec<PathBuf> {
            names.iter().map(|n| Path::new("/etc/fb").join(n)).collect()
        };
        assert!(concerns(&at(&["fnbroker.yaml"]), file));
        // An editor's or a deployer's new file renamed over it.
        assert!(concerns(
            &at(&[".fnbroker.yaml.new", "fnbroker.yaml"]),
            file
        ));
        // A Kubernetes ConfigMap update: `..data_tmp` renamed to `..data`.
        assert!(concerns(&at(&["..data_tmp", "..data"]), file));
        assert!(concerns(&at(&["..data"]), file));
        // Logs and other files next to it.
        assert!(!concerns(&at(&["fnbroker.log"]), file));
        assert!(!concerns(&at(&["..data_tmp"]), file));
        assert!(!concerns(&at(&[".fnbroker.yaml.new"]), file));
        assert!(!concerns(&[], file));
    }

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

//! The fnbroker process under test: started from a generated configuration, watched through
//! `/proc` (CPU time, RSS, peak RSS) and its admin endpoint (`/readyz`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::process::{Child, Command};

/// A running fnbroker.
pub(crate) struct Fnbroker {
    child: Child,
    pid: u32,
    admin: String,
    /// From spawn to the first `200` of `/readyz`.
    pub(crate) ready: Duration,
    dir: tempfile::TempDir,
}

impl Fnbroker {
    /// Writes `config` (which must leave `admin` to us: it is appended) and starts `binary run`
    /// on it; returns once `/readyz` answers 200, or fails with the process's log.
    pub(crate) async fn start(binary: &Path, config: &str) -> anyhow::Result<Fnbroker> {
        let dir = tempfile::Builder::new()
            .prefix("fnbroker-bench")
            .tempdir()
            .context("cannot create a scratch directory")?;
        let port = free_port()?;
        let admin = format!("127.0.0.1:{port}");
        let path = dir.path().join("fnbroker.yaml");
        std::fs::write(&path, format!("{config}admin: {{ listen: \"{admin}\" }}\n"))?;
        let log = std::fs::File::create(dir.path().join("fnbroker.log"))?;
        let started = Instant::now();
        let child = Command::new(binary)
            .arg("run")
            .arg("-c")
            .arg(&path)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let pid = child.id().context("fnbroker exited at once")?;
        let mut fb = Fnbroker {
            child,
            pid,
            admin,
            ready: Duration::ZERO,
            dir,
        };
        let client = reqwest::Client::new();
        let url = format!("http://{}/readyz", fb.admin);
        let deadline = started + Duration::from_secs(60);
        loop {
            if let Ok(r) = client.get(&url).send().await
                && r.status().is_success()
            {
                fb.ready = started.elapsed();
                return Ok(fb);
            }
            if let Some(status) = fb.child.try_wait()? {
                bail!(
                    "fnbroker exited ({status}) before it was ready:\n{}",
                    fb.log()
                );
            }
            if Instant::now() > deadline {
                bail!("fnbroker was not ready within 60s:\n{}", fb.log());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Its `/metrics` text.
    pub(crate) async fn metrics(&self) -> anyhow::Result<String> {
        Ok(reqwest::get(format!("http://{}/metrics", self.admin))
            .await?
            .text()
            .await?)
    }

    /// What the process wrote so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("fnbroker.log")).unwrap_or_default()
    }

    /// User plus system CPU time so far.
    pub(crate) fn cpu(&self) -> anyhow::Result<Duration> {
        cpu_of(self.pid)
    }

    /// Current resident set (`VmRSS`), in bytes.
    pub(crate) fn rss(&self) -> anyhow::Result<u64> {
        status_kib(self.pid, "VmRSS:").map(|k| k * 1024)
    }

    /// Peak resident set (`VmHWM`), in bytes.
    pub(crate) fn peak_rss(&self) -> anyhow::Result<u64> {
        status_kib(self.pid, "VmHWM:").map(|k| k * 1024)
    }

    /// Current anonymous resident memory (`RssAnon`: heap, stacks, relocated data), in bytes:
    /// the resident set without the mapped program, which the page cache shares.
    pub(crate) fn anon(&self) -> anyhow::Result<u64> {
        status_kib(self.pid, "RssAnon:").map(|k| k * 1024)
    }

    /// Samples [`Fnbroker::anon`] every 10 ms until the watch is ended: the kernel keeps no
    /// peak of it.
    pub(crate) fn watch_anon(&self) -> AnonWatch {
        let pid = self.pid;
        let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let p = std::sync::Arc::clone(&peak);
        let task = tokio::spawn(async move {
            loop {
                if let Ok(k) = status_kib(pid, "RssAnon:") {
                    p.fetch_max(k * 1024, std::sync::atomic::Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        AnonWatch { peak, task }
    }

    /// Stops the process: SIGTERM and a clean shutdown, or a kill after `grace`.
    pub(crate) async fn stop(mut self, grace: Duration) {
        if let Ok(pid) = i32::try_from(self.pid) {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        if tokio::time::timeout(grace, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// A running sampler of a process's anonymous memory.
pub(crate) struct AnonWatch {
    peak: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl AnonWatch {
    /// Stops sampling: the highest anonymous resident memory seen, in bytes.
    pub(crate) fn end(self) -> Option<u64> {
        self.task.abort();
        Some(self.peak.load(std::sync::atomic::Ordering::Relaxed)).filter(|&b| b > 0)
    }
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// User plus system time of a process, from `/proc/PID/stat` (fields 14 and 15, in clock ticks
/// of 1/100 s: `USER_HZ` is 100 on Linux).
pub(crate) fn cpu_of(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces; fields are counted after its closing parenthesis.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("bad stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state), so utime (14) and stime (15) are at 11 and 12.
    let ticks: u64 = fields
        .get(11..13)
        .context("short stat")?
        .iter()
        .map(|f| f.parse::<u64>().unwrap_or(0))
        .sum();
    Ok(Duration::from_millis(ticks * 10))
}

fn status_kib(pid: u32, key: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {key} in /proc/{pid}/status"))
}

/// Finds or builds the fnbroker binary: `explicit` if given, else `cargo build` of the `fnbroker`
/// package in the profile this bench was built with, into the same target directory.
pub(crate) fn binary(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p);
    }
    let release = !cfg!(debug_assertions);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    cmd.args(["build", "-q", "-p", "fnbroker", "--bin", "fnbroker"]);
    if release {
        cmd.arg("--release");
    }
    eprintln!(
        "bench: building fnbroker ({})",
        if release { "release" } else { "debug" }
    );
    let status = cmd.status().context("cannot run cargo to build fnbroker")?;
    if !status.success() {
        bail!("cargo build of fnbroker failed");
    }
    // This executable sits in the target directory of the same profile.
    let me = std::env::current_exe()?;
    let dir = me.parent().context("no parent directory of the bench")?;
    let p = dir.join("fnbroker");
    if !p.exists() {
        bail!("{} was not built; pass --fnbroker PATH", p.display());
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_cpu_and_memory() {
        let me = std::process::id();
        assert!(cpu_of(me).is_ok());
        assert!(status_kib(me, "VmRSS:").expect("rss") > 0);
        assert!(status_kib(me, "VmHWM:").expect("hwm") > 0);
        assert!(status_kib(me, "RssAnon:").expect("anon") > 0);
    }
}

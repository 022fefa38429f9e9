//! Nothing an `exec` function starts outlives its call.
//!
//! A command runs in a process group of its own, killed when the call ends; but a process that
//! calls `setsid` (a daemonizing helper) leaves the group, and one whose parent exits is
//! reparented. So each call also marks its command's environment with a tag of its own
//! (`FNBROKER_CALL`), which every descendant inherits; when the call ends, every process
//! carrying the tag is killed, wherever it went.
//!
//! `fnbroker run` also makes itself the child subreaper of its process tree
//! (`PR_SET_CHILD_SUBREAPER`): an orphaned descendant becomes fnbroker's child instead of
//! init's, so it can be found and is reaped here (a zombie left by one that exited on its own,
//! and those killed at a call's end). The commands themselves are left to Tokio, which waits
//! for them: their pids are kept in [`DIRECT`] and never reaped here.
//!
//! A process that clears its environment and leaves its group is out of reach; a cgroup per
//! call would catch it, where the system delegates one.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;

/// The variable that tags a call's processes.
pub(crate) const TAG: &str = "FNBROKER_CALL";

/// The commands Tokio waits for: never reaped here.
static DIRECT: Mutex<Option<HashSet<i32>>> = Mutex::new(None);

/// Whether this process is the subreaper of its tree, and so reaps orphans.
static SUBREAPER: AtomicBool = AtomicBool::new(false);

/// Makes this process the child subreaper of its descendants (Linux); false where the system
/// refuses. Called once at start by `fnbroker run`.
pub fn become_subreaper() -> bool {
    let ok = nix::sys::prctl::set_child_subreaper(true).is_ok();
    SUBREAPER.store(ok, Ordering::Release);
    ok
}

fn direct() -> std::sync::MutexGuard<'static, Option<HashSet<i32>>> {
    DIRECT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Spawns a command with `spawn` and keeps its pid among those Tokio waits for, under the lock
/// a sweep takes, so that a sweep never reaps a command before it is known.
pub(crate) fn spawn_direct<T>(
    spawn: impl FnOnce() -> std::io::Result<T>,
    pid: impl Fn(&T) -> Option<u32>,
) -> std::io::Result<T> {
    let mut set = direct();
    let child = spawn()?;
    if let Some(p) = pid(&child).and_then(|p| i32::try_from(p).ok()) {
        set.get_or_insert_with(HashSet::new).insert(p);
    }
    Ok(child)
}

/// The call tagged `tag` ended, and its command `pid` is Tokio's to wait for (or was waited
/// for): kills every process still carrying the tag, and reaps the orphans that are this
/// process' children.
pub(crate) fn sweep(tag: &str, pid: Option<u32>) {
    let me = i32::try_from(std::process::id()).unwrap_or(0);
    let subreaper = SUBREAPER.load(Ordering::Acquire);
    let mut set = direct();
    if let Some(p) = pid.and_then(|p| i32::try_from(p).ok())
        && let Some(set) = set.as_mut()
    {
        set.remove(&p);
    }
    let known = |p: i32| {
        set.as_ref().is_some_and(|s| s.contains(&p))
            || Some(p) == pid.and_then(|p| i32::try_from(p).ok())
    };
    let Ok(all) = procfs::process::all_processes() else {
        return;
    };
    let mut killed = Vec::new();
    for process in all.flatten() {
        let Ok(stat) = process.stat() else { continue };
        if known(stat.pid) || stat.pid == me {
            continue;
        }
        let zombie = stat.state == 'Z';
        let tagged = !zombie
            && process.environ().is_ok_and(|env| {
                env.get(std::ffi::OsStr::new(TAG))
                    .is_some_and(|v| v.as_encoded_bytes() == tag.as_bytes())
            });
        if tagged {
            let _ = kill(Pid::from_raw(stat.pid), Signal::SIGKILL);
        }
        if subreaper && stat.ppid == me {
            if zombie {
                let _ = waitpid(Pid::from_raw(stat.pid), Some(WaitPidFlag::WNOHANG));
            } else if tagged {
                killed.push(stat.pid);
            }
        }
    }
    drop(set);
    if !killed.is_empty() {
        // Killed with SIGKILL, they die at once; their statuses are collected off the caller's
        // thread.
        std::thread::spawn(move || {
            for p in killed {
                let _ = waitpid(Pid::from_raw(p), None);
            }
        });
    }
}
